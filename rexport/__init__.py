"""rexport: ResNet-family classifiers from PyTorch to edge devices.

Packages follow the data flow:
  rexport.exporter     checkpoint -> nn.Module -> ONNX; ONNX -> TensorRT engine   (torch for ONNX)
  rexport.calibration  calibration data, observers, Q/DQ INT8 and FP16 ONNX     (onnx + onnxruntime)
  rexport.runtime      load + preprocess + run + compare + bench                 (numpy + a backend)
"""

__version__ = "0.1.0"
