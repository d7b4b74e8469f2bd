"""PyTorch as a backend: the reference every exported form is compared with.

It runs an `nn.Module` behind the same `Backend` interface as the inference engines, so export
parity, `validate` and the bundle's reference logits all compare backends the one way
(`Backend.run` checks the inputs; `compare` scores the outputs). Needs torch (the `export`
extra); imported only when a PyTorch reference is asked for, so the runtime stays torch-free.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rexport.errors import InputError, require
from rexport.runtime.backends.base import Backend
from rexport.runtime.metadata import ModelInfo


class PyTorchBackend(Backend):
    """An nn.Module in eval mode on the CPU, run under `torch.inference_mode`."""

    def __init__(self, model, info: ModelInfo, name: str = "PyTorch FP32"):
        self.torch = require("torch", "export", "use the PyTorch model as the reference")
        self.model = model.eval()
        self.name = name
        self.input_name, self.output_name = info.input_name, info.output_name
        self.input_shape = (-1, *info.input_shape)

    def _run(self, x: np.ndarray) -> np.ndarray:
        with self.torch.inference_mode():
            return self.model(self.torch.from_numpy(x)).float().numpy()

    @classmethod
    def from_checkpoint(cls, checkpoint: str | os.PathLike, info: ModelInfo,
                        unsafe_pickle: bool = False) -> PyTorchBackend:
        """The model `info` describes (its arch, classes and shortcut), with the checkpoint's weights."""
        from rexport.exporter import load_model  # says which extra to install when torch is missing

        if not info.arch:
            raise InputError("the model does not record its arch, so the checkpoint cannot be rebuilt; "
                             "validate against the FP32 ONNX instead")
        loaded = load_model(checkpoint, info.arch, num_classes=info.num_classes, unsafe_pickle=unsafe_pickle,
                            shortcut=info.arch_options.get("shortcut"))
        return cls(loaded.model, info, f"PyTorch FP32 ({Path(checkpoint).name})")
