"""The double's TensorRT 11 and TensorRT for RTX surfaces against the real TensorRT for RTX (`tensorrt_rtx`).

FakeTensorRT models the documented TensorRT 10.x and 11.x Python APIs; real TensorRT cannot be
installed here, but TensorRT for RTX can, and it shares the TensorRT 11 API for everything
rexport touches. FakeTensorRT also models TensorRT for RTX itself (flavour="rtx"), and that surface
is held to the real module the same way, with nothing left out: the double's RTX classes
(IRuntimeConfig, IRuntimeCache), enums (ComputeCapability, EngineValidity,
EngineInvalidityDiagnostics, ExecutionContextAllocationStrategy) and RTX-only methods
(num_compute_capabilities, set/get_compute_capability, get_engine_validity, create_runtime_config,
the overloaded create_execution_context, each overload on its own) must be the real ones.
Wherever the double and `tensorrt_rtx` share a name, this compares:

- module level: every class, enum and function the double's 11.x surface exposes must exist in
  `tensorrt_rtx`, and what the double declares removed on 11.x must be absent there;
- for each class the double models (Builder, INetworkDefinition, OnnxParser, ParserError,
  IOptimizationProfile, IBuilderConfig, ITimingCache, IHostMemory, Runtime, ICudaEngine,
  IExecutionContext, ITensor, ILogger; on RTX also IRuntimeConfig, IRuntimeCache): every public
  attribute of the double's object
  - is a method where the real one is a method, and data (a property) where the real one is a
    property; a read-only real property must not be writable on the double, and a writable one
    must be writable;
  - where it is a method, takes the parameters pybind declares (read from the binding's
    `__doc__` signature, each overload tried): the same names in the same order, a default
    exactly where the real parameter has one; the double may leave out trailing optional
    parameters (a call that passes one then fails on the double, loudly);
  - is absent from the real class only if it is one of the double's own test hooks;
  and what the double declares removed on 11.x is absent from the real class;
- enums (BuilderFlag, NetworkDefinitionCreationFlag, MemoryPoolType, HardwareCompatibilityLevel,
  DeviceType, TensorIOMode, DataType, ErrorCode, ILogger.Severity): each member of the double must
  exist in the real enum with the same integer value; members the double removes must be absent;
- what the builder side returns, for real (TensorRT for RTX builds without a GPU): the same calls on
  both, for the tiny classifier: every readable property both have gives the same kind of value
  (bool, int, str, sequence, which enum, ...); default flags and settings, profile shapes, the
  parser's error for an op it has no importer for, a refused profile, an unknown network flag and
  a build without a profile give the same results. (Engines and contexts need a GPU to load.)
  On RTX, against a double without a GPU (this machine has none): the target compute capability
  rules (count, NONE, CURRENT, the index range, a resized list), a build for SM89, for nothing set,
  with a NONE left and for CURRENT without a GPU, the timing-cache calls (no-ops that warn),
  get_engine_validity of garbage and of a plan, and deserializing a plan without a GPU.

Every difference fails the test unless the surface's allowlist (ALLOWLIST, plus ALLOWLIST_11 for
the 11.x surface) names it, with its reason. An entry that no longer matches a difference fails
too, so the lists cannot go stale. Differences that are bugs of the double are fixed in the double
(tests/doubles/fake_tensorrt.py), never listed here.

Skipped (with the reason) where tensorrt_rtx is not installed: `pip install tensorrt-rtx`, or the
`[dev]` extra.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from doubles.fake_cuda import FakeCudaRuntime
from doubles.fake_tensorrt import (SURFACES, EnumMember, FakeBuilder, FakeBuilderConfig, FakeEnum, FakeTensorRT,
                                   OnnxRuntimeStandInEngine, Overloaded, Surface, rtx_only)
from doubles.tiny_onnx import write_tiny_classifier

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="tensorrt_rtx is not installed (pip install tensorrt-rtx, or the [dev] extra): "
                                       "the double's TensorRT 11 surface is checked against it")

HOOK = "the double's own test hook (what it recorded or was set up with), read by tests; not TensorRT API"

# difference -> why it is not a bug of the double. Keys: "Owner.name [aspect]". Both surfaces.
ALLOWLIST = {
    # -- the double's test hooks (absent from TensorRT by design) ---------------------------------
    **dict.fromkeys([f"tensorrt.{name} [double-only]" for name in (
        "cuda", "version_tuple", "major", "num_dla_cores", "removed_touched", "builds", "deserialize_calls",
        "executions", "concurrent_context_use", "explicit_batch_used", "fail_build_with", "tamper_outputs",
        "last_logger_error", "cache_key", "touch", "flavour", "rtx", "api11", "surface", "validity_checks",
        "kernels_compiled", "kernels_reused", "runtime_cache_loads")], HOOK),
    **dict.fromkeys([f"tensorrt.{name} [double-only]" for name in (
        "supported_compute_capabilities", "cuda_problem", "warn_timing_cache")],
                    "the double's own helper for its RTX behaviour (which GPUs RTX supports, whether the fake GPU "
                    "is usable, the timing-cache warning), called by the double; not TensorRT API"),
    **dict.fromkeys([f"INetworkDefinition.{name} [double-only]" for name in (
        "inputs", "outputs", "onnx_bytes", "has_qdq", "strongly_typed")], HOOK),
    **dict.fromkeys([f"OnnxParser.{name} [double-only]" for name in ("network", "logger", "errors")], HOOK),
    **dict.fromkeys([f"IOptimizationProfile.{name} [double-only]" for name in ("shapes", "valid")], HOOK),
    **dict.fromkeys([f"ITimingCache.{name} [double-only]" for name in ("key", "entries")], HOOK),
    **dict.fromkeys([f"IBuilderConfig.{name} [double-only]" for name in (
        "flag_names", "profiles", "memory_pools", "timing_cache")], HOOK),
    **dict.fromkeys([f"ICudaEngine.{name} [double-only]" for name in (
        "header", "onnx_bytes", "tensors", "session")], HOOK),
    **dict.fromkeys([f"IExecutionContext.{name} [double-only]" for name in ("shapes", "addresses")], HOOK),
}

# only on the 11.x surface
ALLOWLIST_11 = {
    **dict.fromkeys([f"BuilderFlag.{flag} [value]" for flag in ("VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
                                                                "STRIP_PLAN")],
                    "TensorRT 10 numbers BuilderFlag from its header (REJECT_EMPTY_ALGORITHMS = 12, "
                    "VERSION_COMPATIBLE = 13, ...); TensorRT for RTX 1.7 dropped REJECT_EMPTY_ALGORITHMS and "
                    "numbers the later flags one lower (VERSION_COMPATIBLE = 12). TensorRT 11's own numbering "
                    "could not be checked here, so the double keeps TensorRT 10's; rexport passes enum members, "
                    "never their integers (the double's RTX surface has RTX's numbers)"),
}


def allowlist(fake: FakeTensorRT) -> dict[str, str]:
    return ALLOWLIST if fake.rtx else {**ALLOWLIST, **ALLOWLIST_11}


# -- what the real module says -----------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    name: str
    has_default: bool


def _split_top_level(text: str) -> list[str]:
    """Split a pybind parameter list at the commas outside brackets ([...], (...), <...>)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[(<":
            depth += 1
        elif ch in "])>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return [p.strip() for p in parts]


def pybind_overloads(function, name: str) -> list[list[Param]]:
    """Each overload's parameters (without self), read from the pybind `__doc__` signature lines."""
    doc = inspect.getdoc(function) or ""
    overloads = []
    for line in doc.splitlines():
        line = re.sub(r"^\d+\.\s+", "", line.strip())
        if not line.startswith(name + "(") or line.startswith(name + "(*args, **kwargs)"):
            continue
        depth, end = 0, None
        for i, ch in enumerate(line[len(name):], start=len(name)):
            depth += ch == "("
            depth -= ch == ")"
            if depth == 0:
                end = i
                break
        params = []
        for part in _split_top_level(line[len(name) + 1:end]):
            pname = part.split(":", 1)[0].split("=", 1)[0].strip()
            if pname != "self":
                params.append(Param(pname, "=" in part.split(":", 1)[-1] or "=" in pname))
        overloads.append(params)
    return overloads


def real_kind(cls, name: str) -> str | None:
    """'method', 'property-ro', 'property-rw', 'class', 'constant', or None where the real class lacks it."""
    for klass in inspect.getmro(cls):
        if name in vars(klass):
            attr = vars(klass)[name]
            if isinstance(attr, property):
                return "property-ro" if attr.fset is None else "property-rw"
            if isinstance(attr, type):
                return "class"
            if callable(attr):
                return "method"
            return "constant"
    return None


# -- what the double says ----------------------------------------------------------------------


def double_kind(obj, name: str) -> str | None:
    """The same vocabulary for an attribute of a double's object (class attributes, then its own)."""
    for klass in inspect.getmro(type(obj)):
        if klass in (object, Surface, bytes) or name not in vars(klass):
            continue
        attr = vars(klass)[name]
        if isinstance(attr, property):
            return "property-ro" if attr.fset is None else "property-rw"
        if inspect.ismemberdescriptor(attr):  # a __slots__ attribute
            return "property-rw"
        if isinstance(attr, (staticmethod, classmethod, Overloaded)) or inspect.isfunction(attr):
            return "method"
        if isinstance(attr, FakeEnum):
            return "class"  # a pybind enum is a class
        if isinstance(attr, type):
            return "class"
        return "constant"
    if name in getattr(obj, "__dict__", {}):
        value = obj.__dict__[name]
        if isinstance(value, FakeEnum) or isinstance(value, type):
            return "class"
        return "method" if inspect.ismethod(value) else "property-rw"  # a plain attribute: readable and writable
    return None


def double_names(obj) -> set[str]:
    """The public attributes a double's object has (not those of object, bytes or Surface, nor those its
    version removed: they raise AttributeError)."""
    names = set()
    for klass in inspect.getmro(type(obj)):
        if klass not in (object, Surface, bytes):
            names |= {n for n in vars(klass) if not n.startswith("_")}
    names |= {n for n in getattr(obj, "__dict__", {}) if not n.startswith("_")}
    if isinstance(obj, Surface):
        names -= type(obj)._missing_for(obj._fake)  # removed on this surface, or RTX-only elsewhere
    return names


def double_params(function) -> list[Param]:
    sig = inspect.signature(function)
    return [Param(p.name, p.default is not inspect.Parameter.empty) for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]


def signature_difference(double_fn, real_fn, name: str) -> str | None:
    """None when some real overload accepts the double's parameters (see the module docstring). A double
    method that is itself overloaded (fake_tensorrt.Overloaded) is compared overload by overload."""
    variants = getattr(double_fn, "overloads", None)
    if variants is not None:
        problems = [signature_difference(variant, real_fn, name) for variant in variants]
        return "; ".join(p for p in problems if p) or None
    mine = double_params(double_fn)
    overloads = pybind_overloads(real_fn, name)
    if not overloads:
        return f"no pybind signature found in the __doc__ of the real {name}"
    for real in overloads:
        if len(mine) > len(real):
            continue
        same = all(a.name == b.name and a.has_default == b.has_default for a, b in zip(mine, real))
        if same and all(p.has_default for p in real[len(mine):]):
            return None
    shown = " | ".join(f"({', '.join(p.name + ('=...' if p.has_default else '') for p in o)})" for o in overloads)
    return f"double takes ({', '.join(p.name + ('=...' if p.has_default else '') for p in mine)}), real {shown}"


# -- the double's objects, made the way rexport makes them -------------------------------------


class Objects:
    """One object of each class the double models, from a build and a load of the tiny classifier."""

    def __init__(self, fake, logger, onnx_path: Path, engine: bool = True):
        self.module = fake
        self.builder = fake.Builder(logger)
        self.network = self.builder.create_network(0)
        self.parser = fake.OnnxParser(self.network, logger)
        assert self.parser.parse_from_file(str(onnx_path))
        self.tensor = self.network.get_input(0)
        self.config = self.builder.create_builder_config()
        self.profile = self.builder.create_optimization_profile()
        self.profile.set_shape(self.tensor.name, (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
        assert self.config.add_optimization_profile(self.profile) == 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # RTX: timing caches are no-ops there
            self.timing_cache = self.config.create_timing_cache(b"")
        self.host_memory = self.builder.build_serialized_network(self.network, self.config)
        self.runtime = fake.Runtime(logger)
        if engine:  # deserializing needs a GPU with the real module
            self.engine = self.runtime.deserialize_cuda_engine(self.host_memory)
            self.context = self.engine.create_execution_context()
            if getattr(fake, "rtx", False):  # TensorRT for RTX: the runtime cache's objects
                self.runtime_config = self.engine.create_runtime_config()
                self.runtime_cache = self.runtime_config.create_runtime_cache()
        self.logger = logger
        bad = write_tiny_classifier(onnx_path.with_name("bad.onnx"), "unsupported")
        # TensorRT's objects do not keep what they were made from alive: hold on to every one
        self.bad_network = self.builder.create_network(0)
        self.bad_parser = fake.OnnxParser(self.bad_network, logger)
        assert not self.bad_parser.parse_from_file(str(bad))
        self.parser_error = self.bad_parser.get_error(0)

    def by_real_name(self) -> dict[str, object]:
        objects = {"Builder": self.builder, "INetworkDefinition": self.network, "OnnxParser": self.parser,
                   "ParserError": self.parser_error, "IOptimizationProfile": self.profile,
                   "IBuilderConfig": self.config, "ITimingCache": self.timing_cache, "IHostMemory": self.host_memory,
                   "Runtime": self.runtime, "ITensor": self.tensor, "ILogger": self.logger}
        if hasattr(self, "engine"):
            objects.update({"ICudaEngine": self.engine, "IExecutionContext": self.context})
        if hasattr(self, "runtime_config"):
            objects.update({"IRuntimeConfig": self.runtime_config, "IRuntimeCache": self.runtime_cache})
        return objects


# -- the comparison ----------------------------------------------------------------------------


def compare_enum(differences: dict, owner: str, fake_enum: FakeEnum, real_enum) -> int:
    real_members = {k: int(v) for k, v in real_enum.__members__.items()}
    for name, member in fake_enum.__members__.items():
        if name not in real_members:
            differences[f"{owner}.{name} [missing]"] = f"the double has {owner}.{name}; tensorrt_rtx does not"
        elif int(member) != real_members[name]:
            differences[f"{owner}.{name} [value]"] = (f"the double's {owner}.{name} is {int(member)}, "
                                                      f"tensorrt_rtx's is {real_members[name]}")
    for name in fake_enum._removed:
        if name in real_members:
            differences[f"{owner}.{name} [removed]"] = (f"the double removes {owner}.{name} on 11.x; "
                                                        f"tensorrt_rtx has it")
    return len(fake_enum.__members__)


def compare_object(differences: dict, real_name: str, obj, real_cls) -> tuple[int, int]:
    """Compare one double object with its real class; returns how many attributes and enum members
    were checked."""
    checked = members = 0
    for name in sorted(double_names(obj)):
        key = f"{real_name}.{name}"
        mine, theirs = double_kind(obj, name), real_kind(real_cls, name)
        if theirs is None:
            differences[f"{key} [double-only]"] = f"the double's {real_name} has {name}; tensorrt_rtx's does not"
            continue
        checked += 1
        if mine != theirs and {mine, theirs} != {"class"}:
            differences[f"{key} [kind]"] = f"the double's {name} is a {mine}, tensorrt_rtx's a {theirs}"
            continue
        if mine == "method":
            problem = signature_difference(getattr(obj, name), vars_lookup(real_cls, name), name)
            if problem:
                differences[f"{key} [signature]"] = problem
        if isinstance(getattr(obj, name, None), FakeEnum):
            members += compare_enum(differences, f"{real_name}.{name}", getattr(obj, name), getattr(real_cls, name))
    removed = type(obj)._removed_for(obj._fake) if isinstance(obj, Surface) else set()
    for name in sorted(removed):
        if real_kind(real_cls, name) is not None:
            differences[f"{real_name}.{name} [removed]"] = (f"the double removes {real_name}.{name} on "
                                                            f"{obj._fake.__version__}; tensorrt_rtx has it")
    return checked, members


def vars_lookup(cls, name: str):
    for klass in inspect.getmro(cls):
        if name in vars(klass):
            return vars(klass)[name]
    raise AttributeError(name)


@dataclass
class Comparison:
    differences: dict[str, str]
    classes: int
    attributes: int
    enum_members: int
    behaviours: int
    allowed: dict[str, str]  # the surface's allowlist


def compare(fake: FakeTensorRT, real, onnx_path: Path, real_objects: "Objects | None" = None) -> Comparison:
    differences: dict[str, str] = {}
    attributes = members = 0
    # module level
    for name in sorted(double_names(fake)):
        if name == "ILogger":
            continue  # compared as a class below
        value = getattr(fake, name)
        if not hasattr(real, name):
            differences[f"tensorrt.{name} [double-only]"] = f"the double's module has {name}; tensorrt_rtx does not"
            continue
        attributes += 1
        real_value = getattr(real, name)
        if isinstance(value, FakeEnum):
            members += compare_enum(differences, name, value, real_value)
        elif isinstance(value, type) and issubclass(value, Surface):  # IRuntimeCache: made by TensorRT, not by users
            if not isinstance(real_value, type):
                differences[f"tensorrt.{name} [kind]"] = (f"the double's {name} is a class, tensorrt_rtx's "
                                                          f"{real_value!r}")
        elif callable(value) and isinstance(real_value, type):  # Builder(logger): a class there, a factory here
            problem = signature_difference(value, real_value.__init__, "__init__")
            if problem:
                differences[f"{name}.__init__ [signature]"] = problem
        elif callable(value):
            theirs = [Param(p.name, p.default is not inspect.Parameter.empty)
                      for p in inspect.signature(real_value).parameters.values()]
            if double_params(value) != theirs:
                differences[f"tensorrt.{name} [signature]"] = (f"double takes {double_params(value)}, "
                                                               f"real {theirs}")
        elif name != "__version__":
            differences[f"tensorrt.{name} [kind]"] = f"the double's {name} is {value!r}"
    for name in sorted(fake._removed_module):
        if hasattr(real, name):
            differences[f"tensorrt.{name} [removed]"] = f"the double removes {name} on 11.x; tensorrt_rtx has it"
    # classes
    objects = Objects(fake, fake.ILogger(), onnx_path).by_real_name()
    for real_name, obj in objects.items():
        checked, enum_members = compare_object(differences, real_name, obj, getattr(real, real_name))
        attributes += checked
        members += enum_members
    behaviours = 0
    if real_objects is not None:
        # TensorRT for RTX's builder side runs here for real, on a machine without a GPU: so does the double's
        here = FakeTensorRT(fake.__version__, flavour="rtx", cuda=FakeCudaRuntime(driver="missing")) if fake.rtx \
            else fake
        behaviours = compare_behaviour(differences, here, real_objects, onnx_path)
        if fake.rtx:
            behaviours += compare_rtx_behaviour(differences, here, real, onnx_path)
    return Comparison(differences, len(objects), attributes, members, behaviours, allowlist(fake))


# -- what the objects return: the double's builder side against TensorRT for RTX's, for real ------


def category(value) -> str:
    """What rexport can do with a value: bool, int, str, none, sequence, enum:<Name>, or object."""
    if value is None:
        return "none"
    if isinstance(value, EnumMember):
        return f"enum:{value.owner}"
    if hasattr(type(value), "__members__") and hasattr(value, "name"):  # a pybind enum member
        return f"enum:{type(value).__name__}"
    for kind in (bool, int, str):
        if isinstance(value, kind):
            return kind.__name__
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "object"
    if hasattr(value, "__len__") and hasattr(value, "__getitem__"):  # tuple, list, Dims
        return "sequence"
    return "object"


def collecting_logger(module) -> object:
    class Collecting(module.ILogger):
        def __init__(self):
            module.ILogger.__init__(self)
            self.messages: list[tuple[str, str]] = []

        def log(self, severity, msg):
            self.messages.append((getattr(severity, "name", str(severity)), str(msg)))

    return Collecting()


def shapes(value) -> list[tuple]:
    return [tuple(int(d) for d in s) for s in value]


def compare_behaviour(differences: dict, fake: FakeTensorRT, real_objects: Objects, onnx_path: Path) -> int:
    """The same calls on both builder sides (no GPU needed): the values must be alike. Returns how
    many were compared."""
    mine = Objects(fake, collecting_logger(fake), onnx_path, engine=False)
    theirs = real_objects
    compared = 0

    def same(key: str, a, b, what: str = "value") -> None:
        nonlocal compared
        compared += 1
        if a != b:
            differences[f"{key} [{what}]"] = f"the double gives {a!r}, tensorrt_rtx {b!r}"

    # every readable property both have: the same kind of value
    for real_name, obj in mine.by_real_name().items():
        other = theirs.by_real_name().get(real_name)
        if other is None:
            continue
        for name in sorted(double_names(obj)):
            if double_kind(obj, name) not in ("property-ro", "property-rw") or not real_kind(type(other), name):
                continue
            try:
                value = getattr(other, name)
            except Exception:  # noqa: BLE001 - a write-only property (gpu_allocator) or one needing a GPU
                continue
            same(f"{real_name}.{name}", category(getattr(obj, name)), category(value), "type")
    # values that must agree
    same("INetworkDefinition.get_input", (mine.tensor.name, tuple(mine.tensor.shape), mine.tensor.dtype.name),
         (theirs.tensor.name, tuple(theirs.tensor.shape), theirs.tensor.dtype.name))
    same("IBuilderConfig.flags", mine.config.flags, theirs.config.flags)  # TF32 on by default
    def defaults(config) -> tuple:
        return (config.builder_optimization_level, config.DLA_core, config.default_device_type.name,
                config.hardware_compatibility_level.name)

    same("IBuilderConfig.defaults", defaults(mine.config), defaults(theirs.config))
    same("IOptimizationProfile.get_shape", shapes(mine.profile.get_shape("input")),
         shapes(theirs.profile.get_shape("input")))
    same("IOptimizationProfile.get_shape unknown input", mine.profile.get_shape("nope"),
         list(theirs.profile.get_shape("nope")))
    for objects in (mine, theirs):
        bad = objects.builder.create_optimization_profile()
        bad.set_shape("input", (4, 3, 8, 8), (1, 3, 8, 8), (8, 3, 8, 8))  # min > opt: refused when added
        config = objects.builder.create_builder_config()
        objects.bad_profile_index = config.add_optimization_profile(bad)
        objects.keep_profile = (bad, config)
    same("IBuilderConfig.add_optimization_profile min > opt", mine.bad_profile_index, theirs.bad_profile_index)
    same("Builder.create_network unknown flag", mine.builder.create_network(1 << 1) is None,
         theirs.builder.create_network(1 << 1) is None)
    for objects in (mine, theirs):  # a dynamic input and no optimization profile
        network = objects.builder.create_network(0)
        parser = objects.module.OnnxParser(network, objects.logger)
        assert parser.parse_from_file(str(onnx_path))
        since = len(objects.logger.messages)
        config = objects.builder.create_builder_config()
        built = objects.builder.build_serialized_network(network, config)
        errors = [m for severity, m in objects.logger.messages[since:] if severity == "ERROR"]
        objects.no_profile = (built is None, any("no optimization profile has been defined" in m for m in errors))
        objects.keep = (network, parser, config)
    same("Builder.build_serialized_network without a profile", mine.no_profile, theirs.no_profile)
    def error(e) -> tuple:
        return (e.desc(), int(e.node()), e.node_name(), e.node_operator(), category(e.code()),
                getattr(e.code(), "name", None))

    same("ParserError", error(mine.parser_error), error(theirs.parser_error))
    same("Runtime.engine_host_code_allowed", mine.runtime.engine_host_code_allowed,
         theirs.runtime.engine_host_code_allowed)
    same("IHostMemory", (category(mine.host_memory.nbytes), len(bytes(memoryview(mine.host_memory))) > 0),
         (category(theirs.host_memory.nbytes), len(bytes(memoryview(theirs.host_memory))) > 0))
    return compared


def compare_rtx_behaviour(differences: dict, fake: FakeTensorRT, real, onnx_path: Path) -> int:
    """TensorRT for RTX's own calls, made the same way on the double (without a GPU) and on tensorrt_rtx
    (this machine has no GPU either): the results must be the same. Returns how many were compared."""
    results: dict[str, dict] = {}
    keep = []  # TensorRT's objects do not keep what they were made from alive

    for label, module in (("double", fake), ("real", real)):
        logger = collecting_logger(module)
        builder = module.Builder(logger)
        cc = module.ComputeCapability
        r: dict[str, object] = {}
        config = builder.create_builder_config()
        since = len(logger.messages)
        r["num_compute_capabilities default"] = (config.num_compute_capabilities,
                                                 config.get_compute_capability(0).name)
        config.num_compute_capabilities = 1
        r["set_compute_capability NONE"] = config.set_compute_capability(cc.NONE, 0)
        r["set_compute_capability index out of range"] = config.set_compute_capability(cc.SM89, 1)
        config.num_compute_capabilities = 2
        r["set_compute_capability CURRENT beside another"] = (config.set_compute_capability(cc.CURRENT, 0),
                                                              config.set_compute_capability(cc.CURRENT, 1))
        r["set_compute_capability two targets"] = (
            config.set_compute_capability(cc.SM86, 0), config.set_compute_capability(cc.SM120, 1),
            [config.get_compute_capability(i).name for i in range(3)])
        config.num_compute_capabilities = 1
        r["num_compute_capabilities shrunk"] = [config.get_compute_capability(i).name for i in range(2)]
        r["set_compute_capability CURRENT alone"] = config.set_compute_capability(cc.CURRENT, 0)
        config.num_compute_capabilities = 3
        r["num_compute_capabilities grown"] = [config.get_compute_capability(i).name for i in range(3)]
        try:
            config.num_compute_capabilities = -1
            r["num_compute_capabilities negative"] = "accepted"
        except Exception as e:  # noqa: BLE001 - which exception is what is compared
            r["num_compute_capabilities negative"] = (type(e).__name__, str(e))
        try:
            config.set_compute_capability(89, 0)
            r["set_compute_capability an int"] = "accepted"
        except TypeError:
            r["set_compute_capability an int"] = "TypeError"
        # what they logged, without the CUDA error 1.7 logs after each where there is no driver (this machine)
        r["set_compute_capability logs"] = [m for s, m in logger.messages[since:] if s in ("ERROR", "INTERNAL_ERROR")
                                            and "catchCudaError" not in m]

        def build(targets: list[str | None] | None):
            network = builder.create_network(0)
            parser = module.OnnxParser(network, logger)
            assert parser.parse_from_file(str(onnx_path))
            config = builder.create_builder_config()
            profile = builder.create_optimization_profile()
            profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
            config.add_optimization_profile(profile)
            if targets is not None:
                config.num_compute_capabilities = len(targets)
                for i, target in enumerate(targets):
                    if target is not None:
                        assert config.set_compute_capability(getattr(cc, target), i)
            since = len(logger.messages)
            plan = builder.build_serialized_network(network, config)
            keep.append((network, parser, config, profile))
            return plan, [m for s, m in logger.messages[since:] if s in ("ERROR", "INTERNAL_ERROR")]

        plan, errors = build(["SM89"])
        r["build for SM89"] = (plan is not None, errors)
        built, errors = build(None)
        r["build with no target set"] = (built is not None, errors)
        built, errors = build([None])
        r["build with NONE left in the list"] = (built is None, errors)
        built, errors = build(["CURRENT"])
        r["build for CURRENT without a GPU"] = (built is None, errors)
        def warned(call) -> tuple:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = call()
            return result, [(w.category.__name__, str(w.message)) for w in caught]

        cache, r["create_timing_cache warns"] = warned(lambda: config.create_timing_cache(b""))
        r["set_timing_cache"] = warned(lambda: config.set_timing_cache(cache, False))
        r["get_timing_cache"] = warned(lambda: config.get_timing_cache() is cache)
        r["ITimingCache.reset"] = warned(cache.reset)
        r["ITimingCache.combine"] = warned(lambda: cache.combine(config.create_timing_cache(b""), False))
        r["ITimingCache.serialize"] = warned(lambda: category(cache.serialize()))[1]
        runtime = module.Runtime(logger)
        validity, diagnostics = runtime.get_engine_validity(b"not an engine" * 8)
        r["get_engine_validity of garbage"] = (category(validity), validity.name, category(diagnostics),
                                               int(diagnostics))
        validity, diagnostics = runtime.get_engine_validity(bytes(memoryview(plan)))
        r["get_engine_validity of a plan without a GPU"] = (validity.name, int(diagnostics))
        since = len(logger.messages)
        engine = runtime.deserialize_cuda_engine(bytes(memoryview(plan)))
        r["deserialize_cuda_engine without a GPU"] = (engine is None, any(
            "cudaError 35" in m for s, m in logger.messages[since:] if s == "ERROR"))
        keep.append((logger, builder, config, runtime, plan))
        results[label] = r

    for key, mine in results["double"].items():
        theirs = results["real"][key]
        if mine != theirs:
            differences[f"RTX {key} [value]"] = f"the double gives {mine!r}, tensorrt_rtx {theirs!r}"
    return len(results["double"])


# -- the tests ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real():
    import tensorrt_rtx

    return tensorrt_rtx


@pytest.fixture
def onnx_path(tmp_path):
    return write_tiny_classifier(tmp_path / "m.onnx")


@pytest.fixture(scope="module")
def real_objects(real, tmp_path_factory):
    """TensorRT for RTX's builder side for the tiny classifier (it builds without a GPU, in a fraction of a second)."""
    return Objects(real, collecting_logger(real), write_tiny_classifier(tmp_path_factory.mktemp("rtx") / "m.onnx"),
                   engine=False)


def eleven() -> FakeTensorRT:
    return FakeTensorRT(SURFACES["11.x"])


def rtx() -> FakeTensorRT:
    return FakeTensorRT.surface("rtx")


def unexplained(comparison: Comparison) -> dict[str, str]:
    return {k: v for k, v in comparison.differences.items() if k not in comparison.allowed}


def assert_matches(comparison: Comparison, real) -> None:
    new = unexplained(comparison)
    assert not new, "the double differs from tensorrt_rtx " + real.__version__ + ":\n" + "\n".join(
        f"  {k}: {v}" for k, v in sorted(new.items()))
    stale = sorted(set(comparison.allowed) - set(comparison.differences))
    assert not stale, f"allowlist entries that no longer match a difference (remove them): {stale}"


def test_the_double_s_tensorrt_11_surface_matches_tensorrt_for_rtx(real, real_objects, onnx_path):
    comparison = compare(eleven(), real, onnx_path, real_objects)
    assert_matches(comparison, real)
    # what it compared, so that a comparison that silently checks nothing fails
    assert comparison.classes == 13
    assert comparison.attributes >= 60, comparison.attributes
    assert comparison.enum_members >= 50, comparison.enum_members
    assert comparison.behaviours >= 25, comparison.behaviours


def test_the_double_s_tensorrt_for_rtx_surface_matches_tensorrt_rtx(real, real_objects, onnx_path):
    fake = rtx()
    assert fake.__version__ == real.__version__  # the release the double models is the one installed
    comparison = compare(fake, real, onnx_path, real_objects)
    assert_matches(comparison, real)
    assert comparison.classes == 15  # the 13 of 11.x, IRuntimeConfig and IRuntimeCache
    assert comparison.attributes >= 90, comparison.attributes
    assert comparison.enum_members >= 75, comparison.enum_members
    assert comparison.behaviours >= 50, comparison.behaviours
    rtx_only = {"ComputeCapability", "EngineValidity", "EngineInvalidityDiagnostics", "IRuntimeConfig",
                "IRuntimeCache"}
    assert rtx_only <= double_names(fake) and not rtx_only & double_names(eleven())


def test_the_signature_reader_reads_pybind_overloads(real):
    assert pybind_overloads(real.IOptimizationProfile.set_shape, "set_shape") == [
        [Param("input", False), Param("min", False), Param("opt", False), Param("max", False)]]
    assert pybind_overloads(real.ICudaEngine.create_execution_context, "create_execution_context") == [
        [Param("strategy", True)], [Param("runtime_config", True)]]
    assert pybind_overloads(real.OnnxParser.parse, "parse") == [[Param("model", False), Param("path", True)]]
    assert [len(o) for o in pybind_overloads(real.IExecutionContext.set_input_shape, "set_input_shape")] == [2, 2, 2]


# -- it can fail: a deliberately wrong double is caught -------------------------------------------


def test_a_method_turned_into_a_property_is_caught(real, onnx_path, monkeypatch):
    monkeypatch.setattr(FakeBuilderConfig, "get_timing_cache", property(lambda self: self.timing_cache))
    assert "IBuilderConfig.get_timing_cache [kind]" in unexplained(compare(eleven(), real, onnx_path))


def test_a_property_turned_into_a_method_is_caught(real, onnx_path, monkeypatch):
    monkeypatch.setattr(FakeBuilder, "num_DLA_cores", lambda self: 0, raising=False)
    new = unexplained(compare(eleven(), real, onnx_path))
    assert "Builder.num_DLA_cores [kind]" in new


def test_a_renamed_parameter_is_caught(real, onnx_path, monkeypatch):
    def set_memory_pool_limit(self, pool, size):  # TensorRT calls it pool_size
        pass

    monkeypatch.setattr(FakeBuilderConfig, "set_memory_pool_limit", set_memory_pool_limit)
    problem = unexplained(compare(eleven(), real, onnx_path)).get("IBuilderConfig.set_memory_pool_limit [signature]")
    assert problem == "double takes (pool, size), real (pool, pool_size)"


def test_a_default_the_real_method_lacks_is_caught(real, onnx_path, monkeypatch):
    def set_timing_cache(self, cache, ignore_mismatch=False):  # TensorRT requires ignore_mismatch
        pass

    monkeypatch.setattr(FakeBuilderConfig, "set_timing_cache", set_timing_cache)
    assert "IBuilderConfig.set_timing_cache [signature]" in unexplained(compare(eleven(), real, onnx_path))


def test_a_bogus_enum_member_and_a_wrong_value_are_caught(real, onnx_path):
    fake = eleven()
    object.__setattr__(fake.BuilderFlag, "BOGUS", EnumMember("BuilderFlag", "BOGUS", 99))
    object.__setattr__(fake.TensorIOMode, "OUTPUT", EnumMember("TensorIOMode", "OUTPUT", 7))
    new = unexplained(compare(fake, real, onnx_path))
    assert "BuilderFlag.BOGUS [missing]" in new
    assert new["TensorIOMode.OUTPUT [value]"] == "the double's TensorIOMode.OUTPUT is 7, tensorrt_rtx's is 2"


def test_removing_what_tensorrt_11_still_has_is_caught(real, onnx_path, monkeypatch):
    monkeypatch.setattr(FakeBuilderConfig, "_removed_in_11", FakeBuilderConfig._removed_in_11 | {"set_flag"})
    fake = eleven()
    fake.DeviceType._removed.add("DLA")
    new = unexplained(compare(fake, real, onnx_path))
    assert "IBuilderConfig.set_flag [removed]" in new and "DeviceType.DLA [removed]" in new


def test_an_invented_api_is_caught(real, onnx_path, monkeypatch):
    monkeypatch.setattr(FakeBuilder, "build_engine_fast", lambda self, network, config: None, raising=False)
    assert "Builder.build_engine_fast [double-only]" in unexplained(compare(eleven(), real, onnx_path))


def test_a_value_unlike_tensorrt_s_is_caught(real, real_objects, onnx_path, monkeypatch):
    from doubles.fake_tensorrt import FakeParserError

    monkeypatch.setattr(FakeParserError, "code", lambda self: 8)  # a bare int where TensorRT gives an ErrorCode
    monkeypatch.setattr(FakeBuilderConfig, "flags", property(lambda self: 0))  # TF32 is on by default there
    new = unexplained(compare(eleven(), real, onnx_path, real_objects))
    assert "'int', None), tensorrt_rtx (" in new["ParserError [value]"]
    assert "'enum:ErrorCode', 'INVALID_NODE')" in new["ParserError [value]"]
    assert new["IBuilderConfig.flags [value]"] == "the double gives 0, tensorrt_rtx 64"


# -- it can fail: a deliberately wrong RTX surface is caught ---------------------------------------


def test_a_wrong_rtx_enum_value_and_an_invented_member_are_caught(real, onnx_path):
    fake = rtx()
    object.__setattr__(fake.ComputeCapability, "SM89", EnumMember("ComputeCapability", "SM89", 8))
    object.__setattr__(fake.ComputeCapability, "SM90", EnumMember("ComputeCapability", "SM90", 90))  # no Hopper
    object.__setattr__(fake.EngineInvalidityDiagnostics, "UNSUPPORTED_CC",
                       EnumMember("EngineInvalidityDiagnostics", "UNSUPPORTED_CC", 4))
    new = unexplained(compare(fake, real, onnx_path))
    assert new["ComputeCapability.SM89 [value]"] == "the double's ComputeCapability.SM89 is 8, tensorrt_rtx's is 89"
    assert "ComputeCapability.SM90 [missing]" in new and "EngineInvalidityDiagnostics.UNSUPPORTED_CC [value]" in new


def test_a_renamed_rtx_parameter_is_caught(real, onnx_path, monkeypatch):
    def set_compute_capability(self, capability, index):  # TensorRT calls it compute_capability
        return True

    monkeypatch.setattr(FakeBuilderConfig, "set_compute_capability", set_compute_capability)
    problem = unexplained(compare(rtx(), real, onnx_path)).get("IBuilderConfig.set_compute_capability [signature]")
    assert problem == "double takes (capability, index), real (compute_capability, index)"


def test_each_overload_of_create_execution_context_is_compared(real, onnx_path, monkeypatch):
    def with_config(self, config=None):  # the real overload's parameter is runtime_config
        return None

    monkeypatch.setattr(OnnxRuntimeStandInEngine, "create_execution_context",
                        Overloaded(OnnxRuntimeStandInEngine._context_with_strategy, rtx_only(with_config)))
    OnnxRuntimeStandInEngine.create_execution_context.__set_name__(OnnxRuntimeStandInEngine, "create_execution_context")
    problem = unexplained(compare(rtx(), real, onnx_path)).get("ICudaEngine.create_execution_context [signature]")
    assert problem.startswith("double takes (config=...), real (strategy=...) | (runtime_config=...)")
    assert "ICudaEngine.create_execution_context [signature]" not in unexplained(compare(eleven(), real, onnx_path))


def test_rtx_behaviour_unlike_tensorrt_rtx_is_caught(real, real_objects, onnx_path, monkeypatch):
    from doubles.fake_tensorrt import FakeRuntime

    def lenient(self, compute_capability, index):  # CURRENT accepted beside other targets
        if 0 <= index < len(self._compute_capabilities):
            self._compute_capabilities[index] = compute_capability
        return True

    monkeypatch.setattr(FakeBuilderConfig, "set_compute_capability", lenient)
    monkeypatch.setattr(FakeRuntime, "get_engine_validity", lambda self, buffer: (self._fake.EngineValidity.VALID, 0))
    new = unexplained(compare(rtx(), real, onnx_path, real_objects))
    assert new["RTX set_compute_capability CURRENT beside another [value]"] == (
        "the double gives (True, True), tensorrt_rtx (False, False)")
    assert new["RTX get_engine_validity of garbage [value]"] == (
        "the double gives ('enum:EngineValidity', 'VALID', 'int', 0), tensorrt_rtx ('enum:EngineValidity', "
        "'INVALID', 'int', 32)")

