"""The README's main job: `rexport demo` on the embedded model, end to end."""

from __future__ import annotations

import json

import onnx
import pytest

from helpers import assert_clean_error
from rexport.demo import data
from rexport.runtime.metadata import ModelInfo


def test_embedded_dataset_and_card():
    train, test = data.split("train"), data.split("test")
    assert len(train.labels) == 1437 and len(test.labels) == 360
    assert train.images.shape[1:] == (8, 8) and train.images.dtype.name == "uint8"
    assert set(test.labels.tolist()) == set(range(10))
    card = data.card()
    assert card["arch"] == "resnet20" and card["test_top1"] >= 0.97


def test_demo_runs_the_pipeline(run_cli, tmp_path):
    from rexport.demo.pipeline import MARKER

    out = tmp_path / "out"  # a previous demo's directory: replaced whole
    out.mkdir()
    (out / MARKER).write_text("written by rexport demo\n")
    (out / "stale.onnx").write_text("from the previous run")
    result = run_cli("demo", "-o", "out", "--json", "demo.json")
    assert result.exit_code == 0, result
    assert "replacing the previous demo output" in result.stderr
    assert not (out / "stale.onnx").exists() and (out / MARKER).exists()
    assert "parity" in result.stdout and "FAIL" not in result.stdout
    onnx_path = out / "resnet20_digits.onnx"
    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props})
    assert info.labels == data.LABELS and info.arch == "resnet20"
    assert len(list((out / "images").rglob("*.png"))) == 360
    report = json.loads((tmp_path / "demo.json").read_text())
    rows = {r["name"].split(" ")[0]: r for r in report["validation"]["rows"]}
    assert set(rows) == {"PyTorch", "resnet20_digits.onnx", "resnet20_digits.fp16.onnx",
                         "resnet20_digits.int8-trt.onnx", "resnet20_digits.int8-cpu.onnx"}
    reference = rows["PyTorch"]["top1"]
    assert reference >= 0.97 and report["passed"]
    assert rows["resnet20_digits.onnx"]["agreement"] == 1.0
    assert rows["resnet20_digits.fp16.onnx"]["agreement"] >= 0.995  # the FP16 aim
    for int8 in ("resnet20_digits.int8-trt.onnx", "resnet20_digits.int8-cpu.onnx"):
        assert 100 * (reference - rows[int8]["top1"]) <= 0.5  # the INT8 aim


def test_demo_refuses_a_directory_it_did_not_write(run_cli, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert_clean_error(run_cli("demo", "-o", "mine"), "not written by `rexport demo`")
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


@pytest.mark.parametrize("split", ["validation"])
def test_unknown_split(split):
    with pytest.raises(ValueError):
        data.split(split)
