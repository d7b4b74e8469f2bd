"""Inference backends behind one small interface (`Backend`): onnxruntime and tensorrt."""
