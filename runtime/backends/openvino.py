"""OpenVINO backend: the bundle's ONNX files (FP32, FP16, INT8 for either target) on Intel CPUs,
and passed through to Intel iGPUs ("GPU") and NPUs ("NPU").

OpenVINO reads ONNX itself, so there is no conversion step. The input's batch dimension is
reshaped to the model's batch range; the metadata rexport writes into the ONNX (`ModelInfo`)
comes back through OpenVINO's runtime info, so this backend needs neither `onnx` nor torch.

- `hint`: OpenVINO's performance hint, "latency" (one request at a time, the default) or
  "throughput" (more streams, for many requests in parallel).
- `threads`: OpenVINO's INFERENCE_NUM_THREADS (default: OpenVINO's choice).
- `cache_dir`: OpenVINO's model cache: a reload of the same file skips compilation.
- Precision: on CPUs OpenVINO runs float layers in bf16 where the CPU has it (AVX-512 BF16, AMX)
  unless told otherwise; rexport asks for f32 (INFERENCE_PRECISION_HINT), so a model runs at the
  precision its file says, and parity gates mean the same on every backend.

A compiled model is shared; OpenVINO's infer requests are not thread-safe, so each thread gets
its own.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from rexport.errors import InputError, RexportError, require
from rexport.onnx_file import check_model_path, explain_unloadable
from rexport.runtime.backends.base import Backend
from rexport.runtime.metadata import GraphIO, ModelInfo

HINTS = {"latency": "LATENCY", "throughput": "THROUGHPUT"}


def _openvino():
    return require("openvino", "openvino", "run models with OpenVINO")


def _said(e: Exception) -> str:
    """OpenVINO's message on one line, cut short (its errors carry source paths and stack lines)."""
    return " ".join(str(e).split())[:300]


class OpenVinoBackend(Backend):
    name = "openvino"

    def __init__(self, model: str | os.PathLike, *, device: str = "CPU", threads: int | None = None,
                 hint: str = "latency", cache_dir: str | os.PathLike | None = None,
                 batch: tuple[int, int] | None = None):
        """`batch`: the batch range to compile for (default: the one in rexport's metadata)."""
        ov = _openvino()
        if hint not in HINTS:
            raise InputError(f"hint must be one of {', '.join(HINTS)}, not {hint!r}")
        path = check_model_path(model)
        core = ov.Core()
        device = device.upper()
        if device.split(".")[0] not in core.available_devices and device not in core.available_devices:
            raise InputError(f"OpenVINO here has no device {device!r} (available: {', '.join(core.available_devices)})")
        try:
            read = core.read_model(str(path))
        except Exception as e:  # OpenVINO raises plain RuntimeErrors for files it cannot read
            reason = explain_unloadable(path, str(e))
            if reason:
                raise InputError(reason) from None
            raise RexportError(f"OpenVINO cannot load {path}: {_said(e)}") from None
        if len(read.inputs) != 1:
            raise InputError(f"expected a model with one image input, found {len(read.inputs)} inputs")
        self._metadata = _metadata(read)
        static, dynamic = (), read.inputs[0].get_partial_shape()[0].is_dynamic
        info = ModelInfo.from_onnx(self._metadata, None, str(path))
        if batch is None and info is not None:  # rexport's ONNX: its batch range
            batch, static = (info.batch.min, info.batch.max), (info.batch.min, info.batch.opt)
        if batch is not None and dynamic:
            shape = read.inputs[0].get_partial_shape()
            shape[0] = ov.Dimension(int(batch[0]), int(batch[1]))
            read.reshape({read.inputs[0].get_any_name(): shape})
        config = {"PERFORMANCE_HINT": HINTS[hint]}
        if device == "CPU":
            config["INFERENCE_PRECISION_HINT"] = "f32"
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        if cache_dir is not None:
            Path(cache_dir).mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache_dir)})
        self._core, self._model, self._config, self._path = core, read, config, path
        self.device = device
        self.name = f"openvino {device}"
        self._lock = threading.Lock()
        self._compiled = {None: self._compile(None)}  # batch size -> compiled model; None: any in range
        self._static = {int(n) for n in static} if dynamic else set()
        self._graph_io = _graph_io(read)
        self.input_name = self._graph_io[0][0].name
        self.output_name = self._graph_io[1][0].name
        self.input_shape = tuple(-1 if d is None else d for d in self._graph_io[0][0].shape)
        self.min_batch, self.max_batch = batch if batch is not None else (None, None)
        self._local = threading.local()

    def _compile(self, size: int | None):
        """The model compiled for one static batch size (faster in OpenVINO than a range), or for
        the whole range (size None)."""
        model = self._model
        if size is not None:
            model = model.clone()
            shape = model.inputs[0].get_partial_shape()
            shape[0] = size
            model.reshape({model.inputs[0].get_any_name(): shape})
        try:
            return self._core.compile_model(model, self.device, self._config)
        except Exception as e:
            raise RexportError(f"OpenVINO cannot compile {self._path} for {self.device}: {_said(e)}") from None

    def _request(self, size: int):
        """This thread's infer request for a batch of `size`: the static model for the sizes the
        Predictor sends most (the range's minimum, one image, and its preferred size), compiled on
        first use; the range model for the others."""
        key = size if size in self._static else None
        if key not in self._compiled:
            with self._lock:
                if key not in self._compiled:
                    self._compiled[key] = self._compile(key)
        requests = self._local.__dict__.setdefault("requests", {})
        if key not in requests:
            requests[key] = self._compiled[key].create_infer_request()
        return requests[key]

    def graph_io(self) -> tuple[list[GraphIO], list[GraphIO]]:
        """The model's inputs and outputs, for ModelInfo.check_graph."""
        return self._graph_io

    @property
    def metadata(self) -> dict[str, str]:
        return self._metadata

    def _run(self, x: np.ndarray) -> np.ndarray:
        if self.max_batch is not None and not self.min_batch <= len(x) <= self.max_batch:
            raise InputError(f"this model takes batches of {self.min_batch} to {self.max_batch}, got {len(x)}")
        request = self._request(len(x))
        try:
            request.infer({0: x}, share_inputs=True)  # x is ours until infer returns: no copy
        except RuntimeError as e:
            raise InputError(f"OpenVINO ({self.device}) could not run the model on a {'x'.join(map(str, x.shape))} "
                             f"input ({_said(e)}); re-export it with `rexport onnx`") from None
        return np.array(request.get_output_tensor(0).data, copy=True)

    @property
    def compiled(self):
        """The model compiled for the whole batch range."""
        return self._compiled[None]

    def close(self) -> None:
        self._local = threading.local()
        self._compiled = {}


def _metadata(model) -> dict[str, str]:
    """The ONNX file's metadata_props, which OpenVINO keeps under the runtime info "framework"."""
    if not model.has_rt_info(["framework"]):
        return {}
    keys = model.get_rt_info()["framework"]
    return {k: model.get_rt_info(["framework", k]).astype(str) for k in keys}


def _graph_io(model) -> tuple[list[GraphIO], list[GraphIO]]:
    def describe(port) -> GraphIO:
        shape = port.get_partial_shape()
        dims = None if shape.rank.is_dynamic else tuple(None if d.is_dynamic else d.get_length() for d in shape)
        return GraphIO(port.get_any_name(), dims, port.get_element_type().to_dtype().name)

    return [describe(i) for i in model.inputs], [describe(o) for o in model.outputs]
