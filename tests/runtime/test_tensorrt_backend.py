"""TensorRTBackend against FakeTensorRT + FakeCudaRuntime (doubles; see tests/doubles/).

The double's engine computes its outputs with ONNX Runtime on the ONNX it was built from and reads
and writes host memory standing in for device memory, so the backend's sidecar check, shape,
buffer, copy, threading and cleanup logic runs for real. Nothing here shows that TensorRT engines
work: tests/test_tensorrt_real.py does, where TensorRT and a GPU exist. The FP16 and INT8 engines
are built from rexport's own FP16 and trt-target Q/DQ ONNX files (rexport.calibration).
"""

from __future__ import annotations

import contextlib
import json
import re
import threading

import numpy as np
import onnxruntime as ort
import pytest

from helpers import env_without
from doubles.fake_cuda import FakeCudaRuntime, hide_cuda, install_fake_cuda
from doubles.fake_tensorrt import SURFACES, hide_tensorrt
from doubles.fixtures import make_trt, tiny, tiny_models, trt  # noqa: F401 - fixtures
from rexport.errors import CompatibilityError, InputError, RexportError
from rexport.exporter.tensorrt import BuildConfig, build_engine
from rexport.runtime import cuda
from rexport.runtime.backends.tensorrt import TensorRTBackend
from rexport.runtime.engine_sidecar import FORMAT, EngineSidecar, sidecar_path
from rexport.runtime.trt_compat import inspect_environment


def engine_for(tmp_path, onnx, name="m.engine", **options):
    build_engine(onnx, tmp_path / name, BuildConfig(validate=False, **options))
    return tmp_path / name


def onnxruntime_logits(onnx, x):
    return ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


# -- the sidecar check comes before deserialization ----------------------------------------------


def test_other_tensorrt_version_is_refused_before_deserializing(tmp_path, make_trt, tiny):
    make_trt(SURFACES["10.x"])  # where the engine is built
    engine = engine_for(tmp_path, tiny(), precision="fp16")
    here = make_trt(SURFACES["11.x"])
    with pytest.raises(CompatibilityError) as err:
        TensorRTBackend(engine)
    assert str(err.value) == ("m.engine was built with TensorRT 10.3 for compute capability 8.7 (FakeGPU (test "
                              "double)); this machine has TensorRT 11.1 and an 8.7 GPU (FakeGPU (test double)): "
                              "rebuild with `rexport trt m.onnx -o m.engine --fp16` here")
    assert here.deserialize_calls == 0


def test_other_gpu_is_refused_before_deserializing(tmp_path, make_trt, tiny):
    make_trt(SURFACES["10.x"])  # where the engine is built
    engine = engine_for(tmp_path, tiny())
    here = make_trt(SURFACES["10.x"], compute_capability=(7, 5))
    with pytest.raises(CompatibilityError, match="for compute capability 8.7 .*; this machine has TensorRT "
                                                 "10.3.0.30 and a 7.5 GPU"):
        TensorRTBackend(engine)
    assert here.deserialize_calls == 0


def test_patch_release_difference_is_named_in_full(tmp_path, make_trt, tiny):
    make_trt(SURFACES["10.x"])  # where the engine is built
    engine = engine_for(tmp_path, tiny())
    make_trt("10.3.1.4")
    with pytest.raises(CompatibilityError, match="built with TensorRT 10.3.0.30 .* has TensorRT 10.3.1.4"):
        TensorRTBackend(engine)


def test_hardware_and_version_compatible_engines_load_elsewhere(tmp_path, make_trt, tiny):
    make_trt(SURFACES["10.x"])  # where the engine is built
    onnx = tiny()
    ampere = engine_for(tmp_path, onnx, name="a.engine", hardware_compatibility="ampere_plus")
    versioned = engine_for(tmp_path, onnx, name="v.engine", version_compatible=True)
    make_trt(SURFACES["10.x"], compute_capability=(8, 9))
    with TensorRTBackend(ampere) as backend:
        assert backend.run(np.ones((2, 3, 8, 8), np.float32)).shape == (2, 5)
    newer = make_trt("10.5.0.18")
    with TensorRTBackend(versioned) as backend:  # needs engine_host_code_allowed, which the backend sets
        assert backend.run(np.ones((1, 3, 8, 8), np.float32)).shape == (1, 5)
    assert newer.deserialize_calls == 1


def test_missing_or_broken_sidecar(tmp_path, trt, tiny):
    engine = engine_for(tmp_path, tiny())
    side = sidecar_path(engine)
    text = side.read_text()
    side.unlink()
    with pytest.raises(InputError, match="m.engine has no sidecar m.engine.json.*rexport trt MODEL.onnx"):
        TensorRTBackend(engine)
    side.write_text(text.replace(f'"format": "{FORMAT}"', '"format": "other"'))
    with pytest.raises(InputError, match="not a rexport engine sidecar"):
        TensorRTBackend(engine)
    side.write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        TensorRTBackend(engine)
    assert trt.deserialize_calls == 0


def test_engine_tensorrt_cannot_load_is_explained(tmp_path, trt, tiny):
    engine = engine_for(tmp_path, tiny())
    engine.write_bytes(b"not a plan")
    with pytest.raises(CompatibilityError, match="TensorRT could not load m.engine .*Serialization assertion.*"
                                                 "rebuild it with `rexport trt m.onnx -o m.engine` here"):
        TensorRTBackend(engine)
    assert trt.cuda.allocations == {}


def test_sidecar_round_trip(tmp_path, trt, tiny):
    engine = engine_for(tmp_path, tiny(), batch="2:4:6")
    side = EngineSidecar.for_engine(engine)
    assert EngineSidecar.from_dict(json.loads(side.to_json())) == side
    assert side.profile["input"] == {"min": [2, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [6, 3, 8, 8]}


# -- running -------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_outputs_equal_onnxruntime_at_every_batch_in_the_profile(tmp_path, trt, tiny, variant):
    onnx = tiny(variant)  # fp16 / int8: made by rexport.calibration
    rng = np.random.default_rng(0)
    with TensorRTBackend(engine_for(tmp_path, onnx)) as backend:
        assert backend.sidecar.precision == variant
        assert (backend.min_batch, backend.max_batch) == (1, 8)
        assert backend.input_name == "input" and backend.output_name == "logits"
        assert backend.input_shape == (-1, 3, 8, 8)
        assert backend.info.arch == "tiny"
        assert backend.device_memory == 1 << 20  # device_memory_size_v2 (TensorRT 10.1+ and 11)
        for batch in (1, 3, 8, 2):
            x = rng.standard_normal((batch, 3, 8, 8), dtype=np.float32)
            got = backend.run(x)
            assert got.shape == (batch, 5) and got.dtype == np.float32
            np.testing.assert_allclose(got, onnxruntime_logits(onnx, x), rtol=1e-6, atol=1e-6)
            assert backend._context.shapes["input"] == (batch, 3, 8, 8)  # set_input_shape per call


def test_batches_outside_the_profile_are_refused(tmp_path, trt, tiny):
    with TensorRTBackend(engine_for(tmp_path, tiny(), batch="2:4:6")) as backend:
        with pytest.raises(InputError, match="batch 7 is outside this engine's profile \\(2 to 6\\); split"):
            backend.run(np.zeros((7, 3, 8, 8), np.float32))
        with pytest.raises(InputError, match="batch 1 is outside"):
            backend.run(np.zeros((1, 3, 8, 8), np.float32))
        with pytest.raises(InputError, match="takes Nx3x8x8"):
            backend.run(np.zeros((2, 3, 9, 8), np.float32))
        assert backend.run_batched(np.zeros((12, 3, 8, 8), np.float32), backend.max_batch).shape == (12, 5)


def test_eight_threads_share_one_backend(tmp_path, trt, tiny):
    onnx = tiny()
    inputs = [np.random.default_rng(i).standard_normal((1 + i % 8, 3, 8, 8), dtype=np.float32) for i in range(8)]
    expected = [onnxruntime_logits(onnx, x) for x in inputs]
    errors = []
    with TensorRTBackend(engine_for(tmp_path, onnx)) as backend:
        def work(i):
            try:
                for _ in range(15):
                    np.testing.assert_allclose(backend.run(inputs[i]), expected[i], rtol=1e-6, atol=1e-6)
            except BaseException as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert trt.executions == 8 * 15
    assert trt.concurrent_context_use == 0  # one inference at a time per execution context


def test_the_thread_test_can_fail(tmp_path, trt, tiny):
    """Without the backend's lock, the double sees two threads inside one execution context."""
    backend = TensorRTBackend(engine_for(tmp_path, tiny()))
    backend._lock = contextlib.nullcontext()
    x = np.ones((8, 3, 8, 8), np.float32)
    threads = [threading.Thread(target=lambda: [backend._run(x) for _ in range(10)]) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert trt.concurrent_context_use > 0
    backend._lock = threading.Lock()
    backend.close()


def test_close_frees_device_memory_and_the_stream(tmp_path, trt, tiny):
    backend = TensorRTBackend(engine_for(tmp_path, tiny()))
    assert trt.cuda.live_bytes() == 8 * 3 * 8 * 8 * 4 + 8 * 5 * 4  # input and output at the max batch
    assert len(trt.cuda.streams) == 1
    backend.close()
    assert trt.cuda.allocations == {} and trt.cuda.streams == {}
    backend.close()  # twice is fine
    with pytest.raises(RexportError, match="closed"):
        backend.run(np.ones((1, 3, 8, 8), np.float32))


def test_missing_pieces_on_the_runtime_side(tmp_path, monkeypatch, make_trt, tiny):
    make_trt()
    engine = engine_for(tmp_path, tiny())
    install_fake_cuda(monkeypatch, FakeCudaRuntime(device_count=0))
    with pytest.raises(CompatibilityError, match="no usable NVIDIA GPU"):
        TensorRTBackend(engine)
    hide_cuda(monkeypatch)
    with pytest.raises(RexportError, match="cuda-python is needed"):
        TensorRTBackend(engine)
    hide_tensorrt(monkeypatch)
    with pytest.raises(RexportError, match="tensorrt is needed to run TensorRT engines"):
        TensorRTBackend(engine)


def test_cuda_errors_name_the_call(monkeypatch):
    fake = install_fake_cuda(monkeypatch)
    with pytest.raises(cuda.CudaError, match="CUDA cudaFree failed \\(cudaErrorInvalidDevicePointer"):
        cuda.check(fake.cudaFree(12345), "cudaFree")
    buffer = cuda.DeviceBuffer(16)
    with pytest.raises(cuda.CudaError, match="do not fit"):
        buffer.copy_from(np.zeros(8, np.float32))
    out = np.empty(4, np.float32)
    buffer.copy_from(np.arange(4, dtype=np.float32))
    np.testing.assert_array_equal(buffer.copy_to(out), np.arange(4, dtype=np.float32))
    buffer.free()
    assert fake.allocations == {}


# -- doctor --------------------------------------------------------------------------------------


def test_doctor_reports_what_is_there(make_trt):
    make_trt(SURFACES["10.x"], num_dla_cores=2)
    report = inspect_environment()
    assert report.get("TensorRT").detail == "10.3.0.30"
    assert report.get("GPU").detail.startswith("FakeGPU (test double), compute capability 8.7")
    assert report.get("DLA").ok and report.get("DLA").detail == "2 DLA core(s)"
    make_trt(SURFACES["11.x"], num_dla_cores=2)
    dla = inspect_environment().get("DLA")
    assert not dla.ok and "DLA is not available on TensorRT 11.1" in dla.detail


def test_doctor_cli_names_what_is_missing(run_cli, tmp_path):
    env = env_without(tmp_path, "tensorrt", "tensorrt_rtx")
    result = run_cli("doctor", env=env)
    assert result.exit_code == 0, result
    lines = {re.split(r"\s{2,}", line)[1]: line for line in result.stdout.splitlines()[1:] if line.strip()}
    assert set(lines) >= {"TensorRT", "TensorRT for RTX", "cuda-python", "CUDA", "GPU", "onnxruntime", "onnx", "DLA"}
    assert lines["TensorRT"].startswith("--") and "pip install 'rexport[trt]'" in lines["TensorRT"]
    assert lines["TensorRT for RTX"].startswith("--") and "pip install 'rexport[rtx]'" in lines["TensorRT for RTX"]
    assert lines["onnxruntime"].startswith("ok") and "CPUExecutionProvider" in lines["onnxruntime"]
    assert "unknown: needs TensorRT" in lines["DLA"]
    as_json = json.loads(run_cli("doctor", "--json", env=env).stdout)
    assert as_json["TensorRT"]["ok"] is False
