"""Inference backends behind one small interface (`Backend`): onnxruntime, openvino and tensorrt;
`choice` says which one runs a model file."""
