"""FP16 and calibrated INT8 (Q/DQ) ONNX from an FP32 ONNX. Torch-free: needs onnx + onnxruntime.

    from rexport.calibration import quantize, QuantizeConfig, to_fp16
    quantize("model.onnx", "model.int8.onnx", QuantizeConfig(calib_data="images/", calib_method="entropy",
                                                             target="trt"))
    to_fp16("model.onnx", "model.fp16.onnx")
"""

from rexport.calibration.fp16 import Fp16Result, to_fp16
from rexport.calibration.int8 import QuantizeConfig, QuantizeResult, quantize

__all__ = ["Fp16Result", "to_fp16", "QuantizeConfig", "QuantizeResult", "quantize"]
