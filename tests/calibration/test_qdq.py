"""Q/DQ placement for both targets, TensorRT's rules (including files they must reject),
ONNX Runtime actually fusing the cpu-target graph, and the census."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from rexport.calibration import QuantizeConfig, quantize
from rexport.calibration.census import census
from rexport.calibration.qdq import residual_adds
from rexport.calibration.rules import check_trt_rules, trt_violations
from rexport.errors import CheckFailed
from rexport.onnx_graph import initializers, producers




@pytest.fixture(scope="module")
def quantized(exported, tmp_path_factory):
    """quantized(arch, target) -> QuantizeResult, calibrated on random normal inputs."""
    from rexport.exporter.zoo import get_arch

    root = tmp_path_factory.mktemp("quantized")
    cache = {}

    def make(arch: str, target: str):
        if (arch, target) not in cache:
            size = 32 if get_arch(arch).cifar else 64
            data = root / f"x{size}.npy"
            if not data.exists():
                np.save(data, np.random.default_rng(0).standard_normal((16, 3, size, size)).astype(np.float32))
            # only the CIFAR nets run the refinements (tens of seconds each for the ImageNet archs on
            # 2 cores): placement is the same with them (test_refine.py, test_realistic.py check the
            # rules after them too)
            refine = QuantizeConfig.calib_refine if get_arch(arch).cifar else ()
            cache[(arch, target)] = quantize(exported(arch), root / f"{arch}-{target}.onnx",
                                             QuantizeConfig(calib_data=str(data), target=target,
                                                            calib_method="percentile", calib_refine=refine))
        return cache[(arch, target)]

    return make


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "resnet20", "preact_resnet18", "resnext50_32x4d"])
def test_trt_target_follows_tensorrt_rules(quantized, arch):
    result = quantized(arch, "trt")
    model = onnx.load(str(result.path))
    assert trt_violations(model) == []
    inits = initializers(model.graph)
    made_by = producers(model.graph)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            zp = inits[node.input[2]]
            assert zp.dtype == np.int8 and not zp.any()
        if node.op_type == "Conv":  # every conv: DQ'd activation, int8 per-channel weight on axis 0
            x_src, w_src = made_by[node.input[0]], made_by[node.input[1]]
            assert x_src.op_type == "DequantizeLinear" and inits[x_src.input[1]].size == 1
            assert w_src.op_type == "DequantizeLinear" and inits[w_src.input[0]].dtype == np.int8
            weight = inits[w_src.input[0]]
            assert inits[w_src.input[1]].shape == (weight.shape[0],)
            assert next(a.i for a in w_src.attribute if a.name == "axis") == 0
    assert result.census.int8_share == 1.0


def test_trt_residual_placement_identity_quantized_main_branch_not(quantized):
    model = onnx.load(str(quantized("resnet50", "trt").path))
    made_by = producers(model.graph)
    adds = [n for n in model.graph.node if n.op_type == "Add"]
    assert len(adds) == 16
    for add in adds:
        sources = sorted(made_by[i].op_type for i in add.input)
        assert sources == ["Conv", "DequantizeLinear"], (add.name, sources)
        conv = next(made_by[i] for i in add.input if made_by[i].op_type == "Conv")
        assert "conv3" in conv.name  # the main branch's last conv feeds the Add directly
    # projection blocks: the shortcut's DQ sits on the downsample conv's output
    projected = [made_by[made_by[i].input[0]] for add in adds for i in add.input
                 if made_by[i].op_type == "DequantizeLinear"]
    assert sum("downsample" in made_by[q.input[0]].name for q in projected if q.input[0] in made_by) == 4


def test_residual_branches_are_found_structurally(exported):
    for arch, expected in [("resnet18", 8), ("resnet20", 9), ("preact_resnet18", 8), ("plain18", 0)]:
        adds = residual_adds(onnx.load(str(exported(arch))))
        assert len(adds) == expected, arch
        for identity, main in adds.values():
            assert "conv" in main.lower() and identity != main


def test_cpu_target_is_fused_by_onnxruntime(quantized, tmp_path):
    result = quantized("resnet18", "cpu")
    model = onnx.load(str(result.path))
    inits = initializers(model.graph)
    activation_zps = [inits[n.input[2]] for n in model.graph.node
                      if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    assert activation_zps and all(z.dtype == np.uint8 for z in activation_zps)
    assert not any(n.op_type == "Relu" for n in model.graph.node)  # folded into QuantizeLinear
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(result.path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 20 and ops.count("QLinearAdd") == 8
    assert "Conv" not in ops and "FusedConv" not in ops  # no convolution left in float


def _weights(model) -> list[np.ndarray]:
    """max |w| per output channel of every quantized Conv/Gemm weight (stored int8)."""
    inits = initializers(model.graph)
    out = []
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8:
            axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
            w = np.moveaxis(inits[n.input[0]].astype(np.int32), axis, 0)
            out.append(np.abs(w.reshape(len(w), -1)).max(axis=1))
    return out


def test_cpu_target_weights_use_the_reduced_range(quantized, exported):
    """cpu target: every weight in [-64, 64], so a pair of uint8 x int8 products, what VPMADDUBSW
    adds into an int16 on x86 CPUs without VNNI, cannot saturate; trt target: the full [-127, 127]."""
    from rexport.calibration.qdq import REDUCED_WEIGHT_QMAX, QParams, insert_qdq

    assert 2 * 255 * REDUCED_WEIGHT_QMAX <= 2 ** 15 - 1 < 2 * 255 * (REDUCED_WEIGHT_QMAX + 1)
    for target, qmax in (("cpu", 64), ("trt", 127)):  # resnet20: calibrated with the refinements (GPTQ)
        weights = _weights(onnx.load(str(quantized("resnet20", target).path)))
        assert len(weights) == 20  # 19 convs + fc
        for per_channel in weights:  # each output channel spans the range (scale = max |w| / qmax); GPTQ
            # rounding may pull a channel's largest weight one step in, never past the range
            assert (per_channel <= qmax).all() and (per_channel >= qmax - 1).all(), (target, per_channel)
            assert np.median(per_channel) == qmax
    model = onnx.load(str(exported("resnet20")))  # reduce_range=False: the full range, for CPUs with VNNI
    params = {t: QParams(0.05, 0, "uint8")
              for t in [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]}
    for reduce_range, qmax in ((None, 64), (True, 64), (False, 127)):
        weights = _weights(insert_qdq(model, params, "cpu", reduce_range=reduce_range))
        assert len(weights) == 20 and all((w == qmax).all() for w in weights)


def _uniform_params(model, zero_point=128):
    """QParams for every activation: zero point 0 after a Relu (what calibration gives), else `zero_point`."""
    from rexport.calibration.qdq import QParams

    relu_outputs = {n.output[0] for n in model.graph.node if n.op_type == "Relu"}
    return {t: QParams(0.05, 0 if t in relu_outputs else zero_point, "uint8")
            for t in [i.name for i in model.graph.input] + [o for n in model.graph.node for o in n.output]}


def _run(model, x):
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_relu_folding_is_exact(exported):
    """cpu target with zero point 0: Q(x) == Q(relu(x)), so the Relus folded away change nothing:
    putting a Relu back in front of each such QuantizeLinear gives the same logits."""
    from rexport.calibration.qdq import insert_qdq

    model = onnx.load(str(exported("resnet20")))
    folded = insert_qdq(model, _uniform_params(model), "cpu")
    relus = sum(n.op_type == "Relu" for n in model.graph.node)
    assert sum(n.op_type == "Relu" for n in folded.graph.node) == 0 < relus
    inits, made_by = initializers(folded.graph), producers(folded.graph)
    restored = _copy(folded)
    for q in restored.graph.node:
        src = made_by.get(q.input[0])
        if q.op_type == "QuantizeLinear" and src is not None and src.op_type in ("Conv", "Add") \
                and inits[q.input[2]] == 0:
            restored.graph.node.append(onnx.helper.make_node("Relu", [q.input[0]], [q.input[0] + "_relu"]))
            q.input[0] += "_relu"
    restored_relus = sum(n.op_type == "Relu" for n in restored.graph.node)
    assert restored_relus == relus  # every Relu folded is put back
    from rexport.onnx_graph import topological_sort

    topological_sort(restored.graph)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(folded, x), _run(restored, x), atol=1e-5)


@pytest.mark.parametrize("target", ["trt", "cpu"])
def test_every_layer_kept_in_float_gives_back_fp32(exported, target):
    """The budget's end point: with every Conv/Gemm in float, nothing is quantized (the cpu target's
    Adds and pooling follow their convs into float, and its folded Relus stay)."""
    from rexport.calibration.qdq import insert_qdq, quantizable_nodes

    model = onnx.load(str(exported("resnet20")))
    params = _uniform_params(model)
    if target == "trt":
        params = {t: q.__class__(q.scale, 0, "int8") for t, q in params.items()}
    q = insert_qdq(model, params, target, frozenset(n.name for n in quantizable_nodes(model)))
    assert not [n.op_type for n in q.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(_run(q, x), _run(model, x), atol=1e-5)


def test_cpu_add_after_a_float_conv_stays_float(exported, tmp_path):
    """cpu target: keeping a block's last conv in float keeps its residual Add in float (no Q/DQ
    noise there for nothing), while every other Add is still fused into a QLinearAdd."""
    from rexport.calibration.qdq import insert_qdq

    model = onnx.load(str(exported("resnet20")))
    adds = residual_adds(model)
    made_by = producers(model.graph)
    add_name, (_, main) = sorted(adds.items())[len(adds) // 2]
    q = insert_qdq(model, _uniform_params(model), "cpu", frozenset({made_by[main].name}))
    add = next(n for n in q.graph.node if n.name == add_name)
    assert made_by[main].name in {producers(q.graph)[i].name for i in add.input}  # the float conv's output, as is
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(q.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearAdd") == len(adds) - 1 and ops.count("Add") == 1


def _copy(model):
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _set_init(model, name, value):
    for i, init in enumerate(model.graph.initializer):
        if init.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, name))
            return
    raise KeyError(name)


def test_rules_checker_rejects_broken_files(quantized):
    good = onnx.load(str(quantized("resnet18", "trt").path))
    check_trt_rules(good)
    inits = initializers(good.graph)
    act_dq = next(n for n in good.graph.node if n.op_type == "DequantizeLinear" and n.input[0] not in inits)
    weight_dq = next(n for n in good.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits)

    uint8 = _copy(good)  # asymmetric uint8 activations (what the cpu target writes)
    _set_init(uint8, act_dq.input[2], np.uint8(0))
    nonzero = _copy(good)
    _set_init(nonzero, act_dq.input[2], np.int8(3))
    negative = _copy(good)
    _set_init(negative, act_dq.input[1], np.float32(-0.1))
    per_channel_activation = _copy(good)
    _set_init(per_channel_activation, act_dq.input[1], np.full(4, 0.1, np.float32))
    _set_init(per_channel_activation, act_dq.input[2], np.zeros(4, np.int8))
    wrong_axis = _copy(good)
    next(n for n in wrong_axis.graph.node if n.name == weight_dq.name).attribute[0].i = 1

    cases = {"INT8 only": uint8, "zero point must be 0": nonzero, "scales must be finite and > 0": negative,
             "per tensor": per_channel_activation, "output-channel axis": wrong_axis}
    for rule, model in cases.items():
        found = trt_violations(model)
        assert any(rule in v.rule for v in found), (rule, found)
        with pytest.raises(CheckFailed, match="breaks TensorRT's Q/DQ rules"):
            check_trt_rules(model)


def test_rules_checker_rejects_qdq_between_conv_and_add(quantized):
    """Move the Q/DQ from the shortcut to the main branch: the placement TensorRT cannot fuse."""
    from rexport.calibration.qdq import QParams, _Builder

    good = onnx.load(str(quantized("resnet18", "trt").path))
    bad = _copy(good)
    made_by = producers(bad.graph)
    add = next(n for n in bad.graph.node if n.op_type == "Add")
    k = next(i for i, t in enumerate(add.input) if made_by[t].op_type == "Conv")
    builder = _Builder(bad)
    add.input[k] = builder.activation(add.input[k], QParams(0.1, 0, "int8"))
    bad.graph.node.extend(builder.nodes)
    bad.graph.initializer.extend(builder.inits)
    found = trt_violations(bad)
    assert any("between the main-branch Conv and the residual Add" in v.rule for v in found)


def test_census_counts_layers_and_macs(quantized, exported):
    result = quantized("resnet18", "trt")
    assert len(result.census.int8) == 21 and not result.census.float  # 20 convs + fc
    assert result.census.macs["/conv1/Conv"] == 64 * 32 * 32 * 3 * 7 * 7  # 64x64 input -> 32x32 after stride 2
    fp32 = census(onnx.load(str(exported("resnet18"))))
    assert fp32.int8 == [] and fp32.int8_share == 0 and len(fp32.float) == 21
