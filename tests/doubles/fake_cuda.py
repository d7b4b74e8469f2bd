"""FakeCudaRuntime: a test double of cuda-python's runtime module (`cuda.bindings.runtime`).

Host memory stands in for device memory: `cudaMalloc` hands out the address of a numpy buffer,
copies are `ctypes.memmove`. It checks what a caller asks of it (every device range must lie
inside a live allocation, streams must be alive, frees must match allocations) and records
what is still allocated, so tests can see leaks. It proves nothing about real GPUs.

`driver` models a machine without a usable NVIDIA driver, the two ways cuda-python reports it:
"missing" as cuda-bindings 13 does (observed with 13.4: every call that needs the driver returns
cudaErrorInsufficientDriver, cudaDriverGetVersion returns version 0), "unloadable" as cuda-bindings
12.6 / 12.8 do (those calls raise RuntimeError("Failed to dlopen libcuda.so.1")).
"""

from __future__ import annotations

import ctypes
import enum
import sys
import threading
import types
from dataclasses import dataclass

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801 - the cuda-python name
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInvalidDevicePointer = 17
    cudaErrorInsufficientDriver = 35
    cudaErrorInvalidResourceHandle = 400
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


DLOPEN_FAILURE = "Failed to dlopen libcuda.so.1"
DRIVERS = ("present", "missing", "unloadable")


class FakeDeviceMemoryError(AssertionError):
    """A device address outside every live allocation: on a real GPU, an illegal memory access."""


@dataclass
class FakeDeviceProp:
    name: bytes
    major: int
    minor: int
    totalGlobalMem: int


class cudaStream_t:  # noqa: N801
    def __init__(self, handle: int):
        self._handle = handle

    def __int__(self) -> int:
        return self._handle


class FakeCudaRuntime(types.ModuleType):
    """Stands in for `cuda.bindings.runtime`; every function returns `(err, *results)` like cuda-python."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind

    def __init__(self, gpu_name: str = "FakeGPU (test double)", compute_capability: tuple[int, int] = (8, 7),
                 device_count: int = 1, total_memory: int = 8 << 30, driver: str = "present"):
        super().__init__("cuda.bindings.runtime")
        if driver not in DRIVERS:
            raise ValueError(f"driver must be one of {DRIVERS}, not {driver!r}")
        self.driver = driver
        self.gpu_name = gpu_name
        self.compute_capability = compute_capability
        self.device_count = device_count
        self.total_memory = total_memory
        self.allocations: dict[int, np.ndarray] = {}
        self.streams: dict[int, cudaStream_t] = {}
        self.copies = 0
        self._next_stream = 0x5000
        self._lock = threading.Lock()

    # -- what tests inspect -----------------------------------------------------------------
    def resolve(self, ptr: int, nbytes: int) -> np.ndarray:
        """The bytes [ptr, ptr + nbytes) of a live allocation, or FakeDeviceMemoryError."""
        with self._lock:
            for base, array in self.allocations.items():
                if base <= ptr and ptr + nbytes <= base + array.nbytes:
                    return array[ptr - base: ptr - base + nbytes]
        raise FakeDeviceMemoryError(f"device range {ptr:#x}+{nbytes} is outside every live allocation")

    def live_bytes(self) -> int:
        return sum(a.nbytes for a in self.allocations.values())

    def _without_driver(self, *results):
        """None with a driver; else what the call gives without one (or the RuntimeError 12.x raises)."""
        if self.driver == "unloadable":
            raise RuntimeError(DLOPEN_FAILURE)
        if self.driver == "missing":
            return (cudaError_t.cudaErrorInsufficientDriver, *results)
        return None

    # -- devices ------------------------------------------------------------------------------
    def cudaGetDeviceCount(self):
        if (failed := self._without_driver(None)) is not None:
            return failed
        if self.device_count == 0:
            return cudaError_t.cudaErrorNoDevice, 0
        return cudaError_t.cudaSuccess, self.device_count

    def cudaGetDeviceProperties(self, device: int):
        if (failed := self._without_driver(None)) is not None:
            return failed
        if not 0 <= device < self.device_count:
            return cudaError_t.cudaErrorInvalidDevice, None
        return cudaError_t.cudaSuccess, FakeDeviceProp(self.gpu_name.encode() + b"\0\0", *self.compute_capability,
                                                       self.total_memory)

    def cudaSetDevice(self, device: int):
        if (failed := self._without_driver()) is not None:
            return failed
        return (cudaError_t.cudaSuccess,) if 0 <= device < self.device_count else (cudaError_t.cudaErrorInvalidDevice,)

    def cudaDriverGetVersion(self):
        if self.driver == "missing":
            return cudaError_t.cudaSuccess, 0  # what cuda-bindings 13 says without a driver
        self._without_driver()
        return cudaError_t.cudaSuccess, 12060

    def cudaRuntimeGetVersion(self):
        return cudaError_t.cudaSuccess, 12060

    def cudaGetErrorName(self, err):
        return cudaError_t.cudaSuccess, cudaError_t(err).name.encode()

    def cudaGetErrorString(self, err):
        return cudaError_t.cudaSuccess, f"fake {cudaError_t(err).name}".encode()

    # -- memory -------------------------------------------------------------------------------
    def cudaMalloc(self, size: int):
        if (failed := self._without_driver(None)) is not None:
            return failed
        if size <= 0:
            return cudaError_t.cudaErrorInvalidValue, None
        array = np.zeros(int(size), np.uint8)
        with self._lock:
            self.allocations[array.ctypes.data] = array
        return cudaError_t.cudaSuccess, array.ctypes.data

    def cudaFree(self, ptr: int):
        if (failed := self._without_driver()) is not None:
            return failed
        with self._lock:
            if self.allocations.pop(int(ptr), None) is None:
                return (cudaError_t.cudaErrorInvalidDevicePointer,)
        return (cudaError_t.cudaSuccess,)

    def _copy(self, dst: int, src: int, count: int, kind) -> tuple:
        if (failed := self._without_driver()) is not None:
            return failed
        kind = cudaMemcpyKind(int(kind))
        if kind in (cudaMemcpyKind.cudaMemcpyHostToDevice, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
            self.resolve(int(dst), count)
        if kind in (cudaMemcpyKind.cudaMemcpyDeviceToHost, cudaMemcpyKind.cudaMemcpyDeviceToDevice):
            self.resolve(int(src), count)
        ctypes.memmove(int(dst), int(src), int(count))
        self.copies += 1
        return (cudaError_t.cudaSuccess,)

    def cudaMemcpy(self, dst, src, count, kind):
        return self._copy(dst, src, count, kind)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):
        if int(stream) not in self.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return self._copy(dst, src, count, kind)

    # -- streams ------------------------------------------------------------------------------
    def cudaStreamCreate(self):
        if (failed := self._without_driver(None)) is not None:
            return failed
        with self._lock:
            self._next_stream += 1
            stream = cudaStream_t(self._next_stream)
            self.streams[self._next_stream] = stream
        return cudaError_t.cudaSuccess, stream

    def cudaStreamSynchronize(self, stream):
        return (cudaError_t.cudaSuccess,) if int(stream) in self.streams else (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaStreamDestroy(self, stream):
        with self._lock:
            if self.streams.pop(int(stream), None) is None:
                return (cudaError_t.cudaErrorInvalidResourceHandle,)
        return (cudaError_t.cudaSuccess,)


def install_fake_cuda(monkeypatch, runtime: FakeCudaRuntime | None = None) -> FakeCudaRuntime:
    """Put the double in sys.modules as `cuda`, `cuda.bindings`, `cuda.bindings.runtime` (monkeypatch restores)."""
    runtime = runtime or FakeCudaRuntime()
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = runtime
    package = types.ModuleType("cuda")
    package.bindings = bindings
    package.__path__ = []  # a package, so `from cuda.bindings import runtime` resolves through sys.modules
    bindings.__path__ = []
    for name, module in (("cuda", package), ("cuda.bindings", bindings), ("cuda.bindings.runtime", runtime)):
        monkeypatch.setitem(sys.modules, name, module)
    return runtime


def hide_cuda(monkeypatch) -> None:
    """Make `import cuda...` fail as if cuda-python were not installed."""
    for name in ("cuda", "cuda.bindings", "cuda.bindings.runtime", "cuda.cudart"):
        monkeypatch.setitem(sys.modules, name, None)
