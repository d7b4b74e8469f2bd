"""INT8 on the demo model (real trained weights, real held-out data): every calibrator within
the 0.5-point budget of FP32, for both targets; the accuracy budget; statistics and TensorRT caches."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest

from rexport.calibration import QuantizeConfig, quantize
from rexport.runtime.gates import Gates
from rexport.calibration.cache import (hex_to_scale, read_calibration_cache, retarget_header, scale_to_hex,
                                       version_int, write_calibration_cache)
from rexport.calibration.fp16 import read_model
from rexport.errors import CheckFailed, InputError
from rexport.runtime.metadata import ModelInfo

HELD_OUT = "demo:test"


@pytest.mark.parametrize("target", ["trt", "cpu"])
@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy", "mse"])
def test_each_calibrator_keeps_top1_within_half_a_point(demo_fp32, tmp_path, method, target):
    result = quantize(demo_fp32, tmp_path / "q.onnx",
                      QuantizeConfig(calib_data="demo:train", val_data=HELD_OUT, calib_method=method, target=target))
    s = result.score
    assert len(result.validation) == 360 and s.reference_top1 >= 0.97
    assert s.top1_drop <= 0.5, f"{method}/{target}: FP32 {s.reference_top1:.4f} INT8 {s.top1:.4f}"
    assert s.agreement >= 0.99
    assert result.census.int8_share == 1.0
    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(result.path)).metadata_props})
    assert info.precision == "int8" and info.calibration["method"] == method
    assert info.calibration["target"] == target and info.calibration["samples"] == 512
    assert info.calibration["reduce_range"] == (target == "cpu")
    assert info.calibration["data_sha256"] == result.calibration.sha256
    assert info.labels == read_model(demo_fp32)[1].labels  # the description travels on
    assert (result.cache_path is not None) == (target == "trt")
    if target == "cpu":  # ONNX Runtime's fused integer kernels compute what the Q/DQ graph says
        fused, reference = _fused_and_qdq_logits(result.path, result.validation.inputs)
        assert np.abs(fused - reference).max() < 0.5, "integer kernels saturate (int16 sums without VNNI?)"
        assert (fused.argmax(1) == reference.argmax(1)).mean() >= 0.997


def _fused_and_qdq_logits(path, inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Logits from ONNX Runtime as it runs the file (QLinearConv etc.: on this CPU, VPMADDUBSW
    with int16 sums unless it has VNNI), and from the plain Q/DQ graph in float (no fusion)."""
    import onnxruntime as ort

    def run(level):
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return session.run(None, {session.get_inputs()[0].name: inputs})[0]

    return run(ort.GraphOptimizationLevel.ORT_ENABLE_ALL), run(ort.GraphOptimizationLevel.ORT_DISABLE_ALL)


def test_trying_another_method_reuses_the_statistics(demo_fp32, tmp_path, monkeypatch):
    first = quantize(demo_fp32, tmp_path / "a.onnx",
                     QuantizeConfig(calib_data="demo:train", calib_samples=64, calib_method="minmax"))
    import rexport.calibration.stats as stats

    def no_model_runs(*args, **kwargs):
        raise AssertionError("the model ran again although its statistics are cached")

    monkeypatch.setattr(stats, "collect", no_model_runs)
    second = quantize(demo_fp32, tmp_path / "b.onnx",
                      QuantizeConfig(calib_data="demo:train", calib_samples=64, calib_method="mse"))
    assert second.stats_cache_hit and first.path.exists()
    with pytest.raises(AssertionError, match="ran again"):  # other data: must collect again
        quantize(demo_fp32, tmp_path / "c.onnx", QuantizeConfig(calib_data="demo:train", calib_samples=65))


def test_budget_keeps_the_worst_layers_in_float_until_it_holds(demo_fp32, tmp_path):
    # A deliberately poor calibration (clipping 1% of every activation) costs several points; the
    # budget must then keep layers in float, most sensitive first, until top-1 is back within 0.5.
    # (no refinements: the range search would repair the clipping)
    crude_config = QuantizeConfig(calib_data="demo:train", val_data=HELD_OUT, calib_method="percentile",
                                  percentile=99.0, calib_refine=())
    crude = quantize(demo_fp32, tmp_path / "crude.onnx", crude_config)
    assert crude.score.top1_drop > 0.5  # the premise: without the budget it misses
    result = quantize(demo_fp32, tmp_path / "q.onnx", replace(crude_config, budget=Gates(max_top1_drop=0.5)))
    assert result.score.top1_drop <= 0.5
    assert 0 < len(result.budget.kept) < result.census.total
    assert set(result.budget.kept) == set(result.census.float)
    b, macs = result.budget, result.census.macs  # kept in order of expected agreement gained per MAC, then MSE
    ranked = sorted(b.gain, key=lambda n: (-b.gain[n] / macs[n], -b.sensitivity[n] / macs[n]))
    assert b.kept == ranked[:len(b.kept)]
    assert 0 < result.census.int8_share < 1
    assert f"{len(result.budget.kept)} layer(s) kept in float" in result.format()
    # the census and the metadata say what stayed in float
    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(result.path)).metadata_props})
    assert info.calibration["census"]["float_layers"] == len(result.budget.kept)


def test_calibration_is_reproducible_across_processes(demo_fp32, tmp_path):
    """Same inputs, same file, whatever Python's hash seed: the refinements draw their random samples
    tensor by tensor, and once drew them in a set's order, which changes from process to process."""
    import hashlib
    import os
    import subprocess
    import sys

    digests = set()
    for seed in ("1", "2"):
        out = tmp_path / f"q{seed}.onnx"
        code = ("import sys; from rexport.calibration import QuantizeConfig, quantize; "
                "quantize(sys.argv[1], sys.argv[2], QuantizeConfig(calib_data='demo:train', calib_samples=96))")
        subprocess.run([sys.executable, "-c", code, str(demo_fp32), str(out)], check=True, capture_output=True,
                       env={**os.environ, "PYTHONHASHSEED": seed})
        digests.add(hashlib.sha256(out.read_bytes()).hexdigest())
    assert len(digests) == 1


def test_expected_agreement_predicts_counted_agreement():
    """The budget's ranking signal: with Gaussian errors it equals the counted agreement on many
    samples; it falls as the error grows, and is 1 with no error at all."""
    from rexport.calibration.budget import expected_agreement

    rng = np.random.default_rng(0)
    reference = rng.standard_normal((200_000, 10)) * 2
    assert expected_agreement(reference, reference) == 1.0
    previous = 1.0
    for spread in (0.1, 0.5, 1.0):
        logits = reference + rng.standard_normal(reference.shape) * spread
        order = np.argsort(reference, axis=1)
        # the model's assumption: only the top-1 / runner-up margin decides (exact for two classes)
        two = reference[np.arange(len(reference))[:, None], order[:, -2:]]
        noisy = two + rng.standard_normal(two.shape) * spread
        counted = float((noisy.argmax(1) == two.argmax(1)).mean())
        assert abs(expected_agreement(noisy, two) - counted) < 0.003, spread
        current = expected_agreement(logits, reference)
        assert current < previous
        previous = current


def test_agreement_floor_works_without_labels(demo_fp32, tmp_path):
    from rexport.runtime.data import load_dataset

    _, info = read_model(demo_fp32)
    arrays = load_dataset("demo:test", info, samples=None).inputs
    np.save(tmp_path / "unlabelled.npy", arrays)
    result = quantize(demo_fp32, tmp_path / "q.onnx", QuantizeConfig(  # the floor, not the calibration, is tested
        calib_data="demo:train", calib_samples=128, calib_refine=(), val_data=str(tmp_path / "unlabelled.npy"),
        budget=Gates(min_agreement=0.99)))
    assert result.score.top1 is None and result.score.agreement >= 0.99
    with pytest.raises(InputError, match="needs labelled data"):
        quantize(demo_fp32, tmp_path / "r.onnx", QuantizeConfig(
            calib_data="demo:train", val_data=str(tmp_path / "unlabelled.npy"), budget=Gates(max_top1_drop=0.5)))


def test_a_budget_is_always_reachable(demo_fp32, tmp_path):
    """cpu target, crudely calibrated: even a 100% agreement budget is met, because the Adds and
    pooling follow the convs kept in float (they once stayed uint8 whatever the budget kept)."""
    result = quantize(demo_fp32, tmp_path / "q.onnx", QuantizeConfig(
        calib_data="demo:train", val_data=HELD_OUT, calib_method="percentile", percentile=10.0, target="cpu",
        calib_refine=(),
        budget=Gates(min_agreement=1.0)))
    assert result.score.agreement == 1.0 and result.budget.steps[0][1].agreement < 0.9
    assert 0 < len(result.budget.kept) == len(result.census.float)


def test_calibration_cache_round_trip(demo_fp32, tmp_path):
    result = quantize(demo_fp32, tmp_path / "q.onnx", QuantizeConfig(calib_data="demo:train", calib_samples=64))
    header, scales = read_calibration_cache(result.cache_path)
    assert header == "TRT-100300-EntropyCalibration2"
    model = onnx.load(str(demo_fp32))
    tensors = {i.name for i in model.graph.input} | {o for n in model.graph.node for o in n.output}
    assert set(scales) == tensors  # every tensor of the FP32 network TensorRT calibrates
    assert all(s > 0 for s in scales.values())
    again = tmp_path / "again.cache"
    write_calibration_cache(again, scales, trt_version="10.3.0")
    assert read_calibration_cache(again) == (header, scales)  # float32 round trip, bit for bit
    text = result.cache_path.read_text().splitlines()
    assert text[1].split(": ")[1] == scale_to_hex(scales[text[1].split(": ")[0]])


def test_cache_format_details(tmp_path):
    assert scale_to_hex(1.0) == "3f800000" and hex_to_scale("3c010a14") == pytest.approx(0.00787, rel=1e-3)
    assert version_int("10.3.0") == 100300 and version_int("8.5.1") == 8501 and version_int("11.4") == 110400
    assert retarget_header("TRT-100300-EntropyCalibration2", "11.4.0") == "TRT-110400-EntropyCalibration2"
    (tmp_path / "bad.cache").write_text("not a cache\n")
    with pytest.raises(InputError, match="not a TensorRT calibration cache"):
        read_calibration_cache(tmp_path / "bad.cache")
    (tmp_path / "bad2.cache").write_text("TRT-100300-EntropyCalibration2\ninput: zz\n")
    with pytest.raises(InputError, match="line 2"):
        read_calibration_cache(tmp_path / "bad2.cache")


def test_int8_needs_an_fp32_model(demo_fp32, tmp_path):
    first = quantize(demo_fp32, tmp_path / "q.onnx", QuantizeConfig(calib_data="demo:train", calib_samples=32))
    with pytest.raises(InputError, match="is int8; calibrate the FP32 export"):
        quantize(first.path, tmp_path / "qq.onnx", QuantizeConfig(calib_data="demo:train", calib_samples=32))


def test_config_validation():
    """The API's errors name its fields (the CLI says their flags: tests/test_vocabulary.py)."""
    with pytest.raises(InputError, match="^calib_method must be one of minmax, percentile, entropy, mse, not 'kl'$"):
        QuantizeConfig(calib_data="demo", calib_method="kl")
    with pytest.raises(InputError, match="^target must be"):
        QuantizeConfig(calib_data="demo", target="gpu")
    with pytest.raises(InputError, match="reduce_range is for the cpu target"):
        QuantizeConfig(calib_data="demo", target="trt", reduce_range=True)
    with pytest.raises(InputError, match="^min_agreement must be"):
        Gates(min_agreement=99)
