"""ONNX -> TensorRT engine + sidecar, validated against the FP32 ONNX where the engine can run.
Needs tensorrt (or tensorrt_rtx), onnx, and cuda-python to run engines; never torch.

    config.py      BuildConfig: what `rexport trt` is asked (flags map one to one onto its fields)
    precision.py   read the ONNX, plan how the engine gets its precision, make the ONNX to parse
    network.py     parser errors per node, network inputs, optimization profile shapes
    caches.py      timing cache; TensorRT 10's legacy INT8 calibrator and its calibration cache
    build.py       build_engine(): options check, target GPUs, the build, the sidecar, the bundle
    validation.py  the engine against ONNX Runtime on the same inputs, with gates

Every TensorRT flavour and version difference goes through rexport.runtime.trt_compat.
"""

from rexport.exporter.tensorrt.build import BuildResult, build_engine, check_options, target_gpus
from rexport.exporter.tensorrt.config import (BuildConfig, default_engine_name, parse_bytes,
                                              parse_compute_capabilities, parse_shapes)

__all__ = ["BuildConfig", "BuildResult", "build_engine", "check_options", "default_engine_name",
           "parse_bytes", "parse_compute_capabilities", "parse_shapes", "target_gpus"]
