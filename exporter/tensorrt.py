"""ONNX -> TensorRT engine + sidecar, validated against the FP32 ONNX. Needs tensorrt, cuda-python
and onnx; never torch.

    read the ONNX (precision from metadata_props, Q/DQ from the graph)
    -> plan the precision: build as given, convert to FP16 (rexport.calibration.to_fp16),
       calibrate to a trt-target Q/DQ ONNX (rexport.calibration.quantize), or on TensorRT 10.x
       only: BuilderFlag.FP16 / a legacy IInt8 calibrator on the FP32 ONNX
    -> Builder -> network (strongly typed where precision comes from the ONNX) -> OnnxParser
       (errors reported per node) -> optimization profile -> builder config (workspace,
       optimization level, hardware/version compatibility, DLA, timing cache)
    -> build_serialized_network (a None is explained from TensorRT's log)
    -> engine + sidecar written to temporary names, validated against ONNX Runtime on the
       FP32 ONNX, and renamed into place only if everything passed.

Every TensorRT version difference goes through rexport.runtime.trt_compat.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from rexport.console import log
from rexport.errors import CheckFailed, InputError, RexportError, require
from rexport.files import atomic_output, check_output, sha256_file
from rexport.runtime import cuda
from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path
from rexport.runtime.metadata import BatchRange, ModelInfo
from rexport.runtime.trt_compat import CALIBRATION_METHODS, HARDWARE_COMPATIBILITY, TensorRT, load_tensorrt

Shapes = dict[str, tuple[int, ...]]
PRECISIONS = ("fp16", "int8")  # what --fp16 / --int8 ask for; None builds the ONNX as it is
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_SIZE_UNITS = {"": 2**20, "b": 1, "k": 2**10, "kb": 2**10, "m": 2**20, "mb": 2**20, "g": 2**30, "gb": 2**30}


# -- flag parsing ------------------------------------------------------------------------------


def parse_shapes(text: str | Shapes | None, flag: str = "--min-shapes") -> Shapes | None:
    """trtexec style: "input:1x3x224x224" or "a:1x3x8x8,b:1x10" -> {"input": (1, 3, 224, 224)}."""
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
            raise InputError(f"{flag} takes NAME:DxDxD... (e.g. input:1x3x224x224), not {item!r}")
        shapes[name.strip("'\"")] = shape
    if not shapes:
        raise InputError(f"{flag} is empty; give NAME:DxDxD... (e.g. input:1x3x224x224)")
    return shapes


def parse_bytes(text: str | int | None) -> int | None:
    """"4096" (MiB, as trtexec), "512M", "2G", "1048576B" -> bytes."""
    if text is None or isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", str(text))
    if not m or m.group(2).lower() not in _SIZE_UNITS:
        raise InputError(f"size must be a number of MiB or carry a unit (512M, 2G), not {text!r}")
    return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).lower()])


def _format_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


# -- configuration -----------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildConfig:
    """Options of `rexport trt`; the CLI flags map one to one onto these fields."""

    precision: str | None = None  # None: as the ONNX is; "fp16"; "int8"
    fp16_flag: bool = False  # 10.x: BuilderFlag.FP16 on the FP32 ONNX instead of an FP16 ONNX
    legacy_calibrator: bool = False  # 10.x: IInt8 calibrator on the FP32 ONNX instead of Q/DQ
    weakly_typed: bool = False  # 10.x: FP16/Q-DQ ONNX built weakly typed (with FP16/INT8 flags)
    calib_data: str | None = None
    calib_method: str = "entropy"
    calib_samples: int = 512
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
    min_agreement: float | None = None  # validation gate; default by precision (DEFAULT_AGREEMENT)
    max_top1_drop: float | None = None  # validation gate in top-1 points (needs labelled --val-data)
    reference: str | None = None  # FP32 ONNX to validate against (default: the input, when FP32)
    seed: int = 0
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.precision is not None and self.precision not in PRECISIONS:
            raise InputError(f"precision must be fp16 or int8 (or left out to build the ONNX as it is), "
                             f"not {self.precision!r}")
        if self.fp16_flag and self.precision != "fp16":
            raise InputError("--fp16-flag goes with --fp16")
        if self.legacy_calibrator and self.precision != "int8":
            raise InputError("--legacy-calibrator goes with --int8")
        if self.legacy_calibrator and self.calib_data is None and self.calib_cache is None:
            raise InputError("--legacy-calibrator needs --calib-data DIR (or an existing --calib-cache FILE)")
        if self.calib_method not in ("entropy", "minmax", "percentile", "mse"):
            raise InputError(f"--calib-method must be entropy, minmax, percentile or mse, not {self.calib_method!r}")
        if self.legacy_calibrator and self.calib_method not in CALIBRATION_METHODS:
            raise InputError(f"the legacy calibrator takes --calib-method {' or '.join(CALIBRATION_METHODS)}, "
                             f"not {self.calib_method!r}")
        for name in ("calib_samples", "val_samples"):
            if int(getattr(self, name)) < 1:
                raise InputError(f"{name.replace('_', '-')} must be >= 1, not {getattr(self, name)}")
        if self.batch is not None:
            object.__setattr__(self, "batch", BatchRange.parse(self.batch))
        shapes = [parse_shapes(getattr(self, f"{k}_shapes"), f"--{k}-shapes") for k in ("min", "opt", "max")]
        for key, value in zip(("min", "opt", "max"), shapes):
            object.__setattr__(self, f"{key}_shapes", value)
        if any(s is not None for s in shapes):
            if any(s is None for s in shapes):
                raise InputError("give --min-shapes, --opt-shapes and --max-shapes together")
            if self.batch is not None:
                raise InputError("give either --batch or --min/opt/max-shapes, not both")
            if not set(shapes[0]) == set(shapes[1]) == set(shapes[2]):
                raise InputError("--min-shapes, --opt-shapes and --max-shapes must name the same inputs")
            for name in shapes[0]:
                lo, opt, hi = (s[name] for s in shapes)
                if not len(lo) == len(opt) == len(hi) or any(not a <= b <= c for a, b, c in zip(lo, opt, hi)):
                    raise InputError(f"shapes of {name} must have the same rank and satisfy min <= opt <= max in "
                                     f"every dimension, got {_format_shape(lo)}, {_format_shape(opt)}, "
                                     f"{_format_shape(hi)}")
        object.__setattr__(self, "workspace", parse_bytes(self.workspace))
        if self.workspace is not None and self.workspace < 1:
            raise InputError(f"workspace must be positive, not {self.workspace}")
        if self.optimization_level is not None and not 0 <= int(self.optimization_level) <= 5:
            raise InputError(f"--opt-level must be 0 to 5 (TensorRT's default is 3), not {self.optimization_level}")
        level = str(self.hardware_compatibility).lower().replace("-", "_")
        if level not in HARDWARE_COMPATIBILITY:
            raise InputError(f"--hardware-compat must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                             f"not {self.hardware_compatibility!r}")
        object.__setattr__(self, "hardware_compatibility", level)
        if self.dla_core is not None and int(self.dla_core) < 0:
            raise InputError(f"--dla-core must be >= 0, not {self.dla_core}")
        object.__setattr__(self, "merge_timing_caches", tuple(str(p) for p in self.merge_timing_caches))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["batch"] = str(self.batch) if self.batch else None
        for key in ("min_shapes", "opt_shapes", "max_shapes"):
            d[key] = {k: list(v) for k, v in d[key].items()} if d[key] else None
        d["merge_timing_caches"] = list(self.merge_timing_caches)
        del d["overwrite"]
        return d

    def cli_args(self) -> list[str]:
        """The `rexport trt` flags that rebuild this engine (defaults and --no-validate left out)."""
        args: list[str] = []
        if self.precision:
            args.append(f"--{self.precision}")
        default = BuildConfig()
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("precision", "overwrite", "validate", "gpu_fallback") or value == getattr(default, f.name):
                continue
            flag = "--" + _CLI_NAMES.get(f.name, f.name.replace("_", "-"))
            if isinstance(value, bool):
                args.append(flag)
            elif f.name.endswith("_shapes"):
                args += [flag, ",".join(f"{k}:{_format_shape(v)}" for k, v in value.items())]
            elif f.name == "merge_timing_caches":
                for path in value:
                    args += [flag, path]
            elif f.name == "workspace":
                args += [flag, f"{value // 2**20}" if value % 2**20 == 0 else f"{value}B"]
            else:
                args += [flag, str(value)]
        if not self.gpu_fallback:
            args.append("--no-gpu-fallback")
        return args


# Top-1 agreement with the FP32 ONNX an engine must reach unless --min-agreement says otherwise.
DEFAULT_AGREEMENT = {"fp32": 0.99, "fp16": 0.99, "int8": 0.95, "mixed": 0.95}

_CLI_NAMES = {"merge_timing_caches": "merge-timing-cache", "optimization_level": "opt-level",
              "hardware_compatibility": "hardware-compat"}


def default_engine_name(onnx_path: str | os.PathLike, precision: str | None = None) -> str:
    """model.onnx -> model.engine; with --fp16 -> model.fp16.engine (model.fp16.onnx stays model.fp16.engine)."""
    stem = Path(onnx_path).stem
    if precision and not stem.endswith(f".{precision}"):
        stem += f".{precision}"
    return f"{stem}.engine"


# -- the ONNX side -----------------------------------------------------------------------------


@dataclass(frozen=True)
class OnnxSummary:
    path: Path
    sha256: str
    precision: str  # fp32 / fp16 / int8 / mixed
    has_qdq: bool
    info: ModelInfo | None


def read_onnx(path: str | os.PathLike) -> OnnxSummary:
    """Precision (metadata_props `precision`, else from the graph), Q/DQ presence and ModelInfo."""
    onnx = require("onnx", "trt", "read ONNX models for TensorRT")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf raises its own DecodeError types
        raise InputError(f"{path} is not a readable ONNX file ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                         ) from None
    props = {p.key: p.value for p in model.metadata_props}
    info = ModelInfo.from_props(props) if "num_classes" in props else None
    has_qdq = any(n.op_type in QDQ_OPS for n in model.graph.node)
    precision = props.get("precision", "").strip('"') or None
    if precision is None:
        fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        precision = "int8" if has_qdq else "fp16" if fp16 else "fp32"
    return OnnxSummary(path, sha256_file(path), precision, has_qdq, info)


@dataclass(frozen=True)
class PrecisionPlan:
    how: str  # "as given", "to_fp16", "quantize", "BuilderFlag.FP16", "legacy calibrator"
    precision: str  # what the engine computes in
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
    if want == "fp16":
        if src in ("int8", "mixed"):
            raise InputError(f"{name} is already {src} (Q/DQ); --fp16 needs an FP32 or FP16 ONNX")
        how = "as given" if src == "fp16" else "BuilderFlag.FP16" if config.fp16_flag else "to_fp16"
        if config.fp16_flag and how != "BuilderFlag.FP16":
            raise InputError(f"--fp16-flag builds an FP32 ONNX with TensorRT's FP16 flag; {name} is already FP16")
        precision = "fp16"
    elif want == "int8":
        if src == "fp16":
            raise InputError(f"{name} is FP16; calibrate INT8 from the FP32 ONNX instead")
        how = "as given" if src in ("int8", "mixed") else "legacy calibrator" if config.legacy_calibrator else "quantize"
        if config.legacy_calibrator and how != "legacy calibrator":
            raise InputError(f"--legacy-calibrator calibrates an FP32 ONNX; {name} is already {src}")
        precision = src if how == "as given" else "int8"
    else:
        how, precision = "as given", src

    if how == "BuilderFlag.FP16":
        compat.require_precision_flag("FP16", "leave out --fp16-flag: rexport converts the ONNX to FP16 instead")
    if how == "legacy calibrator":
        compat.calibrator_base(config.calib_method)  # raises on TensorRT 11
    has_qdq = source.has_qdq or how == "quantize"
    typed_onnx = has_qdq or (precision == "fp16" and how in ("as given", "to_fp16"))
    if how in ("BuilderFlag.FP16", "legacy calibrator") or config.weakly_typed:
        typing = "weak"
    else:
        typing = "strong" if typed_onnx else "default"
    plan = PrecisionPlan(how, precision, typing,
                         fp16_flag=how == "BuilderFlag.FP16" or (typing == "weak" and precision == "fp16"),
                         int8_flag=how == "legacy calibrator" or (typing == "weak" and has_qdq))
    compat.network_flags(plan.typing)  # weak typing on 11 fails here, before any conversion
    return plan


def _prepare_onnx(source: OnnxSummary, plan: PrecisionPlan, config: BuildConfig, work: Path,
                  trt_version: str) -> tuple[Path, Any]:
    """The ONNX TensorRT will parse (made on the fly for to_fp16 / quantize) and quantize's result."""
    stem = source.path.stem
    if plan.how == "to_fp16":
        from rexport.calibration import to_fp16

        inputs = None
        data = config.calib_data or config.val_data
        if data is not None and source.info is not None:  # check the FP16 range on real samples
            from rexport.calibration.data import load_calibration_data

            inputs = load_calibration_data(data, source.info, samples=64, seed=config.seed).inputs
        log.info("converting %s to FP16...", source.path.name)
        return Path(to_fp16(source.path, work / f"{stem}.fp16.onnx", inputs=inputs, overwrite=True).path), None
    if plan.how == "quantize":
        from rexport.calibration import QuantizeConfig, quantize

        if config.calib_data is None:
            raise InputError("--int8 needs calibration data to make a Q/DQ ONNX: pass --calib-data DIR "
                             "(or give an INT8 ONNX made by rexport)")
        log.info("calibrating %s to INT8 Q/DQ (%s, %d samples)...", source.path.name, config.calib_method,
                 config.calib_samples)
        result = quantize(source.path, work / f"{stem}.int8.onnx",
                          QuantizeConfig(data=config.calib_data, method=config.calib_method, target="trt",
                                         samples=config.calib_samples, seed=config.seed, overwrite=True,
                                         trt_version=trt_version))
        return Path(result.path), result
    return source.path, None


# -- TensorRT pieces ---------------------------------------------------------------------------


def parser_errors(parser: Any, onnx_name: str, limit: int = 5) -> str:
    """Every parser error, per node, in one line."""
    parts = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        desc = " ".join(str(err.desc()).split())
        node, node_name, op = err.node(), err.node_name(), err.node_operator()
        where = f"node {node}" if node is not None and int(node) >= 0 else "the model"
        if node_name or op:
            where += f" ({op} {node_name!r})" if node_name else f" ({op})"
        parts.append(f"{where}: {desc}")
    if not parts:
        parts = ["no error reported by the parser"]
    more = f"; and {len(parts) - limit} more" if len(parts) > limit else ""
    return (f"TensorRT's ONNX parser rejected {onnx_name}: " + "; ".join(parts[:limit]) + more
            + " (check the ops against onnx-tensorrt's operators.md, or re-export with another --opset)")


def network_inputs(network: Any) -> Shapes:
    return {network.get_input(i).name: tuple(int(d) for d in network.get_input(i).shape)
            for i in range(network.num_inputs)}


def profile_shapes(inputs: Shapes, config: BuildConfig, info: ModelInfo | None) -> dict[str, tuple[tuple, tuple, tuple]]:
    """min/opt/max shape of every network input, from --min/opt/max-shapes or from the batch range."""
    if config.min_shapes is not None:
        unknown = sorted(set(config.min_shapes) - set(inputs))
        if unknown:
            raise InputError(f"--min-shapes names {', '.join(unknown)} but the network's inputs are "
                             f"{', '.join(inputs)}")
        out = {}
        for name, dims in inputs.items():
            if name not in config.min_shapes:
                if any(d < 0 for d in dims):
                    raise InputError(f"input {name} has dynamic dimensions ({_format_shape(dims)}); give its shape in "
                                     "--min-shapes, --opt-shapes and --max-shapes")
                out[name] = (dims, dims, dims)
                continue
            trio = tuple(s[name] for s in (config.min_shapes, config.opt_shapes, config.max_shapes))
            for shape in trio:
                if len(shape) != len(dims) or any(d >= 0 and d != s for d, s in zip(dims, shape)):
                    raise InputError(f"shape {_format_shape(shape)} does not fit input {name} "
                                     f"({_format_shape(dims)}, -1 = dynamic)")
            out[name] = trio
        return out
    batch = config.batch or (info.batch if info else BatchRange())
    out = {}
    for name, dims in inputs.items():
        if any(d < 0 for d in dims[1:]):
            raise InputError(f"input {name} ({_format_shape(dims)}) has dynamic dimensions besides the batch; give "
                             "--min-shapes, --opt-shapes and --max-shapes")
        if dims and dims[0] < 0:
            rest = tuple(dims[1:])
            out[name] = ((batch.min, *rest), (batch.opt, *rest), (batch.max, *rest))
        else:
            if config.batch is not None and not (batch.static and batch.min == dims[0]):
                raise InputError(f"input {name} has a fixed batch of {dims[0]}, so --batch {batch} cannot apply; "
                                 "re-export the ONNX with `rexport onnx --batch MIN:OPT:MAX`")
            out[name] = (dims, dims, dims)
    return out


class TimingCache:
    """Load (and merge) timing caches before a build; save the updated one after it."""

    def __init__(self, compat: TensorRT, builder_config: Any, config: BuildConfig):
        self.path = Path(config.timing_cache) if config.timing_cache else None
        self.config = builder_config
        self.notes: list[str] = []
        for other in config.merge_timing_caches:
            if not Path(other).is_file():
                raise InputError(f"timing cache {other} (--merge-timing-cache) does not exist")
        if self.path is None and not config.merge_timing_caches:
            self.cache = None
            return
        data = self.path.read_bytes() if self.path is not None and self.path.is_file() else b""
        cache = builder_config.create_timing_cache(data)
        if cache is None and data:
            self.notes.append(f"timing cache {self.path} is unreadable by TensorRT {compat.version.short}; "
                              "starting a new one")
            cache = builder_config.create_timing_cache(b"")
        if not builder_config.set_timing_cache(cache, False):
            self.notes.append(f"timing cache {self.path} was made by another TensorRT version or GPU; "
                              "starting a new one")
            cache = builder_config.create_timing_cache(b"")
            builder_config.set_timing_cache(cache, False)
        for other in config.merge_timing_caches:  # into the cache the config now uses
            extra = builder_config.create_timing_cache(Path(other).read_bytes())
            if extra is None or not cache.combine(extra, False):
                self.notes.append(f"timing cache {other} was made by another TensorRT version or GPU; not merged")
            else:
                self.notes.append(f"merged timing cache {other}")
        self.cache = cache

    def save(self, overwrite: bool = True) -> Path | None:
        if self.path is None:
            return None
        cache = self.config.get_timing_cache()
        with atomic_output(self.path, overwrite=overwrite) as tmp:
            tmp.write_bytes(bytes(memoryview(cache.serialize())))
        return self.path


def make_legacy_calibrator(compat: TensorRT, method: str, inputs: np.ndarray | None, batch_size: int,
                           cache: bytes | None) -> Any:
    """A TensorRT 10.x IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator fed with numpy batches.

    `read_calibration_cache` returns `cache` when one was given (TensorRT then skips calibrating);
    `write_calibration_cache` keeps what TensorRT wrote, for the caller to save once the build
    succeeded. Exceptions cannot cross back into TensorRT, so they are kept in `.error`."""
    base = compat.calibrator_base(method)

    class LegacyCalibrator(base):
        def __init__(self):
            base.__init__(self)  # pybind11 trampolines must have the base initialised explicitly
            self.inputs = inputs
            self.batch_size = int(batch_size)
            self.cache_in = cache
            self.cache_out: bytes | None = None
            self.batches_fed = 0
            self.error: BaseException | None = None
            self._buffer: cuda.DeviceBuffer | None = None

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names):
            try:
                start = self.batches_fed * self.batch_size
                if self.inputs is None or start + self.batch_size > len(self.inputs):
                    return None  # TensorRT takes only full batches
                batch = np.ascontiguousarray(self.inputs[start:start + self.batch_size], dtype=np.float32)
                if self._buffer is None:
                    self._buffer = cuda.DeviceBuffer(batch.nbytes)
                self._buffer.copy_from(batch)
                self.batches_fed += 1
                return [self._buffer.ptr for _ in names]
            except BaseException as e:  # noqa: BLE001 - re-raised by build_engine after the build
                self.error = e
                return None

        def read_calibration_cache(self):
            return self.cache_in

        def write_calibration_cache(self, data):
            self.cache_out = bytes(memoryview(data))

        def free(self):
            if self._buffer is not None:
                self._buffer.free()
                self._buffer = None

    return LegacyCalibrator()


# -- the build ---------------------------------------------------------------------------------


@dataclass
class BuildResult:
    path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    plan: PrecisionPlan
    validation: Any | None  # rexport.runtime.validate.ValidationReport
    seconds: float
    build_seconds: float
    timing_cache: Path | None = None
    calibration_cache: Path | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output": str(self.path), "sidecar": str(self.sidecar_path), "engine": self.sidecar.to_dict(),
                "how": self.plan.describe(), "seconds": round(self.seconds, 2),
                "build_seconds": round(self.build_seconds, 2),
                "timing_cache": str(self.timing_cache) if self.timing_cache else None,
                "calibration_cache": str(self.calibration_cache) if self.calibration_cache else None,
                "notes": self.notes, "validation": self.validation.to_dict() if self.validation is not None else None}

    def format(self) -> str:
        s = self.sidecar
        size = self.path.stat().st_size / 1e6 if self.path.exists() else 0.0
        arch = s.model.arch if s.model and s.model.arch else Path(s.source_onnx.get("path", "model")).stem
        shapes = "; ".join(f"{n} {_format_shape(p['min'])} / {_format_shape(p['opt'])} / {_format_shape(p['max'])}"
                           for n, p in s.profile.items())
        lines = [f"{arch} -> {self.path} ({size:.1f} MB, {s.precision}, TensorRT {s.tensorrt_version}, {s.gpu_name} "
                 f"(compute {s.compute_capability}), built in {self.build_seconds:.1f}s)",
                 f"  from {s.source_onnx.get('path')}: {self.plan.describe()}",
                 f"  profile (min / opt / max): {shapes}",
                 f"  sidecar: {self.sidecar_path}"]
        if self.timing_cache:
            lines.append(f"  timing cache saved: {self.timing_cache}")
        if self.calibration_cache:
            lines.append(f"  calibration cache saved: {self.calibration_cache}")
        lines += [f"  note: {n}" for n in self.notes]
        if self.validation is not None:
            lines.append(self.validation.format())
        return "\n".join(lines)


def bundle_source(bundle_dir: Path, precision: str | None) -> Path:
    """The ONNX of a bundle to build from: its trt-target INT8 (for --int8) or FP16 (for --fp16)
    ONNX when it has one, else its FP32 ONNX (converted on the fly)."""
    from rexport.runtime.bundle import is_archive, open_bundle

    if is_archive(bundle_dir):
        raise InputError(f"{bundle_dir} is a bundle archive; extract it (tar xzf) and build into the directory, "
                         "so the engine can be added to the bundle")
    bundle = open_bundle(bundle_dir)  # verifies every file first
    onnx_models = [bundle_dir / m["file"] for m in bundle.models if m["kind"] == "onnx"]
    for path in onnx_models:
        info = read_onnx(path).info
        if info is None or precision is None or info.precision != precision:
            continue
        if precision == "fp16" or (info.calibration or {}).get("target") == "trt":
            return path
    fp32 = [p for p in onnx_models if read_onnx(p).precision == "fp32"]
    if not fp32:
        raise InputError(f"the bundle {bundle_dir} has no FP32 ONNX to build from")
    return fp32[0]


def build_engine(source: str | os.PathLike, output: str | os.PathLike | None = None,
                 config: BuildConfig = BuildConfig()) -> BuildResult:
    """Build a TensorRT engine from an ONNX file (or a bundle directory) at `output`
    (+ `output.json`), validated unless told not to. Built from a bundle, the engine goes into
    the bundle (by default) and is added to its manifest."""
    start = time.monotonic()
    source = Path(source)
    bundle_dir = None
    from rexport.runtime.bundle import is_bundle

    if is_bundle(source):
        bundle_dir, onnx_path = source, bundle_source(source, config.precision)
    else:
        onnx_path = source
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path} does not exist")
    if output is None:
        output = (bundle_dir or Path(".")) / default_engine_name(onnx_path, config.precision)
    output = check_output(output, overwrite=config.overwrite)
    side = check_output(sidecar_path(output), overwrite=config.overwrite)
    compat = load_tensorrt("build TensorRT engines")
    gpu = cuda.gpu_info()
    source = read_onnx(onnx_path)
    plan = plan_precision(source, config, compat)
    notes: list[str] = []
    reference = Path(config.reference) if config.reference else (onnx_path if source.precision == "fp32" else None)
    if config.validate and reference is None:
        notes.append(f"{onnx_path.name} is {source.precision}: validated against ONNX Runtime on the same file; "
                     "pass --reference MODEL.onnx (the FP32 export) to compare with FP32")
    if reference is not None and not reference.is_file():
        raise InputError(f"--reference {reference} does not exist")

    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=".work", dir=output.parent) as tmp:
        work = Path(tmp)
        built_from_path, quantized = _prepare_onnx(source, plan, config, work, str(compat.version))
        built_from = source if built_from_path == onnx_path else read_onnx(built_from_path)
        info = built_from.info or source.info
        if info is None:
            notes.append(f"{onnx_path.name} has no rexport metadata: the sidecar cannot describe preprocessing")

        built = _build(compat, built_from, plan, config, info, notes)

        if info is not None:
            calibration = info.calibration
            if plan.how == "legacy calibrator":
                calibration = {"method": config.calib_method, "target": "trt", "calibrator": "TensorRT 10 "
                               + CALIBRATION_METHODS[config.calib_method], "batches": built.calibrator.batches_fed}
            info = info.replace(precision=plan.precision, calibration=calibration)
        sidecar = EngineSidecar(
            tensorrt_version=str(compat.version), gpu_name=gpu.name, compute_capability=gpu.compute_capability_str,
            precision=plan.precision,
            profile={n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in built.profile.items()},
            source_onnx={"path": onnx_path.name, "sha256": source.sha256, "precision": source.precision},
            built_from={"sha256": built_from.sha256, "precision": built_from.precision, "how": plan.describe()},
            build_options=config.to_dict(), model=info,
            rebuild_command=shlex.join(["rexport", "trt", onnx_path.name, "-o", output.name, *config.cli_args()]))

        with atomic_output(output, overwrite=config.overwrite) as engine_tmp, \
                atomic_output(side, overwrite=config.overwrite) as side_tmp:
            engine_tmp.write_bytes(built.engine)
            sidecar.write(side_tmp)
            report = None
            if config.validate:
                report = _validate(engine_tmp, sidecar, reference or built_from_path,
                                   built_from_path if reference is not None and built_from_path != reference else None,
                                   config, info)
                if not report.passed:
                    raise CheckFailed(f"the TensorRT engine disagrees with {(reference or built_from_path).name} "
                                      "beyond tolerance; nothing was written (see the report; --no-validate skips "
                                      "the check)", report)
            # caches only for an engine that passed: a calibration cache behind a failed engine would be reused
            timing_cache = built.timing.save() if built.timing is not None else None
            calibration_cache = _save_calibration_cache(config, built.calibrator, quantized)
    if bundle_dir is not None and output.parent.resolve() == bundle_dir.resolve():
        from rexport.runtime.bundle import add_to_bundle

        add_to_bundle(bundle_dir, [output, side], "engine", plan.precision)
        notes.append(f"added {output.name} to the bundle {bundle_dir} (load it with model=\"engine\")")
    return BuildResult(output, side, sidecar, plan, report, time.monotonic() - start, built.seconds,
                       timing_cache, calibration_cache, notes)


@dataclass
class _Built:
    engine: bytes
    seconds: float
    profile: dict[str, tuple[tuple, tuple, tuple]]
    timing: TimingCache | None
    calibrator: Any | None


def _build(compat: TensorRT, onnx: OnnxSummary, plan: PrecisionPlan, config: BuildConfig, info: ModelInfo | None,
           notes: list[str]) -> _Built:
    trt = compat.trt
    logger = compat.make_logger()
    builder = trt.Builder(logger)
    network = builder.create_network(compat.network_flags(plan.typing))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx.path)):
        raise InputError(parser_errors(parser, onnx.path.name))
    declared = network_inputs(network)
    shapes = profile_shapes(declared, config, info)
    builder_config = builder.create_builder_config()
    dynamic = {n: s for n, s in shapes.items() if any(d < 0 for d in declared[n])}
    if dynamic:
        profile = builder.create_optimization_profile()
        for name, (lo, opt, hi) in dynamic.items():
            profile.set_shape(name, lo, opt, hi)
        if builder_config.add_optimization_profile(profile) < 0:
            raise InputError(f"TensorRT rejected the optimization profile ({logger.explain()})")
    if config.workspace is not None:
        builder_config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, config.workspace)
    if config.optimization_level is not None:
        builder_config.builder_optimization_level = int(config.optimization_level)
    if config.hardware_compatibility != "none":
        builder_config.hardware_compatibility_level = compat.hardware_compatibility(config.hardware_compatibility)
    if config.version_compatible:
        builder_config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    compat.set_precision_flags(builder_config, fp16=plan.fp16_flag, int8=plan.int8_flag)
    if config.dla_core is not None:
        compat.check_dla(builder, int(config.dla_core))
        compat.use_dla(builder_config, int(config.dla_core), config.gpu_fallback)
    timing = TimingCache(compat, builder_config, config)
    notes += timing.notes
    calibrator = None
    if plan.how == "legacy calibrator":
        calibrator = _legacy_calibrator(compat, builder, builder_config, config, info, shapes)

    log.info("building the TensorRT %s engine (%s); this can take minutes...", plan.precision, plan.describe())
    since = len(logger.messages)
    started = time.monotonic()
    try:
        serialized = builder.build_serialized_network(network, builder_config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if calibrator is not None and calibrator.error is not None:
        raise RexportError(f"feeding calibration batches to TensorRT failed: {calibrator.error}")
    if serialized is None:
        raise RexportError(f"TensorRT could not build the engine: {logger.explain(since)} "
                           "(run with -v for TensorRT's full log)")
    return _Built(bytes(memoryview(serialized)), time.monotonic() - started, shapes,
                  timing if timing.cache is not None else None, calibrator)


def _legacy_calibrator(compat: TensorRT, builder: Any, builder_config: Any, config: BuildConfig,
                       info: ModelInfo | None, shapes: dict) -> Any:
    cache = None
    if config.calib_cache and Path(config.calib_cache).is_file():
        cache = _cache_for_this_version(Path(config.calib_cache), str(compat.version))
        log.info("using calibration cache %s (delete it to calibrate again)", config.calib_cache)
    inputs = None
    if cache is None:
        if config.calib_data is None:
            raise InputError(f"calibration cache {config.calib_cache} does not exist; pass --calib-data DIR to make it")
        if info is None:
            raise InputError("the ONNX has no rexport metadata, so calibration images cannot be preprocessed; "
                             "export it with `rexport onnx`")
        from rexport.calibration.data import load_calibration_data

        inputs = load_calibration_data(config.calib_data, info, samples=config.calib_samples, seed=config.seed).inputs
    if len(shapes) != 1:
        raise InputError(f"the legacy calibrator handles models with one input, not {len(shapes)}")
    (name, (lo, opt, hi)), = shapes.items()
    available = len(inputs) if inputs is not None else hi[0]
    batch = min(hi[0], max(lo[0], min(opt[0], available)))
    if inputs is not None and len(inputs) < lo[0]:
        raise InputError(f"{len(inputs)} calibration samples are fewer than the profile's min batch {lo[0]}")
    calibrator = make_legacy_calibrator(compat, config.calib_method, inputs, batch, cache)
    profile = None
    if len({lo, opt, hi}) > 1:
        profile = builder.create_optimization_profile()
        shape = (batch, *opt[1:])
        profile.set_shape(name, shape, shape, shape)
    compat.set_calibrator(builder_config, calibrator, profile)
    return calibrator


def _cache_for_this_version(path: Path, version: str) -> bytes:
    """TensorRT silently ignores a calibration cache whose header names another version. The
    scales are dynamic ranges, valid across versions, so relabel the header, and say so."""
    from rexport.calibration.cache import read_calibration_cache, retarget_header, version_int

    header, _ = read_calibration_cache(path)  # also rejects a file that is not a cache, clearly
    data = path.read_bytes()
    wanted = f"TRT-{version_int(version)}-"
    if header.startswith(wanted):
        return data
    log.warning("warning: %s has the header %s, which TensorRT %s would ignore; it is used with the header "
                "relabelled for this version (the scales are unchanged)", path, header, version)
    return retarget_header(header, version).encode() + data[data.index(b"\n"):]


def _save_calibration_cache(config: BuildConfig, calibrator: Any, quantized: Any) -> Path | None:
    if not config.calib_cache:
        return None
    path = Path(config.calib_cache)
    if calibrator is not None and calibrator.cache_out and calibrator.cache_out != calibrator.cache_in:
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_bytes(calibrator.cache_out)
        return path
    cache_path = getattr(quantized, "cache_path", None)
    if cache_path is not None and Path(cache_path).is_file():
        with atomic_output(path, overwrite=True) as tmp:
            shutil.copyfile(cache_path, tmp)
        return path
    return None


def validation_inputs(config: BuildConfig, info: ModelInfo | None, shape: tuple[int, ...],
                      count: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Inputs for validation: --val-data (else --calib-data) through load_calibration_data, else random."""
    source = config.val_data or config.calib_data
    if source is None:
        rng = np.random.default_rng(config.seed)
        return rng.standard_normal((count, *shape), dtype=np.float32), None, "random inputs"
    if info is None:
        raise InputError(f"{source} cannot be preprocessed without the model's rexport metadata; leave out "
                         "--val-data to validate on random inputs")
    from rexport.calibration.data import load_calibration_data

    data = load_calibration_data(source, info, samples=count, seed=config.seed)
    return np.asarray(data.inputs, dtype=np.float32)[:count], getattr(data, "labels", None), str(source)


def _validate(engine: Path, sidecar: EngineSidecar, reference: Path, intermediate: Path | None,
              config: BuildConfig, info: ModelInfo | None) -> Any:
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from rexport.runtime.backends.tensorrt import TensorRTBackend
    from rexport.runtime.validate import Gates, validate_backends

    with TensorRTBackend(engine, sidecar=sidecar) as trt_backend:
        inputs, labels, what = validation_inputs(config, info, trt_backend.profile[1][1:], config.val_samples)
        if len(inputs) < trt_backend.min_batch:
            raise InputError(f"only {len(inputs)} validation samples for an engine whose min batch is "
                             f"{trt_backend.min_batch}; give more --val-samples or data")
        if labels is not None:
            labels = np.asarray(labels)[:len(inputs)]
        log.info("validating the engine against ONNX Runtime (CPU) on %d %s...", len(inputs), what)
        candidates = {}
        if intermediate is not None:
            candidates[f"onnxruntime {sidecar.built_from.get('precision')} (cpu)"] = OnnxRuntimeBackend(
                intermediate, providers=["CPUExecutionProvider"])
        candidates[f"tensorrt {sidecar.precision}"] = trt_backend
        reference_backend = OnnxRuntimeBackend(reference, providers=["CPUExecutionProvider"])
        agreement = config.min_agreement if config.min_agreement is not None else DEFAULT_AGREEMENT.get(
            sidecar.precision, 0.95)
        return validate_backends(reference_backend, candidates, inputs, labels,
                                 Gates(max_top1_drop=config.max_top1_drop, min_agreement=agreement),
                                 reference_name=f"onnxruntime {reference.name} (cpu)",
                                 max_batch=trt_backend.max_batch, data=f"{len(inputs)} {what}")
