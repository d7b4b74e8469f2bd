"""Every difference between TensorRT versions, in one place.

The builder and the runtime never test a TensorRT version or probe for an attribute
themselves; they ask `TensorRT` (a thin wrapper around the imported module) and get either
the right value for this version or a `CompatibilityError` with one message shape:
"X is not available on TensorRT N.M; <what to do instead>".

What differs (TENSORRT.md has the sources):
- network flags: EXPLICIT_BATCH is never used (ignored in 10, removed in 11); STRONGLY_TYPED
  is opt-in on 10.x and implicit on 11 (weakly typed networks do not exist there);
- precision builder flags (FP16, INT8, ...): 10.x only;
- implicit-quantization calibrators (IInt8EntropyCalibrator2, IInt8MinMaxCalibrator) and the
  calibration profile: 10.x only;
- DLA: TensorRT <= 10.7, or 11.4.1+ (Jetson AGX Orin);
- engine memory: device_memory_size_v2 (10.x later releases, 11) or device_memory_size (10.x);
- hardware compatibility levels, by feature detection.

Nothing here imports tensorrt at module level; `load_tensorrt()` does, when asked.
"""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from typing import Any

from rexport.errors import CompatibilityError, InputError, MissingDependency, require

INSTALL_HINT = "run: pip install 'rexport[trt]' on a machine with NVIDIA drivers"
CALIBRATION_METHODS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere_plus": "AMPERE_PLUS",
                          "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
# trt.ILogger.Severity member names, most severe first.
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0
    build: int = 0

    @classmethod
    def parse(cls, text: str) -> "TrtVersion":
        """"10.3.0.30", "11.1.0" or "11.4.1.post1" -> TrtVersion (unknown suffixes are ignored)."""
        numbers = [int(p) for p in re.findall(r"\d+", str(text).split("+")[0])[:4]]
        if len(numbers) < 2:
            raise CompatibilityError(f"cannot read the TensorRT version {text!r}; reinstall TensorRT "
                                     f"({INSTALL_HINT})")
        return cls(*numbers)

    @property
    def short(self) -> str:
        return f"{self.major}.{self.minor}"

    @property
    def plan_key(self) -> tuple[int, int, int]:
        """What a serialized engine or timing cache is tied to: major.minor.patch."""
        return self.major, self.minor, self.patch

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f".{self.build}" if self.build else "")


def import_tensorrt(purpose: str = "build and run TensorRT engines"):
    """The `tensorrt` module, or a one-line MissingDependency naming the extra and the drivers."""
    try:
        return require("tensorrt", "trt", purpose)
    except MissingDependency:
        raise MissingDependency(f"tensorrt is needed to {purpose} but is not installed; {INSTALL_HINT}") from None


def load_tensorrt(purpose: str = "build and run TensorRT engines") -> "TensorRT":
    return TensorRT(import_tensorrt(purpose))


def unavailable(feature: str, version: TrtVersion, instead: str = "") -> CompatibilityError:
    """The one message shape for a version gap."""
    return CompatibilityError(f"{feature} is not available on TensorRT {version.short}" + (f"; {instead}" if instead else ""))


def dla_supported(version: TrtVersion) -> bool:
    """DLA exists in TensorRT <= 10.7 and again from 11.4.1 (Jetson AGX Orin)."""
    return version < TrtVersion(10, 8) or version >= TrtVersion(11, 4, 1)


class TensorRT:
    """The imported `tensorrt` module plus the version-dependent ways of using it."""

    def __init__(self, module: Any):
        self.trt = module
        self.version = TrtVersion.parse(getattr(module, "__version__", ""))
        if self.version.major < 10:
            raise CompatibilityError(f"TensorRT {self.version} is too old: rexport needs TensorRT 10 or newer "
                                     f"(JetPack 6 ships 10.3); {INSTALL_HINT}")

    @property
    def legacy(self) -> bool:
        """TensorRT 10.x: weak typing, precision flags and calibrators still exist."""
        return self.version.major == 10

    # -- networks --------------------------------------------------------------------------
    def network_flags(self, typing: str) -> int:
        """Flags for builder.create_network(); never EXPLICIT_BATCH.

        typing: "strong" (types come from the ONNX), "weak" (10.x: builder flags choose precisions)
        or "default" (no preference: weak on 10.x, strong on 11)."""
        if typing not in ("strong", "weak", "default"):
            raise ValueError(f"typing must be strong, weak or default, not {typing!r}")
        if not self.legacy:
            if typing == "weak":
                raise unavailable("a weakly typed network (--weakly-typed)", self.version,
                                  "networks are always strongly typed: precision comes from the ONNX")
            return 0  # strongly typed is implicit on 11
        if typing != "strong":
            return 0
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is None:
            raise unavailable("NetworkDefinitionCreationFlag.STRONGLY_TYPED", self.version,
                              "pass --weakly-typed or upgrade TensorRT")
        return 1 << int(flag)

    # -- precision flags (10.x) ------------------------------------------------------------
    def require_precision_flag(self, name: str, instead: str = "") -> None:
        if not self.legacy:
            raise unavailable(f"BuilderFlag.{name}", self.version,
                              instead or "precision comes from the ONNX (FP16 types, Q/DQ for INT8)")

    def set_precision_flags(self, config: Any, *, fp16: bool = False, int8: bool = False) -> list[str]:
        """Set BuilderFlag.FP16 / INT8 on a weakly typed 10.x build; returns the names set."""
        wanted = [name for name, on in (("FP16", fp16), ("INT8", int8)) if on]
        for name in wanted:
            self.require_precision_flag(name)
        for name in wanted:
            config.set_flag(getattr(self.trt.BuilderFlag, name))
        return wanted

    # -- implicit quantization (10.x) ------------------------------------------------------
    def calibrator_base(self, method: str) -> type:
        """The TensorRT calibrator class a legacy calibrator subclasses."""
        if method not in CALIBRATION_METHODS:
            raise InputError(f"the legacy calibrator takes --calib-method {' or '.join(CALIBRATION_METHODS)}, "
                             f"not {method!r}")
        if not self.legacy:
            raise unavailable(f"the INT8 calibrator ({CALIBRATION_METHODS[method]}, --legacy-calibrator)",
                              self.version, "leave out --legacy-calibrator: rexport writes a Q/DQ ONNX instead")
        return getattr(self.trt, CALIBRATION_METHODS[method])

    def set_calibrator(self, config: Any, calibrator: Any, profile: Any | None) -> None:
        if not self.legacy:
            raise unavailable("IBuilderConfig.int8_calibrator", self.version,
                              "leave out --legacy-calibrator: rexport writes a Q/DQ ONNX instead")
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)

    # -- builder options -------------------------------------------------------------------
    def hardware_compatibility(self, level: str) -> Any:
        if level not in HARDWARE_COMPATIBILITY:
            raise InputError(f"hardware compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                             f"not {level!r}")
        enum = getattr(self.trt, "HardwareCompatibilityLevel", None)
        member = getattr(enum, HARDWARE_COMPATIBILITY[level], None) if enum is not None else None
        if member is None:
            raise unavailable(f"hardware compatibility level {level}", self.version)
        return member

    def check_dla(self, builder: Any, core: int) -> None:
        """DLA core `core` is usable here, or a CompatibilityError saying why not."""
        if not dla_supported(self.version):
            raise unavailable("DLA", self.version, "DLA needs TensorRT <= 10.7, or 11.4.1+ on Jetson AGX Orin; "
                                                   "leave out --dla-core to build for the GPU")
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if cores == 0:
            raise CompatibilityError("this device has no DLA cores (DLA exists on Jetson AGX Orin and Xavier); "
                                     "leave out --dla-core to build for the GPU")
        if not 0 <= core < cores:
            raise InputError(f"--dla-core {core} does not exist: this device has {cores} DLA core(s), "
                             f"numbered 0 to {cores - 1}")

    def use_dla(self, config: Any, core: int, gpu_fallback: bool) -> None:
        config.default_device_type = self.trt.DeviceType.DLA
        config.DLA_core = core
        if gpu_fallback:
            config.set_flag(self.trt.BuilderFlag.GPU_FALLBACK)

    # -- runtime ---------------------------------------------------------------------------
    def device_memory_size(self, engine: Any) -> int | None:
        """Activation memory an execution context needs (v2 where it exists; removed v1 on 11)."""
        size = getattr(engine, "device_memory_size_v2", None)
        if size is None and self.legacy:
            size = getattr(engine, "device_memory_size", None)
        return int(size) if size is not None else None

    def numpy_dtype(self, dtype: Any):
        import numpy as np

        return np.dtype(self.trt.nptype(dtype))

    def severity_name(self, severity: Any) -> str:
        name = getattr(severity, "name", None) or str(severity).rsplit(".", 1)[-1]
        return name if name in SEVERITIES else str(name)

    def make_logger(self) -> Any:
        """An ILogger that keeps every message (to explain a failure) and logs it at DEBUG (`rexport -v`)."""
        from rexport.console import log

        trt = self.trt
        compat = self

        class CollectingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: list[tuple[str, str]] = []

            def log(self, severity, msg):  # called by TensorRT, possibly from its own threads
                name = compat.severity_name(severity)
                self.messages.append((name, str(msg)))
                log.debug("tensorrt %s: %s", name.lower(), msg)

            def errors(self, since: int = 0) -> list[str]:
                return [m for s, m in self.messages[since:] if s in ("INTERNAL_ERROR", "ERROR")]

            def explain(self, since: int = 0) -> str:
                """The last few errors TensorRT logged (one line), or the last warning, or a shrug."""
                errors = self.errors(since)
                if errors:
                    lines = [m.strip().splitlines()[0] for m in errors[-3:] if m.strip()]
                    return "; ".join(dict.fromkeys(lines))
                warnings = [m for s, m in self.messages[since:] if s == "WARNING" and m.strip()]
                if warnings:
                    return f"no error was logged; the last warning: {warnings[-1].strip().splitlines()[0]}"
                return "TensorRT logged no reason (run with -v to see its full log)"

        return CollectingLogger()


# -- what `rexport doctor` reports -----------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class EnvironmentReport:
    checks: list[Check]

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}

    def format(self) -> str:
        from rexport.console import table

        return table(("", "component", "status"), [("ok" if c.ok else "--", c.name, c.detail) for c in self.checks],
                     indent="")


def _version_of(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "installed"))


def inspect_environment() -> EnvironmentReport:
    """TensorRT, CUDA, cuda-python, onnxruntime, the GPU and DLA: what is here and what is missing."""
    from rexport.runtime import cuda

    checks: list[Check] = []
    compat: TensorRT | None = None
    try:
        compat = load_tensorrt()
        checks.append(Check("TensorRT", True, str(compat.version)))
    except (MissingDependency, CompatibilityError) as e:
        checks.append(Check("TensorRT", False, str(e)))

    gpu = None
    try:
        versions = cuda.cuda_versions()
        checks.append(Check("cuda-python", True, versions.pop("cuda-python")))
        driver = versions["driver"] not in ("none", "unavailable")
        checks.append(Check("CUDA", driver, ", ".join(f"{k} {v}" for k, v in versions.items())
                            + ("" if driver else " (no NVIDIA driver: install it, or use a machine that has one)")))
        gpu = cuda.gpu_info()
        checks.append(Check("GPU", True, f"{gpu.name}, compute capability {gpu.compute_capability_str}, "
                                         f"{gpu.total_memory / 2**30:.1f} GiB"))
    except MissingDependency as e:
        checks.append(Check("cuda-python", False, str(e)))
        checks.append(Check("CUDA", False, "unknown: needs cuda-python"))
        checks.append(Check("GPU", False, "unknown: needs cuda-python"))
    except CompatibilityError as e:
        if not any(c.name == "CUDA" for c in checks):
            checks.append(Check("CUDA", False, str(e)))
        checks.append(Check("GPU", False, str(e)))

    ort_version = _version_of("onnxruntime")
    if ort_version is None:
        checks.append(Check("onnxruntime", False, "not installed; run: pip install 'rexport[ort]' "
                                                  "(or 'rexport[gpu]' for CUDA/TensorRT providers)"))
    else:
        import onnxruntime

        checks.append(Check("onnxruntime", True, f"{ort_version}; providers: "
                                                 f"{', '.join(onnxruntime.get_available_providers())}"))
    onnx_version = _version_of("onnx")
    checks.append(Check("onnx", onnx_version is not None,
                        onnx_version or "not installed (reads ONNX precision for `rexport trt`); "
                                        "run: pip install 'rexport[trt]'"))
    checks.append(_dla_check(compat, gpu))
    return EnvironmentReport(checks)


def _dla_check(compat: TensorRT | None, gpu: Any) -> Check:
    if compat is None:
        return Check("DLA", False, "unknown: needs TensorRT")
    if not dla_supported(compat.version):
        return Check("DLA", False, str(unavailable("DLA", compat.version,
                                                   "DLA needs TensorRT <= 10.7, or 11.4.1+ on Jetson AGX Orin")))
    if gpu is None:
        return Check("DLA", False, "unknown: needs a visible GPU")
    logger = compat.make_logger()
    try:
        cores = int(compat.trt.Builder(logger).num_DLA_cores)
    except Exception as e:  # a Builder needs a working CUDA context; report what TensorRT said
        return Check("DLA", False, f"cannot ask TensorRT: {e}")
    if cores == 0:
        return Check("DLA", False, "no DLA cores on this device (DLA exists on Jetson AGX Orin and Xavier)")
    return Check("DLA", True, f"{cores} DLA core(s)")
