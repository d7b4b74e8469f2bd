"""The OpenVINO backend, for real: the same files as ONNX Runtime (FP32, FP16, INT8 of both
targets), the same answers, the batch range from ModelInfo, threads, the model cache, many
threads at once, and `backend="auto"`."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rexport.errors import InputError
from rexport.runtime import load
from rexport.runtime.backends import choice
from rexport.runtime.backends.choice import choose_backend, int8_saturates_here

pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def variants(demo_fp32, tmp_path_factory):
    """The demo model as FP32, FP16 and INT8 for both targets."""
    from rexport.calibration import QuantizeConfig, quantize, to_fp16

    root = tmp_path_factory.mktemp("openvino")
    files = {"fp32": demo_fp32, "fp16": to_fp16(demo_fp32, root / "demo.fp16.onnx").path}
    for target in ("cpu", "trt"):
        config = QuantizeConfig(calib_data="demo:train", calib_samples=128, target=target)
        files[f"int8-{target}"] = quantize(demo_fp32, root / f"demo.int8-{target}.onnx", config).path
    return files


@pytest.fixture(scope="module")
def digits(demo_fp32):
    from rexport.runtime.data import load_dataset
    from rexport.calibration.fp16 import read_model

    return load_dataset("demo:test", read_model(demo_fp32)[1], samples=None).inputs


@pytest.mark.parametrize("precision, atol", [("fp32", 1e-4), ("fp16", 1e-2), ("int8-cpu", 0.5), ("int8-trt", 0.5)])
def test_same_answers_as_onnxruntime(variants, digits, precision, atol, caplog):
    """Every precision runs unconverted; top-1 equal on the 360 held-out digits. INT8 logits
    differ by a few quantization steps (each engine requantizes its own way), FP32 not at all.
    On an x86 CPU without VNNI, OpenVINO's int8 kernels saturate on the trt target's full-range
    weights (measured on an AMD Zen 3: 10 of the 360 answers changed): there `auto` runs that file
    on ONNX Runtime, and OpenVINO asked for by name says why its answers can drift."""
    if precision == "int8-trt" and int8_saturates_here():
        with caplog.at_level("WARNING", logger="rexport"):
            assert load(variants[precision]).backend.name == "onnxruntime CPU"
            assert load(variants[precision], backend="openvino").backend.name == "openvino CPU"
        assert "running it on ONNX Runtime instead" in caplog.text and "run it on onnxruntime" in caplog.text
        return
    ov, ort = (load(variants[precision], backend=b) for b in ("openvino", "onnxruntime"))
    assert ov.backend.name == "openvino CPU" and ov.info == ort.info
    a, b = ov.backend.run_batched(digits), ort.backend.run_batched(digits)
    assert (a.argmax(1) == b.argmax(1)).mean() == 1.0
    assert np.abs(a - b).max() <= atol


def test_batch_range_threads_and_errors(variants, digits):
    p = load(variants["fp32"], backend="openvino", threads=1)
    assert (p.backend.min_batch, p.backend.max_batch) == (p.info.batch.min, p.info.batch.max)
    assert p.backend.compiled.get_property("INFERENCE_NUM_THREADS") == 1
    assert p.run(digits[:70]).shape == (70, 10)  # the Predictor splits what the range cannot take
    opt = p.info.batch.opt
    one, some = p.run(digits[:1]), p.run(digits[:opt])  # static models for 1 and the preferred size
    assert sorted(k for k in p.backend._compiled if k is not None) == sorted({1, opt})
    np.testing.assert_allclose(one, p.backend.compiled.create_infer_request().infer({0: digits[:1]})[0], atol=1e-5)
    np.testing.assert_allclose(some[:1], one, atol=1e-5)
    with pytest.raises(InputError, match=f"batches of 1 to {p.info.batch.max}, got {p.info.batch.max + 1}"):
        p.backend.run(digits[:p.info.batch.max + 1])
    with pytest.raises(InputError, match="has shape 2x3x16x16"):
        p.run(np.zeros((2, 3, 16, 16), np.float32))


def test_many_threads_match_one(variants, digits):
    p = load(variants["int8-cpu"], backend="openvino")
    chunks = [digits[i:i + 8] for i in range(0, 128, 8)]
    alone = [p.run(c) for c in chunks]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(p.run, chunks))
    assert all(np.array_equal(a, b) for a, b in zip(alone, together))


def test_model_cache_is_written_and_reused(variants, tmp_path):
    from rexport.runtime.backends.openvino import OpenVinoBackend

    cache = tmp_path / "ov-cache"
    first = OpenVinoBackend(variants["int8-trt"], cache_dir=cache)
    blobs = sorted(p.name for p in cache.iterdir())
    assert blobs and all(p.stat().st_size > 0 for p in cache.iterdir())
    again = OpenVinoBackend(variants["int8-trt"], cache_dir=cache)  # compiled from the cache: nothing new
    assert sorted(p.name for p in cache.iterdir()) == blobs
    x = np.random.default_rng(0).standard_normal((4, *first.input_shape[1:])).astype(np.float32)
    assert np.array_equal(first.run(x), again.run(x))


def test_unknown_device_is_one_line(variants):
    from rexport.runtime.backends.openvino import OpenVinoBackend

    with pytest.raises(InputError, match=r"OpenVINO here has no device 'TPU' \(available: .*CPU"):
        OpenVinoBackend(variants["fp32"], device="TPU")


def test_auto_picks_by_the_stated_rule(variants, tmp_path, monkeypatch):
    import platform

    onnx_file = variants["fp32"]
    assert choose_backend(tmp_path / "m.engine") == "tensorrt"
    assert choose_backend(onnx_file, providers="cuda") == "onnxruntime"  # ONNX Runtime's providers named
    assert choose_backend(onnx_file, providers="cpu") == "onnxruntime"
    x86 = platform.machine().lower() in ("x86_64", "amd64")
    assert choose_backend(onnx_file) == ("openvino" if x86 else "onnxruntime")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")  # Jetson, Raspberry Pi: ONNX Runtime
    assert choose_backend(onnx_file) == "onnxruntime"
    with pytest.raises(InputError, match="tensorrt runs engines; this is an ONNX file"):
        choose_backend(onnx_file, "tensorrt")
    with pytest.raises(InputError, match="backend must be one of auto, onnxruntime, openvino, tensorrt"):
        choose_backend(onnx_file, "tflite")


def test_bundle_selftest_passes_on_openvino(demo_bundle):
    """The bundle's references were recorded by ONNX Runtime; OpenVINO meets the same gates."""
    for model in ("fp32", "int8"):
        with load(demo_bundle, model=model, backend="openvino") as p:
            report = p.selftest()
            assert report.backend == "openvino CPU" and report.passed, report.format()


def test_auto_falls_back_to_onnxruntime_when_openvino_cannot(variants, monkeypatch, caplog):
    """A model OpenVINO cannot compile (its own limits, not a broken file) still runs under auto,
    on ONNX Runtime, with a warning; asked for by name, OpenVINO's error stands."""
    from rexport.errors import RexportError
    from rexport.runtime.backends import openvino

    def refuse(self, path, **kwargs):
        raise RexportError(f"OpenVINO cannot compile {path} for CPU: unsupported operation")

    monkeypatch.setattr(openvino.OpenVinoBackend, "__init__", refuse)
    with caplog.at_level("WARNING", logger="rexport"), load(variants["fp32"]) as p:
        assert p.backend.name == "onnxruntime CPU"
    assert "running it on ONNX Runtime instead" in caplog.text
    with pytest.raises(RexportError, match="unsupported operation"):
        load(variants["fp32"], backend="openvino")


@pytest.mark.parametrize("flags, machine, saturates", [
    ({"avx2", "fma"}, "x86_64", True),  # AVX2 without VNNI: int8 pairs add in int16
    ({"avx2", "avx512_vnni"}, "x86_64", False), ({"avx2", "avx_vnni"}, "x86_64", False),
    ({"avx2", "amx_int8"}, "x86_64", False), (None, "x86_64", False),  # unknown: no warning we cannot back
    ({"asimd", "asimddp"}, "aarch64", False)])
def test_which_cpus_saturate_full_range_int8(monkeypatch, flags, machine, saturates):
    import platform

    monkeypatch.setattr(choice, "cpu_flags", lambda: flags)
    monkeypatch.setattr(platform, "machine", lambda: machine)
    assert int8_saturates_here() is saturates


def test_full_range_int8_is_kept_off_saturating_kernels(variants, monkeypatch, caplog):
    """On a CPU whose int8 kernels saturate, `auto` runs the trt target (full-range weights) on ONNX
    Runtime, which computes its Q/DQ in float; the cpu target (weights in [-64, 64]) stays on
    OpenVINO with no warning; a cpu target without reduce_range warns on either backend; on a CPU
    with VNNI nothing changes."""
    from rexport.runtime.metadata import ModelInfo

    if choose_backend(variants["fp32"]) != "openvino":
        pytest.skip("auto picks OpenVINO only on x86 CPUs without a GPU provider for ONNX Runtime")
    monkeypatch.setattr(choice, "int8_saturates_here", lambda: True)
    assert ModelInfo.from_onnx(load(variants["int8-trt"], backend="onnxruntime").backend.metadata, None,
                               "x").calibration["reduce_range"] is False
    with caplog.at_level("WARNING", logger="rexport"):
        assert load(variants["int8-trt"]).backend.name == "onnxruntime CPU"
    assert "full range (trt target) and this CPU has no VNNI" in caplog.text
    assert "running it on ONNX Runtime instead" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="rexport"):
        assert load(variants["int8-cpu"]).backend.name == "openvino CPU"
        assert load(variants["fp32"]).backend.name == "openvino CPU"
        assert load(variants["int8-trt"], backend="onnxruntime").backend.name == "onnxruntime CPU"
    assert caplog.text == ""
    assert choice.saturating({"target": "cpu", "reduce_range": False}, "onnxruntime CPU")
    assert choice.saturating({"target": "cpu"}, "openvino CPU")  # a file from before reduce_range
    assert not choice.saturating({"target": "trt", "reduce_range": False}, "onnxruntime CUDA")
    monkeypatch.setattr(choice, "int8_saturates_here", lambda: False)
    with caplog.at_level("WARNING", logger="rexport"):
        assert load(variants["int8-trt"]).backend.name == "openvino CPU"
    assert caplog.text == ""


def test_save_choice_puts_exact_backends_first(tmp_path):
    """bench --save-choice records the fastest backend that stays exact here; one whose int8
    kernels saturate only when every backend does."""
    import json
    from types import SimpleNamespace

    from rexport.cli.device import save_fastest
    from rexport.runtime.backends.choice import CHOICE_FILE, machine

    rows = [SimpleNamespace(model=m, batch=8, p50_ms=ms) for m, ms in
            (("trt [openvino]", 40.0), ("trt [onnxruntime]", 130.0), ("full [openvino]", 37.0),
             ("full [onnxruntime]", 39.0))]
    measured = {"trt [openvino]": (tmp_path, "trt.onnx", "openvino", True),
                "trt [onnxruntime]": (tmp_path, "trt.onnx", "onnxruntime", False),
                "full [openvino]": (tmp_path, "full.onnx", "openvino", True),
                "full [onnxruntime]": (tmp_path, "full.onnx", "onnxruntime", True)}
    save_fastest(rows, measured)
    saved = json.loads((tmp_path / CHOICE_FILE).read_text())["machines"][machine()]
    assert saved == {"trt.onnx": "onnxruntime", "full.onnx": "openvino"}
