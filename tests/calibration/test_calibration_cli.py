"""`rexport calibrate / fp16 / validate` and `rexport onnx --fp16 --int8` from the command line,
including the bad inputs each must refuse with one line and no output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from helpers import assert_clean_error


def test_calibrate_writes_the_model_cache_and_report(run_cli, tmp_path, demo_fp32):
    result = run_cli("calibrate", demo_fp32, "--calib-data", "demo:train", "--calib-samples", "64",
                     "--val-data", "demo:test", "--calib-method", "mse", "-o", "q.onnx", "--json", "q.json",
                     "--max-top1-drop", "0.5")
    assert result.exit_code == 0, result
    assert (tmp_path / "q.onnx").is_file() and (tmp_path / "q.cache").is_file()
    report = json.loads((tmp_path / "q.json").read_text())
    assert report["method"] == "mse" and report["target"] == "trt"
    assert report["score"]["top1_drop_points"] <= 0.5 and report["census"]["int8_share"] == 1.0
    assert "budget top-1 drop <= 0.5 points: met" in result.stdout


def test_no_reduce_range_keeps_full_range_cpu_weights(run_cli, tmp_path, demo_fp32):
    import onnx
    from onnx import numpy_helper

    result = run_cli("calibrate", demo_fp32, "--calib-data", "demo:train", "--calib-samples", "64", "--target", "cpu",
                     "--no-reduce-range", "--calib-refine", "none", "-o", "full.onnx", "--json", "full.json")
    assert result.exit_code == 0, result
    assert "full-range weights" in result.stdout and "run it only on CPUs with VNNI" in result.stdout
    assert json.loads((tmp_path / "full.json").read_text())["reduce_range"] is False
    model = onnx.load(str(tmp_path / "full.onnx"))
    weights = [numpy_helper.to_array(t) for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert weights and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 127
    assert '"reduce_range": false' in {p.key: p.value for p in model.metadata_props}["calibration"]
    shown = run_cli("inspect", "full.onnx")
    assert "for cpu on 64 samples" in shown.stdout and "weights in [-127, 127] (exact only on CPUs with VNNI)" in shown.stdout
    trt = run_cli("calibrate", demo_fp32, "--calib-data", "demo:train", "--calib-samples", "64", "--calib-refine", "none",
                  "-o", "trt.onnx")
    assert trt.exit_code == 0, trt
    assert "weights in" not in run_cli("inspect", "trt.onnx").stdout  # the trt target has one weight range


def test_fp16_and_validate(run_cli, tmp_path, demo_fp32):
    made = run_cli("fp16", demo_fp32, "-o", "h.onnx", "--calib-data", "demo:train", "--calib-samples", "16")
    assert made.exit_code == 0, made
    checked = run_cli("validate", demo_fp32, "h.onnx", "--val-data", "demo:test", "--min-agreement", "0.995",
                      "--json", "v.json")
    assert checked.exit_code == 0, checked
    rows = json.loads((tmp_path / "v.json").read_text())["rows"]
    assert rows[0]["agreement"] is None and rows[1]["agreement"] >= 0.995 and rows[1]["top1"] >= 0.97


def test_validate_gate_failure_exits_3(run_cli, tmp_path, demo_fp32):
    made = run_cli("calibrate", demo_fp32, "--calib-data", "demo:train", "--calib-samples", "64",
                   "--calib-method", "percentile", "--percentile", "90", "--calib-refine", "none",
                   "-o", "crude.onnx")  # the range search would fix it
    assert made.exit_code == 0, made
    result = run_cli("validate", demo_fp32, "crude.onnx", "--val-data", "demo:test", "--max-top1-drop", "0.5")
    assert_clean_error(result, "failed the gates", code=3)
    assert "FAIL crude.onnx" in result.stdout


def test_validate_against_pytorch(run_cli, demo_fp32):
    from rexport.demo import data

    result = run_cli("validate", demo_fp32, "--val-data", "demo:test", "--val-samples", "40",
                     "--checkpoint", data.WEIGHTS_FILE)
    assert result.exit_code == 0, result
    assert "reference: PyTorch FP32" in result.stdout


def test_onnx_with_fp16_int8_and_bundle(run_cli, tmp_path):
    from rexport.demo import data

    result = run_cli("onnx", data.WEIGHTS_FILE, "--arch", "resnet20", "-o", "d.onnx", "--mean", "0.306,0.306,0.306",
                     "--std", "0.324,0.324,0.324", "--fp16", "--int8", "--calib-data", "demo:train",
                     "--calib-samples", "64", "--target", "cpu", "--bundle", "b")
    assert result.exit_code == 0, result
    assert {"d.onnx", "d.fp16.onnx", "d.int8.onnx", "b"} <= set(os.listdir(tmp_path))
    manifest = json.loads((tmp_path / "b" / "rexport.json").read_text())
    assert [m["precision"] for m in manifest["models"]] == ["fp32", "fp16", "int8"]
    assert manifest["reference"]["source"].startswith("PyTorch")


@pytest.fixture
def bad_inputs(tmp_path):
    """Data sources that must be refused."""
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt" / "3"
    corrupt.mkdir(parents=True)
    (corrupt / "a.jpg").write_bytes(b"\xff\xd8\xff not really")
    (corrupt / "b.png").write_bytes(b"\x89PNG truncated")
    np.save(tmp_path / "wrong_size.npy", np.zeros((4, 3, 64, 64), np.float32))
    nan = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    nan[1, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "unlabelled.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32))
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "named.npz", input=x, labels=np.array(["zero", "one", "two", "three"]))  # issue 10: a bug
    np.save(tmp_path / "complex.npy", x.astype(np.complex64))  # issue 10: ComplexWarning, then accepted
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 4, dtype=object), allow_pickle=True)
    return tmp_path


@pytest.mark.parametrize("data, extra, fragment", [
    ("empty", [], "holds no images"),
    ("corrupt", [], "could be decoded"),
    ("wrong_size.npy", [], "shape 3x64x64 but the model takes 3x32x32"),
    ("nan.npy", [], "NaN or Inf"),
    ("unlabelled.npy", ["--max-top1-drop", "0.5"], "needs labelled data"),
    ("nowhere", [], "does not exist"),
    ("named.npz", [], "label 'one' is not one of the model's labels"),
    ("complex.npy", [], "the inputs are complex numbers"),
    ("objects.npy", [], "never loads"),
    ("demo:validation", [], "unknown demo split"),
    ("demo", ["--calib-method", "kl"], ""),
    ("demo", ["--percentile", "0", "--calib-method", "percentile"], "percentile"),
])
def test_calibrate_bad_input(run_cli, bad_inputs, demo_fp32, data, extra, fragment):
    before = set(os.listdir(bad_inputs))
    result = run_cli("calibrate", demo_fp32, "--calib-data", data, "-o", "q.onnx", *extra, cwd=bad_inputs)
    if fragment:
        assert_clean_error(result, fragment)
    else:  # click's own choice validation (exit 2)
        assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert set(os.listdir(bad_inputs)) == before  # no model, no cache, no temporary files


def test_calibrating_a_calibrated_model_is_refused(run_cli, tmp_path, demo_fp32):
    assert run_cli("calibrate", demo_fp32, "--calib-data", "demo", "--calib-samples", "32", "-o", "q.onnx").exit_code == 0
    assert_clean_error(run_cli("calibrate", "q.onnx", "--calib-data", "demo", "-o", "qq.onnx"), "calibrate the FP32 export")
    assert_clean_error(run_cli("calibrate", demo_fp32, "--calib-data", "demo", "-o", "q.onnx"), "already exists")


def test_json_report_never_replaces_an_input_and_needs_force(run_cli, tmp_path, demo_fp32):
    """Issue 10: `validate m.onnx --json m.onnx` used to leave the model as 507 bytes of JSON."""
    import shutil

    model = tmp_path / "m.onnx"
    shutil.copyfile(demo_fp32, model)
    (tmp_path / "link.json").symlink_to(model)
    original = model.read_bytes()
    calibrate = ["calibrate", "m.onnx", "--calib-data", "demo", "--calib-samples", "8", "-o", "q.onnx", "--force",
                 "--json"]
    validate = ["validate", "m.onnx", "--val-data", "demo:test", "--val-samples", "8", "--force", "--json"]
    for command in (validate, calibrate):
        for target in ("m.onnx", "link.json"):
            assert_clean_error(run_cli(*command, target), "refusing to write", "choose another")
    assert_clean_error(run_cli(*calibrate, "q.onnx"), "refusing to write q.onnx")  # nor onto its own output
    assert model.read_bytes() == original and not (tmp_path / "q.onnx").exists()

    (tmp_path / "old.json").write_text("keep me")
    validate = ["validate", "m.onnx", "--val-data", "demo:test", "--val-samples", "8", "--json", "old.json"]
    assert_clean_error(run_cli(*validate), "already exists", "--force")
    assert (tmp_path / "old.json").read_text() == "keep me"
    assert run_cli(*validate, "--force").exit_code == 0
    assert json.loads((tmp_path / "old.json").read_text())["passed"] is True
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_validate_fails_a_model_whose_outputs_are_nan(run_cli, tmp_path, nan_model, demo_fp32):
    """Issue 10: an all-NaN model passed validate (gate "ok", exit 0) and its --json held bare NaN."""
    result = run_cli("validate", nan_model, demo_fp32, "--val-data", "demo:test", "--val-samples", "8",
                     "--json", "v.json")
    assert_clean_error(result, "1 model(s) failed the gates", "nan.onnx", "80 of 80 outputs are NaN/Inf", code=3)
    report = json.loads((tmp_path / "v.json").read_text(),
                        parse_constant=lambda c: pytest.fail(f"bare {c} in the JSON report"))
    nan_row, fp32_row = report["rows"]  # the NaN model is the reference: the first FP32 ONNX given
    assert report["passed"] is False and nan_row["failures"] == ["80 of 80 outputs are NaN/Inf"]
    assert fp32_row["max_abs"] is None  # its error against a NaN reference is NaN, written as null
