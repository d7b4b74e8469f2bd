"""Native TensorRT backend: a serialized engine + its sidecar, run through cuda-python, with
TensorRT or TensorRT for RTX (the flavour the sidecar names).

    sidecar check (flavour, version, GPU compute capability)       <- before reading the plan
    -> the plan header's own validity check, where the flavour has one (RTX)
    -> trt.Runtime.deserialize_cuda_engine
    -> one execution context (RTX: with the runtime cache beside the engine, so the kernels it
       compiles on first use are compiled once per machine), one stream, device buffers sized
       for the profile's max batch
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

from rexport.console import log
from rexport.errors import CompatibilityError, InputError, MissingDependency, RexportError
from rexport.files import atomic_output
from rexport.onnx_file import check_model_path
from rexport.runtime import cuda
from rexport.runtime.backends.base import Backend
from rexport.runtime.engine_sidecar import EngineSidecar
from rexport.runtime.metadata import GraphIO
from rexport.runtime.trt_compat import FLAVOURS, TensorRT, installed_flavours, load_tensorrt, product_name


def runtime_cache_path(engine: str | os.PathLike) -> Path:
    """Where TensorRT for RTX keeps the kernels it compiled for `engine` on this machine."""
    return Path(f"{os.fspath(engine)}.runtime-cache")


def load_flavour(engine: Path, sidecar: EngineSidecar) -> TensorRT:
    """The TensorRT the engine was built with, or one sentence saying it is not here."""
    try:
        return load_tensorrt("run TensorRT engines", sidecar.flavour)
    except MissingDependency as missing:
        others = [f for f in installed_flavours() if f != sidecar.flavour]
        if not others:
            raise
        wanted = FLAVOURS[sidecar.flavour]
        here = product_name(others[0], load_tensorrt(flavour=others[0]).version)
        raise CompatibilityError(
            f"{engine.name} was built with {sidecar.product} for {sidecar.describe_target()}, but this machine has "
            f"{here} and not {wanted.title}: {wanted.install_hint.removeprefix('run: ')}, or rebuild it here with "
            f"`{sidecar.rebuild_here()}`") from missing


class TensorRTBackend(Backend):
    name = "tensorrt"

    def __init__(self, engine: str | os.PathLike, *, sidecar: EngineSidecar | None = None, device: int = 0,
                 runtime_cache: bool | str | os.PathLike = True):
        """runtime_cache (TensorRT for RTX): True keeps it beside the engine (ENGINE.runtime-cache),
        a path keeps it there, False compiles the kernels again in every process."""
        self._lock = threading.Lock()
        self._closed = True  # until everything below exists; close() is safe either way
        self._buffers: dict[str, cuda.DeviceBuffer] = {}
        self._stream: cuda.Stream | None = None
        self._context = self._engine = self._runtime = self._runtime_cache = None
        self._cache_saved_at = 0  # runs when the cache was last saved: nothing to save before the first
        self.runs = 0
        self.path = check_model_path(engine, "engine")  # exists, a regular file (a FIFO would hang the read)
        self.sidecar = sidecar if sidecar is not None else EngineSidecar.for_engine(self.path)
        compat = load_flavour(self.path, self.sidecar)
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
        plan = self.path.read_bytes()
        rebuild = f"rebuild it with `{self.sidecar.rebuild_command or 'rexport trt MODEL.onnx'}` here"
        invalid = compat.engine_invalidity(self._runtime, plan)
        if invalid is not None:
            raise CompatibilityError(f"{compat.name} cannot load {self.path.name} on this machine ({invalid}); {rebuild}")
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise CompatibilityError(f"{compat.name} could not load {self.path.name} ({self._logger.explain()}); "
                                     f"{rebuild}")
        self._discover_io(trt)
        self.runtime_cache_path = None
        if runtime_cache and compat.runtime_cache_supported():
            self.runtime_cache_path = runtime_cache_path(self.path) if runtime_cache is True else Path(runtime_cache)
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
        if self.info is not None:  # the sidecar's description must fit the engine it describes
            def io(name: str) -> GraphIO:
                return GraphIO(name, tuple(int(d) for d in engine.get_tensor_shape(name)),
                               np.dtype(self.dtypes[name]).name)

            self.info.check_graph([io(self.input_name)], [io(n) for n in self.output_names],
                                  where=f"{self.path} (with its sidecar)", check_batch=False,
                                  fix="rebuild the engine from a rexport ONNX with `rexport trt`")
        self.device_memory = self._compat.device_memory_size(engine)

    def _allocate(self) -> None:
        """One context, one stream, buffers for the largest batch; addresses set once."""
        if self.runtime_cache_path is not None:
            self._context = self._engine.create_execution_context(self._runtime_config())
        else:
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

    def _runtime_config(self):
        """RTX: an IRuntimeConfig whose runtime cache starts from the file beside the engine."""
        config = self._engine.create_runtime_config()
        cache = config.create_runtime_cache()
        path = self.runtime_cache_path
        if path.is_file():
            if cache.deserialize(path.read_bytes()):
                log.info("using the runtime cache %s (kernels compiled earlier on this machine)", path)
            else:
                log.warning("warning: %s is not a runtime cache this TensorRT for RTX can use; it will be replaced",
                            path)
        config.set_runtime_cache(cache)
        self._runtime_cache = cache
        return config

    def save_runtime_cache(self) -> Path | None:
        """Write the kernels compiled so far beside the engine (RTX); done after the first run and on close()."""
        if self._runtime_cache is None or self._cache_saved_at == self.runs:
            return None
        try:
            with atomic_output(self.runtime_cache_path, overwrite=True) as tmp:
                tmp.write_bytes(bytes(memoryview(self._runtime_cache.serialize())))
        except (OSError, RexportError) as e:  # a read-only bundle still runs; it compiles again next time
            log.warning("warning: could not save the runtime cache %s (%s); kernels will be compiled again "
                        "next time", self.runtime_cache_path, e)
            self._runtime_cache = None
            return None
        self._cache_saved_at = self.runs
        return self.runtime_cache_path

    # -- running -------------------------------------------------------------------------------
    def _check_shape(self, shape: tuple[int, ...]) -> None:
        lo, _, hi = self.profile
        if len(shape) != len(lo):
            raise InputError(f"input has {len(shape)} dimensions but the engine takes {len(lo)}")
        if not lo[0] <= shape[0] <= hi[0]:
            raise InputError(f"batch {shape[0]} is outside this engine's profile ({lo[0]} to {hi[0]}); split larger "
                             "batches (Predictor does) or rebuild it with a wider batch range "
                             "(`rexport trt --batch MIN:OPT:MAX`)")
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
            since = self._logger.mark()
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
            self.runs += 1
            if self.runs == 1:
                self.save_runtime_cache()
        return outputs[self.output_name].astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the device buffers and the stream; later `run` calls fail with a clear error."""
        with self._lock:
            if not self._closed:
                self.save_runtime_cache()
            self._closed = True
            self._runtime_cache = None
            buffers, self._buffers = self._buffers, {}
            for buffer in buffers.values():
                buffer.free()
            if self._stream is not None:
                self._stream.destroy()
                self._stream = None
            self._context = None  # context before engine before runtime: TensorRT's destruction order
            self._engine = None
            self._runtime = None
