"""The torch-free side: load a model, preprocess images, run, compare, benchmark.

    from rexport.runtime import load
    model = load("bundle/")            # bundle dir or .tar.gz, bare .onnx, or .engine + sidecar
    print(model.predict("cat.jpg"))

Needs only numpy, Pillow and one inference backend (onnxruntime or tensorrt); nothing here
imports torch, onnx or tensorrt until a function that needs one is called.
"""

from rexport.runtime.predictor import Prediction, Predictor, load

__all__ = ["load", "Predictor", "Prediction"]
