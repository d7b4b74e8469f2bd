"""Real engines from a real NVIDIA builder, on every machine: TensorRT for RTX (`tensorrt_rtx`,
installed by the `dev` extra) parses and builds what `rexport trt` gives it, with or without a GPU.

Every zoo family (ResNet, ResNeXt, Wide ResNet at 32x32; pre-activation; CIFAR option A and B;
plain) is built in FP16 through `build_engine` (and in FP32, but for the three 50-layer
bottleneck families, whose FP32 path is the same as ResNet-18's) and in INT8 through the CLI's
`--int8 --calib-data`, then the engines from a bundle, for chosen GPUs, from ready FP16 / Q/DQ
files and with a static batch: 28 engines. Then what TensorRT must refuse (the cpu-target INT8
file, an op it cannot import, FP32 on Turing) is refused with one line naming the cause, and
nothing is written.

What this does not prove: that the engines compute the right numbers. Running an engine needs
a GPU (an RTX one for these); tests/test_tensorrt_real.py runs them wherever one exists, and
`build_engine` validates them itself when it builds on one. Where there is no GPU (CI), the
engines are checked for what can be read without one: the sidecar, and that the precision
reached the weights (an FP16 engine of a ResNet-50 is half the size of the FP32 one).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner

from rexport.errors import CompatibilityError, RexportError
from rexport.exporter.tensorrt import BuildConfig, build_engine
from rexport.options import with_flags
from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path
from rexport.runtime.trt_compat import DEFAULT_RTX_TARGETS, load_tensorrt

pytestmark = pytest.mark.skipif(importlib.util.find_spec("tensorrt_rtx") is None,
                                reason="TensorRT for RTX is not installed (pip install 'rexport[rtx]')")

# (arch, build_model options): one of every zoo family
FAMILIES = [("resnet18", {}), ("resnet50", {}), ("resnext50_32x4d", {}), ("wide_resnet50_2", {}),
            ("preact_resnet18", {}), ("resnet20", {"shortcut": "A"}), ("resnet20", {"shortcut": "B"}),
            ("plain20", {})]
DEEP = ("resnet50", "resnext50_32x4d", "wide_resnet50_2")  # FP16 and INT8 only: FP32 is built for the others
SIZE = 32
CALIB = 16  # calibration samples: enough for ranges; the calibrators are tested in tests/calibration


def family_id(family) -> str:
    arch, options = family
    return arch + "".join(f"-{v}" for v in options.values())


@pytest.fixture(scope="module")
def rtx():
    return load_tensorrt(flavour="rtx")


@pytest.fixture(scope="module")
def default_targets() -> tuple[str, ...]:
    """What an RTX build without --compute-capability targets here: the GPU, or the default set."""
    from rexport.runtime import cuda

    try:
        return (cuda.gpu_info().compute_capability_str,)
    except RexportError:
        return DEFAULT_RTX_TARGETS


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """export(family) -> an FP32 rexport ONNX of that family at 32x32 with deterministic weights."""
    from helpers import deterministic_state_dict

    from rexport.exporter import ExportConfig, ParityConfig, build_model, export_onnx
    from rexport.exporter.checkpoint import LoadedModel

    root = tmp_path_factory.mktemp("rtx-models")
    made = {}

    def export(family, batch: str = "1:4:8"):
        key = (family_id(family), batch)
        if key not in made:
            arch, options = family
            model = build_model(arch, num_classes=10, **options)
            model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
            out = root / f"{family_id(family)}.{batch.replace(':', '-')}.onnx"
            export_onnx(LoadedModel(model.eval(), arch, 10, 3, dict(options), None, []), out,
                        ExportConfig(arch=arch, input_size=(SIZE, SIZE), batch=batch,
                                     parity=ParityConfig(enabled=False)))
            made[key] = out
        return made[key]

    return export


@pytest.fixture(scope="module")
def calib(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("rtx-calib") / "calib.npy"
    np.save(path, np.random.default_rng(0).standard_normal((CALIB, 3, SIZE, SIZE)).astype(np.float32))
    return str(path)


def rexport_trt(*args) -> str:
    """`rexport trt ...` through the real CLI, in-process; returns what it printed."""
    from rexport.cli import cli

    result = CliRunner().invoke(cli, ["trt", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def check_engine(path, rtx, *, precision: str, targets, source: str):
    """What a real engine and its sidecar must say, read back from disk."""
    side = EngineSidecar.read(sidecar_path(path))
    assert path.stat().st_size > 100_000
    assert side.flavour == "rtx" and side.tensorrt_version == str(rtx.version) and side.product == rtx.name
    assert side.targets == tuple(targets) and side.precision == precision
    assert side.source_onnx["path"] == source and side.model is not None and side.model.precision == precision
    assert side.profile["input"]["max"][1:] == [3, SIZE, SIZE]
    assert "--rtx" in side.rebuild_command
    return side


@pytest.mark.parametrize("family", FAMILIES, ids=family_id)
def test_every_family_builds_in_fp32_fp16_and_int8(tmp_path, models, calib, rtx, default_targets, family):
    onnx = models(family)
    sizes = {}
    for precision in ("fp16",) if family[0] in DEEP else (None, "fp16"):
        result = build_engine(onnx, tmp_path / f"m.{precision or 'fp32'}.engine",
                              BuildConfig(precision=precision, flavour="rtx", validate=False))
        check_engine(result.path, rtx, precision=precision or "fp32", targets=default_targets, source=onnx.name)
        assert result.plan.typing == ("strong" if precision else "default")
        sizes[precision or "fp32"] = result.path.stat().st_size
    # no refinements: they change values, not the graph TensorRT builds (tests/calibration runs them)
    printed = rexport_trt(onnx, "-o", tmp_path / "m.int8.engine", "--int8", "--calib-data", calib, "--calib-samples",
                          CALIB, "--calib-method", "minmax", "--calib-refine", "none", "--rtx", "--compute-capability",
                          "8.9,8.6", "--no-validate")
    side = check_engine(tmp_path / "m.int8.engine", rtx, precision="int8", targets=("8.6", "8.9"), source=onnx.name)
    assert side.built_from["how"] == "quantize, strongly typed" and side.model.calibration["target"] == "trt"
    assert "--compute-capability 8.6,8.9" in side.rebuild_command and "int8" in printed
    sizes["int8"] = (tmp_path / "m.int8.engine").stat().st_size
    if family[0] not in ("resnet20", "plain20"):  # weights dominate the plan: the precision reached them
        assert sizes["int8"] < 0.8 * sizes["fp16"] and ("fp32" not in sizes or sizes["fp16"] < 0.6 * sizes["fp32"]), sizes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"m.{precision}.engine{suffix}" for precision in sizes for suffix in ("", ".json"))


def test_an_engine_built_from_a_bundle_joins_it(tmp_path, rtx, default_targets, demo_bundle):
    """From a bundle of the demo model (real trained weights): the engine joins the bundle; where it
    cannot run here it says so instead of validating, and loading it without a GPU is refused clearly."""
    from rexport.runtime import load
    from rexport.runtime.manifest import MANIFEST

    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    for precision in ("int8", "fp16"):
        printed = rexport_trt(bundle, f"--{precision}", "--calib-data", "demo:train", "--calib-samples", "64",
                              "--rtx", "--val-data", "demo:test")
        engine = bundle / f"demo.{precision}.engine"
        check_engine(engine, rtx, precision=precision, targets=default_targets, source="demo.onnx")
        assert f"added demo.{precision}.engine to the bundle" in printed
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert {"file": "demo.int8.engine", "kind": "engine", "precision": "int8"} in manifest["models"]
    from rexport.runtime import cuda

    try:
        cuda.gpu_info()
    except RexportError:
        assert "not validated: there is no GPU here" in printed
        with pytest.raises(CompatibilityError, match="no usable NVIDIA GPU|no NVIDIA GPU"):
            load(bundle, model="engine")
    else:
        assert "top-1" in printed  # the validation table


def test_targets_are_chosen_and_turing_needs_fp16(tmp_path, models, rtx):
    onnx = models(("resnet20", {"shortcut": "A"}))
    every = tuple(cc for cc in rtx.compute_capabilities() if cc != "7.5")
    result = build_engine(onnx, tmp_path / "all.engine", BuildConfig(flavour="rtx", compute_capabilities=every,
                                                                     validate=False))
    check_engine(result.path, rtx, precision="fp32", targets=every, source=onnx.name)
    result = build_engine(onnx, tmp_path / "turing.engine", BuildConfig(flavour="rtx", precision="fp16",
                                                                        compute_capabilities="7.5", validate=False))
    check_engine(result.path, rtx, precision="fp16", targets=("7.5",), source=onnx.name)
    with pytest.raises(RexportError, match="has no FP32 GEMM on Turing \\(7.5\\): build with precision='fp16'") as err:
        build_engine(onnx, tmp_path / "fp32-turing.engine", BuildConfig(flavour="rtx", compute_capabilities="7.5"))
    assert "\n" not in str(err.value)
    assert "build with --fp16, or leave 7.5 out of --compute-capability" in with_flags(str(err.value), err.value.fields)
    with pytest.raises(CompatibilityError, match="cannot build for compute capability 8.7: it builds for 7.5, 8.0"):
        build_engine(onnx, tmp_path / "orin.engine", BuildConfig(flavour="rtx", compute_capabilities="8.7,8.9"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all.engine", "all.engine.json", "turing.engine",
                                                           "turing.engine.json"]


def test_ready_fp16_and_qdq_files_and_a_static_batch(tmp_path, models, calib, rtx, default_targets):
    from rexport.calibration import QuantizeConfig, quantize, to_fp16

    onnx = models(("resnet20", {"shortcut": "B"}))
    fp16 = to_fp16(onnx, tmp_path / "m.fp16.onnx").path
    int8 = quantize(onnx, tmp_path / "m.int8.onnx",
                    QuantizeConfig(calib_data=calib, calib_method="minmax", target="trt")).path
    for path, precision in ((fp16, "fp16"), (int8, "int8")):
        result = build_engine(path, tmp_path / f"{precision}.engine", BuildConfig(flavour="rtx", validate=False))
        assert result.plan.how == "as given" and result.plan.typing == "strong"
        check_engine(result.path, rtx, precision=precision, targets=default_targets, source=path.name)
    static = models(("resnet20", {"shortcut": "B"}), batch="4")
    result = build_engine(static, tmp_path / "static.engine", BuildConfig(flavour="rtx", validate=False))
    side = check_engine(result.path, rtx, precision="fp32", targets=default_targets, source=static.name)
    assert side.profile["input"]["min"] == side.profile["input"]["max"] == [4, 3, SIZE, SIZE]


def test_what_tensorrt_refuses_is_one_line_naming_the_node_and_writes_nothing(tmp_path, run_cli, models, calib):
    from helpers import assert_clean_error

    from rexport.calibration import QuantizeConfig, quantize

    onnx = models(("resnet20", {"shortcut": "A"}))
    cpu = quantize(onnx, tmp_path / "m.cpu.onnx",
                   QuantizeConfig(calib_data=calib, calib_method="minmax", target="cpu")).path
    result = run_cli("trt", cpu, "--rtx", "-o", "cpu.engine")
    assert_clean_error(result, "TensorRT's ONNX parser rejected m.cpu.onnx: node 0 (QuantizeLinear",
                       "Non-zero zero point is not supported")
    unsupported = tmp_path / "unsupported.onnx"
    write_unsupported_model(onnx, unsupported)
    result = run_cli("trt", unsupported, "--rtx", "-o", "unsupported.engine")
    assert_clean_error(result, "TensorRT's ONNX parser rejected unsupported.onnx: node",
                       "(Unique 'mystery'): TensorRT cannot import this Unique node")
    result = run_cli("trt", onnx, "--rtx", "--timing-cache", "t.cache", "-o", "x.engine")
    assert_clean_error(result, "a timing cache (--timing-cache) is not available on TensorRT for RTX")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.cpu.onnx", "unsupported.onnx"]


def write_unsupported_model(onnx_path, out) -> None:
    """The model with a Unique node (valid ONNX, which TensorRT cannot import) before its output."""
    import onnx
    from onnx import helper

    model = onnx.load(str(onnx_path))
    output = model.graph.output[0].name
    producer = next(n for n in model.graph.node if output in n.output)
    producer.output[list(producer.output).index(output)] = "before_unique"
    model.graph.node.append(helper.make_node("Unique", ["before_unique"], [output], name="mystery", sorted=1))
    model.graph.output[0].type.tensor_type.ClearField("shape")  # Unique: shape unknown
    onnx.save(model, str(out))
