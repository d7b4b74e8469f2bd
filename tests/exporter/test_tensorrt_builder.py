"""`rexport trt` / build_engine against FakeTensorRT, a double of the TensorRT 10.x and 11.x Python APIs.

These tests check what the builder asks of TensorRT on each version (network flags, builder flags,
profiles, options, calibrators, caches) and how it reports failures. They are no proof that real
engines build or run: tests/test_tensorrt_real.py does that where TensorRT and a GPU exist.
Most tests run once per API surface (the `trt` fixture) and fail if the builder touched an API
that surface removed.

Everything around TensorRT is rexport's own code: --fp16 and --int8 make genuine FP16 and
trt-target Q/DQ ONNX files with rexport.calibration (calibrated on a tiny labelled dataset), the
double parses them, and validation is rexport.runtime.validate's table with the gates asked for.
The `pipeline` fixture only records those calls (see tests/doubles/spy.py).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from doubles.fake_cuda import FakeCudaRuntime, hide_cuda, install_fake_cuda
from doubles.fake_tensorrt import SURFACES, FakeTensorRT, hide_tensorrt, plan_onnx
from doubles.fixtures import assert_clean, make_trt, pipeline, tiny, tiny_data, tiny_models, trt  # noqa: F401
from helpers import assert_clean_error, env_without
from rexport.calibration.cache import version_int
from rexport.runtime.data import load_dataset
from rexport.errors import CheckFailed, CompatibilityError, InputError, MissingDependency, RexportError
from rexport.exporter.tensorrt import (BuildConfig, build_engine, default_engine_name, parse_bytes,
                                       parse_shapes)
from rexport.files import sha256_file
from rexport.runtime.engine_sidecar import EngineSidecar
from rexport.runtime.metadata import BatchRange
from rexport.runtime.trt_compat import TrtVersion, dla_supported
from rexport.runtime.gates import DEFAULT_AGREEMENT, Gates
from rexport.runtime.validate import ValidationReport

STRONGLY_TYPED_BIT = 1 << 1


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def props(model) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


def rows(report: ValidationReport) -> dict[str, tuple]:
    """candidate -> (agreement, failures) of a real validation table."""
    return {r.name: (r.agreement, r.failures) for r in report.rows}


def swap_top_two_classes_of_first_sample(logits: np.ndarray) -> np.ndarray:
    """A wrong engine: the first sample of every batch gets its two best classes swapped."""
    top2 = np.argsort(logits[0])[-2:]
    logits[0, top2] = logits[0, top2[::-1]]
    return logits


def build(tmp_path, onnx, **options):
    return build_engine(onnx, tmp_path / options.pop("output", "m.engine"), BuildConfig(**options))


def is_11(fake: FakeTensorRT) -> bool:
    return fake.major >= 11


# -- network flags, typing and precision flags per version --------------------------------------


def test_fp32_build_uses_no_network_flags_and_no_precision_flags(tmp_path, trt, tiny):
    result = build(tmp_path, tiny())
    record = trt.builds[-1]
    assert record.network_flags == 0  # never EXPLICIT_BATCH; STRONGLY_TYPED only when the ONNX carries types
    assert record.strongly_typed is is_11(trt)  # always strongly typed on 11
    assert record.builder_flags == set()
    assert result.sidecar.precision == "fp32"
    assert files(tmp_path) == ["m.engine", "m.engine.json", "m.onnx"]


def test_fp16_converts_the_onnx_and_builds_strongly_typed(tmp_path, trt, tiny, pipeline):
    onnx = tiny()
    result = build(tmp_path, onnx, precision="fp16")
    record = trt.builds[-1]
    assert pipeline.names() == ["to_fp16", "validate_backends"]
    assert pipeline.only("to_fp16")["onnx_path"] == onnx
    parsed = plan_onnx(result.path)  # what TensorRT's parser got: rexport's FP16 ONNX
    assert props(parsed)["precision"] == "fp16"
    assert TensorProto.FLOAT16 in {i.data_type for i in parsed.graph.initializer}
    assert any(n.op_type == "Cast" for n in parsed.graph.node)
    assert record.network_flags == (0 if is_11(trt) else STRONGLY_TYPED_BIT)
    assert record.strongly_typed and record.builder_flags == set()
    assert result.sidecar.precision == "fp16" and result.sidecar.model.precision == "fp16"
    assert result.sidecar.built_from["precision"] == "fp16"
    assert result.sidecar.built_from["sha256"] != result.sidecar.source_onnx["sha256"]
    assert not any(p.name.endswith(".work") for p in tmp_path.iterdir())  # the on-the-fly ONNX is cleaned up
    assert result.validation.gates == Gates(min_agreement=DEFAULT_AGREEMENT["fp16"])
    assert rows(result.validation) == {"onnxruntime m.onnx (cpu)": (None, []), "onnxruntime fp16 (cpu)": (1.0, []),
                                       "tensorrt fp16": (1.0, [])}


def test_fp16_onnx_as_given_needs_no_conversion(tmp_path, trt, tiny, pipeline):
    result = build(tmp_path, tiny("fp16"), precision="fp16")
    assert "to_fp16" not in pipeline.names()
    assert trt.builds[-1].strongly_typed and trt.builds[-1].builder_flags == set()
    assert result.sidecar.built_from["sha256"] == result.sidecar.source_onnx["sha256"]


def test_fp16_flag_is_a_10x_option(tmp_path, trt, tiny, pipeline):
    if is_11(trt):
        with pytest.raises(CompatibilityError, match=r"BuilderFlag.FP16 is not available on TensorRT 11.1; leave out "
                                                     r"fp16_flag"):
            build(tmp_path, tiny(), precision="fp16", fp16_flag=True)
        assert trt.builds == [] and pipeline.calls == [] and files(tmp_path) == ["m.onnx"]
        return
    result = build(tmp_path, tiny(), precision="fp16", fp16_flag=True)
    record = trt.builds[-1]
    assert record.builder_flags == {"FP16"} and not record.strongly_typed and record.network_flags == 0
    assert pipeline.names() == ["validate_backends"]  # the FP32 ONNX as it is, no conversion
    assert result.sidecar.precision == "fp16" and "--fp16-flag" in result.sidecar.rebuild_command


def test_int8_calibrates_a_trt_target_qdq_onnx_and_builds_strongly_typed(tmp_path, trt, tiny, tiny_data, pipeline):
    result = build(tmp_path, tiny(), precision="int8", calib_data=str(tiny_data), calib_samples=32, seed=3)
    record = trt.builds[-1]
    call = pipeline.only("quantize")
    qconfig = call["config"]
    assert call["onnx_path"].name == "m.onnx" and qconfig.target == "trt" and qconfig.calib_data == str(tiny_data)
    assert (qconfig.calib_samples, qconfig.seed, qconfig.calib_method) == (32, 3, "entropy")
    assert qconfig.trt_version == trt.__version__  # the calibration cache header is for this TensorRT
    assert record.network_flags == (0 if is_11(trt) else STRONGLY_TYPED_BIT)
    assert record.builder_flags == set()  # precision comes from the Q/DQ ONNX
    assert result.sidecar.precision == "int8"
    parsed = plan_onnx(result.path)  # what TensorRT's parser got: rexport's trt-target Q/DQ ONNX
    ops = [n.op_type for n in parsed.graph.node]
    assert ops.count("QuantizeLinear") >= 2 and {"Conv", "Gemm"} <= set(ops)
    assert props(parsed) == call.result.info.to_props()  # quantize's result, as it wrote it
    assert result.sidecar.built_from["precision"] == "int8"
    assert result.sidecar.built_from["sha256"] != result.sidecar.source_onnx["sha256"]
    calibration = result.sidecar.model.calibration
    assert (calibration["method"], calibration["target"], calibration["samples"]) == ("entropy", "trt", 32)
    assert qconfig.calib_refine == ("ranges", "gptq", "bias") and calibration["refine"] == list(qconfig.calib_refine)
    assert "--calib-refine" not in result.sidecar.rebuild_command  # the default
    assert calibration["census"] == json.loads(props(parsed)["calibration"])["census"]
    report = result.validation  # FP32 ONNX vs the Q/DQ ONNX (ONNX Runtime) and the engine, on --calib-data
    assert report.passed and report.gates == Gates(min_agreement=DEFAULT_AGREEMENT["int8"])
    assert report.data == f"64 {tiny_data}" and report.rows[0].top1 == 1.0  # labelled by the FP32 model
    assert list(rows(report)) == ["onnxruntime m.onnx (cpu)", "onnxruntime int8 (cpu)", "tensorrt int8"]
    assert report.rows[1].agreement == report.rows[2].agreement >= 0.95  # the double runs the same Q/DQ ONNX


@pytest.mark.parametrize("refine, expected, flag", [("none", (), "--calib-refine none"),
                                                    ("bias,ranges", ("bias", "ranges"), "--calib-refine bias,ranges")])
def test_int8_refinements_are_chosen_and_recorded(tmp_path, trt, tiny, tiny_data, pipeline, refine, expected, flag):
    result = build(tmp_path, tiny(), precision="int8", calib_data=str(tiny_data), calib_samples=16, calib_refine=refine,
                   validate=False)
    assert pipeline.only("quantize")["config"].calib_refine == expected
    assert result.sidecar.model.calibration["refine"] == list(expected)
    assert flag in result.sidecar.rebuild_command


def test_unknown_refinement_is_refused_before_any_work(tmp_path, trt, tiny, tiny_data, pipeline):
    with pytest.raises(InputError, match="unknown refinement 'adaround'"):
        build(tmp_path, tiny(), precision="int8", calib_data=str(tiny_data), calib_refine="gptq,adaround")
    assert trt.builds == [] and pipeline.calls == []


def test_qdq_onnx_weakly_typed_on_10x_gets_the_int8_flag(tmp_path, trt, tiny):
    if is_11(trt):
        with pytest.raises(CompatibilityError, match="weakly typed network .* is not available on TensorRT 11.1"):
            build(tmp_path, tiny("int8"), weakly_typed=True)
        return
    build(tmp_path, tiny("int8"), weakly_typed=True)
    record = trt.builds[-1]
    assert record.network_flags == 0 and not record.strongly_typed
    assert record.builder_flags == {"INT8"}


def test_qdq_onnx_as_given_is_strongly_typed_without_flags(tmp_path, trt, tiny, pipeline):
    result = build(tmp_path, tiny("int8"))
    assert trt.builds[-1].strongly_typed and trt.builds[-1].builder_flags == set()
    assert result.sidecar.precision == "int8"
    assert pipeline.names() == ["validate_backends"]
    assert any("validated against ONNX Runtime on the same file" in n for n in result.notes)


@pytest.mark.parametrize("variant, options, message", [
    ("int8", {"precision": "fp16"}, "already int8"),
    ("fp16", {"precision": "int8", "calib_data": "x"}, "is FP16; calibrate INT8 from the FP32 ONNX"),
    ("fp32", {"precision": "int8"}, "precision='int8' needs calibration data"),
])
def test_precision_requests_that_do_not_fit_the_onnx(tmp_path, trt, tiny, pipeline, variant, options, message):
    with pytest.raises(InputError, match=message):
        build(tmp_path, tiny(variant), **options)
    assert trt.builds == [] and pipeline.calls == []
    assert not any(p.suffix in (".engine", ".json") for p in tmp_path.iterdir())


# -- profiles ------------------------------------------------------------------------------------


def test_profile_comes_from_the_recorded_batch_range_or_batch(tmp_path, trt, tiny):
    onnx = tiny()
    build(tmp_path, onnx)
    assert trt.builds[-1].profiles == [{"input": ((1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))}]
    result = build(tmp_path, onnx, batch="2:6:16", output="b.engine")
    assert trt.builds[-1].profiles == [{"input": ((2, 3, 8, 8), (6, 3, 8, 8), (16, 3, 8, 8))}]
    assert result.sidecar.profile == {"input": {"min": [2, 3, 8, 8], "opt": [6, 3, 8, 8], "max": [16, 3, 8, 8]}}
    assert "--batch 2:6:16" in result.sidecar.rebuild_command


def test_profile_from_trtexec_style_shapes(tmp_path, trt, tiny):
    build(tmp_path, tiny(), min_shapes="input:1x3x8x8", opt_shapes="input:2x3x8x8", max_shapes="input:4x3x8x8")
    assert trt.builds[-1].profiles == [{"input": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}]


@pytest.mark.parametrize("shapes, message", [
    (("x:1x3x8x8", "x:2x3x8x8", "x:4x3x8x8"), "min_shapes names x but the network's inputs are input"),
    (("input:1x3x9x9", "input:2x3x9x9", "input:4x3x9x9"), "does not fit input input"),
])
def test_shapes_that_do_not_fit_the_network(tmp_path, trt, tiny, shapes, message):
    with pytest.raises(InputError, match=message):
        build(tmp_path, tiny(), min_shapes=shapes[0], opt_shapes=shapes[1], max_shapes=shapes[2])
    assert trt.builds == []


@pytest.mark.parametrize("options, message", [
    ({"min_shapes": "input:1x3x8x8", "opt_shapes": "input:1x3x8x8"}, "together"),
    ({"batch": "1:2:4", "min_shapes": "input:1x3x8x8", "opt_shapes": "input:1x3x8x8", "max_shapes": "input:1x3x8x8"},
     "either batch or"),
    ({"min_shapes": "input:4x3x8x8", "opt_shapes": "input:2x3x8x8", "max_shapes": "input:8x3x8x8"}, "min <= opt <= max"),
    ({"min_shapes": "input=1x3"}, "NAME:DxDxD"),
    ({"optimization_level": 6}, "0 to 5"),
    ({"workspace": "lots"}, "MiB or carry a unit"),
    ({"hardware_compatibility": "turing"}, "hardware_compatibility must be one of"),
    ({"fp16_flag": True}, "fp16_flag goes with precision='fp16'"),
    ({"precision": "int8", "legacy_calibrator": True}, "needs calib_data"),
    ({"precision": "int8", "legacy_calibrator": True, "calib_data": "x", "calib_method": "mse"}, "entropy or minmax"),
    ({"precision": "bf16"}, "fp16 or int8"),
])
def test_build_config_rejects_bad_options(options, message):
    with pytest.raises(InputError, match=message):
        BuildConfig(**options)


def test_fixed_batch_onnx(tmp_path, trt, tiny):
    onnx = tiny(static_batch=2)
    result = build(tmp_path, onnx)
    assert trt.builds[-1].profiles == []  # nothing dynamic: no profile
    assert result.sidecar.profile["input"]["max"] == [2, 3, 8, 8]
    with pytest.raises(InputError, match="takes only batches of 2, so batch=1:8:32 cannot apply.*rexport onnx --batch"):
        build(tmp_path, onnx, batch="1:8:32", output="other.engine")


# -- builder options -----------------------------------------------------------------------------


def test_workspace_level_and_compatibility_options_reach_the_builder(tmp_path, trt, tiny):
    result = build(tmp_path, tiny(), workspace="512M", optimization_level=5, hardware_compatibility="ampere_plus",
                   version_compatible=True)
    record = trt.builds[-1]
    assert record.workspace == 512 << 20
    assert record.optimization_level == 5
    assert record.hardware_compatibility == "AMPERE_PLUS"
    assert "VERSION_COMPATIBLE" in record.builder_flags
    options = result.sidecar.build_options
    assert options["workspace"] == 512 << 20 and options["version_compatible"] is True
    for flag in ("--workspace 512", "--opt-level 5", "--hardware-compat ampere_plus", "--version-compatible"):
        assert flag in result.sidecar.rebuild_command


def test_same_compute_capability_before_10_9_is_refused_before_building(tmp_path, make_trt, tiny):
    trt = make_trt(SURFACES["10.x"])  # 10.3: HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY came in 10.9
    with pytest.raises(CompatibilityError, match="^hardware compatibility level same_compute_capability is not "
                                                 "available on TensorRT 10.3"):
        build(tmp_path, tiny(), hardware_compatibility="same_compute_capability")
    assert trt.builds == [] and files(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("version", ["10.9.0.34", SURFACES["11.x"]])
def test_same_compute_capability_from_10_9(tmp_path, make_trt, tiny, version):
    trt = make_trt(version)
    build(tmp_path, tiny(), hardware_compatibility="same_compute_capability")
    assert trt.builds[-1].hardware_compatibility == "SAME_COMPUTE_CAPABILITY"


def test_size_and_shape_parsing():
    assert parse_bytes("2G") == 2 << 30 and parse_bytes("4096") == 4096 << 20 and parse_bytes("100B") == 100
    assert parse_shapes("input:1x3x224x224,aux:1x10") == {"input": (1, 3, 224, 224), "aux": (1, 10)}
    assert default_engine_name("dir/model.onnx", "fp16") == "model.fp16.engine"
    assert default_engine_name("model.int8.onnx", "int8") == "model.int8.engine"
    assert default_engine_name("model.onnx") == "model.engine"


def test_dla_on_10x_with_cores(tmp_path, make_trt, tiny):
    trt = make_trt(SURFACES["10.x"], num_dla_cores=2)
    build(tmp_path, tiny(), precision="fp16", dla_core=1)
    record = trt.builds[-1]
    assert (record.device_type, record.dla_core) == ("DLA", 1) and "GPU_FALLBACK" in record.builder_flags
    build(tmp_path, tiny(), precision="fp16", dla_core=0, gpu_fallback=False, output="nofallback.engine")
    assert "GPU_FALLBACK" not in trt.builds[-1].builder_flags
    with pytest.raises(InputError, match="dla_core=2 does not exist: this device has 2 DLA core"):
        build(tmp_path, tiny(), dla_core=2, output="x.engine")


@pytest.mark.parametrize("version, cores, message", [
    ("11.1.0.8", 2, "DLA is not available on TensorRT 11.1; DLA needs TensorRT <= 10.7, or 11.4.1\\+"),
    ("10.8.0.1", 2, "DLA is not available on TensorRT 10.8"),
    ("10.3.0.30", 0, "this device has no DLA cores"),
])
def test_dla_where_it_does_not_exist(tmp_path, make_trt, tiny, version, cores, message):
    trt = make_trt(version, num_dla_cores=cores)
    with pytest.raises(CompatibilityError, match=message):
        build(tmp_path, tiny(), dla_core=0)
    assert trt.builds == [] and files(tmp_path) == ["m.onnx"]


def test_dla_returns_on_11_4_1(tmp_path, make_trt, tiny):
    trt = make_trt("11.4.1.2", num_dla_cores=2)
    build(tmp_path, tiny(), dla_core=0)
    assert trt.builds[-1].device_type == "DLA"
    assert dla_supported(TrtVersion.parse("10.7.0")) and not dla_supported(TrtVersion.parse("11.4.0"))


# -- timing cache ----------------------------------------------------------------------------------


def test_timing_cache_is_saved_loaded_and_merged(tmp_path, trt, tiny):
    onnx, cache = tiny(), tmp_path / "timing.cache"
    first = build(tmp_path, onnx, timing_cache=str(cache))
    assert first.timing_cache == cache and cache.is_file()
    assert trt.builds[-1].timing_cache_loaded
    saved = json.loads(cache.read_bytes().split(b"\0", 1)[1])
    assert list(saved["entries"]) == ["build-1"]

    build(tmp_path, onnx, timing_cache=str(cache), output="second.engine")
    assert list(json.loads(cache.read_bytes().split(b"\0", 1)[1])["entries"]) == ["build-1", "build-2"]

    other = tmp_path / "other.cache"
    other.write_bytes(cache.read_bytes().replace(b"build-1", b"build-from-elsewhere"))
    merged = build(tmp_path, onnx, timing_cache=str(cache), merge_timing_caches=(str(other),), output="third.engine")
    entries = json.loads(cache.read_bytes().split(b"\0", 1)[1])["entries"]
    assert "build-from-elsewhere" in entries and "build-3" in entries
    assert f"merged timing cache {other}" in merged.notes


def test_timing_cache_from_another_gpu_is_not_merged_and_a_stale_one_is_replaced(tmp_path, trt, tiny):
    onnx = tiny()
    foreign = tmp_path / "foreign.cache"
    key = f"{trt.__version__.rsplit('.', 1)[0]}/sm75"
    foreign.write_bytes(b"FAKETRT-TIMING-DOUBLE\0" + json.dumps({"key": key, "entries": {"x": "y"}}).encode())
    result = build(tmp_path, onnx, merge_timing_caches=(str(foreign),))
    assert any("made by another TensorRT version or GPU; not merged" in n for n in result.notes)
    stale = tmp_path / "stale.cache"
    stale.write_bytes(foreign.read_bytes())
    result = build(tmp_path, onnx, timing_cache=str(stale), output="b.engine")
    assert f"timing cache {stale} was made by another TensorRT version or GPU; starting a new one" in result.notes
    assert b"sm87" in stale.read_bytes()  # replaced by a cache for this GPU
    good = tmp_path / "good.cache"
    good.write_bytes(stale.read_bytes().replace(b'"entries": {', b'"entries": {"kept": "1", ', 1))
    stale.write_bytes(foreign.read_bytes())
    build(tmp_path, onnx, timing_cache=str(stale), merge_timing_caches=(str(good),), output="c2.engine")
    assert "kept" in json.loads(stale.read_bytes().split(b"\0", 1)[1])["entries"]  # merged into the fresh cache
    with pytest.raises(InputError, match="does not exist"):
        build(tmp_path, onnx, merge_timing_caches=(str(tmp_path / "missing.cache"),), output="c.engine")


# -- failures ------------------------------------------------------------------------------------


def test_parser_errors_are_reported_per_node(tmp_path, trt, tiny):
    with pytest.raises(InputError) as err:
        build(tmp_path, tiny("unsupported"))
    message = str(err.value)
    assert "TensorRT's ONNX parser rejected m.unsupported.onnx: node 2 (FancyActivation 'fancy1'): FancyActivation " \
           "is not an ONNX op TensorRT supports, and no plugin provides it" in message
    assert "\n" not in message
    assert trt.builds == [] and files(tmp_path) == ["m.unsupported.onnx"]


def test_a_failed_build_is_explained_from_the_logger_and_writes_nothing(tmp_path, trt, tiny):
    trt.fail_build_with = ["[optimizer] Insufficient workspace for layer conv1 (needs 2 GiB, limit 1 MiB)"]
    with pytest.raises(RexportError, match=f"TensorRT {trt.__version__[:4]} could not build the engine: "
                                           ".*Insufficient workspace for layer conv1") as err:
        build(tmp_path, tiny(), timing_cache=str(tmp_path / "t.cache"))
    assert "\n" not in str(err.value)
    assert files(tmp_path) == ["m.onnx"]  # no engine, sidecar, timing cache or temporary leftovers


def test_failed_validation_exits_3_and_writes_nothing(tmp_path, trt, tiny, tiny_data):
    trt.tamper_outputs = swap_top_two_classes_of_first_sample  # 8 of the 64 samples (batches of 8) go wrong
    with pytest.raises(CheckFailed, match="disagrees with m.onnx beyond tolerance; nothing was written") as err:
        build(tmp_path, tiny(), precision="int8", calib_data=str(tiny_data), calib_cache=str(tmp_path / "c.cache"),
              timing_cache=str(tmp_path / "t.cache"))
    report = err.value.report
    assert err.value.exit_code == 3 and isinstance(report, ValidationReport) and not report.passed
    assert rows(report) == {"onnxruntime m.onnx (cpu)": (None, []),
                            "onnxruntime int8 (cpu)": (1.0, []),  # the Q/DQ ONNX itself is fine
                            "tensorrt int8": (0.875, ["agreement 87.50% < 95.00%"])}
    assert "FAIL tensorrt int8: agreement 87.50% < 95.00%" in report.format()
    assert files(tmp_path) == ["m.onnx"]


def test_validation_is_rexports_table_with_the_gates_asked_for(tmp_path, trt, tiny, tiny_data, pipeline):
    onnx = tiny()
    result = build(tmp_path, onnx)
    report = result.validation
    assert report.passed and report.gates == Gates(min_agreement=DEFAULT_AGREEMENT["fp32"])
    assert report.data == "64 random inputs" and report.samples == 64
    assert rows(report) == {"onnxruntime m.onnx (cpu)": (None, []), "tensorrt fp32": (1.0, [])}
    call = pipeline.only("validate_backends")
    assert call["inputs"].shape == (64, 3, 8, 8) and call["labels"] is None and call["max_batch"] == 8
    assert "tensorrt fp32" in result.format() and result.to_dict()["validation"]["passed"] is True

    trt.tamper_outputs = swap_top_two_classes_of_first_sample  # now 8 of 64 answers are wrong
    lenient = build(tmp_path, onnx, min_agreement=0.8, output="lenient.engine")
    assert lenient.validation.passed and rows(lenient.validation)["tensorrt fp32"] == (0.875, [])
    assert lenient.validation.gates == Gates(min_agreement=0.8)
    with pytest.raises(CheckFailed) as err:
        build(tmp_path, onnx, max_top1_drop=5, val_data=str(tiny_data), output="drop.engine")
    assert rows(err.value.report)["tensorrt fp32"] == (0.875, ["top-1 drop 12.50 points > 5",
                                                               "agreement 87.50% < 99.00%"])
    assert err.value.report.rows[0].top1 == 1.0  # tiny_data is labelled with the FP32 model's answers
    with pytest.raises(InputError, match="max_top1_drop needs labelled data"):
        build(tmp_path, onnx, max_top1_drop=5, output="unlabelled.engine")  # random inputs have no labels
    assert files(tmp_path) == ["lenient.engine", "lenient.engine.json", "m.engine", "m.engine.json", "m.onnx"]


def test_existing_output_is_refused_before_any_build(tmp_path, trt, tiny):
    (tmp_path / "m.engine").write_bytes(b"old")
    with pytest.raises(InputError, match="already exists; pass overwrite=True"):
        build(tmp_path, tiny())
    assert trt.builds == []
    build(tmp_path, tiny(), overwrite=True)
    assert (tmp_path / "m.engine").read_bytes().startswith(b"FAKETRT-ENGINE")


def test_no_gpu_or_no_cuda_python(tmp_path, monkeypatch, make_trt, tiny):
    make_trt()
    install_fake_cuda(monkeypatch, FakeCudaRuntime(device_count=0))
    with pytest.raises(CompatibilityError, match="no usable NVIDIA GPU .*cudaErrorNoDevice"):
        build(tmp_path, tiny())
    hide_cuda(monkeypatch)
    with pytest.raises(MissingDependency, match="cuda-python is needed .*pip install 'rexport\\[trt\\]' on a machine "
                                                "with NVIDIA drivers"):
        build(tmp_path, tiny())
    assert files(tmp_path) == ["m.onnx"]


def test_no_tensorrt(tmp_path, monkeypatch, tiny):
    hide_tensorrt(monkeypatch)
    with pytest.raises(MissingDependency, match="tensorrt is needed to build TensorRT engines but is not installed; "
                                                "run: pip install 'rexport\\[trt\\]' on a machine with NVIDIA drivers"):
        build(tmp_path, tiny())


# -- the sidecar ---------------------------------------------------------------------------------


def test_sidecar_describes_the_engine(tmp_path, trt, tiny):
    onnx = tiny()
    result = build(tmp_path, onnx, precision="fp16", batch="1:2:4")
    side = EngineSidecar.read(tmp_path / "m.engine.json")
    assert side == result.sidecar
    assert side.tensorrt_version == trt.__version__
    assert (side.gpu_name, side.compute_capability) == ("FakeGPU (test double)", "8.7")
    assert side.model.arch == "tiny" and side.model.num_classes == 5 and side.model.batch == BatchRange(1, 4, 8)
    assert side.source_onnx == {"path": "m.onnx", "sha256": sha256_file(onnx), "precision": "fp32"}
    assert side.build_options["precision"] == "fp16" and side.build_options["batch"] == "1:2:4"
    assert side.rebuild_command == "rexport trt m.onnx -o m.engine --fp16 --batch 1:2:4"


# -- the double itself: it must catch a builder written for the wrong TensorRT --------------------


def naive_tensorrt8_builder(trt, onnx_path):
    """How builders were written for TensorRT 8: explicit-batch flag and precision flags. Wrong on 10/11."""
    logger = trt.ILogger()
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH))
    trt.OnnxParser(network, logger).parse_from_file(str(onnx_path))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16)
    return builder.build_engine(network, config)


@pytest.mark.parametrize("version", SURFACES.values(), ids=SURFACES.keys())
def test_the_double_catches_a_builder_written_for_an_older_tensorrt(version, make_trt, tiny):
    trt = make_trt(version)
    with pytest.raises(AttributeError):
        naive_tensorrt8_builder(trt, tiny())
    expected = "NetworkDefinitionCreationFlag.EXPLICIT_BATCH" if trt.major >= 11 else "FakeBuilder.build_engine"
    assert trt.removed_touched == [expected]
    with pytest.raises(AssertionError, match="touched APIs TensorRT"):
        assert_clean(trt)
    trt.removed_touched.clear()
    trt.explicit_batch_used = False


REMOVED = {  # surface -> what the real version no longer has
    "11.x": [lambda t: t.BuilderFlag.FP16, lambda t: t.BuilderFlag.INT8, lambda t: t.BuilderFlag.BF16,
             lambda t: t.BuilderFlag.OBEY_PRECISION_CONSTRAINTS, lambda t: t.NetworkDefinitionCreationFlag.EXPLICIT_BATCH,
             lambda t: t.IInt8EntropyCalibrator2, lambda t: t.IInt8MinMaxCalibrator,
             lambda t: t.Builder(None).create_builder_config().int8_calibrator],
    "both": [lambda t: t.Builder(None).build_engine, lambda t: t.Builder(None).max_batch_size],
}


@pytest.mark.parametrize("surface", ["10.x", "11.x"])
def test_the_double_removes_exactly_what_each_version_removed(surface, make_trt):
    trt = make_trt(SURFACES[surface])
    for get in REMOVED["both"] + REMOVED["11.x"] * (surface == "11.x"):
        with pytest.raises(AttributeError):
            get(trt)
    if surface == "10.x":
        for get in REMOVED["11.x"]:
            get(trt)  # still there on 10.x: no AttributeError
    assert len(trt.removed_touched) == len(REMOVED["both"]) + (len(REMOVED["11.x"]) if surface == "11.x" else 0)
    trt.removed_touched.clear()


# -- the legacy calibrator (TensorRT 10.x) --------------------------------------------------------


def test_legacy_calibrator_sets_a_calibration_profile_for_any_runtime_dimension(tmp_path, make_trt, tiny,
                                                                               tiny_data):
    """TensorRT needs the calibration profile whenever the network has runtime dimensions, even when
    the build profile pins the batch (min == opt == max); a static network needs none."""
    trt = make_trt(SURFACES["10.x"])
    build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_data=str(tiny_data), calib_samples=8,
          batch="4:4:4")
    assert trt.builds[-1].calibration_profile == {"input": ((4, 3, 8, 8),) * 3}
    static = tiny(name="static.onnx", static_batch=2)
    build(tmp_path, static, precision="int8", legacy_calibrator=True, calib_data=str(tiny_data), calib_samples=8,
          output="static.engine")
    assert trt.builds[-1].calibration_profile is None and trt.builds[-1].result == "built"
    assert len(trt.builds[-1].calibration_batches) == 8 // 2


def test_legacy_calibrator_feeds_batches_and_writes_the_cache(tmp_path, make_trt, tiny, tiny_data, pipeline):
    trt = make_trt(SURFACES["10.x"])
    cache = tmp_path / "calib.cache"
    result = build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_data=str(tiny_data),
                   calib_samples=12, calib_cache=str(cache))
    record = trt.builds[-1]
    assert record.builder_flags == {"INT8"} and not record.strongly_typed
    batch = 4  # the profile's opt batch (1:4:8)
    assert record.calibration_profile == {"input": ((batch, 3, 8, 8),) * 3}
    assert len(record.calibration_batches) == 12 // batch
    fed = np.concatenate(record.calibration_batches)
    loaded = pipeline.calls_to("load_dataset")[0]
    assert (loaded["source"], loaded["samples"], loaded["seed"]) == (str(tiny_data), 12, 0)
    expected = load_dataset(tiny_data, result.sidecar.model, samples=12, seed=0).inputs
    np.testing.assert_array_equal(fed, expected)  # the exact samples, through "device" memory
    assert "quantize" not in pipeline.names()
    assert cache.read_text().startswith("TRT-100300-EntropyCalibration2\ninput: ")
    assert result.calibration_cache == cache
    assert result.sidecar.model.calibration["calibrator"] == "TensorRT 10 IInt8EntropyCalibrator2"
    assert trt.cuda.allocations == {}  # the calibrator freed its device buffer

    calls = len(pipeline.calls)
    build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_cache=str(cache), output="again.engine",
          validate=False)
    assert trt.builds[-1].calibration_cache_read == cache.read_bytes()
    assert trt.builds[-1].calibration_batches == [] and len(pipeline.calls) == calls  # no data loaded

    # a cache written for another TensorRT version: relabelled (TensorRT would skip it silently)
    stale = tmp_path / "stale.cache"
    stale.write_text(cache.read_text().replace("TRT-100300-", "TRT-100100-", 1))
    build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_cache=str(stale), output="third.engine",
          validate=False)
    assert trt.builds[-1].calibration_cache_read == cache.read_bytes()


def test_a_legacy_calibration_cache_is_kept_only_for_an_engine_that_passed(tmp_path, make_trt, tiny, tiny_data):
    trt = make_trt(SURFACES["10.x"])
    cache = tmp_path / "calib.cache"
    trt.tamper_outputs = lambda logits: -logits  # a wrong engine: its answers are the least likely classes
    options = {"precision": "int8", "legacy_calibrator": True, "calib_data": str(tiny_data), "calib_cache": str(cache)}
    with pytest.raises(CheckFailed, match="nothing was written"):
        build(tmp_path, tiny(), **options)
    assert trt.builds[-1].calibration_batches and files(tmp_path) == ["m.onnx"]  # not reused by the next build
    trt.tamper_outputs = None
    build(tmp_path, tiny(), **options)
    assert trt.builds[-1].calibration_batches and cache.read_text().startswith("TRT-100300-EntropyCalibration2\n")


def test_legacy_minmax_calibrator(tmp_path, make_trt, tiny, tiny_data):
    make_trt(SURFACES["10.x"])
    cache = tmp_path / "c.cache"
    build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_data=str(tiny_data), calib_samples=8,
          calib_method="minmax", calib_cache=str(cache), validate=False)
    assert cache.read_text().startswith("TRT-100300-MinMaxCalibration")
    with pytest.raises(InputError, match="does not exist; give calib_data to make it"):
        build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_cache=str(tmp_path / "none.cache"),
              output="x.engine")


def test_legacy_calibrator_on_11_asks_for_qdq(tmp_path, make_trt, tiny, tiny_data, pipeline):
    trt = make_trt(SURFACES["11.x"])
    with pytest.raises(CompatibilityError, match=r"INT8 calibrator \(IInt8EntropyCalibrator2, legacy_calibrator\) "
                                                 r"is not available on TensorRT 11.1; leave out legacy_calibrator"):
        build(tmp_path, tiny(), precision="int8", legacy_calibrator=True, calib_data=str(tiny_data))
    assert trt.builds == [] and pipeline.calls == [] and files(tmp_path) == ["m.onnx"]


def test_quantize_cache_is_kept_when_asked(tmp_path, trt, tiny, tiny_data):
    cache = tmp_path / "kept.cache"
    result = build(tmp_path, tiny(), precision="int8", calib_data=str(tiny_data), calib_cache=str(cache))
    assert result.calibration_cache == cache
    lines = cache.read_text().splitlines()  # rexport's cache, with the header for the TensorRT that builds
    assert lines[0] == f"TRT-{version_int(trt.__version__)}-EntropyCalibration2"
    assert {line.split(":")[0] for line in lines[1:]} >= {"input", "c1", "r1", "logits"}


# -- CLI -----------------------------------------------------------------------------------------


def test_the_tensorrt_layer_needs_no_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import rexport.exporter.tensorrt, rexport.runtime.backends.tensorrt, rexport.runtime.trt_compat\n"
            "from rexport.cli import main\n"
            "sys.argv = ['rexport', 'doctor']\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "TensorRT" in proc.stdout and "Traceback" not in proc.stderr


def test_cli_without_tensorrt_is_one_line_and_writes_nothing(run_cli, tmp_path, tiny):
    onnx = tiny()
    hidden = tmp_path.parent / f"{tmp_path.name}-env"
    hidden.mkdir()
    result = run_cli("trt", onnx, "--fp16", env=env_without(hidden, "tensorrt", "tensorrt_rtx"))
    assert_clean_error(result, "tensorrt is needed", "pip install 'rexport[trt]'", "NVIDIA drivers",
                       "or pip install 'rexport[rtx]' for TensorRT for RTX")
    result = run_cli("trt", onnx, "--fp16", "--rtx", env=env_without(hidden, "tensorrt_rtx"))
    assert_clean_error(result, "tensorrt_rtx is needed to build TensorRT engines but is not installed; "
                               "run: pip install 'rexport[rtx]'")
    assert files(tmp_path) == ["m.onnx"]


def test_cli_maps_flags_onto_the_config(tmp_path, trt, tiny, monkeypatch):
    from rexport.cli import cli

    onnx = tiny()
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["trt", str(onnx), "--fp16", "--batch", "1:2:4", "--opt-level", "2", "--workspace",
                                 "1G", "--json", "report.json"])
    assert result.exit_code == 0, result.output
    assert files(tmp_path) == ["m.fp16.engine", "m.fp16.engine.json", "m.onnx", "report.json"]
    record = trt.builds[-1]
    assert record.optimization_level == 2 and record.workspace == 1 << 30
    assert record.profiles == [{"input": ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))}]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["engine"]["precision"] == "fp16" and report["validation"]["passed"] is True
    assert "m.fp16.engine" in result.output and "profile (min / opt / max)" in result.output

    both = runner.invoke(cli, ["trt", str(onnx), "--fp16", "--int8"])
    assert both.exit_code == 1 and "give --fp16 or --int8, not both" in both.output
