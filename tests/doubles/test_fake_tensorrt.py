"""FakeTensorRT's version-dependent surface: what each TensorRT release added, kept or removed.

test_double_contract.py holds the 11.x and RTX surfaces against the real TensorRT for RTX; these
tests pin what cannot be checked against a real module here: 10.x releases (from NVIDIA's TensorRT
10.x binding sources and headers), what TensorRT for RTX does with a GPU (targets, the plan header
check, the runtime cache and its JIT; from its docstrings and library strings), and the pybind-like
behaviour of the double's objects. They need nothing but the double.
"""

from __future__ import annotations

import warnings

import pytest

from doubles.fake_cuda import FakeCudaRuntime
from doubles.fake_tensorrt import (ALL_SURFACES, RTX_SURFACE, SURFACES, FakeRuntimeCache, FakeTensorRT, plan_header,
                                   rewrite_plan_header)
from doubles.tiny_onnx import write_tiny_classifier


class Logger:
    def __init__(self, fake: FakeTensorRT):
        base = fake.ILogger

        class Collecting(base):
            def __init__(self):
                base.__init__(self)
                self.messages = []

            def log(self, severity, msg):
                self.messages.append((severity.name, msg))

        self.logger = Collecting()


def configured(fake: FakeTensorRT, tmp_path, logger=None):
    """(logger, builder, network, config) for the tiny classifier, parsed, with its batch profile."""
    logger = logger or Logger(fake).logger
    builder = fake.Builder(logger)
    network = builder.create_network(0)
    assert fake.OnnxParser(network, logger).parse_from_file(str(write_tiny_classifier(tmp_path / "m.onnx")))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    return logger, builder, network, config


def built(fake: FakeTensorRT, tmp_path):
    """(builder, config, engine) for the tiny classifier, built and loaded by the double."""
    logger, builder, network, config = configured(fake, tmp_path)
    engine = fake.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    assert engine is not None
    return builder, config, engine


def rtx_plan(fake: FakeTensorRT, tmp_path, *targets: str, logger=None) -> bytes | None:
    """A TensorRT for RTX plan of the tiny classifier for these ComputeCapability members (none: unset)."""
    logger, builder, network, config = configured(fake, tmp_path, logger)
    config.num_compute_capabilities = len(targets)
    for i, target in enumerate(targets):
        assert config.set_compute_capability(getattr(fake.ComputeCapability, target), i)
    plan = builder.build_serialized_network(network, config)
    return None if plan is None else bytes(plan)


def rtx_fake(cc=(8, 9), **cuda) -> FakeTensorRT:
    return FakeTensorRT.surface("rtx", cuda=FakeCudaRuntime(compute_capability=cc, **cuda))


# -- what a release added ------------------------------------------------------------------------


@pytest.mark.parametrize("version, present", [("10.3.0.30", False), ("10.8.0.43", False), ("10.9.0.34", True),
                                              (SURFACES["11.x"], True)])
def test_same_compute_capability_arrived_in_10_9(version, present):
    fake = FakeTensorRT(version)
    level = getattr(fake.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY", None)
    assert (level is not None) is present
    if present:
        assert int(level) == 2
    assert int(fake.HardwareCompatibilityLevel.AMPERE_PLUS) == 1
    assert fake.removed_touched == []  # not yet there is not "removed"


@pytest.mark.parametrize("version, v1, v2", [("10.0.1.6", True, False), ("10.1.0.27", True, True),
                                             ("10.3.0.30", True, True), (SURFACES["11.x"], False, True)])
def test_engine_device_memory_size_by_version(tmp_path, version, v1, v2):
    fake = FakeTensorRT(version)
    _, _, engine = built(fake, tmp_path)
    assert hasattr(engine, "device_memory_size_v2") is v2  # added in 10.1
    assert fake.removed_touched == []
    assert hasattr(engine, "device_memory_size") is v1  # deprecated in 10.1, removed in 11
    assert fake.removed_touched == ([] if v1 else ["OnnxRuntimeStandInEngine.device_memory_size"])


# -- what 10.x kept and 11 removed ---------------------------------------------------------------


def test_has_implicit_batch_dimension_is_deprecated_on_10_and_removed_on_11(tmp_path):
    ten, eleven = FakeTensorRT(SURFACES["10.x"]), FakeTensorRT(SURFACES["11.x"])
    for fake in (ten, eleven):
        with pytest.raises(AttributeError):
            built(fake, tmp_path)[2].has_implicit_batch_dimension
    assert ten.removed_touched == []  # the double does not model it on 10.x, but it was not removed there
    assert eleven.removed_touched == ["OnnxRuntimeStandInEngine.has_implicit_batch_dimension"]


@pytest.mark.parametrize("surface", ALL_SURFACES)
def test_all_binding_shapes_specified_exists_on_both(tmp_path, surface):
    fake = FakeTensorRT.surface(surface)
    context = built(fake, tmp_path)[2].create_execution_context()
    assert context.all_binding_shapes_specified is False  # the batch axis is dynamic
    assert context.set_input_shape("input", (2, 3, 8, 8))
    assert context.all_binding_shapes_specified is True
    assert fake.removed_touched == []


def test_a_method_the_class_defines_for_10_x_is_gone_on_11():
    ten, eleven = FakeTensorRT(SURFACES["10.x"]), FakeTensorRT(SURFACES["11.x"])
    assert ten.Builder(None).create_builder_config().set_calibration_profile(None) is True
    config = eleven.Builder(None).create_builder_config()
    with pytest.raises(AttributeError):
        config.set_calibration_profile(None)
    assert not hasattr(config, "int8_calibrator")
    assert eleven.removed_touched == ["FakeBuilderConfig.set_calibration_profile", "FakeBuilderConfig.int8_calibrator"]


# -- enum values ---------------------------------------------------------------------------------


def test_network_creation_flags_by_version():
    ten, eleven = FakeTensorRT(SURFACES["10.x"]), FakeTensorRT(SURFACES["11.x"])
    flags = ten.NetworkDefinitionCreationFlag
    assert (int(flags.EXPLICIT_BATCH), int(flags.STRONGLY_TYPED)) == (0, 1)
    assert int(eleven.NetworkDefinitionCreationFlag.STRONGLY_TYPED) == 0
    builder = ten.Builder(Logger(ten).logger)
    assert builder.create_network(1 << 1).strongly_typed and not builder.create_network(0).strongly_typed
    assert not ten.explicit_batch_used
    builder.create_network(1 << 0)
    assert ten.explicit_batch_used  # EXPLICIT_BATCH's bit: ignored on 10, a sign of code written for TensorRT 8


def test_on_11_bit_0_is_strongly_typed_and_an_unknown_bit_is_refused():
    fake = FakeTensorRT(SURFACES["11.x"])
    logger = Logger(fake).logger
    builder = fake.Builder(logger)
    assert builder.create_network(1 << int(fake.NetworkDefinitionCreationFlag.STRONGLY_TYPED)).strongly_typed
    assert not fake.explicit_batch_used
    assert builder.create_network(1 << 1) is None  # STRONGLY_TYPED's bit on 10.x: TensorRT 11 returns None
    assert logger.messages[-1][0] == "ERROR" and "createNetworkV2" in logger.messages[-1][1]


def test_builder_flags_have_tensorrt_10_values_and_11_keeps_direct_io():
    ten, eleven = FakeTensorRT(SURFACES["10.x"]), FakeTensorRT(SURFACES["11.x"])
    values = {n: int(m) for n, m in ten.BuilderFlag.__members__.items()}
    assert (values["FP16"], values["INT8"], values["TF32"], values["DIRECT_IO"], values["VERSION_COMPATIBLE"],
            values["BF16"], values["STRIP_PLAN"]) == (0, 1, 6, 11, 13, 17, 19)
    assert int(eleven.BuilderFlag.DIRECT_IO) == 11  # deprecated in 10.7, still declared in 11
    with pytest.raises(AttributeError):
        eleven.BuilderFlag.FP16
    assert eleven.removed_touched == ["BuilderFlag.FP16"]


def test_builder_config_flags_are_a_bit_mask_with_tf32_on_by_default():
    fake = FakeTensorRT(SURFACES["10.x"])
    config = fake.Builder(None).create_builder_config()
    assert config.flags == 1 << 6 and config.get_flag(fake.BuilderFlag.TF32)
    config.set_flag(fake.BuilderFlag.VERSION_COMPATIBLE)
    assert config.flags == 1 << 6 | 1 << 13 and config.flag_names == {"VERSION_COMPATIBLE"}
    config.clear_flag(fake.BuilderFlag.TF32)
    config.flags = config.flags | 1 << 0
    assert config.flag_names == {"VERSION_COMPATIBLE", "FP16"} and not config.get_flag(fake.BuilderFlag.TF32)
    with pytest.raises(TypeError):
        config.set_flag(13)


# -- pybind-like objects -------------------------------------------------------------------------


@pytest.mark.parametrize("surface", ALL_SURFACES)
def test_objects_refuse_unknown_attributes_and_writes_to_read_only_properties(tmp_path, surface):
    fake = FakeTensorRT.surface(surface)
    builder, config, engine = built(fake, tmp_path)
    config.builder_optimization_level = 5  # a writable property there too
    with pytest.raises(AttributeError):
        config.max_workspace_sizes = 1 << 30  # a typo: TensorRT's object has no such attribute
    for obj, name in ((builder, "num_DLA_cores"), (engine, "num_optimization_profiles"),
                      (engine.create_execution_context(), "engine")):
        with pytest.raises(AttributeError):
            setattr(obj, name, 1)


@pytest.mark.parametrize("surface", ALL_SURFACES)
def test_tensorrt_s_parameter_names_work_as_keywords(tmp_path, surface):
    fake = FakeTensorRT.surface(surface)
    builder, config, engine = built(fake, tmp_path)
    config.set_memory_pool_limit(pool=fake.MemoryPoolType.WORKSPACE, pool_size=1 << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(input="input", min=(1, 3, 8, 8), opt=(1, 3, 8, 8), max=(2, 3, 8, 8))
    assert profile.get_shape(input="input")[2] == [2, 3, 8, 8] and profile.get_shape("other") == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # RTX: timing caches are no-ops that warn
        cache = config.create_timing_cache(serialized_timing_cache=b"")
        assert cache.combine(input_cache=config.create_timing_cache(b""), ignore_mismatch=False)
    assert engine.get_tensor_name(index=0) == "input"
    context = engine.create_execution_context(strategy=fake.ExecutionContextAllocationStrategy.STATIC)
    assert context.set_tensor_address(name="input", memory=4096)
    if fake.rtx:
        config.num_compute_capabilities = 1
        assert config.set_compute_capability(compute_capability=fake.ComputeCapability.SM86, index=0)
        assert config.get_compute_capability(index=0) == fake.ComputeCapability.SM86
        runtime_config = engine.create_runtime_config()
        assert runtime_config.set_runtime_cache(cache=runtime_config.create_runtime_cache())
        assert engine.create_execution_context(runtime_config=runtime_config) is not None
        assert runtime_config.get_runtime_cache().deserialize(blob=b"no cache") is False


def test_a_parser_error_has_tensorrt_s_text_and_error_code(tmp_path):
    fake = FakeTensorRT(SURFACES["11.x"])
    logger = Logger(fake).logger
    parser = fake.OnnxParser(fake.Builder(logger).create_network(0), logger)
    assert not parser.parse_from_file(model=str(write_tiny_classifier(tmp_path / "bad.onnx", "unsupported")))
    error = parser.get_error(index=0)
    assert (error.node(), error.node_name(), error.node_operator()) == (2, "fancy1", "FancyActivation")
    assert error.code() == fake.ErrorCode.INVALID_NODE and int(error.code()) == 6
    assert "Plugin not found" in error.desc()


# -- TensorRT for RTX: what needs a GPU (the contract test compares the rest with tensorrt_rtx) -----


def test_rtx_targets_current_none_set_or_chosen(tmp_path):
    fake = rtx_fake((8, 9))
    assert plan_header(rtx_plan(fake, tmp_path, "CURRENT"))["targets"] == [[8, 9]]
    assert fake.builds[-1].compute_capabilities == ["CURRENT"] and fake.builds[-1].targets == ["8.9"]
    assert plan_header(rtx_plan(fake, tmp_path, "SM120", "SM86"))["targets"] == [[12, 0], [8, 6]]
    everything = plan_header(rtx_plan(fake, tmp_path))  # none set: every GPU it supports
    assert everything["targets"] == [[7, 5], [8, 0], [8, 6], [8, 9], [12, 0], [12, 1]]
    assert everything["flavour"] == "rtx" and everything["compute_capability"] is None
    assert everything["version"] == RTX_SURFACE


@pytest.mark.parametrize("cuda, message", [
    ({"compute_capability": (9, 0)}, "Compute capability is invalid or not supported. The current GPU has compute "
                                     "capability 9.0; Supported compute capabilities: 7.5, 8.0, 8.6, 8.9, 12.0, 12.1"),
    ({"compute_capability": (8, 7)}, "The current GPU has compute capability 8.7"),  # Jetson Orin
    ({"device_count": 0}, "cudaError 100: no CUDA-capable device is detected"),
    ({"driver": "missing"}, "cudaError 35: CUDA driver version is insufficient for CUDA runtime version"),
])
def test_rtx_current_needs_a_gpu_it_supports(tmp_path, cuda, message):
    fake = FakeTensorRT.surface("rtx", cuda=FakeCudaRuntime(**cuda))
    logger = Logger(fake).logger
    assert rtx_plan(fake, tmp_path, "CURRENT", logger=logger) is None
    assert logger.messages[-1][0] == "ERROR" and message in logger.messages[-1][1]
    assert rtx_plan(fake, tmp_path, "SM89") is not None  # ahead of time, it needs no GPU


def test_rtx_engine_validity_from_the_plan_header(tmp_path):
    fake = rtx_fake((8, 9))
    runtime = fake.Runtime(Logger(fake).logger)
    plan = rtx_plan(fake, tmp_path, "SM86", "SM89")
    assert runtime.get_engine_validity(plan) == (fake.EngineValidity.VALID, 0)
    path = tmp_path / "m.engine"
    path.write_bytes(plan)
    rewrite_plan_header(path, version="1.6.0.15", targets=[[12, 0]])
    bits = fake.EngineInvalidityDiagnostics
    assert runtime.get_engine_validity(path.read_bytes()) == (fake.EngineValidity.INVALID,
                                                              int(bits.VERSION_MISMATCH) | int(bits.UNSUPPORTED_CC))
    ten = FakeTensorRT(SURFACES["11.x"])
    logger = Logger(ten).logger
    builder = ten.Builder(logger)
    network = builder.create_network(0)
    ten.OnnxParser(network, logger).parse_from_file(str(tmp_path / "m.onnx"))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    for other in (bytes(builder.build_serialized_network(network, config)), b"garbage"):  # a TensorRT plan too
        assert runtime.get_engine_validity(other) == (fake.EngineValidity.INVALID, int(bits.MALFORMED_ENGINE))
    assert fake.validity_checks == 4 and fake.deserialize_calls == 0  # a header check, not a load
    assert not hasattr(ten.Runtime(logger), "get_engine_validity")  # TensorRT 11 in the double: no such check
    assert ten.removed_touched == []


@pytest.mark.parametrize("change, error", [
    ({"targets": [[8, 6], [12, 0]]}, "The engine cannot run on this GPU, which has compute capability 8.9. Supported "
                                     "compute capabilities: 8.6, 12.0. Rebuild the engine for compute capability "
                                     "8.9 with IBuilderConfig::setComputeCapability"),
    ({"version": "1.6.0.15"}, "not compatible with this version of TensorRT, expecting library version 1.7.1.116 "
                              "got 1.6.0.15"),
    ({"flavour": "tensorrt"}, "The engine header does not conform to the expected format for TensorRT-RTX"),
])
def test_rtx_deserialize_refuses_other_targets_versions_and_formats(tmp_path, change, error):
    fake = rtx_fake((8, 9))
    logger = Logger(fake).logger
    path = tmp_path / "m.engine"
    path.write_bytes(rtx_plan(fake, tmp_path, "SM89"))
    assert fake.Runtime(logger).deserialize_cuda_engine(path.read_bytes()) is not None
    rewrite_plan_header(path, **change)
    assert fake.Runtime(logger).deserialize_cuda_engine(path.read_bytes()) is None
    assert logger.messages[-1][0] == "ERROR" and error in logger.messages[-1][1]


def test_a_gpu_rtx_does_not_support_cannot_load_any_rtx_plan(tmp_path):
    plan = rtx_plan(rtx_fake((8, 9)), tmp_path)  # every supported GPU
    hopper = rtx_fake((9, 0))
    logger = Logger(hopper).logger
    assert hopper.Runtime(logger).deserialize_cuda_engine(plan) is None
    assert "TensorRT-RTX does not support this compute capability" in logger.messages[-1][1]
    assert hopper.Runtime(logger).get_engine_validity(plan)[1] == int(hopper.EngineInvalidityDiagnostics.UNSUPPORTED_CC)


def run_once(fake, engine, context, batch: int) -> None:
    import numpy as np

    buffers = [np.zeros(batch * 3 * 8 * 8, np.float32), np.zeros(batch * 5, np.float32)]
    context.set_input_shape("input", (batch, 3, 8, 8))
    context.set_tensor_address("input", buffers[0].ctypes.data)
    context.set_tensor_address("logits", buffers[1].ctypes.data)
    fake.cuda.allocations.update({b.ctypes.data: b.view(np.uint8) for b in buffers})
    stream = fake.cuda.cudaStreamCreate()[1]
    assert context.execute_async_v3(int(stream))


def test_rtx_jit_compiles_each_shape_once_and_the_runtime_cache_carries_it(tmp_path):
    fake = rtx_fake((8, 9))
    runtime = fake.Runtime(Logger(fake).logger)
    plan = rtx_plan(fake, tmp_path, "SM89")
    engine = runtime.deserialize_cuda_engine(plan)
    config = engine.create_runtime_config()
    cache = config.create_runtime_cache()
    assert config.get_runtime_cache() is None
    assert config.set_runtime_cache(cache) and config.get_runtime_cache() is cache
    context = engine.create_execution_context(config)  # positional: the runtime_config overload
    for batch in (2, 2, 5):
        run_once(fake, engine, context, batch)
    assert (fake.kernels_compiled, fake.kernels_reused) == (2, 1)
    blob = bytes(cache.serialize())

    later = rtx_fake((8, 9))  # another process on the same machine
    engine = later.Runtime(Logger(later).logger).deserialize_cuda_engine(plan)
    config = engine.create_runtime_config()
    loaded = config.create_runtime_cache()
    assert loaded.deserialize(blob) and later.runtime_cache_loads == 1
    config.set_runtime_cache(loaded)
    context = engine.create_execution_context(runtime_config=config)
    for batch in (5, 2, 3):
        run_once(later, engine, context, batch)
    assert (later.kernels_compiled, later.kernels_reused) == (1, 2)  # only batch 3 was new
    plain = engine.create_execution_context()  # no runtime cache: compiles again, keeps it for itself
    run_once(later, engine, plain, 2)
    run_once(later, engine, plain, 2)
    assert (later.kernels_compiled, later.kernels_reused) == (2, 3)
    assert loaded.reset() and bytes(loaded.serialize()) != blob


@pytest.mark.parametrize("blob", [b"", b"not a runtime cache", b"FAKETRT-RUNTIME-CACHE-DOUBLE\0{broken"])
def test_rtx_runtime_cache_refuses_what_is_not_a_cache(blob):
    fake = rtx_fake()
    assert FakeRuntimeCache(fake).deserialize(blob) is False and fake.runtime_cache_loads == 0


@pytest.mark.parametrize("other", [{"gpu_name": "another RTX 4090 SKU"}, {"compute_capability": (12, 0)}])
def test_rtx_runtime_cache_of_another_gpu_or_release_is_refused(other):
    cache = FakeRuntimeCache(rtx_fake())
    cache._kernels["k"] = "v"
    blob = bytes(cache.serialize())
    assert FakeRuntimeCache(rtx_fake()).deserialize(blob)
    elsewhere = FakeTensorRT.surface("rtx", cuda=FakeCudaRuntime(**{"compute_capability": (8, 9), **other}))
    assert not FakeRuntimeCache(elsewhere).deserialize(blob)
    assert not FakeRuntimeCache(FakeTensorRT("1.7.2.5", flavour="rtx")).deserialize(blob)


def test_create_execution_context_overloads(tmp_path):
    fake = rtx_fake()
    engine = fake.Runtime(Logger(fake).logger).deserialize_cuda_engine(rtx_plan(fake, tmp_path, "SM89"))
    strategy = fake.ExecutionContextAllocationStrategy
    config = engine.create_runtime_config()
    for context in (engine.create_execution_context(), engine.create_execution_context(strategy.ON_PROFILE_CHANGE),
                    engine.create_execution_context(config), engine.create_execution_context(runtime_config=None)):
        assert context.engine is engine
    assert engine.create_execution_context(config)._runtime_config is config
    with pytest.raises(TypeError, match="incompatible function arguments"):
        engine.create_execution_context("fast")
    eleven = FakeTensorRT(SURFACES["11.x"])
    _, _, engine = built(eleven, tmp_path)
    with pytest.raises(TypeError, match="incompatible function arguments"):
        engine.create_execution_context(runtime_config=None)  # TensorRT 11 in the double: no runtime config
    for absent in (lambda: engine.create_runtime_config, lambda: eleven.ComputeCapability,
                   lambda: eleven.Builder(None).create_builder_config().num_compute_capabilities):
        with pytest.raises(AttributeError):
            absent()
    assert eleven.removed_touched == []  # never there is not "removed"


def test_rtx_lacks_what_tensorrt_11_removed_and_has_no_dla_cores():
    fake = rtx_fake()
    for gone in (lambda: fake.BuilderFlag.FP16, lambda: fake.BuilderFlag.INT8, lambda: fake.IInt8EntropyCalibrator2,
                 lambda: fake.Builder(None).create_builder_config().int8_calibrator):
        with pytest.raises(AttributeError):
            gone()
    assert len(fake.removed_touched) == 4
    fake.removed_touched.clear()
    assert int(fake.BuilderFlag.VERSION_COMPATIBLE) == 12 and fake.Builder(None).num_DLA_cores == 0
    with pytest.raises(ValueError, match="no DLA"):
        FakeTensorRT(flavour="rtx", num_dla_cores=2)


def test_rtx_timing_cache_calls_are_no_ops_that_warn(tmp_path):
    fake = rtx_fake()
    logger, builder, network, config = configured(fake, tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cache = config.create_timing_cache(b"")  # the one timing-cache call that does not warn
    foreign = FakeTensorRT(SURFACES["11.x"]).Builder(None).create_builder_config().create_timing_cache(b"")
    with pytest.warns(DeprecationWarning, match="Timing cache operations are no-ops in TensorRT-RTX"):
        assert config.set_timing_cache(foreign, False)  # any cache is accepted: it is never used
    assert builder.build_serialized_network(network, config) is not None
    assert foreign.entries == {} and cache.entries == {}  # TensorRT 10/11 in the double would record the build
