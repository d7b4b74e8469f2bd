"""What `rexport trt` is asked to do: BuildConfig, its flag parsing, and the defaults it implies."""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from rexport.errors import InputError, field_error
from rexport.runtime.metadata import BatchRange, Precision
from rexport.runtime.trt_compat import (CALIBRATION_METHODS, FLAVOURS, HARDWARE_COMPATIBILITY,
                                        format_compute_capability, parse_compute_capability)

Shapes = dict[str, tuple[int, ...]]
SHAPES = ("min_shapes", "opt_shapes", "max_shapes")  # the BuildConfig fields of an explicit profile
BUILD_PRECISIONS = (Precision.fp16, Precision.int8)  # what --fp16 / --int8 ask for; None builds the ONNX as it is
_SIZE_UNITS = {"": 2**20, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}



def parse_shapes(text: str | Shapes | None, field: str = "min_shapes") -> Shapes | None:
    """trtexec style: "input:1x3x224x224" or "a:1x3x8x8,b:1x10" -> {"input": (1, 3, 224, 224)}.
    `field`: the BuildConfig field it fills, for the errors."""
    if text is None or isinstance(text, dict):
        return None if text is None else {str(k): tuple(int(d) for d in v) for k, v in text.items()}
    shapes: Shapes = {}
    for item in filter(None, (p.strip() for p in str(text).split(","))):
        name, sep, dims = item.rpartition(":")
        try:
            shape = tuple(int(d) for d in dims.lower().split("x"))
        except ValueError:
            shape = ()
        if not sep or not name or not shape or min(shape) < 1:
            raise field_error(BuildConfig, f"{field} takes NAME:DxDxD... (e.g. input:1x3x224x224), not {item!r}",
                              field)
        shapes[name.strip("'\"")] = shape
    if not shapes:
        raise field_error(BuildConfig, f"{field} is empty; give NAME:DxDxD... (e.g. input:1x3x224x224)", field)
    return shapes


def parse_bytes(text: str | int | None) -> int | None:
    """"4096" (MiB, as trtexec), "512M", "2G", "1048576B" -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise field_error(BuildConfig, f"workspace must be a number of MiB or carry a unit (512M, 2G), not {text!r}",
                          "workspace")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def parse_compute_capabilities(text: str | tuple | list | None) -> tuple[str, ...]:
    """"8.6,8.9,12.0" (or a sequence) -> ("8.6", "8.9", "12.0"): sorted, without repeats."""
    if text is None:
        return ()
    items = str(text).split(",") if isinstance(text, str) else [str(t) for t in text]
    ccs = {parse_compute_capability(t) for t in (i.strip() for i in items) if t}
    if isinstance(text, str) and not ccs:
        raise field_error(BuildConfig, "compute_capabilities is empty; give e.g. 8.6,8.9,12.0", "compute_capabilities")
    return tuple(format_compute_capability(cc) for cc in sorted(ccs))


def format_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


@dataclass(frozen=True)
class BuildConfig:
    """Options of `rexport trt`: its flags fill these fields (rexport/options.py). Errors name the
    fields; the CLI says the flags."""

    precision: Precision | None = None  # None: as the ONNX is; fp16 or int8 (BUILD_PRECISIONS)
    flavour: str | None = None  # "tensorrt", "rtx" (TensorRT for RTX, --rtx); None: whichever is installed
    compute_capabilities: tuple[str, ...] = ()  # RTX: the GPUs to build for; (): the GPU here, else a default set
    fp16_flag: bool = False  # 10.x: BuilderFlag.FP16 on the FP32 ONNX instead of an FP16 ONNX
    legacy_calibrator: bool = False  # 10.x: IInt8 calibrator on the FP32 ONNX instead of Q/DQ
    weakly_typed: bool = False  # 10.x: FP16/Q-DQ ONNX built weakly typed (with FP16/INT8 flags)
    calib_data: str | None = None
    calib_method: str = "entropy"
    calib_samples: int = 512
    calib_refine: str = "all"  # refinements after the calibrator (calibration/refine.py): a comma list, all, none
    calib_cache: str | None = None  # TensorRT 10 calibration cache: read if it exists, written after
    batch: BatchRange | None = None  # default: the model's recorded batch range
    min_shapes: Shapes | None = None
    opt_shapes: Shapes | None = None
    max_shapes: Shapes | None = None
    workspace: int | None = None  # bytes
    timing_cache: str | None = None  # loaded if it exists, saved after the build
    merge_timing_caches: tuple[str, ...] = ()
    optimization_level: int | None = None  # 0-5; TensorRT's default is 3
    hardware_compatibility: str = "none"
    version_compatible: bool = False
    dla_core: int | None = None
    gpu_fallback: bool = True
    validate: bool = True
    val_data: str | None = None
    val_samples: int = 64
    min_agreement: float | None = None  # validation gate; default by precision (gates.DEFAULT_AGREEMENT)
    max_top1_drop: float | None = None  # validation gate in top-1 points (needs labelled --val-data)
    reference: str | None = None  # FP32 ONNX to validate against (default: the input, when FP32)
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in BUILD_PRECISIONS:
            raise self._error(f"precision must be fp16 or int8 (or left out to build the ONNX as it is), "
                              f"not {self.precision!r}")
        if self.flavour is not None and self.flavour not in FLAVOURS:
            raise self._error(f"flavour must be one of {', '.join(FLAVOURS)} (or left out), not {self.flavour!r}")
        object.__setattr__(self, "compute_capabilities", parse_compute_capabilities(self.compute_capabilities))
        if self.fp16_flag and self.precision != Precision.fp16:
            raise self._error("fp16_flag goes with precision='fp16'", "fp16_flag", "precision")
        if self.legacy_calibrator and self.precision != Precision.int8:
            raise self._error("legacy_calibrator goes with precision='int8'", "legacy_calibrator", "precision")
        if self.legacy_calibrator and self.calib_data is None and self.calib_cache is None:
            raise self._error("legacy_calibrator needs calib_data (or an existing calib_cache)", "legacy_calibrator",
                              "calib_data", "calib_cache")
        from rexport.calibration.observers import METHODS

        if self.calib_method not in METHODS:
            raise self._error(f"calib_method must be one of {', '.join(METHODS)}, not {self.calib_method!r}",
                              "calib_method")
        if self.legacy_calibrator and self.calib_method not in CALIBRATION_METHODS:
            raise self._error(f"the legacy calibrator takes calib_method {' or '.join(CALIBRATION_METHODS)}, "
                              f"not {self.calib_method!r}", "calib_method")
        from rexport.calibration.refine import REFINEMENTS, parse_refinements

        refine = parse_refinements(self.calib_refine)  # checks the names
        object.__setattr__(self, "calib_refine", "all" if refine == REFINEMENTS else ",".join(refine) or "none")
        for name in ("calib_samples", "val_samples"):
            if int(getattr(self, name)) < 1:
                raise self._error(f"{name} must be >= 1, not {getattr(self, name)}", name)
        if self.batch is not None:
            object.__setattr__(self, "batch", BatchRange.parse(self.batch))
        self._check_shapes()
        object.__setattr__(self, "workspace", parse_bytes(self.workspace))
        if self.workspace is not None and self.workspace < 1:
            raise self._error(f"workspace must be positive, not {self.workspace}", "workspace")
        if self.optimization_level is not None and not 0 <= int(self.optimization_level) <= 5:
            raise self._error(f"optimization_level must be 0 to 5 (TensorRT's default is 3), "
                              f"not {self.optimization_level}", "optimization_level")
        level = str(self.hardware_compatibility).lower().replace("-", "_")
        if level not in HARDWARE_COMPATIBILITY:
            raise self._error(f"hardware_compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                              f"not {self.hardware_compatibility!r}", "hardware_compatibility")
        object.__setattr__(self, "hardware_compatibility", level)
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise self._error(f"dla_core must be >= 0, not {self.dla_core}", "dla_core")
        object.__setattr__(self, "merge_timing_caches", tuple(str(p) for p in self.merge_timing_caches))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = str(self.batch) if self.batch else None
        for key in ("min_shapes", "opt_shapes", "max_shapes"):
            d[key] = {k: list(v) for k, v in d[key].items()} if d[key] else None
        d["merge_timing_caches"] = list(self.merge_timing_caches)
        d["compute_capabilities"] = list(self.compute_capabilities)
        del d["overwrite"]
        return d

    def _error(self, message: str, *fields: str) -> InputError:
        return field_error(self, message, *fields)

    def _check_shapes(self) -> None:
        shapes = [parse_shapes(getattr(self, name), name) for name in SHAPES]
        for name, value in zip(SHAPES, shapes):
            object.__setattr__(self, name, value)
        if all(s is None for s in shapes):
            return
        if any(s is None for s in shapes):
            raise self._error("give min_shapes, opt_shapes and max_shapes together", *SHAPES)
        if self.batch is not None:
            raise self._error("give either batch or min_shapes/opt_shapes/max_shapes, not both", "batch", *SHAPES)
        if not set(shapes[0]) == set(shapes[1]) == set(shapes[2]):
            raise self._error("min_shapes, opt_shapes and max_shapes must name the same inputs", *SHAPES)
        for name in shapes[0]:
            lo, opt, hi = (s[name] for s in shapes)
            if not len(lo) == len(opt) == len(hi) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
                raise InputError(f"shapes of {name} must have the same rank and satisfy min <= opt <= max in "
                                 f"every dimension, got {format_shape(lo)}, {format_shape(opt)}, {format_shape(hi)}")


def default_engine_name(onnx_path: str | os.PathLike, precision: str | None = None) -> str:
    """model.onnx -> model.engine; with --fp16 -> model.fp16.engine (model.fp16.onnx stays model.fp16.engine)."""
    stem = Path(onnx_path).stem
    if precision and not stem.endswith(f".{precision}"):
        stem += f".{precision}"
    return f"{stem}.engine"
