"""ONNX Runtime backend: CPU, CUDA or TensorRT execution providers.

Providers are chosen automatically (TensorRT EP, CUDA EP, then CPU, as this onnxruntime build
has them) or by name. On a GPU provider, inputs and outputs go through IO binding so the
output is allocated on the device and copied back once. `InferenceSession.run` is thread-safe,
so one backend serves many threads.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np

from rexport.console import log
from rexport.errors import InputError, RexportError, require
from rexport.onnx_file import check_model_path, explain_unloadable
from rexport.runtime.backends.base import Backend
from rexport.runtime.metadata import GraphIO

# What "auto" tries, best first; only those this onnxruntime build has are used.
AUTO_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider"}
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(bfloat16)": "bfloat16", "tensor(int64)": "int64", "tensor(int32)": "int32",
             "tensor(int8)": "int8", "tensor(uint8)": "uint8", "tensor(bool)": "bool"}


def resolve_providers(providers: str | list[str] | tuple[str, ...] = "auto") -> list[str]:
    ort = require("onnxruntime", "ort", "run ONNX models")
    available = ort.get_available_providers()
    if providers == "auto":
        return [p for p in AUTO_PROVIDERS if p in available] or list(available)
    names = [p.strip() for p in providers.split(",")] if isinstance(providers, str) else list(providers)
    resolved = [PROVIDER_ALIASES.get(p.lower(), p) for p in names]
    missing = [p for p in resolved if p not in available]
    if missing:
        raise InputError(f"onnxruntime here has no {', '.join(missing)} (available: {', '.join(available)}); "
                         "for GPUs install rexport[gpu] (onnxruntime-gpu) on a machine with NVIDIA drivers")
    return resolved


def _provider_options(name: str, device: int, model: str | os.PathLike | bytes) -> dict:
    if name == "CUDAExecutionProvider":
        return {"device_id": device}
    if name == "TensorrtExecutionProvider":  # engines are cached beside the model: builds take minutes
        cache = (Path(model).parent if not isinstance(model, bytes) else Path.cwd()) / ".ort-trt-cache"
        return {"device_id": device, "trt_engine_cache_enable": True, "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True, "trt_timing_cache_path": str(cache)}
    return {}


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"

    def __init__(self, model: str | os.PathLike | bytes, *, providers: str | list[str] = "auto",
                 threads: int | None = None, device: int = 0):
        ort = require("onnxruntime", "ort", "run ONNX models")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only; we report what matters ourselves
        if threads:
            options.intra_op_num_threads = int(threads)
        self.providers = resolve_providers(providers)
        self.device = device
        if not isinstance(model, bytes):  # a FIFO or device would hang onnxruntime; an empty file misleads it
            model = check_model_path(model)
        self._where = "the model" if isinstance(model, bytes) else str(model)
        try:
            source = model if isinstance(model, bytes) else os.fspath(model)
            # onnxruntime prints a four-line "EP Error" banner to stdout when creating a session fails with
            # a ValueError or RuntimeError (then retries on its fallback providers): the failure is reported
            # below in one line, a fallback that worked in the log
            with contextlib.redirect_stdout(io.StringIO()) as printed:
                self.session = ort.InferenceSession(
                    source, options, providers=[(p, _provider_options(p, device, model)) for p in self.providers])
            banner = [line for line in printed.getvalue().splitlines() if line.startswith("EP Error")]
            if banner:
                log.info("onnxruntime fell back to other providers: %s", banner[0])
        except Exception as e:  # onnxruntime raises its own exception types per failure
            message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            if isinstance(model, bytes):
                raise RexportError(f"onnxruntime cannot load the model: {message}") from None
            reason = explain_unloadable(model, str(e))  # the file's fault, said plainly, when we can tell
            if reason:
                raise InputError(reason) from None
            raise RexportError(f"onnxruntime cannot load {model}: {message}") from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise InputError(f"expected a model with one image input, found {len(inputs)} inputs")
        self.input_name = inputs[0].name
        self.output_name = outputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else -1 for d in inputs[0].shape)
        active = self.session.get_providers()
        self.on_gpu = bool(active) and active[0] in GPU_PROVIDERS
        self.name = f"onnxruntime {active[0].replace('ExecutionProvider', '')}" if active else "onnxruntime"

    def graph_io(self) -> tuple[list[GraphIO], list[GraphIO]]:
        """The session's inputs and outputs, for ModelInfo.check_graph."""
        def describe(arg) -> GraphIO:
            shape = tuple(d if isinstance(d, int) else None for d in arg.shape) if arg.shape is not None else None
            return GraphIO(arg.name, shape, ORT_TYPES.get(arg.type))

        try:
            return [describe(i) for i in self.session.get_inputs()], [describe(o) for o in self.session.get_outputs()]
        except UnicodeDecodeError as e:  # a name or symbolic dimension that is not UTF-8 (onnxruntime does not check)
            raise InputError(f"{self._where}: a tensor name or dimension in its graph is not UTF-8 text (byte "
                             f"{e.start}: {e.reason}); the file was damaged: export or copy it again") from None

    @property
    def metadata(self) -> dict[str, str]:
        try:
            return dict(self.session.get_modelmeta().custom_metadata_map)
        except UnicodeDecodeError as e:  # onnxruntime hands the strings over as UTF-8, unchecked
            raise InputError(f"{self._where}: its metadata (metadata_props) is not UTF-8 text (byte {e.start}: "
                             f"{e.reason}); the file was damaged: export or copy it again") from None

    def _run(self, x: np.ndarray) -> np.ndarray:
        try:
            if not self.on_gpu:
                return self.session.run([self.output_name], {self.input_name: x})[0]
            binding = self.session.io_binding()  # one per call: bindings are not shared between threads
            binding.bind_cpu_input(self.input_name, x)
            binding.bind_output(self.output_name, "cuda", self.device)
            self.session.run_with_iobinding(binding)
            return binding.copy_outputs_to_cpu()[0]
        except Exception as e:  # ONNX Runtime's own errors: a graph it loads but cannot run on this input
            if not type(e).__module__.startswith("onnxruntime"):
                raise
            message = " ".join(str(e).split())
            raise InputError(f"ONNX Runtime ({self.name}) could not run the model on a {'x'.join(map(str, x.shape))} "
                             f"input ({message}); the model file is broken or not a classifier: re-export it "
                             "with `rexport onnx`") from None
