"""rexport: ResNet-family classifiers from PyTorch to edge devices.

Packages follow the data flow:
  rexport.exporter     checkpoint -> nn.Module -> ONNX; ONNX -> TensorRT engine   (torch for ONNX)
  rexport.calibration  observers, Q/DQ INT8 and FP16 ONNX                       (onnx + onnxruntime)
  rexport.runtime      load + preprocess + datasets + run + compare + bench      (numpy + a backend)
"""

__version__ = "0.1.0"

PACKAGES = ("rexport", "rexport.exporter", "rexport.calibration", "rexport.runtime", "rexport.serving")


def package_sources() -> dict[str, str]:
    """Package -> the checkout (or site-packages) it was imported from: the folder that holds
    its source folder. The packages map onto top-level folders (`rexport.runtime` -> `runtime/`),
    so an editable install in one checkout and `import rexport` in another can mix two trees;
    `rexport doctor` and the tests check that they all name one."""
    import importlib
    from pathlib import Path

    return {name: str(Path(importlib.import_module(name).__file__).resolve().parent.parent) for name in PACKAGES}
