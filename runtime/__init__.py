"""The torch-free side: load a model, preprocess images, run, compare, benchmark.

Needs only numpy, Pillow and one inference backend (onnxruntime or tensorrt); nothing here
imports torch, onnx or tensorrt until a function that needs one is called.
"""
