"""rexport.runtime.cuda on machines without a usable NVIDIA driver.

cuda-python says so in two ways: cuda-bindings 13 returns cudaErrorInsufficientDriver from the
call, cuda-bindings 12.6 / 12.8 raise RuntimeError("Failed to dlopen libcuda.so.1") from it. Both
must end as the same CompatibilityError (and `rexport doctor` as a row marked --), never as an
"unexpected RuntimeError". FakeCudaRuntime(driver=...) models both; the last tests run the
cuda-python installed here, wherever there is no GPU.
"""

from __future__ import annotations

import importlib.util
import json

import pytest
from click.testing import CliRunner

from doubles.fake_cuda import DLOPEN_FAILURE, FakeCudaRuntime, install_fake_cuda
from doubles.fake_tensorrt import hide_tensorrt
from rexport.errors import CompatibilityError
from rexport.runtime import cuda
from rexport.runtime.environment import inspect_environment

NO_GPU = "^no usable NVIDIA GPU \\("
HINT = "TensorRT needs an NVIDIA GPU and its driver: run this there (`rexport doctor` shows what is missing)"


def test_cuda_bindings_12_raising_without_a_driver_is_no_gpu(monkeypatch):
    install_fake_cuda(monkeypatch, FakeCudaRuntime(driver="unloadable"))
    with pytest.raises(CompatibilityError) as err:
        cuda.gpu_info()
    assert str(err.value) == (f"no usable NVIDIA GPU (cuda-python cannot use the NVIDIA driver: cudaGetDeviceCount "
                              f"raised {DLOPEN_FAILURE}); {HINT}")
    assert isinstance(err.value.__cause__, RuntimeError)


def test_cuda_bindings_13_returning_insufficient_driver_is_no_gpu(monkeypatch):
    install_fake_cuda(monkeypatch, FakeCudaRuntime(driver="missing"))
    with pytest.raises(CompatibilityError, match=NO_GPU + "cudaErrorInsufficientDriver: fake "
                                                 "cudaErrorInsufficientDriver\\); TensorRT needs an NVIDIA GPU"):
        cuda.gpu_info()


@pytest.mark.parametrize("driver, version", [("unloadable", "unavailable"), ("missing", "none")])
def test_cuda_versions_without_a_driver(monkeypatch, driver, version):
    install_fake_cuda(monkeypatch, FakeCudaRuntime(driver=driver))
    versions = cuda.cuda_versions()
    assert versions["driver"] == version and versions["runtime"] == "12.6"


@pytest.mark.parametrize("make", [cuda.Stream, lambda: cuda.DeviceBuffer(16),
                                  lambda: cuda.check(cuda.cudart().cudaSetDevice(0), "cudaSetDevice")],
                         ids=["stream", "buffer", "set-device"])
def test_every_call_through_cudart_reports_the_missing_driver(monkeypatch, make):
    install_fake_cuda(monkeypatch, FakeCudaRuntime(driver="unloadable"))
    with pytest.raises(CompatibilityError, match=NO_GPU + "cuda-python cannot use the NVIDIA driver: cuda\\w+ raised "
                                                 "Failed to dlopen libcuda.so.1\\)"):
        make()


def test_only_runtime_errors_are_taken_for_a_missing_driver(monkeypatch):
    fake = install_fake_cuda(monkeypatch)

    def broken(*args):
        raise TypeError("cudaMalloc() takes 1 positional argument")  # a bug in the caller stays a bug

    monkeypatch.setattr(fake, "cudaMalloc", broken)
    with pytest.raises(TypeError):
        cuda.DeviceBuffer(16)
    assert cuda.cudart().cudaMemcpyKind is fake.cudaMemcpyKind  # enums pass through unwrapped
    stream = cuda.Stream()  # and calls that work are untouched
    assert stream.handle in fake.streams
    stream.destroy()


def doctor(monkeypatch, *args):
    from rexport.cli import cli

    hide_tensorrt(monkeypatch)
    return CliRunner().invoke(cli, ["doctor", *args])


def test_doctor_with_cuda_bindings_12_and_no_driver(monkeypatch):
    install_fake_cuda(monkeypatch, FakeCudaRuntime(driver="unloadable"))
    result = doctor(monkeypatch)
    assert result.exit_code == 0, result.output
    assert "unexpected" not in result.output and "this is a bug" not in result.output
    rows = {line.split()[1]: line for line in result.output.splitlines()[1:] if line.strip()}
    assert rows["cuda-python"].startswith("ok")
    assert rows["CUDA"].startswith("--") and "driver unavailable" in rows["CUDA"]
    assert rows["GPU"].startswith("--") and DLOPEN_FAILURE in rows["GPU"] and "no usable NVIDIA GPU" in rows["GPU"]
    as_json = json.loads(doctor(monkeypatch, "--json", "-").output)
    assert as_json["GPU"]["ok"] is False and as_json["CUDA"]["ok"] is False


# -- the cuda-python installed here, on a machine without a GPU ----------------------------------


def real_device_count():
    """What this machine's cuda-python says: ('raised', message), (error name, None) or ('ok', count)."""
    from cuda.bindings import runtime

    try:
        err, count = runtime.cudaGetDeviceCount()
    except RuntimeError as e:  # cuda-bindings 12.x without a driver
        return "raised", str(e)
    return ("ok", count) if int(err) == 0 else (err.name, None)


needs_real_cuda_python_without_gpu = pytest.mark.skipif(
    importlib.util.find_spec("cuda") is None or importlib.util.find_spec("cuda.bindings") is None,
    reason="cuda-python (cuda.bindings) is not installed here")


@needs_real_cuda_python_without_gpu
def test_the_installed_cuda_python_without_a_gpu_is_a_compatibility_error():
    state, detail = real_device_count()
    if state == "ok" and detail:
        pytest.skip(f"this machine has {detail} GPU(s): the no-GPU path cannot be seen here")
    with pytest.raises(CompatibilityError) as err:
        cuda.gpu_info()
    message = str(err.value)
    assert message.endswith(HINT)
    if state == "raised":  # cuda-bindings 12.x
        assert message.startswith("no usable NVIDIA GPU (cuda-python cannot use the NVIDIA driver")
        assert detail in message
    elif state == "ok":  # a driver, and no GPU
        assert message.startswith("no NVIDIA GPU is visible") or "cudaErrorNoDevice" in message
    else:  # cuda-bindings 13: an error code, e.g. cudaErrorInsufficientDriver without a driver
        assert message.startswith(f"no usable NVIDIA GPU ({state}: ")
    gpu = inspect_environment().get("GPU")
    assert not gpu.ok and gpu.detail == message
