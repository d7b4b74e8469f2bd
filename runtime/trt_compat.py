"""Every difference between TensorRT flavours and versions, in one place.

Two flavours share one API: TensorRT (`tensorrt`, 10.x and 11.x; JetPack, datacenter and
desktop GPUs) and TensorRT for RTX (`tensorrt_rtx`, 1.x; RTX GPUs, builds without a GPU). The
builder and the runtime never test a version or probe for an attribute themselves; they ask
`TensorRT` (a thin wrapper around the imported module) and get either the right value for this
flavour and version or a `CompatibilityError` with one message shape:
"X is not available on TensorRT N.M; <what to do instead>" (or "on TensorRT for RTX 1.7").
Messages name the build options as `BuildConfig` fields; the CLI says their flags.

What differs (sources: NVIDIA's TensorRT 10.x and 11.x Python API references and binding sources,
the "TensorRT 10.x to 11.x" migration guide, and the TensorRT for RTX 1.x documentation on
engine compatibility, CPU-only ahead-of-time builds and the runtime cache):
- network flags: EXPLICIT_BATCH is never used (ignored in 10, removed in 11); STRONGLY_TYPED
  is opt-in on 10.x and implicit on 11 and RTX (weakly typed networks do not exist there);
- precision builder flags (FP16, INT8, ...): 10.x only;
- implicit-quantization calibrators (IInt8EntropyCalibrator2, IInt8MinMaxCalibrator) and the
  calibration profile: 10.x only; calibration caches: TensorRT only (11 writes one for 10.x);
- DLA: TensorRT <= 10.7, or 11.4.1+ (Jetson AGX Orin); never RTX;
- hardware compatibility levels (by feature detection; SAME_COMPUTE_CAPABILITY from 10.9),
  version-compatible plans and timing caches: TensorRT only (RTX compiles its kernels on the
  device and keeps them in a runtime cache instead);
- target compute capabilities chosen at build time, without a GPU: RTX only;
- engine memory: device_memory_size_v2 (10.1+, 11, RTX) or device_memory_size (10.0);
- a header-only engine validity check before deserializing: RTX.

Nothing here imports tensorrt at module level; `load_tensorrt()` does, when asked.
"""

from __future__ import annotations

import collections
import importlib
import itertools
import re
import weakref
from dataclasses import dataclass
from typing import Any

from rexport.errors import CompatibilityError, InputError, MissingDependency, qualified, require

CALIBRATION_METHODS = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}
HARDWARE_COMPATIBILITY = {"none": "NONE", "ampere_plus": "AMPERE_PLUS",
                          "same_compute_capability": "SAME_COMPUTE_CAPABILITY"}
BUILD = "BuildConfig"  # the owner of the fields messages name (rexport.exporter.tensorrt.BuildConfig)
# trt.ILogger.Severity member names, most severe first.
SEVERITIES = ("INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE")


@dataclass(frozen=True)
class Flavour:
    key: str  # what --rtx / BuildConfig.flavour / the sidecar say: "tensorrt" or "rtx"
    module: str  # the Python module
    title: str  # how messages name it
    extra: str  # the rexport extra that installs it
    install: str  # the rest of the install hint

    @property
    def install_hint(self) -> str:
        return f"run: pip install 'rexport[{self.extra}]'{self.install}"


FLAVOURS = {
    "tensorrt": Flavour("tensorrt", "tensorrt", "TensorRT", "trt", " on a machine with NVIDIA drivers"),
    "rtx": Flavour("rtx", "tensorrt_rtx", "TensorRT for RTX", "rtx", " (builds engines for RTX GPUs, "
                                                                      "even on a machine without a GPU)"),
}
INSTALL_HINT = FLAVOURS["tensorrt"].install_hint
_LOGGERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # module -> its one CollectingLogger
# RTX builds without a GPU target these unless told otherwise: RTX 30, 40 and 50 series
DEFAULT_RTX_TARGETS = ("8.6", "8.9", "12.0")


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


def product_name(flavour: str, version: str | TrtVersion) -> str:
    """"TensorRT 10.3" or "TensorRT for RTX 1.7": how every message names a TensorRT."""
    version = version if isinstance(version, TrtVersion) else TrtVersion.parse(version)
    return f"{FLAVOURS[flavour].title} {version.short}"


def parse_compute_capability(text: str | tuple[int, int]) -> tuple[int, int]:
    """"8.6", "12.0", "sm_89" or (8, 6) -> (8, 6)."""
    if isinstance(text, tuple):
        return int(text[0]), int(text[1])
    s = str(text).strip().lower().removeprefix("sm_").removeprefix("sm")
    major, dot, minor = s.partition(".")
    if not dot and major.isdigit() and len(major) >= 2:  # "89", "120"
        major, minor = major[:-1], major[-1]
    if not (major.isdigit() and minor.isdigit()):
        raise InputError(f"compute capability must look like 8.6 or 12.0, not {text!r}")
    return int(major), int(minor)


def format_compute_capability(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def import_tensorrt(purpose: str = "build and run TensorRT engines", flavour: str = "tensorrt"):
    """The module of one flavour, or a one-line MissingDependency naming the extra to install."""
    f = FLAVOURS[flavour]
    try:
        return require(f.module, f.extra, purpose)
    except MissingDependency:
        raise MissingDependency(f"{f.module} is needed to {purpose} but is not installed; {f.install_hint}") from None


def load_tensorrt(purpose: str = "build and run TensorRT engines", flavour: str | None = None) -> "TensorRT":
    """The TensorRT of `flavour` ("tensorrt" or "rtx"); None takes TensorRT, else TensorRT for RTX,
    whichever is installed (TensorRT first: it runs on every NVIDIA GPU, RTX only on RTX GPUs)."""
    if flavour is not None:
        if flavour not in FLAVOURS:
            raise InputError(f"TensorRT flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
        return TensorRT(import_tensorrt(purpose, flavour), flavour)
    try:
        return TensorRT(import_tensorrt(purpose, "tensorrt"), "tensorrt")
    except MissingDependency as missing:
        try:
            return TensorRT(import_tensorrt(purpose, "rtx"), "rtx")
        except MissingDependency:
            raise MissingDependency(f"{missing}, or pip install 'rexport[rtx]' for TensorRT for RTX "
                                    "(RTX GPUs; builds without a GPU)") from None


def installed_flavours() -> list[str]:
    """The flavours whose module imports here (for messages about the one that does not)."""
    found = []
    for key, f in FLAVOURS.items():
        try:
            importlib.import_module(f.module)
        except ImportError:
            continue
        found.append(key)
    return found


def dla_supported(version: TrtVersion) -> bool:
    """DLA exists in TensorRT <= 10.7 and again from 11.4.1 (Jetson AGX Orin); never in RTX."""
    return version < TrtVersion(10, 8) or version >= TrtVersion(11, 4, 1)


class TensorRT:
    """The imported `tensorrt` (or `tensorrt_rtx`) module plus the ways of using this flavour and version."""

    def __init__(self, module: Any, flavour: str = "tensorrt"):
        self.trt = module
        self.flavour = FLAVOURS[flavour]
        self.version = TrtVersion.parse(getattr(module, "__version__", ""))
        if not self.rtx and self.version.major < 10:
            raise CompatibilityError(f"TensorRT {self.version} is too old: rexport needs TensorRT 10 or newer "
                                     f"(JetPack 6 ships 10.3); {INSTALL_HINT}")

    @property
    def rtx(self) -> bool:
        return self.flavour.key == "rtx"

    @property
    def name(self) -> str:
        """"TensorRT 10.3" or "TensorRT for RTX 1.7"."""
        return product_name(self.flavour.key, self.version)

    @property
    def legacy(self) -> bool:
        """TensorRT 10.x: weak typing, precision flags and calibrators still exist."""
        return not self.rtx and self.version.major == 10

    def unavailable(self, feature: str, instead: str = "", fields: tuple[str, ...] = ()) -> CompatibilityError:
        """The one message shape for a flavour or version gap; `fields`: the BuildConfig fields it names."""
        return CompatibilityError(f"{feature} is not available on {self.name}" + (f"; {instead}" if instead else ""),
                                  fields=qualified(BUILD, *fields))

    # -- networks --------------------------------------------------------------------------
    def network_flags(self, typing: str) -> int:
        """Flags for builder.create_network(); never EXPLICIT_BATCH.

        typing: "strong" (types come from the ONNX), "weak" (10.x: builder flags choose precisions)
        or "default" (no preference: weak on 10.x, strong on 11 and RTX)."""
        if typing not in ("strong", "weak", "default"):
            raise ValueError(f"typing must be strong, weak or default, not {typing!r}")
        if not self.legacy:
            if typing == "weak":
                raise self.unavailable("a weakly typed network (weakly_typed)",
                                       "networks are always strongly typed: precision comes from the ONNX",
                                       ("weakly_typed",))
            return 0  # strongly typed is implicit on 11 and RTX
        if typing != "strong":
            return 0
        flag = getattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if flag is None:
            raise self.unavailable("NetworkDefinitionCreationFlag.STRONGLY_TYPED",
                                   "pass weakly_typed=True or upgrade TensorRT", ("weakly_typed",))
        return 1 << int(flag)

    # -- precision flags (10.x) ------------------------------------------------------------
    def require_precision_flag(self, name: str, instead: str = "", fields: tuple[str, ...] = ()) -> None:
        if not self.legacy:
            raise self.unavailable(f"BuilderFlag.{name}", instead or "precision comes from the ONNX (FP16 types, "
                                                                      "Q/DQ for INT8)", fields)

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
            raise InputError(f"the legacy calibrator takes calib_method {' or '.join(CALIBRATION_METHODS)}, "
                             f"not {method!r}", fields=qualified(BUILD, "calib_method"))
        if not self.legacy:
            raise self.unavailable(f"the INT8 calibrator ({CALIBRATION_METHODS[method]}, legacy_calibrator)",
                                   "leave out legacy_calibrator: rexport writes a Q/DQ ONNX instead",
                                   ("legacy_calibrator",))
        return getattr(self.trt, CALIBRATION_METHODS[method])

    def set_calibrator(self, config: Any, calibrator: Any, profile: Any | None) -> None:
        if not self.legacy:
            raise self.unavailable("IBuilderConfig.int8_calibrator",
                                   "leave out legacy_calibrator: rexport writes a Q/DQ ONNX instead",
                                   ("legacy_calibrator",))
        config.int8_calibrator = calibrator
        if profile is not None:
            config.set_calibration_profile(profile)

    def require_calibration_cache(self) -> None:
        if self.rtx:
            raise self.unavailable("a calibration cache (calib_cache)", "leave it out: the scales live in the "
                                                                        "Q/DQ ONNX", ("calib_cache",))

    # -- builder options -------------------------------------------------------------------
    def hardware_compatibility(self, level: str) -> Any:
        if level not in HARDWARE_COMPATIBILITY:
            raise InputError(f"hardware_compatibility must be one of {', '.join(HARDWARE_COMPATIBILITY)}, "
                             f"not {level!r}", fields=qualified(BUILD, "hardware_compatibility"))
        if self.rtx:
            raise self.unavailable("a hardware compatibility level (hardware_compatibility)",
                                   "list the target GPUs in compute_capabilities instead",
                                   ("hardware_compatibility", "compute_capabilities"))
        enum = getattr(self.trt, "HardwareCompatibilityLevel", None)
        member = getattr(enum, HARDWARE_COMPATIBILITY[level], None) if enum is not None else None
        if member is None:
            raise self.unavailable(f"hardware compatibility level {level}")
        return member

    def require_version_compatible(self) -> None:
        if self.rtx:
            raise self.unavailable("a version-compatible engine (version_compatible)",
                                   "its engines load only on the release that built them: rebuild after upgrading",
                                   ("version_compatible",))

    def require_timing_cache(self) -> None:
        if self.rtx:
            raise self.unavailable("a timing cache (timing_cache)",
                                   "it chooses kernels on the device, and the runtime cache beside the engine "
                                   "keeps them", ("timing_cache",))

    def check_dla(self, builder: Any | None, core: int) -> None:
        """DLA core `core` is usable here, or a CompatibilityError saying why not (no builder: the version only)."""
        if self.rtx or not dla_supported(self.version):
            raise self.unavailable("DLA", "DLA needs TensorRT <= 10.7, or 11.4.1+ on Jetson AGX Orin; "
                                          "leave out dla_core to build for the GPU", ("dla_core",))
        if builder is None:
            return
        cores = int(getattr(builder, "num_DLA_cores", 0) or 0)
        if cores == 0:
            raise CompatibilityError("this device has no DLA cores (DLA exists on Jetson AGX Orin and Xavier); "
                                     "leave out dla_core to build for the GPU", fields=qualified(BUILD, "dla_core"))
        if not 0 <= core < cores:
            raise InputError(f"dla_core={core} does not exist: this device has {cores} DLA core(s), "
                             f"numbered 0 to {cores - 1}", fields=qualified(BUILD, "dla_core"))

    def use_dla(self, config: Any, core: int, gpu_fallback: bool) -> None:
        config.default_device_type = self.trt.DeviceType.DLA
        config.DLA_core = core
        if gpu_fallback:
            config.set_flag(self.trt.BuilderFlag.GPU_FALLBACK)

    # -- target GPUs (RTX) -----------------------------------------------------------------
    def compute_capabilities(self) -> list[str]:
        """The compute capabilities this RTX release can build for ("7.5", "8.6", "12.0", ...)."""
        if not self.rtx:
            raise self.unavailable("choosing target compute capabilities (compute_capabilities)",
                                   "TensorRT builds for the GPU it runs on: build on the target device "
                                   "(or use hardware_compatibility='ampere_plus')",
                                   ("compute_capabilities", "hardware_compatibility"))
        members = getattr(self.trt.ComputeCapability, "__members__", {})
        found = [parse_compute_capability(m) for m in members if re.fullmatch(r"SM\d{2,3}", m)]
        return [format_compute_capability(cc) for cc in sorted(found)]

    def check_targets(self, targets: tuple[str, ...]) -> tuple[str, ...]:
        """`targets` if this release builds for all of them, else one sentence naming what it builds for."""
        supported = self.compute_capabilities()
        unknown = [t for t in targets if t not in supported]
        if unknown:
            raise CompatibilityError(
                f"{self.name} cannot build for compute capability {', '.join(unknown)}: it builds for "
                f"{', '.join(supported)} (RTX and workstation GPUs; Jetson Orin is 8.7 and Hopper 9.0, which need "
                "TensorRT 10 or 11 on the device)")
        return targets

    def set_targets(self, builder_config: Any, targets: tuple[str, ...] | None) -> None:
        """Build for `targets` (compute capabilities), or for the GPU here when None."""
        enum = self.trt.ComputeCapability
        members = [enum.CURRENT] if targets is None else [
            getattr(enum, "SM{}{}".format(*parse_compute_capability(t))) for t in self.check_targets(targets)]
        builder_config.num_compute_capabilities = len(members)
        for i, member in enumerate(members):
            if not builder_config.set_compute_capability(member, i):
                raise CompatibilityError(f"{self.name} refused target compute capability {member}")

    def build_failure_hint(self, reason: str) -> str:
        """What to do about a build TensorRT gave up on, where this flavour has a known cause (naming
        BuildConfig's precision and compute_capabilities)."""
        if self.rtx and "Turing (SM75)" in reason and "FP32 GEMM" in reason:
            return (f"{self.name} has no FP32 GEMM on Turing (7.5): build with precision='fp16', or leave 7.5 out "
                    "of compute_capabilities")
        return "run with -v for TensorRT's full log"

    # -- runtime ---------------------------------------------------------------------------
    def device_memory_size(self, engine: Any) -> int | None:
        """Activation memory an execution context needs (v2 where it exists; removed v1 on 11)."""
        size = getattr(engine, "device_memory_size_v2", None)
        if size is None and self.legacy:
            size = getattr(engine, "device_memory_size", None)
        return int(size) if size is not None else None

    def engine_invalidity(self, runtime: Any, data: bytes) -> str | None:
        """Why this machine cannot load the plan, from its header (RTX's get_engine_validity), or None
        when it can or when this TensorRT has no such check."""
        check = getattr(runtime, "get_engine_validity", None)
        if check is None:
            return None
        validity, diagnostics = check(data)
        if getattr(validity, "name", str(validity)).endswith("INVALID"):
            flags = getattr(self.trt, "EngineInvalidityDiagnostics", None)
            members = getattr(flags, "__members__", {}) if flags is not None else {}
            reasons = [name.lower().replace("_", " ") for name, bit in members.items() if int(diagnostics) & int(bit)]
            return ", ".join(reasons) or "no reason given"
        return None

    def runtime_cache_supported(self) -> bool:
        return hasattr(self.trt, "IRuntimeCache")

    def numpy_dtype(self, dtype: Any):
        import numpy as np

        return np.dtype(self.trt.nptype(dtype))

    def severity_name(self, severity: Any) -> str:
        name = getattr(severity, "name", None) or str(severity).rsplit(".", 1)[-1]
        return name if name in SEVERITIES else str(name)

    def make_logger(self, keep: int = 1000) -> Any:
        """The process's ILogger for this module: it keeps the last `keep` messages above VERBOSE
        (to explain a failure; take a `mark()` first) and logs every message at DEBUG (`rexport -v`).

        One per module, because TensorRT keeps the first logger any builder or runtime was given
        and ignores later ones ("The logger passed into createInferBuilder differs from one
        already registered"): a second logger of our own would never hear of the second build."""
        logger = _LOGGERS.get(self.trt)
        if logger is None:
            logger = _LOGGERS[self.trt] = self._new_logger(keep)
        return logger

    def _new_logger(self, keep: int) -> Any:
        from rexport.console import log

        trt = self.trt
        compat = self

        class CollectingLogger(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)
                self.messages: collections.deque[tuple[int, str, str]] = collections.deque(maxlen=keep)
                self._count = itertools.count()
                self._next = 0

            def log(self, severity, msg):  # called by TensorRT, possibly from its own threads
                name = compat.severity_name(severity)
                log.debug("tensorrt %s: %s", name.lower(), msg)
                if name != "VERBOSE":
                    self._next = next(self._count) + 1
                    self.messages.append((self._next - 1, name, str(msg)))

            def mark(self) -> int:
                """A position: errors(since=mark) and explain(since=mark) look only at what came after."""
                return self._next

            def errors(self, since: int = 0) -> list[str]:
                return [m for i, s, m in self.messages if i >= since and s in ("INTERNAL_ERROR", "ERROR")]

            def explain(self, since: int = 0) -> str:
                """The last few errors TensorRT logged (one line), or the last warning, or a shrug."""
                errors = self.errors(since)
                if errors:
                    lines = [m.strip().splitlines()[0] for m in errors[-3:] if m.strip()]
                    return "; ".join(dict.fromkeys(lines))
                warnings = [m for i, s, m in self.messages if i >= since and s == "WARNING" and m.strip()]
                if warnings:
                    return f"no error was logged; the last warning: {warnings[-1].strip().splitlines()[0]}"
                return "TensorRT logged no reason (run with -v to see its full log)"

        return CollectingLogger()
