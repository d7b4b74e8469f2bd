"""Real TensorRT on a GPU: build, run and compare with ONNX Runtime for FP32, FP16 and INT8 engines,
with whichever TensorRT is installed (TensorRT 10/11, or TensorRT for RTX on an RTX GPU).

Uses the embedded demo model (ResNet-20 trained on digits) so INT8 agreement means something.
Runs only where a TensorRT flavour imports and an NVIDIA GPU it can run on is visible; elsewhere
every test is skipped with the reason. Unlike tests/exporter/test_tensorrt_builder.py and
tests/runtime/test_tensorrt_backend.py (a double of the API), and tests/exporter/test_tensorrt_rtx.py
(real builds, no GPU needed), these are the proof that engines compute the right numbers.
"""

from __future__ import annotations

import numpy as np
import pytest

from rexport.errors import RexportError
from rexport.runtime.compare import compare


def _why_not() -> str | None:
    try:
        from rexport.runtime.cuda import gpu_info
        from rexport.runtime.trt_compat import load_tensorrt

        compat = load_tensorrt()
        gpu = gpu_info()
        if compat.rtx and gpu.compute_capability_str not in compat.compute_capabilities():
            return f"{compat.name} cannot run on this GPU ({gpu.name}, compute capability {gpu.compute_capability_str})"
    except RexportError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - a broken install: say what broke
        return f"TensorRT does not work here ({type(e).__name__}: {e})"
    return None


REASON = _why_not()
pytestmark = [pytest.mark.tensorrt, pytest.mark.skipif(REASON is not None, reason=f"needs TensorRT and a GPU: {REASON}")]

# top-1 agreement with ONNX Runtime FP32 on the 360 held-out demo images
MIN_AGREEMENT = {"fp32": 0.995, "fp16": 0.99, "int8": 0.97}


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    pytest.importorskip("torch", reason="exporting the demo model needs torch (rexport[export])")
    from rexport.runtime.data import load_dataset
    from rexport.demo import data
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_model
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    root = tmp_path_factory.mktemp("trt")
    exported = export_onnx(load_model(data.WEIGHTS_FILE, data.ARCH), root / "resnet20_digits.onnx",
                           ExportConfig(arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(),
                                        parity=ParityConfig(enabled=False)))
    test = load_dataset("demo:test", exported.info, samples=None)
    reference = OnnxRuntimeBackend(exported.path, providers=["CPUExecutionProvider"]).run_batched(test.inputs, 32)
    return root, exported.path, test, reference


def build(demo, name, **options):
    from rexport.exporter.tensorrt import BuildConfig, build_engine

    root, onnx, _, _ = demo
    options.setdefault("val_data", "demo:test")
    options.setdefault("val_samples", 32)
    return build_engine(onnx, root / name, BuildConfig(overwrite=True, **options))


def check_engine(demo, result, precision: str):
    from rexport.runtime.backends.tensorrt import TensorRTBackend

    _, _, test, reference = demo
    assert result.validation is not None and result.validation.passed, result.format()
    with TensorRTBackend(result.path) as backend:
        assert backend.sidecar.precision == precision
        assert backend.max_batch == 32 and backend.min_batch == 1
        got = backend.run_batched(test.inputs, backend.max_batch)
        single = backend.run(test.inputs[:1])
    np.testing.assert_allclose(single, got[:1], rtol=1e-2, atol=1e-2)  # batch 1 and batch 32 profiles agree
    c = compare(got, reference)
    assert c.nonfinite == 0
    assert c.top1_agreement >= MIN_AGREEMENT[precision], (precision, c)
    accuracy = float(np.mean(got.argmax(1) == test.labels))
    assert accuracy >= 0.95, (precision, accuracy)
    return c


def test_fp32_engine_matches_onnxruntime(demo):
    result = build(demo, "fp32.engine")
    c = check_engine(demo, result, "fp32")
    assert c.max_abs < 5e-2  # TF32 convolutions on Ampere+ are not bit-exact


def test_fp16_engine_matches_onnxruntime(demo):
    check_engine(demo, build(demo, "fp16.engine", precision="fp16"), "fp16")


def test_int8_engine_matches_onnxruntime(demo):
    result = build(demo, "int8.engine", precision="int8", calib_data="demo:train", calib_samples=256)
    assert result.plan.how == "quantize" and result.plan.typing == "strong"
    check_engine(demo, result, "int8")


def test_tensorrt_10_legacy_paths(demo):
    from rexport.runtime.trt_compat import load_tensorrt

    if not load_tensorrt().legacy:
        pytest.skip("BuilderFlag.FP16 and the INT8 calibrators exist only on TensorRT 10.x")
    root = demo[0]
    check_engine(demo, build(demo, "fp16flag.engine", precision="fp16", fp16_flag=True), "fp16")
    cache = root / "legacy.cache"
    result = build(demo, "legacy.engine", precision="int8", legacy_calibrator=True, calib_data="demo:train",
                   calib_samples=256, calib_cache=str(cache))
    assert cache.read_bytes().startswith(b"TRT-")
    check_engine(demo, result, "int8")


def test_timing_cache_round_trip(demo):
    from rexport.runtime.trt_compat import load_tensorrt

    if load_tensorrt().rtx:
        pytest.skip("TensorRT for RTX has no timing cache (it keeps a runtime cache: see the next test)")
    cache = demo[0] / "timing.cache"
    first = build(demo, "t1.engine", timing_cache=str(cache), validate=False)
    size = cache.stat().st_size
    second = build(demo, "t2.engine", timing_cache=str(cache), validate=False)
    assert first.timing_cache == second.timing_cache == cache and cache.stat().st_size >= size > 0
    assert not any("another TensorRT version" in n or "unreadable" in n for n in second.notes)


def test_rtx_runtime_cache_is_written_and_reused(demo):
    from rexport.runtime.backends.tensorrt import TensorRTBackend, runtime_cache_path
    from rexport.runtime.trt_compat import load_tensorrt

    if not load_tensorrt().rtx:
        pytest.skip("the runtime cache is TensorRT for RTX's")
    result = build(demo, "rtx.engine", validate=False)
    cache = runtime_cache_path(result.path)
    x = demo[2].inputs[:8]
    with TensorRTBackend(result.path) as backend:
        first = backend.run(x)
    assert cache.is_file() and cache.stat().st_size > 0
    with TensorRTBackend(result.path) as backend:
        np.testing.assert_allclose(backend.run(x), first, rtol=1e-5, atol=1e-5)
    with TensorRTBackend(result.path, runtime_cache=False) as backend:
        assert backend.runtime_cache_path is None
