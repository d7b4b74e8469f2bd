"""FakeTensorRT's version-dependent surface: what each TensorRT release added, kept or removed.

test_double_contract.py holds the 11.x surface against the real TensorRT for RTX; these tests pin
what cannot be checked against a real module here (10.x releases), from NVIDIA's TensorRT 10.x
binding sources and headers, and the pybind-like behaviour of the double's objects. They need
nothing but the double.
"""

from __future__ import annotations

import pytest

from doubles.fake_tensorrt import SURFACES, FakeTensorRT
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


def built(fake: FakeTensorRT, tmp_path):
    """(builder, config, engine) for the tiny classifier, built and loaded by the double."""
    logger = Logger(fake).logger
    builder = fake.Builder(logger)
    network = builder.create_network(0)
    assert fake.OnnxParser(network, logger).parse_from_file(str(write_tiny_classifier(tmp_path / "m.onnx")))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    engine = fake.Runtime(logger).deserialize_cuda_engine(builder.build_serialized_network(network, config))
    assert engine is not None
    return builder, config, engine


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


@pytest.mark.parametrize("surface", SURFACES)
def test_all_binding_shapes_specified_exists_on_both(tmp_path, surface):
    fake = FakeTensorRT(SURFACES[surface])
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


@pytest.mark.parametrize("surface", SURFACES)
def test_objects_refuse_unknown_attributes_and_writes_to_read_only_properties(tmp_path, surface):
    fake = FakeTensorRT(SURFACES[surface])
    builder, config, engine = built(fake, tmp_path)
    config.builder_optimization_level = 5  # a writable property there too
    with pytest.raises(AttributeError):
        config.max_workspace_sizes = 1 << 30  # a typo: TensorRT's object has no such attribute
    for obj, name in ((builder, "num_DLA_cores"), (engine, "num_optimization_profiles"),
                      (engine.create_execution_context(), "engine")):
        with pytest.raises(AttributeError):
            setattr(obj, name, 1)


@pytest.mark.parametrize("surface", SURFACES)
def test_tensorrt_s_parameter_names_work_as_keywords(tmp_path, surface):
    fake = FakeTensorRT(SURFACES[surface])
    builder, config, engine = built(fake, tmp_path)
    config.set_memory_pool_limit(pool=fake.MemoryPoolType.WORKSPACE, pool_size=1 << 20)
    profile = builder.create_optimization_profile()
    profile.set_shape(input="input", min=(1, 3, 8, 8), opt=(1, 3, 8, 8), max=(2, 3, 8, 8))
    assert profile.get_shape(input="input")[2] == [2, 3, 8, 8] and profile.get_shape("other") == []
    cache = config.create_timing_cache(serialized_timing_cache=b"")
    assert cache.combine(input_cache=config.create_timing_cache(b""), ignore_mismatch=False)
    assert engine.get_tensor_name(index=0) == "input"
    context = engine.create_execution_context()
    assert context.set_tensor_address(name="input", memory=4096)


def test_a_parser_error_has_tensorrt_s_text_and_error_code(tmp_path):
    fake = FakeTensorRT(SURFACES["11.x"])
    logger = Logger(fake).logger
    parser = fake.OnnxParser(fake.Builder(logger).create_network(0), logger)
    assert not parser.parse_from_file(model=str(write_tiny_classifier(tmp_path / "bad.onnx", "unsupported")))
    error = parser.get_error(index=0)
    assert (error.node(), error.node_name(), error.node_operator()) == (2, "fancy1", "FancyActivation")
    assert error.code() == fake.ErrorCode.INVALID_NODE and int(error.code()) == 6
    assert "Plugin not found" in error.desc()
