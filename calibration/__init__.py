"""FP16 and calibrated INT8 (Q/DQ) ONNX from an FP32 ONNX; torch-free (onnx + onnxruntime)."""
