"""checkpoint -> nn.Module -> ONNX (torch); ONNX -> TensorRT engine (tensorrt, no torch).

    from rexport.exporter import build_model, load_checkpoint, load_model, export_onnx, ExportConfig
    from rexport.exporter import build_engine, BuildConfig        # TensorRT: no torch needed

The ONNX side needs the `export` extra (torch, onnx), the engine side the `trt` extra.
"""

from __future__ import annotations

import importlib

# The torch.onnx exporters and the opsets each supports (torch-free, for the CLI's choices).
# Opset 17 is read by TensorRT 8.6 through 11 and every current ONNX Runtime.
DEFAULT_OPSET = 17
EXPORTERS = {"torchscript": (13, 20), "dynamo": (18, 23)}

_EXPORTS = {
    "build_model": "zoo", "list_models": "zoo", "get_arch": "zoo", "count_parameters": "zoo",
    "load_checkpoint": "checkpoint", "load_model": "checkpoint", "Checkpoint": "checkpoint",
    "LoadedModel": "checkpoint",
    "export_onnx": "onnx_export", "ExportConfig": "onnx_export", "ParityConfig": "onnx_export",
    "ExportResult": "onnx_export", "check_parity": "onnx_export",
    "build_engine": "tensorrt", "BuildConfig": "tensorrt", "BuildResult": "tensorrt",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import lazily, so `rexport.exporter.<tensorrt module>` works on devices without torch."""
    if name in _EXPORTS:
        if _EXPORTS[name] != "tensorrt":
            from rexport.errors import require

            require("torch", "export", "export PyTorch models")
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
