"""The little CUDA that TensorRT needs, through cuda-python (no torch, no pycuda).

Every cuda-python call returns `(err, *results)`; `check()` turns a non-success code into a
`CudaError` naming the call, and unpacks the results. `from cuda.bindings import runtime` is
the current import; cuda-python before 12.6 only had `from cuda import cudart` (removed in 13).

Without an NVIDIA driver, cuda-bindings 13 returns an error code (cudaGetDeviceCount:
cudaErrorInsufficientDriver), but cuda-bindings 12.x raises RuntimeError("Failed to dlopen
libcuda.so.1") from the call itself. `cudart()` hands out the module behind a thin wrapper that
turns such a RuntimeError into the same CompatibilityError as the error codes that mean "no usable
GPU here", so every call made through it (gpu_info, cuda_versions, streams, buffers, the backends)
reports a missing driver the same way.
"""

from __future__ import annotations

import functools
import importlib.metadata
from dataclasses import dataclass
from typing import Any

import numpy as np

from rexport.errors import CompatibilityError, InputError, MissingDependency, RexportError

INSTALL_HINT = "run: pip install 'rexport[trt]' on a machine with NVIDIA drivers"
NO_GPU_HINT = "TensorRT needs an NVIDIA GPU and its driver: run this there (`rexport doctor` shows what is missing)"
# cudaError_t codes that mean "there is no usable GPU here" rather than a bug
_NO_GPU_ERRORS = {"cudaErrorNoDevice", "cudaErrorInsufficientDriver", "cudaErrorDevicesUnavailable",
                  "cudaErrorInitializationError", "cudaErrorSystemDriverMismatch", "cudaErrorCompatNotSupportedOnDevice"}


class CudaError(RexportError):
    """A CUDA runtime call failed."""


def no_driver(detail: str) -> CompatibilityError:
    """The one error for "this machine has no usable NVIDIA GPU or driver"."""
    return CompatibilityError(f"no usable NVIDIA GPU ({detail}); {NO_GPU_HINT}")


class _Runtime:
    """cuda-python's runtime module, whose functions raise CompatibilityError instead of the
    RuntimeError cuda-bindings 12.x raises when it cannot load the driver (see the module docstring)."""

    def __init__(self, module: Any):
        self._module = module

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._module, name)
        if not callable(attr) or isinstance(attr, type):  # enums (cudaMemcpyKind, cudaError_t), constants
            return attr

        @functools.wraps(attr)
        def call(*args, **kwargs):
            try:
                return attr(*args, **kwargs)
            except RuntimeError as e:  # "Failed to dlopen libcuda.so.1": no driver behind cuda-python
                raise no_driver(f"cuda-python cannot use the NVIDIA driver: {name} raised {e}") from e

        self.__dict__[name] = call  # wrapped once: copies run on every inference
        return call


_wrapped: _Runtime | None = None


def _wrap(module: Any) -> _Runtime:
    """One wrapper per cuda-python module (a test double swapping the module gets a new one)."""
    global _wrapped
    if _wrapped is None or _wrapped._module is not module:
        _wrapped = _Runtime(module)
    return _wrapped


def cudart() -> Any:
    """The cuda-python runtime module (imported on every call: cheap, and test doubles can swap it),
    behind the wrapper that reports a driver cuda-python cannot load as CompatibilityError."""
    try:
        from cuda.bindings import runtime

        return _wrap(runtime)
    except ImportError:
        pass
    try:
        from cuda import cudart as runtime  # cuda-python < 12.6

        return _wrap(runtime)
    except ImportError:
        raise MissingDependency(f"cuda-python is needed to run TensorRT engines but is not installed; "
                                f"{INSTALL_HINT}") from None


def _error_text(rt: Any, err: Any) -> tuple[str, str]:
    def text(fn: str) -> str:
        try:
            value = getattr(rt, fn)(err)[1]
        except Exception:  # a broken driver can fail here too; the code alone still helps
            return ""
        return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

    name = text("cudaGetErrorName") or getattr(err, "name", str(err))
    return name, text("cudaGetErrorString")


def check(result: Any, what: str) -> Any:
    """Unpack a cuda-python `(err, *results)` tuple: None, the one result, or a tuple of them."""
    err, rest = (result[0], result[1:]) if isinstance(result, tuple) else (result, ())
    if int(err) != 0:
        rt = cudart()
        name, text = _error_text(rt, err)
        detail = f"{name}: {text}" if text else name
        if name in _NO_GPU_ERRORS:
            raise no_driver(detail)
        raise CudaError(f"CUDA {what} failed ({detail})")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else rest


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    compute_capability: tuple[int, int]
    total_memory: int  # bytes

    @property
    def compute_capability_str(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"


def _text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).split(b"\0", 1)[0].decode(errors="replace")
    return str(value).strip()


def gpu_info(device: int = 0) -> GpuInfo:
    """Name, compute capability and memory of GPU `device`; CompatibilityError when there is none."""
    rt = cudart()
    count = check(rt.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise CompatibilityError(f"no NVIDIA GPU is visible; {NO_GPU_HINT}")
    if not 0 <= device < count:
        raise InputError(f"GPU {device} does not exist: this machine has {count} GPU(s), numbered 0 to {count - 1}")
    props = check(rt.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    return GpuInfo(device, _text(props.name), (int(props.major), int(props.minor)), int(props.totalGlobalMem))


def _cuda_version(number: int) -> str:
    return f"{number // 1000}.{number % 1000 // 10}" if number else "none"


def cuda_versions() -> dict[str, str]:
    """cuda-python, CUDA driver and runtime versions (for `rexport doctor`)."""
    rt = cudart()
    try:
        package = importlib.metadata.version("cuda-python")
    except importlib.metadata.PackageNotFoundError:
        package = str(getattr(rt._module, "__version__", "installed"))
    out = {"cuda-python": package}
    for label, fn in (("driver", "cudaDriverGetVersion"), ("runtime", "cudaRuntimeGetVersion")):
        try:
            out[label] = _cuda_version(int(check(getattr(rt, fn)(), fn)))
        except RexportError:
            out[label] = "unavailable"
    return out


class Stream:
    """A CUDA stream; `handle` is the integer TensorRT's execute_async_v3 takes."""

    def __init__(self) -> None:
        self._stream = check(cudart().cudaStreamCreate(), "cudaStreamCreate")
        self.handle = int(self._stream)

    def synchronize(self) -> None:
        check(cudart().cudaStreamSynchronize(self._stream), "cudaStreamSynchronize")

    def destroy(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            check(cudart().cudaStreamDestroy(stream), "cudaStreamDestroy")


class DeviceBuffer:
    """`nbytes` of device memory; copies to and from contiguous numpy arrays."""

    def __init__(self, nbytes: int) -> None:
        self.nbytes = max(int(nbytes), 1)
        self.ptr: int | None = int(check(cudart().cudaMalloc(self.nbytes), "cudaMalloc"))

    def _room(self, array: np.ndarray) -> int:
        if self.ptr is None:
            raise CudaError("device buffer used after it was freed")
        if not array.flags.c_contiguous:
            raise CudaError("host array for a device copy must be C-contiguous")
        if array.nbytes > self.nbytes:
            raise CudaError(f"{array.nbytes} bytes do not fit a device buffer of {self.nbytes}")
        return array.nbytes

    def copy_from(self, array: np.ndarray, stream: Stream | None = None) -> None:
        rt = cudart()
        n = self._room(array)
        kind = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        if stream is None:
            check(rt.cudaMemcpy(self.ptr, array.ctypes.data, n, kind), "cudaMemcpy host to device")
        else:
            check(rt.cudaMemcpyAsync(self.ptr, array.ctypes.data, n, kind, stream._stream),
                  "cudaMemcpyAsync host to device")

    def copy_to(self, array: np.ndarray, stream: Stream | None = None) -> np.ndarray:
        rt = cudart()
        n = self._room(array)
        kind = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        if stream is None:
            check(rt.cudaMemcpy(array.ctypes.data, self.ptr, n, kind), "cudaMemcpy device to host")
        else:
            check(rt.cudaMemcpyAsync(array.ctypes.data, self.ptr, n, kind, stream._stream),
                  "cudaMemcpyAsync device to host")
        return array

    def free(self) -> None:
        if self.ptr is not None:
            ptr, self.ptr = self.ptr, None
            check(cudart().cudaFree(ptr), "cudaFree")
