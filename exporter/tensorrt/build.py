"""build_engine(): an ONNX (or a bundle) -> a TensorRT engine + its sidecar, validated where it can run.

    options this TensorRT lacks are refused first (check_options), then the target GPUs are
    chosen (target_gpus: the GPU here, or for TensorRT for RTX a list built without one)
    -> precision plan and the ONNX to parse (precision.py) -> Builder -> network -> OnnxParser
    -> optimization profile (network.py) -> builder config (workspace, optimization level,
    hardware/version compatibility, DLA, targets, timing cache; caches.py)
    -> build_serialized_network (a None is explained from TensorRT's log)
    -> engine + sidecar written to temporary names, validated against ONNX Runtime when the
       engine can run here (validation.py), and renamed into place only if everything passed.
"""

from __future__ import annotations

import os
import shlex
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rexport.console import log
from rexport.errors import (CheckFailed, CompatibilityError, InputError, MissingDependency, RexportError, field_error,
                            qualified)
from rexport.exporter.tensorrt.caches import TimingCache, legacy_calibrator, save_calibration_cache
from rexport.exporter.tensorrt.config import BuildConfig, default_engine_name, format_shape
from rexport.exporter.tensorrt.network import network_inputs, parser_errors, profile_shapes
from rexport.exporter.tensorrt.precision import (OnnxSummary, PrecisionPlan, Route, plan_precision, prepare_onnx,
                                               read_onnx)
from rexport.exporter.tensorrt.validation import validate_engine
from rexport.files import atomic_output, check_output
from rexport.runtime import cuda
from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path
from rexport.runtime.metadata import ModelInfo, Precision
from rexport.runtime.trt_compat import CALIBRATION_METHODS, DEFAULT_RTX_TARGETS, TensorRT, load_tensorrt


@dataclass
class BuildResult:
    path: Path
    sidecar_path: Path
    sidecar: EngineSidecar
    plan: PrecisionPlan
    validation: Any | None  # rexport.runtime.validate.ValidationReport; None when not validated
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
        shapes = "; ".join(f"{n} {format_shape(p['min'])} / {format_shape(p['opt'])} / {format_shape(p['max'])}"
                           for n, p in s.profile.items())
        where = (f"built without a GPU for {s.describe_target()}" if s.built_without_gpu else
                 f"on {s.gpu_name} (compute {s.compute_capability})"
                 + (f", runs on compute {', '.join(s.targets)}" if len(s.targets) > 1 else ""))
        lines = [f"{arch} -> {self.path} ({size:.1f} MB, {s.precision}, {s.product} ({s.tensorrt_version}) {where}, "
                 f"built in {self.build_seconds:.1f}s)",
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
    from rexport.runtime.archive import is_archive
    from rexport.runtime.bundle import open_bundle

    if is_archive(bundle_dir):
        raise InputError(f"{bundle_dir} is a bundle archive; extract it (tar xzf) and build into the directory, "
                         "so the engine can be added to the bundle")
    bundle = open_bundle(bundle_dir)  # verifies every file first
    onnx_models = [bundle_dir / m["file"] for m in bundle.models if m["kind"] == "onnx"]
    for path in onnx_models:
        info = read_onnx(path).info
        if info is None or precision is None or info.precision != precision:
            continue
        if precision == Precision.fp16 or (info.calibration or {}).get("target") == "trt":
            return path
    fp32 = [p for p in onnx_models if read_onnx(p).precision == Precision.fp32]
    if not fp32:
        raise InputError(f"the bundle {bundle_dir} has no FP32 ONNX to build from")
    return fp32[0]


def check_options(compat: TensorRT, config: BuildConfig) -> None:
    """Refuse, before any work, every option this TensorRT flavour or version lacks (precision
    flags, the legacy calibrator and weak typing are refused by plan_precision)."""
    if config.hardware_compatibility != "none":
        compat.hardware_compatibility(config.hardware_compatibility)
    if config.version_compatible:
        compat.require_version_compatible()
    if config.timing_cache or config.merge_timing_caches:
        compat.require_timing_cache()
    if config.calib_cache:
        compat.require_calibration_cache()
    if config.dla_core is not None:
        compat.check_dla(None, int(config.dla_core))
    if config.compute_capabilities:
        compat.check_targets(config.compute_capabilities)


@dataclass(frozen=True)
class Targets:
    """The GPU here (None when there is none) and the compute capabilities the engine is built for
    (None: the GPU here, TensorRT's only way)."""

    gpu: cuda.GpuInfo | None
    compute_capabilities: tuple[str, ...] | None
    note: str | None = None

    @property
    def runs_here(self) -> bool:
        return self.gpu is not None and (self.compute_capabilities is None
                                         or self.gpu.compute_capability_str in self.compute_capabilities)

    @property
    def recorded(self) -> tuple[str, ...]:
        return self.compute_capabilities or (self.gpu.compute_capability_str,)


def target_gpus(compat: TensorRT, config: BuildConfig) -> Targets:
    """TensorRT builds for the GPU it runs on (and needs one); TensorRT for RTX builds for the GPUs
    it is told, for the GPU here, or, with no GPU here, for DEFAULT_RTX_TARGETS."""
    if not compat.rtx:
        return Targets(cuda.gpu_info(), None)
    try:
        gpu = cuda.gpu_info()
    except (CompatibilityError, MissingDependency):  # `rexport doctor` says why
        gpu = None
    supported = compat.compute_capabilities()
    if config.compute_capabilities:
        return Targets(gpu, compat.check_targets(config.compute_capabilities))
    if gpu is not None:
        if gpu.compute_capability_str not in supported:
            raise CompatibilityError(f"this GPU ({gpu.name}, compute capability {gpu.compute_capability_str}) is not "
                                     f"one {compat.name} builds for ({', '.join(supported)}); give "
                                     "compute_capabilities to build for RTX GPUs ahead of time, or use TensorRT here",
                                     fields=qualified(config, "compute_capabilities"))
        return Targets(gpu, None)
    targets = tuple(t for t in DEFAULT_RTX_TARGETS if t in supported)
    return Targets(None, targets, f"no GPU here: built ahead of time for compute capabilities {', '.join(targets)} "
                                  "(RTX 30, 40 and 50 series), as none were given")


def build_engine(source: str | os.PathLike, output: str | os.PathLike | None = None,
                 config: BuildConfig = BuildConfig()) -> BuildResult:
    """Build a TensorRT engine from an ONNX file (or a bundle directory) at `output`
    (+ `output.json`), validated unless told not to or unable to run here. Built from a bundle,
    the engine goes into the bundle (by default) and is added to its manifest."""
    start = time.monotonic()
    bundle_dir, onnx_path, output, side = _paths(Path(source), output, config)
    compat = load_tensorrt("build TensorRT engines", config.flavour)
    # the flavour that builds, recorded in the sidecar's options and rebuild command even when it was the
    # default choice (the only one installed): elsewhere the default can be the other one
    recorded = replace(config, flavour=compat.flavour.key)
    check_options(compat, config)
    targets = target_gpus(compat, config)
    source = read_onnx(onnx_path)
    plan = plan_precision(source, config, compat)
    notes: list[str] = [targets.note] if targets.note else []
    validate, reference = _validation(config, targets, onnx_path, source, output, notes)

    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", suffix=".work", dir=output.parent) as tmp:
        built_from_path, quantized = prepare_onnx(source, plan, config, Path(tmp), str(compat.version))
        built_from = source if built_from_path == onnx_path else read_onnx(built_from_path)
        info = built_from.info or source.info
        if info is None:
            notes.append(f"{onnx_path.name} has no rexport metadata: the sidecar cannot describe preprocessing")

        built = _build(compat, built_from, plan, config, info, targets, notes)

        info = _engine_info(info, plan, config, built)
        sidecar = _sidecar(compat, targets, plan, built, onnx_path, source, built_from, info, recorded, output)
        with atomic_output(output, overwrite=config.overwrite) as engine_tmp, \
                atomic_output(side, overwrite=config.overwrite) as side_tmp:
            engine_tmp.write_bytes(built.engine)
            sidecar.write(side_tmp)
            report = None
            if validate:
                report = _validated(engine_tmp, sidecar, reference, built_from_path, config, info)
            # caches only for an engine that passed: a calibration cache behind a failed engine would be reused
            timing_cache = built.timing.save() if built.timing is not None else None
            calibration_cache = save_calibration_cache(config, built.calibrator, quantized)
    if bundle_dir is not None and output.parent.resolve() == bundle_dir.resolve():
        from rexport.runtime.bundle import add_to_bundle

        add_to_bundle(bundle_dir, [output, side], "engine", plan.precision)
        notes.append(f"added {output.name} to the bundle {bundle_dir} (load it with model=\"engine\")")
    return BuildResult(output, side, sidecar, plan, report, time.monotonic() - start, built.seconds,
                       timing_cache, calibration_cache, notes)


def _paths(source: Path, output: str | os.PathLike | None,
           config: BuildConfig) -> tuple[Path | None, Path, Path, Path]:
    """(the bundle built from or None, the ONNX to build from, the engine, its sidecar): the outputs
    checked before any long work, never onto the ONNX."""
    from rexport.runtime.bundle import is_bundle

    bundle_dir = None
    if is_bundle(source):
        bundle_dir, onnx_path = source, bundle_source(source, config.precision)
    else:
        onnx_path = source
    if not onnx_path.is_file():
        raise InputError(f"{onnx_path} does not exist")
    if output is None:
        output = (bundle_dir or Path(".")) / default_engine_name(onnx_path, config.precision)
    output = check_output(output, overwrite=config.overwrite, inputs=[onnx_path])  # never onto the ONNX
    side = check_output(sidecar_path(output), overwrite=config.overwrite, inputs=[onnx_path, output])
    return bundle_dir, onnx_path, output, side


def _validation(config: BuildConfig, targets: Targets, onnx_path: Path, source: OnnxSummary, output: Path,
                notes: list[str]) -> tuple[bool, Path | None]:
    """(whether the engine is validated here, the ONNX it is compared with: --reference, else the
    source when it is FP32, else None: the ONNX it was built from), noting why where it matters."""
    reference = Path(config.reference) if config.reference else (onnx_path if source.precision == Precision.fp32 else None)
    validate = config.validate and targets.runs_here
    if config.validate and not targets.runs_here:
        here = "there is no GPU here" if targets.gpu is None else (
            f"this GPU ({targets.gpu.compute_capability_str}) is not one of its targets")
        notes.append(f"not validated: {here}; check it on the device with `rexport validate {output.name} "
                     "--val-data DIR` (or `rexport selftest BUNDLE`)")
    if validate and reference is None:
        notes.append(f"{onnx_path.name} is {source.precision}: validated against ONNX Runtime on the same file; "
                     "give the FP32 export as the reference to compare with FP32")
    if reference is not None and not reference.is_file():
        raise field_error(config, f"reference {reference} does not exist", "reference")
    return validate, reference


def _engine_info(info: ModelInfo | None, plan: PrecisionPlan, config: BuildConfig, built: _Built) -> ModelInfo | None:
    """The model description the sidecar carries: the engine's precision, and its calibration."""
    if info is None:
        return None
    calibration = info.calibration
    if plan.how == Route.LEGACY_CALIBRATOR:
        calibration = {"method": config.calib_method, "target": "trt", "calibrator": "TensorRT 10 "
                       + CALIBRATION_METHODS[config.calib_method], "batches": built.calibrator.batches_fed}
    return info.replace(precision=plan.precision, calibration=calibration)


def _sidecar(compat: TensorRT, targets: Targets, plan: PrecisionPlan, built: _Built, onnx_path: Path,
             source: OnnxSummary, built_from: OnnxSummary, info: ModelInfo | None, recorded: BuildConfig,
             output: Path) -> EngineSidecar:
    gpu = targets.gpu
    return EngineSidecar(
        tensorrt_version=str(compat.version), flavour=compat.flavour.key, targets=targets.recorded,
        gpu_name=gpu.name if gpu else "", compute_capability=gpu.compute_capability_str if gpu else "",
        precision=plan.precision,
        profile={n: {"min": list(lo), "opt": list(opt), "max": list(hi)} for n, (lo, opt, hi) in built.profile.items()},
        source_onnx={"path": onnx_path.name, "sha256": source.sha256, "precision": source.precision},
        built_from={"sha256": built_from.sha256, "precision": built_from.precision, "how": plan.describe()},
        build_options=recorded.to_dict(), model=info,
        rebuild_command=rebuild_command(onnx_path, output, recorded))


def _validated(engine: Path, sidecar: EngineSidecar, reference: Path | None, built_from_path: Path,
               config: BuildConfig, info: ModelInfo | None):
    """The validation report of the engine just written (to its temporary name), or CheckFailed."""
    report = validate_engine(engine, sidecar, reference or built_from_path,
                             built_from_path if reference is not None and built_from_path != reference else None,
                             config, info)
    if not report.passed:
        raise CheckFailed(f"the TensorRT engine disagrees with {(reference or built_from_path).name} "
                          "beyond tolerance; nothing was written (see the report; validate=False skips "
                          "the check)", report, fields=qualified(config, "validate"))
    return report


def rebuild_command(onnx_path: Path, output: Path, config: BuildConfig) -> str:
    """The `rexport trt` command that rebuilds this engine, its flags from the one options table
    (defaults, --no-validate and --force left out)."""
    from rexport.options import command_line

    words = command_line(config, skip=("validate", "overwrite"))
    return shlex.join(["rexport", "trt", onnx_path.name, "-o", output.name, *words])


@dataclass
class _Built:
    engine: bytes
    seconds: float
    profile: dict[str, tuple[tuple, tuple, tuple]]
    timing: TimingCache | None
    calibrator: Any | None


def _build(compat: TensorRT, onnx: OnnxSummary, plan: PrecisionPlan, config: BuildConfig, info: ModelInfo | None,
           targets: Targets, notes: list[str]) -> _Built:
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
    if compat.rtx:
        compat.set_targets(builder_config, targets.compute_capabilities)
    compat.set_precision_flags(builder_config, fp16=plan.fp16_flag, int8=plan.int8_flag)
    if config.dla_core is not None:
        compat.check_dla(builder, int(config.dla_core))
        compat.use_dla(builder_config, int(config.dla_core), config.gpu_fallback)
    timing = TimingCache(compat, builder_config, config)
    notes += timing.notes
    calibrator = None
    if plan.how == Route.LEGACY_CALIBRATOR:
        calibrator = legacy_calibrator(compat, builder, builder_config, config, info, shapes, declared)

    log.info("building the %s %s engine (%s); this can take minutes...", compat.name, plan.precision,
             plan.describe())
    since = logger.mark()
    started = time.monotonic()
    try:
        serialized = builder.build_serialized_network(network, builder_config)
    finally:
        if calibrator is not None:
            calibrator.free()
    if calibrator is not None and calibrator.error is not None:
        raise RexportError(f"feeding calibration batches to TensorRT failed: {calibrator.error}")
    if serialized is None:
        reason = logger.explain(since)
        raise RexportError(f"{compat.name} could not build the engine: {reason} ({compat.build_failure_hint(reason)})",
                           fields=qualified(config, "precision", "compute_capabilities"))
    return _Built(bytes(memoryview(serialized)), time.monotonic() - started, shapes,
                  timing if timing.cache is not None else None, calibrator)
