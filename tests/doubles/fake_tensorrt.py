"""FakeTensorRT: a test double of the documented TensorRT 10.x and 11.x Python API surfaces, and of
TensorRT for RTX 1.x (`tensorrt_rtx`, flavour="rtx").

It is NOT TensorRT and no proof that engines build or run: no kernels are chosen, nothing
touches a GPU. What it does:

- exposes the two API surfaces rexport uses, as documented (NVIDIA's TensorRT Python API
  and 10.x -> 11.x migration pages), and raises AttributeError exactly where a real version
  removed an API. On 11.x: BuilderFlag.FP16/INT8/BF16/OBEY_PRECISION_CONSTRAINTS (and the
  other precision flags), NetworkDefinitionCreationFlag.EXPLICIT_BATCH, the IInt8 calibrators,
  IBuilderConfig.int8_calibrator / set_calibration_profile, ICudaEngine.device_memory_size.
  On both (removed in 10): Builder.build_engine, IExecutionContext.execute / execute_async /
  execute_async_v2, every binding-index API, max_batch_size. Each such touch is also recorded in
  `removed_touched`, so a test fails even when the caller swallowed the AttributeError. What a
  version does not have yet is simply absent (AttributeError, not recorded): SAME_COMPUTE_CAPABILITY
  before 10.9, ICudaEngine.device_memory_size_v2 before 10.1;
- has the real enum values (TensorRT 10's headers; NetworkDefinitionCreationFlag.STRONGLY_TYPED is
  1 on 10.x and 0 on 11, where EXPLICIT_BATCH is gone), the real parameter names (a caller may pass
  arguments by keyword), read-only properties where TensorRT's are read-only, and refuses to set
  attributes TensorRT's classes do not have, like pybind does. tests/doubles/test_double_contract.py
  holds all of this against the real TensorRT for RTX (`tensorrt_rtx`), which shares the 11 API;
- checks what the builder asks of it the way TensorRT would refuse it: missing or inconsistent
  optimization profiles, precision flags on a strongly typed network, Q/DQ on a weakly typed
  network without INT8, calibrators without their base initialised, mismatched timing caches,
  plans loaded on another version or compute capability (logged as errors, then None);
- records every build (`builds`: flags, network flags, profiles, workspace, levels, DLA, ...);
- its "engine" computes outputs by running the source ONNX with ONNX Runtime on the CPU
  (`OnnxRuntimeStandInEngine`), reading and writing the FakeCudaRuntime's host-backed "device"
  memory at the addresses the caller set, so the backend's buffer, shape and copy logic is
  exercised for real. `tamper_outputs` makes that engine compute wrong results (as a bad plan or
  kernel would), so that validation has something real to catch;
- `plan_onnx(engine)` returns the ONNX a fake plan was built from: what the builder handed the parser;
  `plan_header(engine)` what else the plan records, `rewrite_plan_header` changes it (a damaged plan).

The TensorRT for RTX surface (FakeTensorRT(flavour="rtx"), installed as `tensorrt_rtx`) is the 11.x
surface with RTX's BuilderFlag values, plus what tensorrt_rtx 1.7.1.116 has (read from the installed
module: dir(), pybind __doc__ signatures, enum values; tests/doubles/test_double_contract.py holds it
there) and behaves the way it was seen to behave on this machine:
- ComputeCapability (NONE, CURRENT, SM75 ... SM121); IBuilderConfig.num_compute_capabilities,
  set_compute_capability(compute_capability, index) -> bool (False, and an API usage error logged in
  1.7's words, for an index outside the count, NONE, or CURRENT other than as the only target),
  get_compute_capability(index) (NONE outside the count). None set: the plan
  is for every supported GPU; CURRENT: for the fake GPU, and the build fails (logged error, None)
  without a usable GPU or on one RTX does not support (Hopper 9.0, Jetson 8.7). The plan records its
  targets (`plan_header(engine)["targets"]`, and the BuildRecord);
- Runtime.get_engine_validity(buffer) -> (EngineValidity, EngineInvalidityDiagnostics bits) from the
  plan header (VERSION_MISMATCH, UNSUPPORTED_CC, MALFORMED_ENGINE); deserialize_cuda_engine refuses a
  plan of another version or whose targets lack the fake GPU (logged error, None), and any plan
  without a usable GPU, as 1.7 does;
- ICudaEngine.create_runtime_config() -> IRuntimeConfig (create_runtime_cache, set_runtime_cache,
  get_runtime_cache); IRuntimeCache (serialize, deserialize -> False for bytes that are no cache of
  this release and GPU, reset); create_execution_context(runtime_config) beside (strategy=...), as
  the real overloaded pybind function. The JIT: a context "compiles" kernels for each plan and input
  shape on its first execute unless its runtime cache holds them (`kernels_compiled`, `kernels_reused`,
  `runtime_cache_loads` count, so a test can show that a second process reused the cache);
- no precision BuilderFlags, no calibrators (as 11); timing-cache calls are no-ops that warn
  (DeprecationWarning, RTX's words); no DLA cores (DeviceType.DLA and the DLA attributes exist, as in
  tensorrt_rtx, but num_DLA_cores is 0).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import inspect
import json
import struct
import sys
import threading
import time
import types
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from doubles.fake_cuda import FakeCudaRuntime, install_fake_cuda

# BuilderFlag values of TensorRT 10 (NvInfer.h; REJECT_EMPTY_ALGORITHMS = 12 and the flags rexport never
# touches are left out)
BUILDER_FLAGS = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                 "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "OBEY_PRECISION_CONSTRAINTS": 9,
                 "PREFER_PRECISION_CONSTRAINTS": 10, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 13,
                 "EXCLUDE_LEAN_RUNTIME": 14, "FP8": 15, "BF16": 17, "STRIP_PLAN": 19, "INT4": 22, "FP4": 26}
REMOVED_IN_11_BUILDER_FLAGS = {"FP16", "BF16", "INT8", "FP8", "INT4", "FP4", "OBEY_PRECISION_CONSTRAINTS",
                               "PREFER_PRECISION_CONSTRAINTS"}
ENGINE_MAGIC = b"FAKETRT-ENGINE-DOUBLE\0"
TIMING_MAGIC = b"FAKETRT-TIMING-DOUBLE\0"
RUNTIME_CACHE_MAGIC = b"FAKETRT-RUNTIME-CACHE-DOUBLE\0"
PRECISION_FLAGS = ("FP16", "BF16", "INT8", "FP8", "INT4", "FP4")

# -- TensorRT for RTX 1.7 (tensorrt_rtx 1.7.1.116, read from the installed module) ---------------
# BuilderFlag: TensorRT 10's flags without REJECT_EMPTY_ALGORITHMS and the precision flags, the later ones
# numbered one lower (rexport touches none of these values; the contract test holds them to the real module)
RTX_BUILDER_FLAGS = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 4, "DISABLE_TIMING_CACHE": 5, "TF32": 6,
                     "SPARSE_WEIGHTS": 7, "SAFETY_SCOPE": 8, "DIRECT_IO": 11, "VERSION_COMPATIBLE": 12,
                     "EXCLUDE_LEAN_RUNTIME": 13, "STRIP_PLAN": 18}
COMPUTE_CAPABILITIES = {"NONE": 0, "CURRENT": 1, "SM75": 75, "SM80": 80, "SM86": 86, "SM89": 89, "SM120": 120,
                        "SM121": 121}
ENGINE_VALIDITY = {"VALID": 0, "SUBOPTIMAL": 1, "INVALID": 2}
ENGINE_INVALIDITY_DIAGNOSTICS = {"VERSION_MISMATCH": 1, "UNSUPPORTED_CC": 2, "OLD_CUDA_DRIVER": 4,
                                 "OLD_CUDA_RUNTIME": 8, "INSUFFICIENT_GPU_MEMORY": 16, "MALFORMED_ENGINE": 32,
                                 "CUDA_ERROR": 64}
# what the real module logs or warns, from libtensorrt_rtx.so.1's strings and this machine's runs (no GPU)
RTX_TIMING_CACHE_WARNING = ("Use Deprecated in TensorRT-RTX 1.2. Timing cache operations are no-ops in TensorRT-RTX. "
                            "instead.")
CUDA_ERROR_35 = "cudaError 35: CUDA driver version is insufficient for CUDA runtime version"
CUDA_ERROR_100 = "cudaError 100: no CUDA-capable device is detected"
RTX_MALFORMED_HEADER = ("The engine header does not conform to the expected format for TensorRT-RTX. Ensure that the "
                        "engine was created with the same version of TensorRT-RTX as the current runtime.")
# ExecutionContextAllocationStrategy (TensorRT 10.0+ and RTX): on every surface
ALLOCATION_STRATEGIES = {"STATIC": 0, "ON_PROFILE_CHANGE": 1, "USER_MANAGED": 2}


def sm_tuple(name: str) -> tuple[int, int]:
    """"SM89" -> (8, 9), "SM120" -> (12, 0)."""
    digits = name[2:]
    return int(digits[:-1]), int(digits[-1])


# -- enums that can lose members ---------------------------------------------------------------


class EnumMember:
    def __init__(self, owner: str, name: str, value: int):
        self.owner, self.name, self.value = owner, name, value

    def __int__(self) -> int:
        return self.value

    def __index__(self) -> int:
        return self.value

    def __eq__(self, other) -> bool:
        return isinstance(other, EnumMember) and (other.owner, other.name) == (self.owner, self.name)

    def __hash__(self) -> int:
        return hash((self.owner, self.name))

    def __repr__(self) -> str:
        return f"<{self.owner}.{self.name}: {self.value}>"

    def __str__(self) -> str:  # pybind11: "ComputeCapability.SM89"
        return f"{self.owner}.{self.name}"


class FakeEnum:
    """A pybind11-style enum; members listed in `removed` raise AttributeError and are recorded.

    `members`: name -> the value TensorRT gives it (a list numbers them 0, 1, ...)."""

    def __init__(self, fake: "FakeTensorRT", name: str, members: dict[str, int] | list[str],
                 removed: set[str] = frozenset()):
        object.__setattr__(self, "_fake", fake)
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_removed", set(removed))
        if not isinstance(members, dict):
            members = {member: i for i, member in enumerate(members)}
        for member, value in members.items():
            if member not in removed:
                object.__setattr__(self, member, EnumMember(name, member, value))

    def __getattr__(self, item: str):
        if item in self._removed:
            self._fake.touch(f"{self._name}.{item}")
        raise AttributeError(f"type object '{self._name}' has no attribute '{item}'")

    @property
    def __members__(self) -> dict:
        return {k: v for k, v in vars(self).items() if isinstance(v, EnumMember)}


class Surface:
    """Base of the fake objects: attributes in `_removed` raise AttributeError and are recorded, even
    where the class defines them for older versions; attributes in `_rtx_only` exist on the TensorRT
    for RTX surface only (elsewhere AttributeError, not recorded: they never existed there); once built,
    an object refuses new attributes (setting a name TensorRT's class lacks raises AttributeError there
    too: pybind objects have no __dict__)."""

    _removed: frozenset = frozenset()
    _rtx_only: frozenset = frozenset()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def init_then_seal(self, *args, **kw):
            init(self, *args, **kw)
            if type(self).__init__ is init_then_seal:  # the most derived __init__ is done
                object.__setattr__(self, "_sealed", True)

        cls.__init__ = init_then_seal

    def __init__(self, fake: "FakeTensorRT"):
        object.__setattr__(self, "_fake", fake)

    def __getattribute__(self, item: str):
        if not item.startswith("_") and item in type(self)._missing_for(object.__getattribute__(self, "_fake")):
            raise AttributeError(item)  # Python then calls __getattr__, which records a removed one's touch
        return object.__getattribute__(self, item)

    def __getattr__(self, item: str):
        if item in type(self)._removed_for(self._fake):
            self._fake.touch(f"{type(self).__name__}.{item}")
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{item}'")

    def __setattr__(self, key: str, value) -> None:
        if key in type(self)._missing_for(self._fake):
            if key in type(self)._removed_for(self._fake):
                self._fake.touch(f"{type(self).__name__}.{key}")
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")
        if self.__dict__.get("_sealed") and not key.startswith("_") and key not in self.__dict__ \
                and not hasattr(type(self), key):
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{key}'")
        object.__setattr__(self, key, value)

    @classmethod
    def _removed_for(cls, fake: "FakeTensorRT") -> set[str]:
        """What this surface removed (touching it is recorded): 11 and RTX share TensorRT 11's removals."""
        removed = set(cls._removed)
        if fake.api11:
            removed |= set(getattr(cls, "_removed_in_11", ()))
        return removed

    @classmethod
    def _missing_for(cls, fake: "FakeTensorRT") -> set[str]:
        """Every public name the class defines that this surface lacks: removed, or RTX-only elsewhere."""
        return cls._removed_for(fake) | (set() if fake.rtx else set(cls._rtx_only))


class FakeHostMemory(bytes):
    """IHostMemory: a buffer (bytes here)."""

    @property
    def nbytes(self) -> int:
        return len(self)


class NoMatch(Exception):
    """Raised by an overload variant whose argument types do not fit: the next variant is tried."""


def rtx_only(variant):
    """Mark an overload variant that only the TensorRT for RTX surface has."""
    variant.rtx_only = True
    return variant


class Overloaded:
    """A pybind11-style overloaded method: the variants (functions of self, with the real overloads'
    parameter names and defaults) are tried in order; the first whose signature binds the call and
    that does not raise NoMatch runs; none: TypeError, as pybind raises. `method.overloads` lists the
    variants this surface has (the contract test compares each with a real overload)."""

    def __init__(self, *variants):
        self.variants = variants

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    def __get__(self, obj, objtype=None):
        if obj is None:
            return self
        variants = [v for v in self.variants if obj._fake.rtx or not getattr(v, "rtx_only", False)]
        name = self.name

        def call(*args, **kwargs):
            for variant in variants:
                try:
                    bound = inspect.signature(variant).bind(obj, *args, **kwargs)
                except TypeError:
                    continue
                try:
                    return variant(*bound.args, **bound.kwargs)
                except NoMatch:
                    continue
            raise TypeError(f"{name}(): incompatible function arguments. The following argument types are supported: "
                            + "; ".join(f"{name}{inspect.signature(v)}" for v in variants)
                            + f"; invoked with {args!r}, {kwargs!r}")

        call.__name__ = name
        call.overloads = variants
        return call


# -- records -----------------------------------------------------------------------------------


@dataclass
class BuildRecord:
    network_flags: int
    strongly_typed: bool
    builder_flags: set[str]
    profiles: list[dict[str, tuple]]
    workspace: int | None
    optimization_level: int | None
    hardware_compatibility: str | None
    device_type: str
    dla_core: int | None
    timing_cache_loaded: bool
    calibrator: Any | None = None
    calibration_profile: dict | None = None
    calibration_batches: list[np.ndarray] = field(default_factory=list)
    calibration_cache_read: bytes | None = None
    compute_capabilities: list[str] | None = None  # RTX: the ComputeCapability members asked for, by name
    targets: list[str] | None = None  # RTX: the compute capabilities the plan runs on ("8.9"), once resolved
    result: str = "built"


# -- network, parser ---------------------------------------------------------------------------


class FakeTensor:
    """ITensor: name and shape can be set, the data type only read (strongly typed on 11)."""

    __slots__ = ("name", "shape", "_dtype")

    def __init__(self, name: str, shape: tuple[int, ...], dtype: EnumMember):
        self.name, self.shape, self._dtype = name, shape, dtype

    @property
    def dtype(self) -> EnumMember:
        return self._dtype


class FakeNetwork(Surface):
    def __init__(self, fake: "FakeTensorRT", flags: int):
        super().__init__(fake)
        self._flags = flags
        self.inputs: list[FakeTensor] = []
        self.outputs: list[FakeTensor] = []
        self.onnx_bytes: bytes | None = None
        self.has_qdq = False
        self._num_layers = 0

    @property
    def flags(self) -> int:
        return self._flags

    @property
    def num_layers(self) -> int:
        return self._num_layers

    @property
    def strongly_typed(self) -> bool:
        strongly_typed = 1 << int(self._fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
        return self._fake.api11 or bool(self._flags & strongly_typed)

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_input(self, index: int) -> FakeTensor:
        return self.inputs[index]

    def get_output(self, index: int) -> FakeTensor:
        return self.outputs[index]


class FakeParserError:
    def __init__(self, desc: str, node: int, node_name: str, node_operator: str, code: EnumMember):
        self._desc, self._node, self._name, self._op, self._code = desc, node, node_name, node_operator, code

    def desc(self) -> str:
        return self._desc

    def node(self) -> int:
        return self._node

    def node_name(self) -> str:
        return self._name

    def node_operator(self) -> str:
        return self._op

    def code(self) -> EnumMember:
        return self._code


class FakeOnnxParser(Surface):
    def __init__(self, fake: "FakeTensorRT", network: FakeNetwork, logger):
        super().__init__(fake)
        self.network, self.logger = network, logger
        self.errors: list[FakeParserError] = []

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, index: int) -> FakeParserError:
        return self.errors[index]

    def clear_errors(self) -> None:
        self.errors.clear()

    def parse_from_file(self, model: str) -> bool:
        return self.parse(Path(model).read_bytes(), model)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        data = bytes(model)
        model = onnx.load_from_string(data)
        for i, node in enumerate(model.graph.node):
            if node.domain not in ("", "ai.onnx"):
                # a custom op: the parser has no importer for it, tries a plugin of that name and finds none
                # (onnx-tensorrt's FallbackPluginImporter; the text TensorRT for RTX 1.7 gives)
                self.errors.append(FakeParserError('creator && "Plugin not found, are the plugin name, version, and '
                                                   'namespace correct?"', i, node.name, node.op_type,
                                                   self._fake.ErrorCode.INVALID_NODE))
        if self.errors:
            return False
        dtypes = {onnx.TensorProto.FLOAT: self._fake.DataType.FLOAT, onnx.TensorProto.FLOAT16: self._fake.DataType.HALF}
        inits = {i.name for i in model.graph.initializer}

        def tensor(vi) -> FakeTensor:
            t = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            return FakeTensor(vi.name, dims, dtypes[t.elem_type])

        self.network.inputs = [tensor(vi) for vi in model.graph.input if vi.name not in inits]
        self.network.outputs = [tensor(vi) for vi in model.graph.output]
        self.network.onnx_bytes = data
        self.network.has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
        self.network._num_layers = len(model.graph.node)
        return True


# -- builder -----------------------------------------------------------------------------------


class FakeProfile(Surface):
    def __init__(self, fake):
        super().__init__(fake)
        self.shapes: dict[str, tuple] = {}

    def set_shape(self, input: str, min, opt, max) -> None:  # noqa: A002 - TensorRT's names
        self.shapes[input] = tuple(tuple(int(d) for d in s) for s in (min, opt, max))

    def get_shape(self, input: str):  # noqa: A002
        return [list(s) for s in self.shapes.get(input, ())]  # [] for an input without shapes, like TensorRT

    def valid(self) -> bool:
        return all(len(lo) == len(opt) == len(hi) and all(a <= b <= c for a, b, c in zip(lo, opt, hi))
                   for lo, opt, hi in self.shapes.values())


class FakeTimingCache(Surface):
    def __init__(self, fake, key: str, entries: dict[str, str]):
        super().__init__(fake)
        self.key, self.entries = key, dict(entries)

    def serialize(self) -> FakeHostMemory:
        self._fake.warn_timing_cache()
        return FakeHostMemory(TIMING_MAGIC + json.dumps({"key": self.key, "entries": self.entries}).encode())

    def combine(self, input_cache: "FakeTimingCache", ignore_mismatch: bool) -> bool:
        self._fake.warn_timing_cache()
        if input_cache.key != self.key and not ignore_mismatch:
            return False
        self.entries.update(input_cache.entries)
        return True

    def reset(self) -> bool:
        self._fake.warn_timing_cache()
        self.entries.clear()
        return True


class FakeBuilderConfig(Surface):
    _removed_in_11 = {"int8_calibrator", "set_calibration_profile", "get_calibration_profile",
                      "set_quantization_flag", "get_quantization_flag", "clear_quantization_flag",
                      "quantization_flags"}
    _rtx_only = frozenset({"num_compute_capabilities", "set_compute_capability", "get_compute_capability"})

    def __init__(self, fake, logger=None):
        super().__init__(fake)
        self._logger = logger  # the builder's: TensorRT reports API misuse there
        self.flag_names: set[str] = set()  # the flags the caller set (TF32 is on by default, as in TensorRT)
        self._tf32 = True
        self.profiles: list[FakeProfile] = []
        self.memory_pools: dict[str, int] = {}
        self.builder_optimization_level = 3
        self.hardware_compatibility_level = fake.HardwareCompatibilityLevel.NONE
        self.default_device_type = fake.DeviceType.GPU
        self.DLA_core = -1
        self.timing_cache: FakeTimingCache | None = None
        self._compute_capabilities: list[EnumMember] = []  # RTX: the targets, NONE where unset
        if not fake.api11:
            self.int8_calibrator = None
            self.calibration_profile = None

    @property
    def flags(self) -> int:
        """The BuilderFlags as TensorRT's bit mask (1 << value per flag)."""
        names = self.flag_names | ({"TF32"} if self._tf32 else set())
        return sum(1 << int(getattr(self._fake.BuilderFlag, n)) for n in names)

    @flags.setter
    def flags(self, mask: int) -> None:
        names = {n for n, m in self._fake.BuilderFlag.__members__.items() if int(mask) >> int(m) & 1}
        self._tf32 = "TF32" in names
        self.flag_names = names - {"TF32"}

    @staticmethod
    def _flag(flag) -> str:
        if not isinstance(flag, EnumMember) or flag.owner != "BuilderFlag":
            raise TypeError(f"set_flag(): incompatible function arguments: takes a BuilderFlag, not {flag!r}")
        return flag.name

    def set_flag(self, flag: EnumMember) -> None:
        name = self._flag(flag)
        if name == "TF32":
            self._tf32 = True
        else:
            self.flag_names.add(name)

    def get_flag(self, flag: EnumMember) -> bool:
        name = self._flag(flag)
        return self._tf32 if name == "TF32" else name in self.flag_names

    def clear_flag(self, flag: EnumMember) -> None:
        name = self._flag(flag)
        if name == "TF32":
            self._tf32 = False
        self.flag_names.discard(name)

    def set_memory_pool_limit(self, pool: EnumMember, pool_size: int) -> None:
        if not isinstance(pool, EnumMember) or pool.owner != "MemoryPoolType":
            raise TypeError(f"set_memory_pool_limit takes a MemoryPoolType, not {pool!r}")
        self.memory_pools[pool.name] = int(pool_size)

    def add_optimization_profile(self, profile: FakeProfile) -> int:
        if not profile.valid():
            return -1
        self.profiles.append(profile)
        return len(self.profiles) - 1

    def set_calibration_profile(self, profile: FakeProfile) -> bool:
        self.calibration_profile = profile
        return True

    def create_timing_cache(self, serialized_timing_cache: bytes):
        data = bytes(serialized_timing_cache)
        if not data:
            return FakeTimingCache(self._fake, self._fake.cache_key, {})
        if not data.startswith(TIMING_MAGIC):
            return None
        payload = json.loads(data[len(TIMING_MAGIC):])
        return FakeTimingCache(self._fake, payload["key"], payload["entries"])

    def set_timing_cache(self, cache: FakeTimingCache, ignore_mismatch: bool) -> bool:
        self._fake.warn_timing_cache()
        if cache.key != self._fake.cache_key and not ignore_mismatch and not self._fake.rtx:  # RTX: a no-op
            return False
        self.timing_cache = cache
        return True

    def get_timing_cache(self) -> FakeTimingCache | None:
        self._fake.warn_timing_cache()
        return self.timing_cache

    # -- TensorRT for RTX: target compute capabilities ----------------------------------------------
    def _usage_error(self, api: str, condition: str, line: int) -> None:
        """An API misuse, logged in TensorRT for RTX 1.7's words (libtensorrt_rtx.so.1, builderConfig.cpp)."""
        if self._logger is not None:
            self._logger.log(self._fake.ILogger.Severity.ERROR, f"IBuilderConfig::{api}: Error Code 3: API Usage Error "
                             f"(Parameter check failed, condition: {condition} In {api} at "
                             f"/_src/optimizer/api/builderConfig.cpp:{line})")

    @property
    def num_compute_capabilities(self) -> int:
        return len(self._compute_capabilities)

    @num_compute_capabilities.setter
    def num_compute_capabilities(self, count: int) -> None:
        if int(count) < 0:
            self._usage_error("setNbComputeCapabilities", "nbComputeCapabilities >= 0. Number of compute "
                              "capabilities must be non-negative.", 779)
            raise ValueError("Provided number of compute capabilities is incorrect")
        none = self._fake.ComputeCapability.NONE
        self._compute_capabilities = (self._compute_capabilities + [none] * int(count))[:int(count)]  # keeps a prefix

    def set_compute_capability(self, compute_capability: EnumMember, index: int) -> bool:
        """False, with an API usage error logged, for an index outside 0..num-1, NONE, or CURRENT anywhere
        but as the only target (checked in that order, as TensorRT for RTX 1.7 does)."""
        if not isinstance(compute_capability, EnumMember) or compute_capability.owner != "ComputeCapability":
            raise TypeError("set_compute_capability(): incompatible function arguments: takes a ComputeCapability, "
                            f"not {compute_capability!r}")
        index = int(index)
        if not 0 <= index < len(self._compute_capabilities):
            self._usage_error("setComputeCapability", "index >= 0 && index < std::ssize(mConfig.computeCapabilities)"
                              ". Index of compute capability is not in a valid range.", 796)
            return False
        if compute_capability.name == "NONE":
            self._usage_error("setComputeCapability", "computeCapability != ComputeCapability::kNONE. Compute "
                              "capability cannot be kNONE.", 798)
            return False
        if compute_capability.name == "CURRENT" and (index != 0 or len(self._compute_capabilities) != 1):
            self._usage_error("setComputeCapability", "(index == 0) && (mConfig.computeCapabilities.size() == 1). "
                              "When set to kCURRENT, the index must be 0 and the number of compute capabilities "
                              "must be 1.", 802)
            return False
        self._compute_capabilities[index] = compute_capability
        return True

    def get_compute_capability(self, index: int) -> EnumMember:
        index = int(index)
        if 0 <= index < len(self._compute_capabilities):
            return self._compute_capabilities[index]
        self._usage_error("getComputeCapability", "index >= 0 && index < std::ssize(mConfig.computeCapabilities). "
                          "Index of compute capability is not in a valid range.", 816)
        return self._fake.ComputeCapability.NONE  # what TensorRT for RTX 1.7 answers outside the range


class FakeBuilder(Surface):
    _removed = frozenset({"build_engine", "max_batch_size", "build_cuda_engine", "max_workspace_size"})
    _removed_in_11 = {"platform_has_fast_fp16", "platform_has_fast_int8"}

    def __init__(self, fake: "FakeTensorRT", logger):
        super().__init__(fake)
        self._logger = logger

    @property
    def logger(self):
        return self._logger

    @property
    def num_DLA_cores(self) -> int:  # noqa: N802 - TensorRT's name
        return self._fake.num_dla_cores

    def create_network(self, flags: int = 0) -> FakeNetwork | None:
        fake = self._fake
        if not fake.api11 and flags & 1:  # EXPLICIT_BATCH's bit: ignored on 10 (on 11 bit 0 is STRONGLY_TYPED)
            fake.explicit_batch_used = True
        known = sum(1 << int(m) for m in fake.NetworkDefinitionCreationFlag.__members__.values())
        if int(flags) & ~known:  # e.g. 1 << 1 on 11, where STRONGLY_TYPED is 0: TensorRT refuses, returns None
            self.logger.log(fake.ILogger.Severity.ERROR, "IBuilder::createNetworkV2: Error Code 3: API Usage Error "
                            "(Parameter check failed, condition: flagSet.toU32() < (1U << "
                            "EnumMax<NetworkDefinitionCreationFlag>()).)")
            return None
        return FakeNetwork(fake, int(flags))

    def create_builder_config(self) -> FakeBuilderConfig:
        return FakeBuilderConfig(self._fake, self._logger)

    def create_optimization_profile(self) -> FakeProfile:
        return FakeProfile(self._fake)

    def _error(self, message: str, record: BuildRecord) -> None:
        self.logger.log(self._fake.ILogger.Severity.ERROR, message)
        record.result = message

    def build_serialized_network(self, network: FakeNetwork, config: FakeBuilderConfig):
        fake = self._fake
        level = config.hardware_compatibility_level
        record = BuildRecord(
            network_flags=network.flags, strongly_typed=network.strongly_typed, builder_flags=set(config.flag_names),
            profiles=[dict(p.shapes) for p in config.profiles], workspace=config.memory_pools.get("WORKSPACE"),
            optimization_level=config.builder_optimization_level,
            hardware_compatibility=level.name if isinstance(level, EnumMember) else repr(level),
            device_type=config.default_device_type.name,
            dla_core=config.DLA_core if config.default_device_type.name == "DLA" else None,
            timing_cache_loaded=config.timing_cache is not None)
        fake.builds.append(record)
        if fake.fail_build_with:
            for message in fake.fail_build_with:
                self._error(message, record)
            return None
        if network.onnx_bytes is None:
            self._error("Network must have at least one output", record)
            return None
        for tensor in network.inputs:
            if any(d < 0 for d in tensor.shape):
                profile = config.profiles[0].shapes.get(tensor.name) if config.profiles else None
                if profile is None:
                    self._error(f"Network has dynamic or shape inputs, but no optimization profile has been defined "
                                f"(input {tensor.name}).", record)
                    return None
                if any(len(s) != len(tensor.shape) or any(d >= 0 and d != v for d, v in zip(tensor.shape, s))
                       for s in profile):
                    self._error(f"{tensor.name}: optimization profile shapes {profile} do not match "
                                f"{tensor.shape}", record)
                    return None
        precision = sorted(config.flag_names & set(PRECISION_FLAGS))
        if network.strongly_typed and precision:
            self._error(f"BuilderFlag {', '.join(precision)} is not allowed on a strongly typed network", record)
            return None
        if network.has_qdq and not network.strongly_typed and "INT8" not in config.flag_names:
            self._error("Network has Q/DQ layers but the INT8 builder flag is not set", record)
            return None
        if config.default_device_type.name == "DLA":
            if not 0 <= config.DLA_core < self.num_DLA_cores:
                self._error(f"DLA core {config.DLA_core} requested but only {self.num_DLA_cores} exist", record)
                return None
        calibrator = getattr(config, "int8_calibrator", None) if not fake.api11 else None
        if calibrator is not None and not self._calibrate(network, config, calibrator, record):
            return None
        targets = None
        if fake.rtx:
            targets = self._rtx_targets(config, record)
            if targets is None:
                return None
        elif config.timing_cache is not None:  # RTX: timing caches are no-ops
            config.timing_cache.entries[f"build-{len(fake.builds)}"] = ",".join(sorted(config.flag_names))
        return FakeHostMemory(self._serialize(network, config, targets))

    def _rtx_targets(self, config: FakeBuilderConfig, record: BuildRecord) -> list[tuple[int, int]] | None:
        """TensorRT for RTX: the compute capabilities the plan is for. None set: every one it supports (it
        builds "so that the engine runs on every supported GPU"); CURRENT: the GPU here, which must exist
        and be one it supports; NONE left in the list: the build fails (as 1.7 does, with its words)."""
        fake = self._fake
        asked = [m.name for m in config._compute_capabilities]
        record.compute_capabilities = asked
        supported = fake.supported_compute_capabilities()
        if "NONE" in asked:
            self._error("Unexpected exception bad optional access", record)
            return None
        if asked == ["CURRENT"]:
            problem = fake.cuda_problem()
            if problem is not None:
                self._error(f"IBuilder::buildSerializedNetwork: Error Code 1: Cuda Runtime (In generateForCurrent at "
                            f"/_src/runtime/core/cudaDeviceProfile.cpp:221 ({problem}))", record)
                return None
            here = tuple(fake.cuda.compute_capability)
            if here not in supported:
                self._error(f"IBuilder::buildSerializedNetwork: Error Code 3: API Usage Error (Compute capability is "
                            f"invalid or not supported. The current GPU has compute capability {here[0]}.{here[1]}; "
                            "Supported compute capabilities: "
                            f"{', '.join(f'{a}.{b}' for a, b in supported)})", record)
                return None
            targets = [here]
        elif asked:
            targets = [sm_tuple(name) for name in asked]
        else:
            targets = list(supported)
        record.targets = [f"{a}.{b}" for a, b in targets]
        return targets

    def _calibrate(self, network: FakeNetwork, config: FakeBuilderConfig, calibrator, record: BuildRecord) -> bool:
        record.calibrator = calibrator
        if not getattr(calibrator, "_base_initialised", False):
            self._error("calibrator base class was not initialised (would crash the real TensorRT)", record)
            return False
        if "INT8" not in config.flag_names:
            self.logger.log(self._fake.ILogger.Severity.WARNING, "int8_calibrator set without BuilderFlag.INT8")
            return True
        cache = calibrator.read_calibration_cache()
        if cache:
            record.calibration_cache_read = bytes(cache)
            if not bytes(cache).startswith(b"TRT-"):
                self._error("Calibration cache header is invalid", record)
                return False
            return True
        tensor = network.inputs[0]
        cal_profile = config.calibration_profile
        if cal_profile is None and any(int(d) < 0 for d in tensor.shape):
            # IBuilderConfig::setCalibrationProfile: "must be set if int8 calibration is used to set scales
            # for a network with runtime dimensions" (a profile with min == opt == max included)
            self._error("Calibration profile must be set for a network with runtime dimensions", record)
            return False
        shape = cal_profile.shapes[tensor.name][1] if cal_profile is not None else tensor.shape
        record.calibration_profile = dict(cal_profile.shapes) if cal_profile is not None else None
        calibrator.get_batch_size()
        absmax = 0.0
        while True:
            pointers = calibrator.get_batch([tensor.name])
            if not pointers:
                break
            count = int(np.prod(shape))
            raw = self._fake.cuda.resolve(int(pointers[0]), count * 4)
            batch = raw.view(np.float32).reshape(shape).copy()
            record.calibration_batches.append(batch)
            absmax = max(absmax, float(np.abs(batch).max()))
        if not record.calibration_batches:
            self._error("Calibration failure occurred with no scaling factors detected.", record)
            return False
        algorithm = getattr(calibrator, "algorithm", "?")
        scale = struct.pack(">f", absmax / 127.0).hex()
        v = self._fake.version_tuple
        header = f"TRT-{v[0]}{v[1]:02d}{v[2]:02d}-{algorithm}"
        calibrator.write_calibration_cache(memoryview(f"{header}\n{tensor.name}: {scale}\n".encode()))
        return True

    def _serialize(self, network: FakeNetwork, config: FakeBuilderConfig,
                   targets: list[tuple[int, int]] | None = None) -> bytes:
        fake = self._fake
        profile = config.profiles[0].shapes if config.profiles else {}
        header = {
            "flavour": fake.flavour, "version": fake.__version__,
            # TensorRT: the build GPU's; TensorRT for RTX: no GPU needed, the plan lists its targets instead
            "compute_capability": None if fake.rtx else list(fake.cuda.compute_capability),
            "targets": [list(t) for t in targets] if targets is not None else None,
            "inputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name,
                        "profile": [list(s) for s in profile.get(t.name, (t.shape,) * 3)]} for t in network.inputs],
            "outputs": [{"name": t.name, "shape": list(t.shape), "dtype": t.dtype.name} for t in network.outputs],
            "flags": sorted(config.flag_names), "strongly_typed": network.strongly_typed,
            "version_compatible": "VERSION_COMPATIBLE" in config.flag_names,
            "hardware_compatibility": config.hardware_compatibility_level.name,
        }
        blob = json.dumps(header).encode()
        return ENGINE_MAGIC + struct.pack("<I", len(blob)) + blob + network.onnx_bytes


# -- runtime -----------------------------------------------------------------------------------


class FakeRuntime(Surface):
    _rtx_only = frozenset({"get_engine_validity"})

    def __init__(self, fake: "FakeTensorRT", logger):
        super().__init__(fake)
        self._logger = logger
        self.engine_host_code_allowed = False

    @property
    def logger(self):
        return self._logger

    def get_engine_validity(self, buffer: bytes) -> tuple[EnumMember, int]:
        """TensorRT for RTX: (EngineValidity, EngineInvalidityDiagnostics bit mask) from the plan's header,
        without deserializing it. Without a usable GPU, 1.7 logs an internal error and answers INVALID with
        no diagnostics bit (observed on this machine)."""
        fake = self._fake
        fake.validity_checks += 1
        validity, bits = fake.EngineValidity, fake.EngineInvalidityDiagnostics
        header = split_plan(bytes(buffer))[0]
        if header is None or header.get("flavour") != fake.flavour:
            self.logger.log(fake.ILogger.Severity.INFO, RTX_MALFORMED_HEADER)
            return validity.INVALID, int(bits.MALFORMED_ENGINE)
        problem = fake.cuda_problem()
        if problem is not None:
            self.logger.log(fake.ILogger.Severity.INTERNAL_ERROR, "Error reading CUDA GPU properties: In getCurrentCC "
                            f"at /_src/runtime/dispatch/planHeaders.cpp:130 ({problem}) Ensure that the GPU driver is "
                            "installed and up to date.")
            return validity.INVALID, 0
        diagnostics = 0
        if tuple(int(p) for p in header["version"].split(".")[:3]) != fake.version_tuple[:3]:
            diagnostics |= int(bits.VERSION_MISMATCH)
        if list(fake.cuda.compute_capability) not in header["targets"]:
            diagnostics |= int(bits.UNSUPPORTED_CC)
        return (validity.INVALID if diagnostics else validity.VALID), diagnostics

    def deserialize_cuda_engine(self, serialized_engine: bytes):
        fake = self._fake
        fake.deserialize_calls += 1
        data = bytes(serialized_engine)
        error = fake.ILogger.Severity.ERROR
        header, onnx_bytes = split_plan(data)
        if header is not None and header.get("flavour", "tensorrt") != fake.flavour and fake.rtx:
            self.logger.log(error, RTX_MALFORMED_HEADER)
            return None
        if header is None or header.get("flavour", "tensorrt") != fake.flavour:  # another format altogether
            self.logger.log(error, "1: [runtime.cpp::parsePlan] Error Code 1: Serialization (Serialization "
                                   "assertion plan->header.magicTag == rt::kPLAN_MAGIC_TAG failed.)")
            return None
        if fake.rtx and (problem := fake.cuda_problem()) is not None:  # TensorRT for RTX 1.7 without a driver
            self.logger.log(error, "IRuntime::deserializeCudaEngine: Error Code 1: Cuda Runtime (In ScopedCudaStream "
                                   f"at /_src/common/dispatch/cudaResources.cpp:25 ({problem}))")
            return None
        built = tuple(int(p) for p in header["version"].split(".")[:3])
        here = fake.version_tuple[:3]
        vc_ok = header.get("version_compatible") and self.engine_host_code_allowed and here >= built
        if built != here and not vc_ok:
            self.logger.log(error, f"The engine plan file is not compatible with this version of TensorRT, "
                                   f"expecting library version {fake.__version__} got {header['version']}, "
                                   "please rebuild.")
            return None
        gpu = tuple(fake.cuda.compute_capability)
        if fake.rtx:
            if list(gpu) not in header["targets"]:
                targets = ", ".join(f"{a}.{b}" for a, b in header["targets"])
                here_cc = f"{gpu[0]}.{gpu[1]}"
                rebuild = (f"Rebuild the engine for compute capability {here_cc} with "
                           "IBuilderConfig::setComputeCapability, or leave the compute capability unset so that the "
                           "engine runs on every supported GPU." if gpu in fake.supported_compute_capabilities() else
                           "TensorRT-RTX does not support this compute capability, so the engine cannot be rebuilt "
                           "for it.")
                self.logger.log(error, f"The engine cannot run on this GPU, which has compute capability {here_cc}. "
                                       f"Supported compute capabilities: {targets}. {rebuild}")
                return None
            return OnnxRuntimeStandInEngine(fake, header, onnx_bytes, plan_id=hashlib.sha256(data).hexdigest()[:16])
        ampere_plus = header["hardware_compatibility"] == "AMPERE_PLUS" and gpu >= (8, 0)
        if tuple(header["compute_capability"]) != gpu and not ampere_plus:
            cc = header["compute_capability"]
            self.logger.log(error, f"The engine plan file is generated on an incompatible device, expecting compute "
                                   f"{gpu[0]}.{gpu[1]} got compute {cc[0]}.{cc[1]}, please rebuild.")
            return None
        return OnnxRuntimeStandInEngine(fake, header, onnx_bytes, plan_id=hashlib.sha256(data).hexdigest()[:16])


def split_plan(data: bytes) -> tuple[dict | None, bytes]:
    """(header, ONNX bytes) of a FakeTensorRT plan; (None, b"") for anything else."""
    if not data.startswith(ENGINE_MAGIC) or len(data) < len(ENGINE_MAGIC) + 4:
        return None, b""
    (size,) = struct.unpack("<I", data[len(ENGINE_MAGIC):len(ENGINE_MAGIC) + 4])
    start = len(ENGINE_MAGIC) + 4
    try:
        header = json.loads(data[start:start + size])
    except ValueError:
        return None, b""
    return (header, data[start + size:]) if isinstance(header, dict) else (None, b"")


def plan_header(engine: str | Path | bytes) -> dict:
    """The header of a FakeTensorRT plan: flavour, version, compute capability or targets, tensors, ..."""
    header = split_plan(engine if isinstance(engine, bytes) else Path(engine).read_bytes())[0]
    if header is None:
        raise ValueError("not a FakeTensorRT plan")
    return header


def rewrite_plan_header(engine: str | Path, **changes) -> dict:
    """Change fields of a FakeTensorRT plan's header in place (a plan from elsewhere, or a damaged one);
    returns the new header."""
    data = Path(engine).read_bytes()
    header, onnx_bytes = split_plan(data)
    if header is None:
        raise ValueError("not a FakeTensorRT plan")
    header.update(changes)
    blob = json.dumps(header).encode()
    Path(engine).write_bytes(ENGINE_MAGIC + struct.pack("<I", len(blob)) + blob + onnx_bytes)
    return header


def plan_onnx(engine: str | Path | bytes):
    """The ONNX model (onnx.ModelProto) a FakeTensorRT plan was built from."""
    import onnx

    data = engine if isinstance(engine, bytes) else Path(engine).read_bytes()
    header, onnx_bytes = split_plan(data)
    if header is None:
        raise ValueError("not a FakeTensorRT plan")
    return onnx.load_from_string(onnx_bytes)


class OnnxRuntimeStandInEngine(Surface):
    """The double's ICudaEngine. Its "inference" is ONNX Runtime (CPU) on the ONNX it was built from."""

    _removed = frozenset({"num_bindings", "get_binding_index", "get_binding_name", "binding_is_input",
                          "get_binding_shape", "get_binding_dtype", "get_binding_vectorized_dim",
                          "max_batch_size", "get_location"})
    # deprecated in 10.x (has_implicit_batch_dimension since 10.0, the v1 memory sizes since 10.1), gone in 11
    _removed_in_11 = {"device_memory_size", "create_execution_context_without_device_memory",
                      "get_device_memory_size_for_profile", "has_implicit_batch_dimension"}

    _rtx_only = frozenset({"create_runtime_config"})

    def __init__(self, fake: "FakeTensorRT", header: dict, onnx_bytes: bytes, plan_id: str = ""):
        super().__init__(fake)
        self.header = header
        self.onnx_bytes = onnx_bytes
        self._plan_id = plan_id  # what the JIT's kernels are compiled for (RTX): this plan
        self.tensors = {t["name"]: dict(t, mode="INPUT") for t in header["inputs"]}
        self.tensors.update({t["name"]: dict(t, mode="OUTPUT") for t in header["outputs"]})
        self._session = None
        self._session_lock = threading.Lock()

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    @property
    def device_memory_size(self) -> int:  # 10.x only (_removed_in_11)
        return 1 << 20

    @property
    def device_memory_size_v2(self) -> int:
        if not self._fake.rtx and self._fake.version_tuple < (10, 1, 0):  # added in TensorRT 10.1
            raise AttributeError(f"'{type(self).__name__}' object has no attribute 'device_memory_size_v2'")
        return 1 << 20

    @property
    def num_io_tensors(self) -> int:
        return len(self.tensors)

    def get_tensor_name(self, index: int) -> str:
        return list(self.tensors)[index]

    def get_tensor_mode(self, name: str) -> EnumMember:
        return getattr(self._fake.TensorIOMode, self.tensors[name]["mode"])

    def get_tensor_shape(self, name: str) -> tuple:
        return tuple(self.tensors[name]["shape"])

    def get_tensor_dtype(self, name: str) -> EnumMember:
        return getattr(self._fake.DataType, self.tensors[name]["dtype"])

    def get_tensor_profile_shape(self, name: str, profile_index: int):
        if profile_index != 0 or self.tensors[name]["mode"] != "INPUT":
            raise ValueError("invalid profile index or not an input tensor")
        return [tuple(s) for s in self.tensors[name]["profile"]]

    def _context_with_strategy(self, strategy: EnumMember | None = None) -> "FakeExecutionContext":  # None: STATIC
        if strategy is not None and (not isinstance(strategy, EnumMember)
                                     or strategy.owner != "ExecutionContextAllocationStrategy"):
            raise NoMatch
        return FakeExecutionContext(self._fake, self)

    @rtx_only
    def _context_with_runtime_config(self, runtime_config: "FakeRuntimeConfig | None" = None):
        if runtime_config is not None and not isinstance(runtime_config, FakeRuntimeConfig):
            raise NoMatch
        return FakeExecutionContext(self._fake, self, runtime_config)

    # create_execution_context(strategy=STATIC) on every surface; (runtime_config=None) on TensorRT for RTX
    create_execution_context = Overloaded(_context_with_strategy, _context_with_runtime_config)

    def create_runtime_config(self) -> "FakeRuntimeConfig":
        return FakeRuntimeConfig(self._fake)

    def session(self):
        with self._session_lock:
            if self._session is None:
                import onnxruntime

                self._session = onnxruntime.InferenceSession(self.onnx_bytes, providers=["CPUExecutionProvider"])
            return self._session


class FakeRuntimeCache(Surface):
    """TensorRT for RTX's IRuntimeCache: the kernels the JIT compiled, by plan and input shapes. A blob
    loads only into the TensorRT for RTX release and GPU (name and compute capability: "the GPU device
    properties/SKU") that wrote it; anything else is refused with False, the cache left unchanged."""

    def __init__(self, fake: "FakeTensorRT"):
        super().__init__(fake)
        self._kernels: dict[str, str] = {}

    def _fingerprint(self) -> dict:
        cuda = self._fake.cuda
        return {"version": self._fake.__version__, "gpu": cuda.gpu_name, "cc": list(cuda.compute_capability)}

    def serialize(self) -> FakeHostMemory:
        return FakeHostMemory(RUNTIME_CACHE_MAGIC + json.dumps({**self._fingerprint(),
                                                                "kernels": self._kernels}).encode())

    def deserialize(self, blob: bytes) -> bool:
        data = bytes(blob)
        if not data.startswith(RUNTIME_CACHE_MAGIC):
            return False  # "Unrecognised wire format; rejecting cache."
        try:
            payload = json.loads(data[len(RUNTIME_CACHE_MAGIC):])
            kernels = dict(payload.pop("kernels"))
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        if payload != self._fingerprint():
            return False  # "Fingerprint check failed; rejecting cache."
        self._kernels.update(kernels)
        self._fake.runtime_cache_loads += 1
        return True

    def reset(self) -> bool:
        self._kernels.clear()
        return True


class FakeRuntimeConfig(Surface):
    """TensorRT for RTX's IRuntimeConfig (from ICudaEngine.create_runtime_config)."""

    def __init__(self, fake: "FakeTensorRT"):
        super().__init__(fake)
        self._cache: FakeRuntimeCache | None = None
        self._strategy = fake.ExecutionContextAllocationStrategy.STATIC

    def create_runtime_cache(self) -> FakeRuntimeCache:
        return FakeRuntimeCache(self._fake)

    def set_runtime_cache(self, cache: FakeRuntimeCache | None = None) -> bool:
        if cache is not None and not isinstance(cache, FakeRuntimeCache):
            raise TypeError(f"set_runtime_cache(): incompatible function arguments: takes an IRuntimeCache, not "
                            f"{cache!r}")
        self._cache = cache
        return True

    def get_runtime_cache(self) -> FakeRuntimeCache | None:
        return self._cache

    def set_execution_context_allocation_strategy(self, strategy: EnumMember | None = None) -> None:  # None: STATIC
        self._strategy = strategy if strategy is not None else self._fake.ExecutionContextAllocationStrategy.STATIC

    def get_execution_context_allocation_strategy(self) -> EnumMember:
        return self._strategy


class FakeExecutionContext(Surface):
    _removed = frozenset({"execute", "execute_async", "execute_async_v2", "set_binding_shape", "get_binding_shape",
                          "get_strides", "set_shape_input", "get_shape"})

    def __init__(self, fake: "FakeTensorRT", engine: OnnxRuntimeStandInEngine,
                 runtime_config: FakeRuntimeConfig | None = None):
        super().__init__(fake)
        self._engine = engine
        self._runtime_config = runtime_config
        # RTX: where the JIT keeps what it compiled: the runtime cache the config carries, else the context's own
        cache = runtime_config.get_runtime_cache() if runtime_config is not None else None
        self._kernels: dict[str, str] = cache._kernels if cache is not None else {}
        self.shapes: dict[str, tuple] = {}
        self.addresses: dict[str, int] = {}
        self._busy = False

    @property
    def engine(self) -> OnnxRuntimeStandInEngine:
        return self._engine

    @property
    def all_binding_shapes_specified(self) -> bool:
        """Every dynamic input has a shape (kept in 10.x and 11 for allInputDimensionsSpecified)."""
        return all(name in self.shapes for name, t in self._engine.tensors.items()
                   if t["mode"] == "INPUT" and any(d < 0 for d in t["shape"]))

    def set_input_shape(self, name: str, shape) -> bool:
        shape = tuple(int(d) for d in shape)
        lo, _, hi = self.engine.tensors[name]["profile"]
        if len(shape) != len(lo) or any(not a <= s <= b for a, s, b in zip(lo, shape, hi)):
            self._fake.last_logger_error = f"set_input_shape {shape} outside the profile {lo}..{hi}"
            return False
        self.shapes[name] = shape
        return True

    def get_tensor_shape(self, name: str) -> tuple:
        t = self.engine.tensors[name]
        if t["mode"] == "INPUT":
            return self.shapes.get(name, tuple(t["shape"]))
        batch = next(iter(self.shapes.values()), (-1,))[0]
        return tuple(batch if d < 0 and i == 0 else d for i, d in enumerate(t["shape"]))

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self.addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        fake = self._fake
        if int(stream_handle) not in fake.cuda.streams:
            raise AssertionError(f"execute_async_v3 got stream {stream_handle}, which is not a live stream")
        if self._busy:
            fake.concurrent_context_use += 1
        self._busy = True
        try:
            time.sleep(0.001)  # widen the window in which a second thread would collide
            feeds = {}
            for name, t in self.engine.tensors.items():
                if name not in self.addresses:
                    raise AssertionError(f"tensor {name} has no address")
                if t["mode"] != "INPUT":
                    continue
                shape = self.shapes.get(name)
                if shape is None or any(d < 0 for d in shape):
                    raise AssertionError(f"input {name} has no shape set")
                dtype = fake.nptype(getattr(fake.DataType, t["dtype"]))
                raw = fake.cuda.resolve(self.addresses[name], int(np.prod(shape)) * np.dtype(dtype).itemsize)
                feeds[name] = raw.view(dtype).reshape(shape).copy()
            if fake.rtx:
                self._jit(feeds)
            results = self.engine.session().run(None, feeds)
            if fake.tamper_outputs is not None:
                results = [fake.tamper_outputs(np.array(r)) for r in results]
            for t, value in zip(self.engine.header["outputs"], results):
                value = np.ascontiguousarray(value, dtype=fake.nptype(getattr(fake.DataType, t["dtype"])))
                expected = self.get_tensor_shape(t["name"])
                if value.shape != expected:
                    raise AssertionError(f"output {t['name']} has shape {value.shape}, context said {expected}")
                target = fake.cuda.resolve(self.addresses[t["name"]], value.nbytes)
                ctypes.memmove(target.ctypes.data, value.ctypes.data, value.nbytes)
            fake.executions += 1
            return True
        finally:
            self._busy = False

    def _jit(self, feeds: dict[str, np.ndarray]) -> None:
        """TensorRT for RTX compiles its kernels on the device, for the input shapes it meets, the first time
        it meets them; a runtime cache that already holds them spares that (fake.kernels_compiled counts)."""
        key = self._engine._plan_id + ":" + ";".join(f"{n}={'x'.join(map(str, a.shape))}" for n, a in sorted(
            feeds.items()))
        if key in self._kernels:
            self._fake.kernels_reused += 1
        else:
            self._kernels[key] = f"kernels compiled for sm{''.join(map(str, self._fake.cuda.compute_capability))}"
            self._fake.kernels_compiled += 1


# -- the module --------------------------------------------------------------------------------


class FakeTensorRT(types.ModuleType):
    """Stands in for `import tensorrt` (10.x or 11.x surface, by `version`) or, with flavour="rtx", for
    `import tensorrt_rtx` (TensorRT for RTX 1.x: the 11.x surface with RTX's BuilderFlag values, plus
    target compute capabilities, the plan header check and the runtime cache; see RTX_SURFACE)."""

    def __init__(self, version: str | None = None, cuda: FakeCudaRuntime | None = None, num_dla_cores: int = 0,
                 flavour: str = "tensorrt"):
        if flavour not in FLAVOURS:
            raise ValueError(f"flavour must be one of {', '.join(FLAVOURS)}, not {flavour!r}")
        super().__init__(FLAVOURS[flavour])
        version = version or (RTX_SURFACE if flavour == "rtx" else SURFACES["10.x"])
        self.flavour = flavour
        self.rtx = flavour == "rtx"
        if self.rtx and num_dla_cores:
            raise ValueError("TensorRT for RTX runs on RTX GPUs, which have no DLA cores")
        self.__version__ = version
        self.version_tuple = tuple(int(p) for p in version.split(".")[:3])
        self.major = self.version_tuple[0]
        self.api11 = self.rtx or self.major >= 11  # TensorRT 11's API: what 11 removed is gone, strongly typed
        self.cuda = cuda or FakeCudaRuntime(compute_capability=(8, 9) if self.rtx else (8, 7))  # RTX 40 / Orin
        self.num_dla_cores = num_dla_cores
        self.validity_checks = 0  # RTX: Runtime.get_engine_validity calls
        self.kernels_compiled = 0  # RTX: JIT compilations (a plan meeting input shapes no cache held)
        self.kernels_reused = 0  # RTX: executions whose kernels were compiled already (this context or a cache)
        self.runtime_cache_loads = 0  # RTX: IRuntimeCache.deserialize calls that loaded a cache
        self.removed_touched: list[str] = []
        self.builds: list[BuildRecord] = []
        self.deserialize_calls = 0
        self.executions = 0
        self.concurrent_context_use = 0
        self.explicit_batch_used = False
        self.fail_build_with: list[str] = []
        self.tamper_outputs = None  # logits -> logits, applied to every engine output (a wrong engine)
        self.last_logger_error = ""
        eleven = self.api11
        self._removed_module = {"IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8EntropyCalibrator",
                                "IInt8MinMaxCalibrator", "IInt8LegacyCalibrator", "CalibrationAlgoType",
                                "QuantizationFlag"} if eleven else set()
        # The values are TensorRT 10's (NvInfer.h, NvInferRuntimeBase.h). Removed on 11: the precision flags
        # (FP16 ... FP4 and the precision constraints); DIRECT_IO is deprecated but stays (NVIDIA's 10.x -> 11.x
        # reference, 11.4.1: "deprecated, not removed"; TensorRT for RTX 1.7 has it too).
        self.BuilderFlag = FakeEnum(self, "BuilderFlag", RTX_BUILDER_FLAGS if self.rtx else BUILDER_FLAGS,
                                    removed=REMOVED_IN_11_BUILDER_FLAGS if eleven else set())
        # 10.x: EXPLICIT_BATCH = 0 (ignored), STRONGLY_TYPED = 1. 11 dropped EXPLICIT_BATCH and STRONGLY_TYPED is
        # 0 (deprecated, ignored: always strongly typed), as in TensorRT for RTX 1.7.
        self.NetworkDefinitionCreationFlag = FakeEnum(
            self, "NetworkDefinitionCreationFlag", {"STRONGLY_TYPED": 0} if eleven else
            {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}, removed={"EXPLICIT_BATCH"} if eleven else set())
        self.MemoryPoolType = FakeEnum(self, "MemoryPoolType", ["WORKSPACE", "DLA_MANAGED_SRAM",
                                                                "DLA_LOCAL_DRAM", "DLA_GLOBAL_DRAM", "TACTIC_DRAM"])
        # kSAME_COMPUTE_CAPABILITY arrived in TensorRT 10.9: before it, the level simply does not exist
        levels = ["NONE", "AMPERE_PLUS"] + (["SAME_COMPUTE_CAPABILITY"] if self.rtx or self.version_tuple >= (10, 9, 0)
                                            else [])
        self.HardwareCompatibilityLevel = FakeEnum(self, "HardwareCompatibilityLevel", levels)
        self.DeviceType = FakeEnum(self, "DeviceType", ["GPU", "DLA"])
        self.TensorIOMode = FakeEnum(self, "TensorIOMode", ["NONE", "INPUT", "OUTPUT"])
        self.DataType = FakeEnum(self, "DataType", ["FLOAT", "HALF", "INT8", "INT32", "BOOL", "UINT8", "FP8",
                                                    "BF16", "INT64", "INT4"])
        self.ErrorCode = FakeEnum(self, "ErrorCode", [  # the ONNX parser's (nvonnxparser::ErrorCode)
            "SUCCESS", "INTERNAL_ERROR", "MEM_ALLOC_FAILED", "MODEL_DESERIALIZE_FAILED", "INVALID_VALUE",
            "INVALID_GRAPH", "INVALID_NODE", "UNSUPPORTED_GRAPH", "UNSUPPORTED_NODE", "UNSUPPORTED_NODE_ATTR", "UNSUPPORTED_NODE_INPUT",
            "UNSUPPORTED_NODE_DATATYPE", "UNSUPPORTED_NODE_DYNAMIC", "UNSUPPORTED_NODE_SHAPE", "REFIT_FAILED"])
        self.ExecutionContextAllocationStrategy = FakeEnum(self, "ExecutionContextAllocationStrategy",
                                                           ALLOCATION_STRATEGIES)
        if self.rtx:
            self.ComputeCapability = FakeEnum(self, "ComputeCapability", COMPUTE_CAPABILITIES)
            self.EngineValidity = FakeEnum(self, "EngineValidity", ENGINE_VALIDITY)
            self.EngineInvalidityDiagnostics = FakeEnum(self, "EngineInvalidityDiagnostics",
                                                        ENGINE_INVALIDITY_DIAGNOSTICS)
            self.IRuntimeConfig = FakeRuntimeConfig  # classes of the module (rexport checks IRuntimeCache exists)
            self.IRuntimeCache = FakeRuntimeCache
        self.ILogger = self._logger_class()
        if not eleven:
            base = self._calibrator_base()
            self.IInt8Calibrator = base
            self.IInt8EntropyCalibrator2 = type("IInt8EntropyCalibrator2", (base,), {"algorithm": "EntropyCalibration2"})
            self.IInt8MinMaxCalibrator = type("IInt8MinMaxCalibrator", (base,), {"algorithm": "MinMaxCalibration"})

    @classmethod
    def surface(cls, key: str, **kwargs) -> "FakeTensorRT":
        """The double of one surface of ALL_SURFACES: "10.x", "11.x" or "rtx"."""
        return cls(ALL_SURFACES[key], flavour="rtx" if key == "rtx" else "tensorrt", **kwargs)

    @property
    def cache_key(self) -> str:
        """What a timing cache is tied to: TensorRT version and GPU."""
        return f"{'.'.join(map(str, self.version_tuple))}/sm{self.cuda.compute_capability[0]}{self.cuda.compute_capability[1]}"

    def touch(self, what: str) -> None:
        self.removed_touched.append(what)

    def __getattr__(self, item: str):
        if item in self.__dict__.get("_removed_module", ()):
            self.touch(item)
        raise AttributeError(f"module '{self.__name__}' has no attribute '{item}'")

    def supported_compute_capabilities(self) -> list[tuple[int, int]]:
        """TensorRT for RTX: the GPUs it builds for and runs on (ComputeCapability's SM members)."""
        return [sm_tuple(name) for name in self.ComputeCapability.__members__ if name.startswith("SM")]

    def cuda_problem(self) -> str | None:
        """Why there is no usable GPU here, in CUDA's words (what TensorRT for RTX logs), or None."""
        if self.cuda.driver != "present":
            return CUDA_ERROR_35
        if self.cuda.device_count == 0:
            return CUDA_ERROR_100
        return None

    def warn_timing_cache(self) -> None:
        """TensorRT for RTX keeps the timing-cache calls, as no-ops; all but create_timing_cache warn."""
        if self.rtx:
            warnings.warn(RTX_TIMING_CACHE_WARNING, DeprecationWarning, stacklevel=3)

    # classes user code calls or subclasses
    def _logger_class(self) -> type:
        fake = self

        class ILogger:
            Severity = FakeEnum(fake, "Severity", ["INTERNAL_ERROR", "ERROR", "WARNING", "INFO", "VERBOSE"])

            def __init__(self):
                pass

            def log(self, severity, msg):
                raise NotImplementedError

        return ILogger

    def _calibrator_base(self) -> type:
        class IInt8Calibrator:
            def __init__(self):
                self._base_initialised = True

        return IInt8Calibrator

    def Builder(self, logger) -> FakeBuilder:  # noqa: N802 - TensorRT's class names
        return FakeBuilder(self, logger)

    def OnnxParser(self, network: FakeNetwork, logger) -> FakeOnnxParser:  # noqa: N802
        return FakeOnnxParser(self, network, logger)

    def Runtime(self, logger) -> FakeRuntime:  # noqa: N802
        return FakeRuntime(self, logger)

    def nptype(self, trt_type: EnumMember):
        return {"FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32, "BOOL": np.bool_,
                "UINT8": np.uint8, "INT64": np.int64}[trt_type.name]


def install_fake_tensorrt(monkeypatch, version: str | None = None, *, flavour: str = "tensorrt",
                          compute_capability: tuple[int, int] | None = None, num_dla_cores: int = 0,
                          **cuda: Any) -> FakeTensorRT:
    """Put FakeTensorRT in sys.modules as `tensorrt` (flavour="rtx": as `tensorrt_rtx`, version RTX_SURFACE)
    and FakeCudaRuntime as cuda-python; monkeypatch restores. The fake GPU is compute capability 8.7 (Jetson
    Orin) for TensorRT, 8.9 (an RTX 40 series) for TensorRT for RTX, unless told; `cuda` goes to
    FakeCudaRuntime (gpu_name, device_count, driver). The other flavour's module is left as it is: see
    hide_tensorrt."""
    if compute_capability is None:
        compute_capability = (8, 9) if flavour == "rtx" else (8, 7)
    runtime = install_fake_cuda(monkeypatch, FakeCudaRuntime(compute_capability=compute_capability, **cuda))
    fake = FakeTensorRT(version, cuda=runtime, num_dla_cores=num_dla_cores, flavour=flavour)
    monkeypatch.setitem(sys.modules, FLAVOURS[flavour], fake)
    return fake


def hide_tensorrt(monkeypatch, rtx: bool = True, tensorrt: bool = True) -> None:
    """Make `import tensorrt` fail as if it were not installed, and `import tensorrt_rtx` too unless
    rtx=False (rexport falls back to TensorRT for RTX, which a development machine may have for real);
    tensorrt=False leaves `tensorrt` alone (hide only TensorRT for RTX)."""
    if tensorrt:
        monkeypatch.setitem(sys.modules, "tensorrt", None)
    if rtx:
        monkeypatch.setitem(sys.modules, "tensorrt_rtx", None)


SURFACES = {"10.x": "10.3.0.30", "11.x": "11.1.0.8"}  # TensorRT (module tensorrt), by its API surfaces
RTX_SURFACE = "1.7.1.116"  # TensorRT for RTX (module tensorrt_rtx), as installed by the dev extra
ALL_SURFACES = {**SURFACES, "rtx": RTX_SURFACE}  # every surface the double models: FakeTensorRT.surface(key)
FLAVOURS = {"tensorrt": "tensorrt", "rtx": "tensorrt_rtx"}  # flavour -> module name
