"""TensorRTBackend against FakeTensorRT + FakeCudaRuntime (doubles; see tests/doubles/).

The double's engine computes its outputs with ONNX Runtime on the ONNX it was built from and reads
and writes host memory standing in for device memory, so the backend's sidecar check, shape,
buffer, copy, threading and cleanup logic runs for real. Nothing here shows that TensorRT engines
work: tests/test_tensorrt_real.py does, where TensorRT and a GPU exist. The FP16 and INT8 engines
are built from rexport's own FP16 and trt-target Q/DQ ONNX files (rexport.calibration).

TensorRT for RTX engines (the last section) run against the double's RTX surface (`rtx` fixture:
`tensorrt_rtx` on an 8.9 GPU, TensorRT hidden): the sidecar check, the plan header check
(get_engine_validity), the runtime cache beside the engine (its JIT counts what it compiles, so a
second process can be shown to reuse the cache) and an engine of the flavour that is not installed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import threading

import numpy as np
import onnxruntime as ort
import pytest

from helpers import env_without
from doubles.fake_cuda import FakeCudaRuntime, hide_cuda, install_fake_cuda
from doubles.fake_tensorrt import (RUNTIME_CACHE_MAGIC, SURFACES, FakeRuntimeCache, FakeTensorRT, hide_tensorrt,
                                   rewrite_plan_header)
from doubles.fixtures import make_trt, rtx, tiny, tiny_models, trt  # noqa: F401 - fixtures
from rexport.errors import CompatibilityError, InputError, MissingDependency, RexportError
from rexport.exporter.tensorrt import BuildConfig, build_engine
from rexport.runtime import cuda, load
from rexport.runtime.backends.tensorrt import TensorRTBackend, runtime_cache_path
from rexport.runtime.engine_sidecar import FORMAT, EngineSidecar, sidecar_path
from rexport.runtime.environment import inspect_environment


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


@pytest.mark.parametrize("change, fragment", [
    ({"num_classes": 10}, "the metadata says 10 classes but the graph outputs 5 logits"),
    ({"output": {"name": "probs", "kind": "logits"}}, "names the output 'probs' but the graph's outputs are 'logits'"),
])
def test_a_sidecar_that_contradicts_its_engine_is_refused(tmp_path, trt, tiny, change, fragment):
    """Issue 10: a model description that does not fit the model passed every command."""
    engine = engine_for(tmp_path, tiny())
    side = json.loads(sidecar_path(engine).read_text())
    side["model"].update(change)
    sidecar_path(engine).write_text(json.dumps(side))
    with pytest.raises(InputError) as err:
        TensorRTBackend(engine)
    assert fragment in str(err.value) and "rebuild the engine" in str(err.value), str(err.value)
    assert trt.cuda.allocations == {}  # refused before any buffer was allocated


def test_engine_tensorrt_cannot_load_is_explained(tmp_path, trt, tiny):
    engine = engine_for(tmp_path, tiny())
    engine.write_bytes(b"not a plan")
    with pytest.raises(CompatibilityError, match="TensorRT 1[01]\\.\\d could not load m.engine .*Serialization assertion.*"
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
    as_json = json.loads(run_cli("doctor", "--json", "-", env=env).stdout)
    assert as_json["TensorRT"]["ok"] is False


# -- TensorRT for RTX ----------------------------------------------------------------------------


def rtx_engine_for(directory, onnx, name="m.engine", **options):
    build_engine(onnx, directory / name, BuildConfig(flavour="rtx", validate=False, **options))
    return directory / name


def batches(*sizes: int) -> list[np.ndarray]:
    return [np.random.default_rng(size).standard_normal((size, 3, 8, 8), dtype=np.float32) for size in sizes]


def only_rtx(make_trt, monkeypatch, **kwargs):
    """A TensorRT for RTX of its own on this machine (another process, as far as the double can tell)."""
    hide_tensorrt(monkeypatch, rtx=False)
    return make_trt(flavour="rtx", **kwargs)


@pytest.mark.parametrize("variant", ["fp32", "fp16", "int8"])
def test_an_rtx_engine_runs_through_its_runtime_config_and_equals_onnxruntime(tmp_path, rtx, tiny, variant):
    onnx = tiny(variant)
    engine = rtx_engine_for(tmp_path, onnx)
    with TensorRTBackend(engine) as backend:
        assert backend.sidecar.flavour == "rtx" and backend._compat.name == "TensorRT for RTX 1.7"
        assert (rtx.validity_checks, rtx.deserialize_calls) == (1, 1)  # the header check, then the load
        assert backend.runtime_cache_path == tmp_path / "m.engine.runtime-cache"
        config = backend._context._runtime_config  # the double's context: made with an IRuntimeConfig
        assert config is not None and config.get_runtime_cache() is backend._runtime_cache
        assert backend.device_memory == 1 << 20 and (backend.min_batch, backend.max_batch) == (1, 8)
        for x in batches(1, 3, 8, 3):
            np.testing.assert_allclose(backend.run(x), onnxruntime_logits(onnx, x), rtol=1e-6, atol=1e-6)
    assert (rtx.kernels_compiled, rtx.kernels_reused) == (3, 1)  # batch 3 twice: compiled once


def test_load_runs_an_rtx_engine_and_a_bundle_that_holds_one(tmp_path, rtx, tiny, demo_bundle):
    onnx = tiny()
    x = batches(5)[0]
    with load(rtx_engine_for(tmp_path, onnx)) as model:
        assert model.backend.name == "tensorrt" and model.info.arch == "tiny"
        np.testing.assert_allclose(model.run(x), onnxruntime_logits(onnx, x), rtol=1e-6, atol=1e-6)

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    result = build_engine(bundle, None, BuildConfig(precision="fp16", val_data="demo:test", val_samples=16))
    assert result.sidecar.flavour == "rtx" and result.validation.passed  # built for this GPU and checked on it
    images = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    with load(bundle, model="engine") as engine, load(bundle) as fp32:
        assert engine.info.precision == "fp16"
        assert (engine.run(images).argmax(1) == fp32.run(images).argmax(1)).all()
        assert engine.selftest().passed
    cache = runtime_cache_path(bundle / "demo.fp16.engine")
    assert cache.is_file()  # kept beside the engine, in the bundle directory
    compiled = rtx.kernels_compiled
    with load(bundle, model="engine") as again:  # the bundle still verifies with the cache beside its files
        again.run(images)
        again.selftest()
    assert rtx.kernels_compiled == compiled and rtx.runtime_cache_loads == 1  # the first load wrote it


def test_a_backend_that_never_ran_writes_no_runtime_cache(tmp_path, make_trt, monkeypatch, tiny):
    only_rtx(make_trt, monkeypatch)
    engine = rtx_engine_for(tmp_path, tiny())
    TensorRTBackend(engine).close()
    assert not runtime_cache_path(engine).exists()


def test_the_runtime_cache_is_saved_after_the_first_run_and_a_second_process_reuses_it(tmp_path, make_trt,
                                                                                       monkeypatch, tiny, caplog):
    first = only_rtx(make_trt, monkeypatch)
    onnx = tiny()
    engine = rtx_engine_for(tmp_path, onnx)
    cache = runtime_cache_path(engine)
    two, five = batches(2, 5)
    backend = TensorRTBackend(engine)
    assert not cache.exists()  # nothing compiled yet
    backend.run(two)
    assert cache.read_bytes().startswith(RUNTIME_CACHE_MAGIC) and first.kernels_compiled == 1
    after_first_run = cache.read_bytes()
    backend.run(two)
    backend.run(five)
    assert first.kernels_compiled == 2 and cache.read_bytes() == after_first_run  # saved once, not per run
    backend.close()
    assert cache.read_bytes() != after_first_run  # close() saved the kernels compiled since

    second = only_rtx(make_trt, monkeypatch)  # a fresh TensorRT for RTX: nothing compiled in memory
    with caplog.at_level("INFO", logger="rexport"), TensorRTBackend(engine) as again:
        for x in (five, two):
            np.testing.assert_allclose(again.run(x), onnxruntime_logits(onnx, x), rtol=1e-6, atol=1e-6)
    assert (second.runtime_cache_loads, second.kernels_compiled, second.kernels_reused) == (1, 0, 2)
    assert f"using the runtime cache {cache}" in caplog.text

    third = only_rtx(make_trt, monkeypatch)  # the test can fail: without the cache the kernels are compiled again
    with TensorRTBackend(engine, runtime_cache=False) as without:
        without.run(two)
    assert (third.runtime_cache_loads, third.kernels_compiled) == (0, 1)


def test_runtime_cache_false_writes_nothing_and_a_path_keeps_it_there(tmp_path, rtx, tiny):
    engine = rtx_engine_for(tmp_path, tiny())
    (two,) = batches(2)
    with TensorRTBackend(engine, runtime_cache=False) as backend:
        assert backend.runtime_cache_path is None and backend._context._runtime_config is None
        backend.run(two)
    assert backend.save_runtime_cache() is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.engine", "m.engine.json", "m.onnx"]
    elsewhere = tmp_path / "caches" / "m.cache"
    elsewhere.parent.mkdir()
    with TensorRTBackend(engine, runtime_cache=str(elsewhere)) as backend:
        backend.run(two)
    assert elsewhere.read_bytes().startswith(RUNTIME_CACHE_MAGIC) and not runtime_cache_path(engine).exists()


def foreign_runtime_cache() -> bytes:
    """A runtime cache written by the same release on another GPU of the same compute capability."""
    other = FakeRuntimeCache(FakeTensorRT.surface("rtx", cuda=FakeCudaRuntime("NVIDIA RTX 4080 (test double)", (8, 9))))
    other._kernels["elsewhere"] = "kernels compiled for another SKU"
    return bytes(other.serialize())


@pytest.mark.parametrize("content", [b"\x00garbage, not a cache", b"", "another GPU's"])
def test_an_unusable_runtime_cache_is_warned_about_and_replaced(tmp_path, rtx, tiny, caplog, content):
    engine = rtx_engine_for(tmp_path, tiny())
    cache = runtime_cache_path(engine)
    cache.write_bytes(foreign_runtime_cache() if content == "another GPU's" else content)
    with caplog.at_level("WARNING", logger="rexport"), TensorRTBackend(engine) as backend:
        assert caplog.messages == [f"warning: {cache} is not a runtime cache this TensorRT for RTX can use; it will "
                                   "be replaced"]
        backend.run(batches(2)[0])
    assert rtx.runtime_cache_loads == 0 and rtx.kernels_compiled == 1
    replaced = cache.read_bytes()
    assert replaced.startswith(RUNTIME_CACHE_MAGIC) and b"elsewhere" not in replaced
    caplog.clear()
    with caplog.at_level("WARNING", logger="rexport"), TensorRTBackend(engine) as backend:
        backend.run(batches(2)[0])
    assert caplog.messages == [] and rtx.runtime_cache_loads == 1 and rtx.kernels_compiled == 1


def test_an_unwritable_cache_location_warns_once_and_inference_still_works(tmp_path, rtx, tiny, caplog, monkeypatch):
    onnx = tiny()
    folder = tmp_path / "read-only"
    folder.mkdir()
    engine = rtx_engine_for(folder, onnx)
    folder.chmod(0o555)
    if os.geteuid() == 0:  # root writes anywhere: give it the refusal an ordinary user gets from a read-only folder
        mkstemp = tempfile.mkstemp

        def refuse(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's name
            if dir is not None and os.path.samefile(dir, folder):
                raise PermissionError(13, "Permission denied", str(folder))
            return mkstemp(*args, dir=dir, **kwargs)

        monkeypatch.setattr(tempfile, "mkstemp", refuse)
    try:
        with caplog.at_level("WARNING", logger="rexport"), TensorRTBackend(engine) as backend:
            for x in batches(2, 2, 4):
                np.testing.assert_allclose(backend.run(x), onnxruntime_logits(onnx, x), rtol=1e-6, atol=1e-6)
    finally:
        folder.chmod(0o755)
    assert len(caplog.messages) == 1  # after the first run; close() does not try again
    assert caplog.messages[0].startswith(f"warning: could not save the runtime cache {runtime_cache_path(engine)} (")
    assert caplog.messages[0].endswith("); kernels will be compiled again next time")
    assert not runtime_cache_path(engine).exists() and rtx.kernels_compiled == 2


@pytest.mark.parametrize("targets, gpu, loads", [
    ("8.6,12.0", (8, 9), False),
    (None, (8, 9), True),  # built without a GPU for 8.6, 8.9 and 12.0
    (None, (7, 5), False),
    (None, (9, 0), False),  # a Hopper GPU: no TensorRT for RTX engine runs there
])
def test_the_sidecar_refuses_a_gpu_outside_the_targets_before_deserializing(tmp_path, make_trt, monkeypatch, tiny,
                                                                           targets, gpu, loads):
    only_rtx(make_trt, monkeypatch, **({} if targets else {"device_count": 0}))
    engine = rtx_engine_for(tmp_path, tiny(), precision="fp16", compute_capabilities=targets or ())
    here = only_rtx(make_trt, monkeypatch, compute_capability=gpu, gpu_name="NVIDIA RTX (test double)")
    if loads:
        with TensorRTBackend(engine) as backend:
            assert backend.run(batches(1)[0]).shape == (1, 5)
        return
    with pytest.raises(CompatibilityError) as err:
        TensorRTBackend(engine)
    described = "8.6, 12.0" if targets else "8.6, 8.9, 12.0"
    article = "an" if gpu[0] == 8 else "a"
    assert str(err.value) == (f"m.engine was built with TensorRT for RTX 1.7.1.116 for compute capabilities "
                              f"{described}; this machine has TensorRT for RTX 1.7.1.116 and {article} "
                              f"{gpu[0]}.{gpu[1]} GPU (NVIDIA RTX (test double)): rebuild with "
                              "`rexport trt m.onnx -o m.engine --fp16` here")  # no --rtx, no --compute-capability
    assert (here.validity_checks, here.deserialize_calls) == (0, 0)


@pytest.mark.parametrize("damage, reason", [
    ({"version": "1.7.0.50"}, "version mismatch"),
    ({"targets": [[12, 0]]}, "unsupported cc"),
    ({"version": "1.6.0.15", "targets": [[7, 5]]}, "version mismatch, unsupported cc"),
    ({"flavour": "tensorrt"}, "malformed engine"),
    (b"not a plan at all", "malformed engine"),
])
def test_a_plan_the_header_check_rejects_is_never_deserialized(tmp_path, rtx, tiny, damage, reason):
    engine = rtx_engine_for(tmp_path, tiny())  # for the GPU here, by the sidecar
    if isinstance(damage, bytes):
        engine.write_bytes(damage)
    else:
        rewrite_plan_header(engine, **damage)
    with pytest.raises(CompatibilityError) as err:
        TensorRTBackend(engine)
    assert str(err.value) == (f"TensorRT for RTX 1.7 cannot load m.engine on this machine ({reason}); rebuild it "
                              "with `rexport trt m.onnx -o m.engine --rtx` here")
    assert (rtx.validity_checks, rtx.deserialize_calls) == (1, 0)
    assert rtx.cuda.allocations == {} and rtx.cuda.streams == {}


def test_an_rtx_engine_where_only_tensorrt_is_installed(tmp_path, make_trt, monkeypatch, tiny):
    only_rtx(make_trt, monkeypatch)
    engine = rtx_engine_for(tmp_path, tiny(), precision="fp16")
    hide_tensorrt(monkeypatch, tensorrt=False)  # TensorRT for RTX is gone; TensorRT 11 is here
    here = make_trt(SURFACES["11.x"], compute_capability=(8, 9))
    message = ("m.engine was built with TensorRT for RTX 1.7 for compute capability 8.9 (FakeGPU (test double)), but "
               "this machine has TensorRT 11.1 and not TensorRT for RTX: pip install 'rexport[rtx]' (builds engines "
               "for RTX GPUs, even on a machine without a GPU), or rebuild it here with "
               "`rexport trt m.onnx -o m.engine --fp16`")
    for open_engine in (TensorRTBackend, load):
        with pytest.raises(CompatibilityError) as err:
            open_engine(engine)
        assert str(err.value) == message
    assert here.deserialize_calls == 0


def test_a_tensorrt_engine_where_only_tensorrt_for_rtx_is_installed(tmp_path, make_trt, monkeypatch, tiny):
    make_trt(SURFACES["10.x"])
    engine = engine_for(tmp_path, tiny())
    here = only_rtx(make_trt, monkeypatch)
    with pytest.raises(CompatibilityError) as err:
        TensorRTBackend(engine)
    assert str(err.value) == ("m.engine was built with TensorRT 10.3 for compute capability 8.7 (FakeGPU (test "
                              "double)), but this machine has TensorRT for RTX 1.7 and not TensorRT: pip install "
                              "'rexport[trt]' on a machine with NVIDIA drivers, or rebuild it here with "
                              "`rexport trt m.onnx -o m.engine`")
    assert here.deserialize_calls == 0 and here.validity_checks == 0
    hide_tensorrt(monkeypatch)  # neither: the missing one, named with its extra
    with pytest.raises(MissingDependency, match="^tensorrt is needed to run TensorRT engines but is not installed"):
        TensorRTBackend(engine)
    rtx_engine = tmp_path / "rtx.engine"
    shutil.copyfile(engine, rtx_engine)
    side = json.loads(sidecar_path(engine).read_text())
    sidecar_path(rtx_engine).write_text(json.dumps({**side, "flavour": "rtx", "tensorrt_version": "1.7.1.116"}))
    with pytest.raises(MissingDependency, match="^tensorrt_rtx is needed to run TensorRT engines but is not "
                                                "installed; run: pip install 'rexport\\[rtx\\]'"):
        TensorRTBackend(rtx_engine)


def test_doctor_says_whether_this_gpu_runs_tensorrt_for_rtx_engines(make_trt, monkeypatch):
    only_rtx(make_trt, monkeypatch)
    report = inspect_environment()
    assert report.get("TensorRT for RTX").ok
    assert report.get("TensorRT for RTX").detail == ("1.7.1.116; builds for compute capability 7.5, 8.0, 8.6, 8.9, "
                                                     "12.0, 12.1, with or without a GPU")
    target = report.get("RTX target")
    assert target.ok and target.detail == "this GPU (8.9) runs TensorRT for RTX 1.7 engines"
    assert not report.get("TensorRT").ok
    only_rtx(make_trt, monkeypatch, compute_capability=(9, 0))
    target = inspect_environment().get("RTX target")
    assert not target.ok and target.detail == "this GPU (9.0) cannot run TensorRT for RTX 1.7 engines"

