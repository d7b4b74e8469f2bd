"""How an engine gets its precision: read the ONNX (precision from metadata_props, Q/DQ from the
graph), plan (build as given, convert to FP16 with rexport.calibration.to_fp16, calibrate a
trt-target Q/DQ ONNX with rexport.calibration.quantize, or on TensorRT 10.x only BuilderFlag.FP16 /
a legacy calibrator), and make the ONNX TensorRT will parse."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from rexport.console import log
from rexport.errors import InputError, field_error, require
from rexport.exporter.tensorrt.config import BuildConfig
from rexport.files import sha256_file
from rexport.onnx_file import check_external_data, check_finite, check_model_path, parse_onnx
from rexport.runtime.metadata import ModelInfo, Precision
from rexport.runtime.trt_compat import TensorRT

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")


@dataclass(frozen=True)
class OnnxSummary:
    path: Path
    sha256: str
    precision: Precision
    has_qdq: bool
    info: ModelInfo | None


def read_onnx(path: str | os.PathLike) -> OnnxSummary:
    """Precision (metadata_props `precision`, else from the graph), Q/DQ presence and ModelInfo."""
    onnx = require("onnx", "trt", "read ONNX models for TensorRT")
    path = check_model_path(path)
    model = parse_onnx(path)  # without its external data: TensorRT's parser reads that itself
    check_external_data(model, path)
    check_finite(model, str(path))
    info = ModelInfo.read(model, str(path))
    props = {p.key: p.value for p in model.metadata_props}
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    recorded = props.get("precision", "").strip('"')
    if recorded:
        precision = Precision.parse(recorded, f"{path.name}: the recorded precision")
    else:
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        precision = Precision.int8 if has_qdq else Precision.fp16 if fp16 else Precision.fp32
    return OnnxSummary(path, sha256_file(path), precision, has_qdq, info)


class Route(str, Enum):
    """How the engine gets its precision."""

    AS_GIVEN = "as given"  # the ONNX already is what the engine computes in
    TO_FP16 = "to_fp16"  # rexport converts an FP32 ONNX to FP16 first
    QUANTIZE = "quantize"  # rexport calibrates an FP32 ONNX to a trt-target Q/DQ ONNX first
    FP16_FLAG = "BuilderFlag.FP16"  # TensorRT 10.x picks FP16 kernels in an FP32 network
    LEGACY_CALIBRATOR = "legacy calibrator"  # TensorRT 10.x calibrates an FP32 network itself

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class PrecisionPlan:
    how: Route
    precision: Precision  # what the engine computes in
    typing: str  # "strong", "weak" or "default" (see TensorRT.network_flags)
    fp16_flag: bool = False
    int8_flag: bool = False

    def describe(self) -> str:
        flags = [f for f, on in (("FP16", self.fp16_flag), ("INT8", self.int8_flag)) if on]
        typing = {"strong": "strongly typed", "weak": "weakly typed", "default": "default typing"}[self.typing]
        return f"{self.how}, {typing}" + (f", BuilderFlag {'+'.join(flags)}" if flags else "")


def plan_precision(source: OnnxSummary, config: BuildConfig, compat: TensorRT) -> PrecisionPlan:
    """Decide how the engine gets its precision; fails before any long work if this TensorRT can't."""
    name, src, want = source.path.name, source.precision, config.precision
    if want == Precision.fp16:
        if src in (Precision.int8, Precision.mixed):
            raise field_error(config, f"{name} is already {src} (Q/DQ); precision='fp16' needs an FP32 or FP16 ONNX",
                              "precision")
        how = Route.AS_GIVEN if src == Precision.fp16 else Route.FP16_FLAG if config.fp16_flag else Route.TO_FP16
        if config.fp16_flag and how != Route.FP16_FLAG:
            raise field_error(config, f"fp16_flag builds an FP32 ONNX with TensorRT's FP16 flag; {name} is already "
                              "FP16", "fp16_flag")
        precision = Precision.fp16
    elif want == Precision.int8:
        if src == Precision.fp16:
            raise InputError(f"{name} is FP16; calibrate INT8 from the FP32 ONNX instead")
        how = Route.AS_GIVEN if src in (Precision.int8, Precision.mixed) else Route.LEGACY_CALIBRATOR if config.legacy_calibrator else Route.QUANTIZE
        if config.legacy_calibrator and how != Route.LEGACY_CALIBRATOR:
            raise field_error(config, f"legacy_calibrator calibrates an FP32 ONNX; {name} is already {src}",
                              "legacy_calibrator")
        precision = src if how == Route.AS_GIVEN else Precision.int8
    else:
        how, precision = Route.AS_GIVEN, src

    if how == Route.FP16_FLAG:
        compat.require_precision_flag("FP16", "leave out fp16_flag: rexport converts the ONNX to FP16 instead",
                                      ("fp16_flag",))
    if how == Route.LEGACY_CALIBRATOR:
        compat.calibrator_base(config.calib_method)  # raises on TensorRT 11
    has_qdq = source.has_qdq or how == Route.QUANTIZE
    typed_onnx = has_qdq or (precision == Precision.fp16 and how in (Route.AS_GIVEN, Route.TO_FP16))
    if how in (Route.FP16_FLAG, Route.LEGACY_CALIBRATOR) or config.weakly_typed:
        typing = "weak"
    else:
        typing = "strong" if typed_onnx else "default"
    plan = PrecisionPlan(how, precision, typing,
                         fp16_flag=how == Route.FP16_FLAG or (typing == "weak" and precision == Precision.fp16),
                         int8_flag=how == Route.LEGACY_CALIBRATOR or (typing == "weak" and has_qdq))
    compat.network_flags(plan.typing)  # weak typing on 11 fails here, before any conversion
    return plan


def prepare_onnx(source: OnnxSummary, plan: PrecisionPlan, config: BuildConfig, work: Path,
                 trt_version: str) -> tuple[Path, Any]:
    """The ONNX TensorRT will parse (made on the fly for to_fp16 / quantize) and quantize's result."""
    stem = source.path.stem
    if plan.how == Route.TO_FP16:
        from rexport.calibration import to_fp16

        inputs = None
        data = config.calib_data or config.val_data
        if data is not None and source.info is not None:  # check the FP16 range on real samples
            from rexport.runtime.data import load_dataset

            inputs = load_dataset(data, source.info, samples=64, seed=config.seed).inputs
        log.info("converting %s to FP16...", source.path.name)
        return Path(to_fp16(source.path, work / f"{stem}.fp16.onnx", inputs=inputs, overwrite=True).path), None
    if plan.how == Route.QUANTIZE:
        from rexport.calibration import QuantizeConfig, quantize
        from rexport.calibration.refine import parse_refinements

        if config.calib_data is None:
            raise field_error(config, "precision='int8' needs calibration data to make a Q/DQ ONNX: give calib_data "
                              "(or an INT8 ONNX made by rexport)", "precision", "calib_data")
        log.info("calibrating %s to INT8 Q/DQ (%s, %d samples)...", source.path.name, config.calib_method,
                 config.calib_samples)
        result = quantize(source.path, work / f"{stem}.int8.onnx",
                          QuantizeConfig(calib_data=config.calib_data, calib_method=config.calib_method, target="trt",
                                         calib_samples=config.calib_samples, seed=config.seed, overwrite=True,
                                         calib_refine=parse_refinements(config.calib_refine),
                                         trt_version=trt_version))
        return Path(result.path), result
    return source.path, None
