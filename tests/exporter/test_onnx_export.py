"""`rexport onnx` / export_onnx: every arch, the file's contents, parity, and bad input."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from helpers import assert_clean_error
from rexport.errors import CheckFailed, InputError
from rexport.exporter import ExportConfig, ParityConfig, build_model, export_onnx
from rexport.exporter.checkpoint import LoadedModel, save_state_dict
from rexport.exporter.onnx_export import check_parity
from rexport.exporter.zoo import ARCHS
from rexport.runtime.gates import Tolerance
from rexport.runtime.metadata import ModelInfo

# Marked deep (the default run deselects them; `-m deep` runs them): the deep ImageNet archs between
# the 50-layer ones and the extremes, whose blocks every family's 50-layer arch exports, and whose
# depth and size resnet1202 / preact_resnet1001 (deepest) and wide_resnet101_2 (largest) bound.
DEEP = {"resnet101", "resnet152", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "preact_resnet101",
        "preact_resnet152", "plain101", "plain152"}


def loaded(model, arch: str) -> LoadedModel:
    return LoadedModel(model, arch, model.fc.out_features, model.conv1.in_channels, {}, None, [])


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.deep) if a in DEEP else a for a in ARCHS])
def test_every_arch_exports_with_onnxruntime_parity(tmp_path, realistic_model, arch):
    spec = ARCHS[arch]
    out = tmp_path / f"{arch}.onnx"
    size = None if spec.cifar else (64, 64)  # ImageNet archs at a small input keep the suite fast
    result = export_onnx(loaded(realistic_model(arch), arch), out, ExportConfig(arch=arch, input_size=size))
    assert result.parity.passed
    assert {c.batch for c in result.parity.cases} == {1, 8}
    assert all(c.comparison.top1_agreement == 1.0 for c in result.parity.cases)
    model = onnx.load(str(out))  # every arch builds, runs forward (parity) and gives its dataset's classes
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert model.graph.output[0].type.tensor_type.shape.dim[1].dim_value == spec.num_classes
    assert not any(n.op_type == "BatchNormalization" for n in model.graph.node) or spec.family.startswith("preact")


def read_props(path) -> dict:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def test_exported_file_describes_itself(tmp_path, realistic_model):
    ckpt = tmp_path / "w.safetensors"
    save_state_dict(realistic_model("resnet18", num_classes=3), ckpt)
    (tmp_path / "labels.txt").write_text("cat\ndog\nbird\n")
    out = tmp_path / "m.onnx"
    from rexport.runtime.metadata import load_labels

    result = export_onnx(ckpt, out, ExportConfig(arch="resnet18", input_size=(96, 64), batch="1:4:16",
                                                 labels=load_labels(tmp_path / "labels.txt")))
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    assert model.graph.value_info  # shape inference ran
    info = ModelInfo.from_props(read_props(out))
    assert info == result.info
    assert info.arch == "resnet18" and info.num_classes == 3 and info.labels == ("cat", "dog", "bird")
    assert info.input_shape == (3, 96, 64) and (info.batch.min, info.batch.opt, info.batch.max) == (1, 4, 16)
    assert info.preprocess.size == (96, 64) and info.preprocess.resize == int(64 / 0.875)
    assert info.preprocess.mean == (0.485, 0.456, 0.406)
    from rexport.files import sha256_file

    assert info.source_sha256 == sha256_file(ckpt)
    assert info.precision == "fp32" and info.rexport_version
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.get_modelmeta().custom_metadata_map["arch"] == "resnet18"
    for batch in (1, 5, 16):
        y = session.run(None, {"input": np.zeros((batch, 3, 96, 64), np.float32)})[0]
        assert y.shape == (batch, 3)


@pytest.mark.parametrize("exporter, opset", [("torchscript", 13), ("torchscript", 20), ("dynamo", 18)])
def test_exporters_and_opsets(tmp_path, realistic_model, exporter, opset):
    out = tmp_path / "m.onnx"
    result = export_onnx(loaded(realistic_model("resnet20"), "resnet20"), out,
                         ExportConfig(arch="resnet20", exporter=exporter, opset=opset))
    assert result.parity.passed
    model = onnx.load(str(out))
    assert model.opset_import[0].version == opset
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((3, 3, 32, 32), np.float32)})[0].shape == (3, 10)


def test_static_batch(tmp_path, realistic_model):
    out = tmp_path / "m.onnx"
    export_onnx(loaded(realistic_model("resnet20"), "resnet20"), out, ExportConfig(arch="resnet20", batch="4"))
    dim = onnx.load(str(out)).graph.input[0].type.tensor_type.shape.dim[0]
    assert dim.dim_value == 4 and not dim.dim_param


def test_parity_on_real_images_counts_unreadable_ones(tmp_path, realistic_model):
    from PIL import Image

    images = tmp_path / "images" / "class_a"
    images.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    result = export_onnx(loaded(realistic_model("resnet20"), "resnet20"), tmp_path / "m.onnx",
                         ExportConfig(arch="resnet20", parity=ParityConfig(images=str(tmp_path / "images"))))
    kinds = {(c.inputs, c.batch) for c in result.parity.cases}
    assert kinds == {("random", 1), ("random", 8), ("images", 1), ("images", 8)}
    assert len(result.parity.skipped_images) == 1 and "broken.jpg" in result.parity.skipped_images[0]
    assert "skipped 1 unreadable image" in result.parity.format()


def test_parity_detects_a_model_that_differs(tmp_path, realistic_model):
    model = realistic_model("resnet20")
    out = tmp_path / "m.onnx"
    result = export_onnx(loaded(model, "resnet20"), out, ExportConfig(arch="resnet20"))
    with torch.no_grad():
        model.layer3[2].conv2.weight.mul_(1.5)  # the PyTorch side changes after export
    report = check_parity(model, out, result.info)
    assert not report.passed
    assert all(c.comparison.tolerance_ratio > 1 for c in report.cases)


def test_failed_parity_leaves_no_file(tmp_path, realistic_model):
    out = tmp_path / "m.onnx"
    config = ExportConfig(arch="resnet50", input_size=(64, 64), parity=ParityConfig(tolerance=Tolerance(0.0, 0.0)))
    with pytest.raises(CheckFailed) as err:  # BN folding alone changes the float arithmetic
        export_onnx(loaded(realistic_model("resnet50"), "resnet50"), out, config)
    assert not err.value.report.passed
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.onnx")]  # no temp files left


def test_existing_output_is_not_replaced_without_force(tmp_path, realistic_model):
    out = tmp_path / "m.onnx"
    out.write_text("precious")
    model = loaded(realistic_model("resnet20"), "resnet20")
    with pytest.raises(InputError, match="already exists; pass overwrite=True"):
        export_onnx(model, out, ExportConfig(arch="resnet20"))
    assert out.read_text() == "precious"
    export_onnx(model, out, ExportConfig(arch="resnet20", overwrite=True))
    assert onnx.load(str(out)).graph.node


def test_config_validation():
    with pytest.raises(InputError, match="opset 5 is not supported"):
        ExportConfig(arch="resnet18", opset=5)
    with pytest.raises(InputError, match="opset 17 is not supported by the dynamo exporter"):
        ExportConfig(arch="resnet18", exporter="dynamo", opset=17)
    with pytest.raises(InputError, match="batch"):
        ExportConfig(arch="resnet18", batch="8:4")
    with pytest.raises(InputError, match="at least 8x8"):
        ExportConfig(arch="resnet18", input_size=(4, 4))


# -- the command line ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "resnet20.pth"
    torch.manual_seed(0)
    torch.save({"state_dict": build_model("resnet20").state_dict()}, path)
    return path


def test_cli_exports_and_reports(run_cli, tmp_path, checkpoint):
    result = run_cli("onnx", checkpoint, "--arch", "resnet20", "-o", "m.onnx", "--json", "report.json",
                     "--mean", "0.5,0.5,0.5", "--std", "0.25,0.25,0.25")
    assert result.exit_code == 0, result
    assert "parity" in result.stdout and "ok" in result.stdout
    report = json.loads((tmp_path / "report.json").read_text())["export"]
    assert report["parity"]["passed"] and len(report["parity"]["cases"]) == 2
    info = ModelInfo.from_props(read_props(tmp_path / "m.onnx"))
    assert info.preprocess.mean == (0.5, 0.5, 0.5) and info.preprocess.std == (0.25, 0.25, 0.25)


def test_cli_json_report_is_never_written_over_an_input_or_output(run_cli, tmp_path, checkpoint):
    """Issue 10: `--json` replaced any file; now, not even with --force, the checkpoint or the model."""
    before = checkpoint.read_bytes()
    assert_clean_error(run_cli("onnx", checkpoint, "--arch", "resnet20", "--json", checkpoint, "--force"),
                       "refusing to write")
    assert checkpoint.read_bytes() == before
    result = run_cli("onnx", checkpoint, "--arch", "resnet20", "-o", "m.onnx", "--json", "m.onnx", "--force")
    assert_clean_error(result, "refusing to write m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_cli_detects_the_arch_when_unambiguous(run_cli, tmp_path):
    ckpt = tmp_path / "r18.pt"
    torch.save(build_model("resnet18", num_classes=4).state_dict(), ckpt)
    result = run_cli("onnx", ckpt, "--input-size", "64", "--no-parity")
    assert result.exit_code == 0, result
    assert "detected" in result.stderr
    assert ModelInfo.from_props(read_props(tmp_path / "r18.onnx")).arch == "resnet18"


def test_cli_parity_failure_exits_3_and_writes_nothing(run_cli, tmp_path, checkpoint):
    result = run_cli("onnx", checkpoint, "--arch", "resnet20", "-o", "m.onnx", "--atol", "0", "--rtol", "0")
    assert_clean_error(result, "disagrees with PyTorch", code=3)
    assert "FAIL" in result.stderr  # the parity table is shown
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args, fragment", [
    (["missing.pt", "--arch", "resnet20"], "does not exist"),
    (["{truncated}", "--arch", "resnet20"], "truncated or corrupt"),
    (["{ckpt}", "--arch", "resnet18"], "it fits resnet20, plain20; pass --arch resnet20"),
    (["{ckpt}", "--arch", "resnet2O"], "unknown arch"),
    (["{ckpt}", "--arch", "resnet20", "--num-classes", "100"], "--num-classes 100 was asked"),
    (["{ckpt}", "--arch", "resnet20", "--opset", "99"], "opset 99 is not supported"),
    (["{ckpt}", "--arch", "resnet20", "-o", "no/such/dir/m.onnx"], "does not exist"),
    (["{ckpt}", "--arch", "resnet20", "-o", "{file}/m.onnx"], "not a directory"),
    (["{ckpt}", "--arch", "resnet20", "--batch", "0:8"], "batch"),
    (["{ckpt}", "--arch", "resnet20", "--labels", "{labels}"], "3 labels given for a model with 10 classes"),
    (["{ckpt}", "--arch", "resnet20", "--key-map", "nonsense"], "OLD=NEW"),
    (["{ckpt}", "--arch", "resnet20", "--mean", "a,b,c"], "--mean"),
    (["{ckpt}", "--arch", "resnet20", "--mean", "0.5", "--std", "0.5"], "needs 3 --mean and 3 --std values"),
    (["{ckpt}", "--arch", "resnet20", "--images", "{file}"], ""),
])
def test_cli_bad_input_is_one_line_and_leaves_nothing(run_cli, tmp_path, checkpoint, args, fragment):
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(checkpoint.read_bytes()[:5000])
    (tmp_path / "file").write_text("x")
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    args = [a.format(ckpt=checkpoint, truncated=truncated, file=tmp_path / "file", labels=tmp_path / "labels.txt")
            for a in args]
    before = set(os.listdir(tmp_path))
    result = run_cli("onnx", *args)
    if fragment:
        assert_clean_error(result, fragment)
    else:  # click's own usage errors (exit 2) are fine too
        assert result.exit_code != 0 and "Traceback" not in result.stderr
    assert set(os.listdir(tmp_path)) == before  # no output, no temporary files


def test_cli_refuses_a_non_writable_directory(run_cli, tmp_path, checkpoint):
    target = Path("/sys") if os.geteuid() == 0 else tmp_path / "ro"
    if target != Path("/sys"):
        target.mkdir()
        target.chmod(0o555)
    result = run_cli("onnx", checkpoint, "--arch", "resnet20", "-o", target / "m.onnx")
    assert_clean_error(result, "cannot write")
    assert not (target / "m.onnx").exists()


def test_parity_on_a_model_that_overflows_says_no_tolerance_helps(tmp_path, realistic_model):
    """Issue 10: finite weights whose outputs overflow failed parity with 'Loosen --atol/--rtol'."""
    model = realistic_model("resnet20")
    with torch.no_grad():
        model.fc.weight.fill_(3e38)  # finite, but 64 of them summed overflow float32
    out = tmp_path / "m.onnx"
    with pytest.raises(CheckFailed) as err:
        export_onnx(loaded(model, "resnet20"), out, ExportConfig(arch="resnet20"))
    message = str(err.value)
    assert "NaN or Inf in PyTorch itself" in message and "no tolerance" in message
    assert "atol" not in message and not out.exists()
    assert err.value.report.cases[0].reference_nonfinite > 0
