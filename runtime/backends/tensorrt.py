"""Native TensorRT backend: a serialized engine + its sidecar, run through cuda-python.

    sidecar check (TensorRT version, GPU compute capability)      <- before deserializing
    -> trt.Runtime.deserialize_cuda_engine
    -> one execution context, one stream, device buffers sized for the profile's max batch
    -> per call: set_input_shape -> copy in -> execute_async_v3 -> copy out -> synchronize

I/O is by tensor name (TensorRT 10 removed binding indices). Batches must lie within the
engine's optimization profile (`min_batch`..`max_batch`); splitting larger ones is the
caller's job (the Predictor does it). One lock serialises `run` across threads: a TensorRT
execution context and its buffers serve one inference at a time. No torch here.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from rexport.errors import CompatibilityError, InputError, RexportError
from rexport.runtime import cuda
from rexport.runtime.backends.base import Backend
from rexport.runtime.engine_sidecar import EngineSidecar
from rexport.runtime.trt_compat import load_tensorrt


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: str | os.PathLike, *, sidecar: EngineSidecar | None = None, device: int = 0):
        self._lock = threading.Lock()
        self._closed = True  # until everything below exists; close() is safe either way
        self._buffers: dict[str, cuda.DeviceBuffer] = {}
        self._stream: cuda.Stream | None = None
        self._context = self._engine = self._runtime = None
        self.path = Path(engine)
        if not self.path.is_file():
            raise InputError(f"engine {self.path} does not exist")
        compat = load_tensorrt("run TensorRT engines")
        self.sidecar = sidecar if sidecar is not None else EngineSidecar.for_engine(self.path)
        self.gpu = cuda.gpu_info(device)
        if device:
            cuda.check(cuda.cudart().cudaSetDevice(device), "cudaSetDevice")
        self.sidecar.check_compatible(self.path, compat.version, self.gpu.compute_capability, self.gpu.name)
        self.info = self.sidecar.model
        self.device = device
        self._compat = compat
        trt = compat.trt

        self._logger = compat.make_logger()
        self._runtime = trt.Runtime(self._logger)
        if self.sidecar.version_compatible:
            self._runtime.engine_host_code_allowed = True  # version-compatible plans carry their own code
        self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self._engine is None:
            raise CompatibilityError(f"TensorRT could not load {self.path.name} ({self._logger.explain()}); rebuild "
                                     f"it with `{self.sidecar.rebuild_command or 'rexport trt MODEL.onnx'}` here")
        self._discover_io(trt)
        try:
            self._allocate()
        except BaseException:
            self.close()
            raise
        self._closed = False

    # -- setup ---------------------------------------------------------------------------------
    def _discover_io(self, trt) -> None:
        engine = self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if n not in inputs]
        if len(inputs) != 1 or not self.output_names:
            raise InputError(f"expected an engine with one image input and an output, found inputs {inputs} "
                             f"and outputs {self.output_names}")
        self.input_name = inputs[0]
        wanted = self.info.output_name if self.info else None
        self.output_name = wanted if wanted in self.output_names else self.output_names[0]
        self.input_shape = tuple(int(d) for d in engine.get_tensor_shape(self.input_name))
        if any(d < 0 for d in self.input_shape):
            lo, opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
            self.profile = tuple(tuple(int(d) for d in s) for s in (lo, opt, hi))
        else:
            self.profile = (self.input_shape,) * 3
        self.min_batch, self.max_batch = self.profile[0][0], self.profile[2][0]
        self.dtypes = {n: self._compat.numpy_dtype(engine.get_tensor_dtype(n)) for n in names}
        self.device_memory = self._compat.device_memory_size(engine)

    def _allocate(self) -> None:
        """One context, one stream, buffers for the largest batch; addresses set once."""
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise cuda.CudaError(f"TensorRT could not create an execution context ({self._logger.explain()})")
        self._stream = cuda.Stream()
        biggest = self.profile[2]
        if not self._context.set_input_shape(self.input_name, biggest):
            raise RexportError(f"the engine rejects its own max profile shape {biggest} ({self._logger.explain()})")
        shapes = {self.input_name: biggest}
        shapes.update({n: tuple(int(d) for d in self._context.get_tensor_shape(n)) for n in self.output_names})
        for name, shape in shapes.items():
            buffer = cuda.DeviceBuffer(int(np.prod(shape)) * self.dtypes[name].itemsize)
            self._buffers[name] = buffer
            self._context.set_tensor_address(name, buffer.ptr)

    # -- running -------------------------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile
        if len(shape) != len(lo):
            raise InputError(f"input has {len(shape)} dimensions but the engine takes {len(lo)}")
        if not lo[0] <= shape[0] <= hi[0]:
            raise InputError(f"batch {shape[0]} is outside this engine's profile ({lo[0]} to {hi[0]}); split larger "
                             "batches (Predictor does) or rebuild with a wider --batch")
        for axis in range(1, len(shape)):
            if not lo[axis] <= shape[axis] <= hi[axis]:
                raise InputError(f"input dimension {axis} is {shape[axis]} but the engine takes {lo[axis]} to "
                                 f"{hi[axis]}")

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            if self._closed:
                raise RexportError("this TensorRT backend is closed; create a new one")
            self._check_shape(x.shape)
            x = np.ascontiguousarray(x, dtype=self.dtypes[self.input_name])
            context, stream = self._context, self._stream
            since = len(self._logger.messages)
            if self.device:
                cuda.check(cuda.cudart().cudaSetDevice(self.device), "cudaSetDevice")
            if not context.set_input_shape(self.input_name, x.shape):
                raise InputError(f"the engine rejects input shape {x.shape} ({self._logger.explain(since)})")
            outputs = {n: np.empty(tuple(int(d) for d in context.get_tensor_shape(n)), self.dtypes[n])
                       for n in self.output_names}
            self._buffers[self.input_name].copy_from(x, stream)
            if not context.execute_async_v3(stream.handle):
                stream.synchronize()
                raise RexportError(f"TensorRT inference failed ({self._logger.explain(since)})")
            for name, array in outputs.items():
                self._buffers[name].copy_to(array, stream)
            stream.synchronize()
        return outputs[self.output_name].astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the device buffers and the stream; later `run` calls fail with a clear error."""
        with self._lock:
            self._closed = True
            buffers, self._buffers = self._buffers, {}
            for buffer in buffers.values():
                buffer.free()
            if self._stream is not None:
                self._stream.destroy()
                self._stream = None
            self._context = None  # context before engine before runtime: TensorRT's destruction order
            self._engine = None
            self._runtime = None
