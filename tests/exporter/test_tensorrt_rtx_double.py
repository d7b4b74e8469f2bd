"""`rexport trt` with TensorRT for RTX on a machine WITH a GPU, against FakeTensorRT's RTX surface.

tests/exporter/test_tensorrt_rtx.py builds real engines with the real `tensorrt_rtx`, but this
machine has no GPU, so the paths that need one cannot run there: building for the GPU present
(ComputeCapability.CURRENT), validating the engine, a GPU that TensorRT for RTX does not support.
Here the double (tests/doubles/fake_tensorrt.py, flavour="rtx"; its surface is held to the real
module by tests/doubles/test_double_contract.py) stands in for tensorrt_rtx and FakeCudaRuntime for
the GPU. The `rtx` fixture installs it as `tensorrt_rtx` on an 8.9 GPU with TensorRT hidden, so
rexport's default choice is TensorRT for RTX, as on an RTX PC that has only it.

As everywhere with the double: this checks what rexport asks of TensorRT for RTX and what it makes
of the answers, not that real engines compute the right numbers.
"""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from doubles.fake_cuda import FakeCudaRuntime, hide_cuda, install_fake_cuda
from doubles.fake_tensorrt import RTX_SURFACE, hide_tensorrt, plan_header
from doubles.fixtures import make_trt, pipeline, rtx, tiny, tiny_data, tiny_models  # noqa: F401 - fixtures
from rexport.errors import CompatibilityError
from rexport.options import with_flags
from rexport.exporter.tensorrt import BuildConfig, build_engine
from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path
from rexport.runtime.trt_compat import DEFAULT_RTX_TARGETS

SUPPORTED = "7.5, 8.0, 8.6, 8.9, 12.0, 12.1"  # what TensorRT for RTX 1.7 builds for


def files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def build(tmp_path, onnx, **options):
    return build_engine(onnx, tmp_path / options.pop("output", "m.engine"), BuildConfig(**options))


def rows(report) -> dict[str, tuple]:
    return {r.name: (r.agreement, r.failures) for r in report.rows}


def not_validated(result) -> list[str]:
    return [n for n in result.notes if n.startswith("not validated")]


def hopper(make_trt, monkeypatch):
    """An H100 (compute capability 9.0): a GPU, but not one TensorRT for RTX builds for or runs on."""
    hide_tensorrt(monkeypatch, rtx=False)
    return make_trt(flavour="rtx", compute_capability=(9, 0), gpu_name="NVIDIA H100 (test double)")


# -- a GPU TensorRT for RTX supports -------------------------------------------------------------


@pytest.mark.parametrize("precision", [None, "fp16", "int8"])
def test_without_compute_capability_it_builds_for_the_gpu_here_and_validates(tmp_path, rtx, tiny, tiny_data,
                                                                               pipeline, precision):
    options = {"calib_data": str(tiny_data), "calib_samples": 32} if precision == "int8" else {}
    result = build(tmp_path, tiny(), precision=precision, **options)  # no --rtx: TensorRT is not installed
    record = rtx.builds[-1]
    assert record.compute_capabilities == ["CURRENT"] and record.targets == ["8.9"]
    assert record.strongly_typed and record.builder_flags == set()
    assert plan_header(result.path)["targets"] == [[8, 9]]  # the plan is for this GPU
    side = result.sidecar
    assert (side.flavour, side.tensorrt_version, side.product) == ("rtx", RTX_SURFACE, "TensorRT for RTX 1.7")
    assert (side.targets, side.compute_capability, side.gpu_name) == (("8.9",), "8.9", "FakeGPU (test double)")
    assert not side.built_without_gpu and side.precision == (precision or "fp32")
    report = result.validation  # the engine ran here: deserialized, header-checked, JIT-compiled
    assert report is not None and report.passed, report.format()
    assert rows(report)[f"tensorrt {precision or 'fp32'}"][1] == []
    assert pipeline.names()[-1] == "validate_backends" and not_validated(result) == []
    assert (rtx.validity_checks, rtx.deserialize_calls) == (1, 1) and rtx.kernels_compiled >= 1
    assert files(tmp_path) == ["m.engine", "m.engine.json", "m.onnx"]  # the check keeps no runtime cache
    assert "TensorRT for RTX 1.7 (1.7.1.116) on FakeGPU (test double) (compute 8.9)" in result.format()


def test_compute_capabilities_that_include_the_gpu_here_are_validated(tmp_path, rtx, tiny, pipeline):
    result = build(tmp_path, tiny(), compute_capabilities="12.0,8.9,8.6")
    assert rtx.builds[-1].compute_capabilities == ["SM86", "SM89", "SM120"]
    assert plan_header(result.path)["targets"] == [[8, 6], [8, 9], [12, 0]]
    assert result.sidecar.targets == ("8.6", "8.9", "12.0") and result.sidecar.compute_capability == "8.9"
    assert result.validation is not None and result.validation.passed and not_validated(result) == []
    assert "validate_backends" in pipeline.names()
    assert "on FakeGPU (test double) (compute 8.9), runs on compute 8.6, 8.9, 12.0" in result.format()


def test_compute_capabilities_without_the_gpu_here_are_written_unvalidated(tmp_path, rtx, tiny, pipeline):
    result = build(tmp_path, tiny(), compute_capabilities="8.6,12.0")
    assert rtx.builds[-1].compute_capabilities == ["SM86", "SM120"]
    assert result.validation is None and "validate_backends" not in pipeline.names()
    assert not_validated(result) == ["not validated: this GPU (8.9) is not one of its targets; check it on the "
                                     "device with `rexport validate m.engine --val-data DIR` (or `rexport selftest "
                                     "BUNDLE`)"]
    assert rtx.deserialize_calls == 0 and rtx.validity_checks == 0  # it was never loaded here
    assert result.sidecar.targets == ("8.6", "12.0") and result.sidecar.compute_capability == "8.9"
    assert files(tmp_path) == ["m.engine", "m.engine.json", "m.onnx"]
    assert "note: not validated: this GPU (8.9)" in result.format()


# -- a GPU it does not support -------------------------------------------------------------------


def test_a_gpu_tensorrt_for_rtx_does_not_support_is_named_and_nothing_is_written(tmp_path, make_trt, monkeypatch,
                                                                                 tiny, pipeline):
    fake = hopper(make_trt, monkeypatch)
    with pytest.raises(CompatibilityError) as err:
        build(tmp_path, tiny(), precision="fp16")
    assert str(err.value) == (f"this GPU (NVIDIA H100 (test double), compute capability 9.0) is not one TensorRT for "
                              f"RTX 1.7 builds for ({SUPPORTED}); give compute_capabilities to build for RTX GPUs "
                              "ahead of time, or use TensorRT here")
    assert "; give --compute-capability to build" in with_flags(str(err.value), err.value.fields)  # the CLI's
    assert fake.builds == [] and pipeline.calls == []  # refused before converting, parsing or building
    assert files(tmp_path) == ["m.onnx"]


def test_on_a_gpu_it_does_not_support_it_builds_for_chosen_targets_unvalidated(tmp_path, make_trt, monkeypatch,
                                                                              tiny, pipeline):
    fake = hopper(make_trt, monkeypatch)
    result = build(tmp_path, tiny(), compute_capabilities="8.9")
    assert fake.builds[-1].compute_capabilities == ["SM89"] and plan_header(result.path)["targets"] == [[8, 9]]
    assert not_validated(result) == ["not validated: this GPU (9.0) is not one of its targets; check it on the device "
                                     "with `rexport validate m.engine --val-data DIR` (or `rexport selftest BUNDLE`)"]
    assert result.validation is None and fake.deserialize_calls == 0
    side = result.sidecar
    assert (side.gpu_name, side.compute_capability, side.targets) == ("NVIDIA H100 (test double)", "9.0", ("8.9",))


def test_the_double_would_have_refused_current_on_that_gpu(tmp_path, make_trt, monkeypatch, tiny):
    """What rexport's own check spares the user: TensorRT for RTX failing the build after parsing."""
    from rexport.runtime.trt_compat import load_tensorrt

    fake = hopper(make_trt, monkeypatch)
    compat = load_tensorrt(flavour="rtx")
    logger = compat.make_logger()
    builder = fake.Builder(logger)
    network = builder.create_network(0)
    assert fake.OnnxParser(network, logger).parse_from_file(str(tiny()))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("input", (1, 3, 8, 8), (4, 3, 8, 8), (8, 3, 8, 8))
    config.add_optimization_profile(profile)
    compat.set_targets(config, None)  # what rexport asks for when told no targets: CURRENT
    assert builder.build_serialized_network(network, config) is None
    assert "The current GPU has compute capability 9.0" in logger.explain()


# -- no GPU --------------------------------------------------------------------------------------


@pytest.mark.parametrize("no_gpu", ["no device", "no cuda-python"])
def test_without_a_gpu_it_builds_for_the_default_targets(tmp_path, rtx, monkeypatch, tiny, pipeline, no_gpu):
    if no_gpu == "no device":
        install_fake_cuda(monkeypatch, FakeCudaRuntime(device_count=0))
    else:
        hide_cuda(monkeypatch)
    result = build(tmp_path, tiny())
    assert rtx.builds[-1].compute_capabilities == [f"SM{t.replace('.', '')}" for t in DEFAULT_RTX_TARGETS]
    assert result.sidecar.targets == DEFAULT_RTX_TARGETS == ("8.6", "8.9", "12.0")
    assert result.sidecar.built_without_gpu and (result.sidecar.gpu_name, result.sidecar.compute_capability) == ("", "")
    assert result.notes == [
        "no GPU here: built ahead of time for compute capabilities 8.6, 8.9, 12.0 (RTX 30, 40 and 50 series), as "
        "none were given",
        "not validated: there is no GPU here; check it on the device with `rexport validate m.engine --val-data DIR` "
        "(or `rexport selftest BUNDLE`)"]
    assert result.validation is None and "validate_backends" not in pipeline.names()
    assert "built without a GPU for compute capabilities 8.6, 8.9, 12.0" in result.format()


def test_inspect_an_rtx_engine_built_without_a_gpu(tmp_path, rtx, monkeypatch, tiny):
    from rexport.cli import cli

    install_fake_cuda(monkeypatch, FakeCudaRuntime(device_count=0))
    engine = build(tmp_path, tiny(), precision="fp16").path
    result = CliRunner().invoke(cli, ["inspect", str(engine)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"{engine} (engine)"
    assert "  precision: fp16; 5 classes" in lines
    assert ("  TensorRT for RTX 1.7 (1.7.1.116), built without a GPU, runs on compute capabilities 8.6, 8.9, 12.0, "
            "fp16") in lines
    assert '  profile: {"input": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}}' in lines
    as_json = json.loads(CliRunner().invoke(cli, ["inspect", str(engine), "--json", "-"]).output)
    side = as_json["sidecar"]
    assert (side["flavour"], side["targets"], side["built_without_gpu"], side["gpu_name"]) == (
        "rtx", ["8.6", "8.9", "12.0"], True, "")
    assert side["format"] == "rexport-engine-sidecar/2" and as_json["kind"] == "engine"


# -- the sidecar and the rebuild command ---------------------------------------------------------


def test_rtx_rebuild_command_and_sidecar_round_trip(tmp_path, rtx, tiny, monkeypatch):
    from rexport.cli import cli

    result = build(tmp_path, tiny(), precision="fp16", flavour="rtx", compute_capabilities="12.0,8.6", batch="1:2:4")
    side = EngineSidecar.read(sidecar_path(result.path))
    assert side == result.sidecar and EngineSidecar.from_dict(json.loads(side.to_json())) == side
    assert side.rebuild_command == ("rexport trt m.onnx -o m.engine --fp16 --rtx --compute-capability 8.6,12.0 "
                                    "--batch 1:2:4")
    assert side.rebuild_here() == "rexport trt m.onnx -o m.engine --fp16 --batch 1:2:4"  # for the machine it runs on
    d = json.loads(sidecar_path(result.path).read_text())
    assert (d["format"], d["flavour"], d["tensorrt_version"], d["targets"], d["built_without_gpu"]) == (
        "rexport-engine-sidecar/2", "rtx", RTX_SURFACE, ["8.6", "12.0"], False)
    assert d["build_options"]["compute_capabilities"] == ["8.6", "12.0"]

    # the recorded command, run as it is, rebuilds the same engine
    monkeypatch.chdir(tmp_path)
    before = len(rtx.builds)
    argv = side.rebuild_command.split()[1:] + ["--force"]
    run = CliRunner().invoke(cli, argv)
    assert run.exit_code == 0, run.output
    again = EngineSidecar.read(sidecar_path(result.path))
    assert len(rtx.builds) == before + 1 and rtx.builds[-1].compute_capabilities == ["SM86", "SM120"]
    assert again.to_dict() == side.to_dict()


def test_an_rtx_engine_built_by_default_choice_records_rtx_in_its_rebuild_command(tmp_path, rtx, tiny):
    """TensorRT for RTX was chosen because it was the only one installed: the command must still say --rtx,
    or it would build a TensorRT engine (or refuse --compute-capability) where both are installed."""
    result = build(tmp_path, tiny(), compute_capabilities="8.9")
    assert result.sidecar.flavour == "rtx" and result.sidecar.build_options["flavour"] == "rtx"
    assert result.sidecar.rebuild_command == "rexport trt m.onnx -o m.engine --rtx --compute-capability 8.9"
    assert result.sidecar.rebuild_here() == "rexport trt m.onnx -o m.engine"


@pytest.mark.parametrize("options, message, cli", [
    ({"hardware_compatibility": "ampere_plus"}, "a hardware compatibility level (hardware_compatibility) is not "
     "available on TensorRT for RTX 1.7; list the target GPUs in compute_capabilities",
     "a hardware compatibility level (--hardware-compat) is not available on TensorRT for RTX 1.7; list the target "
     "GPUs in --compute-capability"),
    ({"version_compatible": True}, "a version-compatible engine (version_compatible) is not available on TensorRT "
     "for RTX 1.7", "a version-compatible engine (--version-compatible) is not available"),
    ({"timing_cache": "t.cache"}, "a timing cache (timing_cache) is not available on TensorRT for RTX 1.7",
     "a timing cache (--timing-cache) is not available"),
    ({"dla_core": 0}, "DLA is not available on TensorRT for RTX 1.7", "leave out --dla-core to build for the GPU"),
    ({"precision": "fp16", "fp16_flag": True}, "BuilderFlag.FP16 is not available on TensorRT for RTX 1.7",
     "; leave out --fp16-flag: rexport converts the ONNX to FP16 instead"),
    ({"precision": "int8", "legacy_calibrator": True, "calib_data": "x"},
     "INT8 calibrator (IInt8EntropyCalibrator2, legacy_calibrator) is not available on TensorRT for RTX 1.7",
     "INT8 calibrator (IInt8EntropyCalibrator2, --legacy-calibrator) is not available on TensorRT for RTX 1.7; "
     "leave out --legacy-calibrator"),
    ({"weakly_typed": True}, "a weakly typed network (weakly_typed) is not available on TensorRT for RTX 1.7",
     "a weakly typed network (--weakly-typed) is not available"),
])
def test_what_tensorrt_for_rtx_lacks_is_refused_before_building(tmp_path, rtx, tiny, pipeline, options, message,
                                                                 cli):
    """The API's message names BuildConfig fields; the CLI's (with_flags) names the flags."""
    with pytest.raises(CompatibilityError, match=message.replace("(", "\\(").replace(")", "\\)")) as err:
        build(tmp_path, tiny(), **options)
    assert cli in with_flags(str(err.value), err.value.fields)
    assert rtx.builds == [] and pipeline.calls == [] and files(tmp_path) == ["m.onnx"]
