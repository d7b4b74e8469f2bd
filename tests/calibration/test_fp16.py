"""FP16 ONNX: agreement on real held-out data, FP32 I/O, sensitive ops, range and NaN detection."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import rexport.calibration.fp16 as fp16_module
from rexport.calibration import to_fp16
from rexport.runtime.data import load_dataset
from rexport.calibration.fp16 import nonfinite_layers, read_model
from rexport.errors import CheckFailed, InputError
from rexport.runtime.compare import compare


def run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]


def test_fp16_agrees_with_fp32_on_held_out_digits(demo_fp32, tmp_path):
    _, info = read_model(demo_fp32)
    test = load_dataset("demo:test", info, samples=None)
    result = to_fp16(demo_fp32, tmp_path / "m.fp16.onnx", inputs=test.inputs[:64])
    c = compare(run(result.path, test.inputs), run(demo_fp32, test.inputs))
    assert c.top1_agreement >= 0.995 and c.cosine > 0.9999 and c.nonfinite == 0
    model = onnx.load(str(result.path))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    conv_weights = [i for i in model.graph.initializer if i.name.endswith("weight") or "Conv" in i.name]
    assert conv_weights and all(i.data_type == TensorProto.FLOAT16 for i in conv_weights if i.dims and len(i.dims) == 4)
    assert "/avgpool/GlobalAveragePool" in result.kept_fp32  # accumulation stays in FP32
    gap = next(n for n in model.graph.node if n.op_type == "GlobalAveragePool")
    producers = {o: n for n in model.graph.node for o in n.output}
    assert producers[gap.input[0]].op_type == "Cast"
    assert read_model(result.path)[1].precision == "fp16"
    assert result.path.stat().st_size < 0.6 * demo_fp32.stat().st_size


def test_layers_beyond_the_fp16_range_stay_fp32(demo_fp32, tmp_path):
    """Scale one conv's weights so its FP32 outputs exceed 65504: that layer must stay FP32,
    be reported, and the FP16 model must still produce finite outputs."""
    model = onnx.load(str(demo_fp32))
    target = "/layer3/layer3.2/conv1/Conv"
    conv = next(n for n in model.graph.node if n.name == target)
    for init in model.graph.initializer:
        if init.name == conv.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1e5, init.name))
    hot = tmp_path / "hot.onnx"
    onnx.save(model, str(hot))
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    result = to_fp16(hot, tmp_path / "hot.fp16.onnx", inputs=x)
    assert target in result.kept_fp32 and "exceed the FP16 range" in result.kept_fp32[target]
    assert any(v > 65504 for v in result.overflow.values())
    assert np.isfinite(run(result.path, x)).all()
    assert "beyond the FP16 range" in result.format()


def test_nan_or_inf_in_the_fp16_model_is_an_error_naming_the_layer(demo_fp32, tmp_path, monkeypatch):
    model = onnx.load(str(demo_fp32))
    conv = next(n for n in model.graph.node if n.name == "/layer2/layer2.0/conv1/Conv")
    for init in model.graph.initializer:  # activations overflow; the weights themselves still fit FP16
        if init.name == conv.input[1]:
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1e5, init.name))
    hot = tmp_path / "hot.onnx"
    onnx.save(model, str(hot))
    monkeypatch.setattr(fp16_module, "overflowing_tensors", lambda *a: {})  # switch off the range protection
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with pytest.raises(CheckFailed, match="NaN/Inf, first in /layer2/layer2.0/conv1/Conv"):  # the conv itself
        to_fp16(hot, tmp_path / "hot.fp16.onnx", inputs=x)
    assert not (tmp_path / "hot.fp16.onnx").exists()


def test_nonfinite_layers_on_a_tiny_graph():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])
    big = numpy_helper.from_array(np.full((1, 4), 300, np.float16), "big")
    graph = helper.make_graph([helper.make_node("Mul", ["x", "big"], ["a"], name="first"),
                               helper.make_node("Mul", ["a", "big"], ["y"], name="second")], "g", [x], [y], [big])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    ones = np.ones((1, 4), np.float16)
    assert nonfinite_layers(model, ones) == ["second"]  # 300 * 300 = 90000 > 65504
    assert nonfinite_layers(model, ones / 10) == []


def test_fp16_needs_an_fp32_rexport_model(demo_fp32, tmp_path):
    first = to_fp16(demo_fp32, tmp_path / "a.onnx")
    with pytest.raises(InputError, match="already fp16"):
        to_fp16(first.path, tmp_path / "b.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(InputError, match="not a readable ONNX file"):
        to_fp16(tmp_path / "junk.onnx", tmp_path / "c.onnx")
