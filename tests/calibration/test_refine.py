"""The refinements after calibration (calibration/refine.py), each against what it promises:
im2col rows that reproduce ONNX Runtime's convolution, GPTQ rounding that lowers the layer's output
error, a range search that beats the tensor's own statistics, bias correction that moves the INT8
model's channel means onto FP32's, and the integers and biases landing in the Q/DQ file."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper, numpy_helper

from rexport.calibration.qdq import QParams, fake_quant, insert_qdq, weight_scales
from rexport.calibration.refine import (Layer, gptq_round, input_moments, layers_of, parse_refinements,
                                        search_ranges, weight_biases)
from rexport.calibration.stats import collect, with_outputs
from rexport.errors import InputError
from rexport.onnx_graph import initializers, producers


def conv_model(weight: np.ndarray, *, bias: np.ndarray | None = None, relu: bool = False, **attrs) -> onnx.ModelProto:
    """x -> Conv(weight, bias, attrs) [-> Relu] -> y, opset 17."""
    inits = [numpy_helper.from_array(weight.astype(np.float32), "w")]
    inputs = ["x", "w"]
    if bias is not None:
        inits.append(numpy_helper.from_array(bias.astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["conv_out" if relu else "y"], name="conv", **attrs)]
    if relu:
        nodes.append(helper.make_node("Relu", ["conv_out"], ["y"], name="relu"))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def run(model: onnx.ModelProto, x: np.ndarray, tensor: str | None = None) -> np.ndarray:
    """The model's output, or any tensor of it, on x."""
    model = with_outputs(model, [tensor]) if tensor else model
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run([tensor] if tensor else None, {"x": x})[0]


@pytest.mark.parametrize("attrs", [
    {"pads": [1, 1, 1, 1]},
    {"strides": [2, 2], "pads": [1, 0, 1, 2]},
    {"dilations": [2, 2], "pads": [2, 2, 2, 2], "group": 2},
    {"group": 4, "strides": [2, 1]},
])
def test_im2col_rows_reproduce_onnxruntime_convolution(attrs):
    rng = np.random.default_rng(0)
    groups = attrs.get("group", 1)
    weight = rng.standard_normal((8, 8 // groups, 3, 3)).astype(np.float32)
    model = conv_model(weight, **attrs)
    x = rng.standard_normal((2, 8, 9, 7)).astype(np.float32)
    expected = run(model, x)  # N x K x OH x OW
    layer = layers_of(model, set())[0]
    assert layer.positions(x.shape) == expected.shape[0] * expected.shape[2] * expected.shape[3]
    got = layer.matmul(layer.rows(x, np.arange(layer.positions(x.shape))))  # P x groups x K/groups
    got = got.reshape(expected.shape[0], expected.shape[2], expected.shape[3], -1).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_gptq_lowers_the_output_error_of_nearest_rounding():
    rng = np.random.default_rng(1)
    d, k, n, qmax = 96, 24, 4096, 64
    mix = rng.standard_normal((d, d)) * 0.3 + np.eye(d)  # correlated inputs, as neighbouring pixels are
    x = rng.standard_normal((n, d)) @ mix
    w = rng.standard_normal((k, d)).astype(np.float32)
    scales = weight_scales(w, 0, qmax)
    nearest = np.clip(np.round(w / scales[:, None]), -qmax, qmax)
    rounded = gptq_round(w, x.T @ x, scales, qmax)
    assert np.all(rounded == np.round(rounded)) and np.abs(rounded).max() <= qmax

    def error(q):
        return float(np.mean((x @ (w - q * scales[:, None]).T) ** 2))
    assert error(rounded) < 0.7 * error(nearest)
    # with uncorrelated inputs of equal energy there is nothing to compensate: GPTQ rounds to nearest
    np.testing.assert_array_equal(gptq_round(w, np.eye(d) * n, scales, qmax), nearest)


def test_range_search_picks_the_threshold_with_the_least_layer_output_error():
    rng = np.random.default_rng(2)
    weight = rng.standard_normal((16, 4, 3, 3)).astype(np.float32)
    model = conv_model(weight, pads=[1, 1, 1, 1])
    x = rng.standard_t(3, (64, 4, 8, 8)).astype(np.float32)  # heavy tails, as activations have
    stats = collect(model, x, ["x"])
    absmax = stats["x"].absmax
    narrow = QParams(absmax / 10 / 127, 0, "int8")  # a calibrator that clipped too much
    layer = layers_of(model, set())[0]
    found = search_ranges(model, [layer], {"x": narrow}, stats, x, "trt", batch_size=16, seed=0)["x"]
    rows = layer.rows(x, np.arange(layer.positions(x.shape)))

    def output_error(q):
        return float(np.mean((layer.matmul(fake_quant(rows, q)) - layer.matmul(rows)) ** 2))
    errors = {t: output_error(QParams(t / 127, 0, "int8")) for t in np.linspace(absmax / 20, absmax, 40)}
    assert output_error(found) < 0.05 * output_error(narrow)
    assert output_error(found) <= 1.05 * min(errors.values())  # the best of a finer grid, on all rows


def test_bias_correction_gives_each_channel_its_fp32_mean_back():
    rng = np.random.default_rng(3)
    weight = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    model = conv_model(weight, bias=np.zeros(8), pads=[1, 1, 1, 1])
    x = (rng.standard_normal((64, 4, 6, 6)) + 2.0).astype(np.float32)  # a mean far from 0 feels weight error
    params = {"x": QParams(8.0 / 127, 0, "int8")}
    layers = layers_of(model, set())
    moments = input_moments(model, layers, params, x, batch_size=16, seed=0, hessian=False)
    # integers that all lean one way (as a rounding that ignored the mean could): a visible shift
    ints = np.clip(np.floor(weight / weight_scales(weight, 0, 127)[:, None, None, None]), -127, 127)
    shift = weight_biases(layers, moments, {"conv": ints}, 127)["conv"]

    def channel_means(**kwargs):
        return run(insert_qdq(model, params, "trt", rounded={"conv": ints}, **kwargs), x).mean(axis=(0, 2, 3))

    reference = run(model, x).mean(axis=(0, 2, 3))
    before = np.abs(channel_means() - reference).max()
    after = np.abs(channel_means(bias_shift={"conv": shift}) - reference).max()
    assert after < 0.1 * before


def test_rounded_weights_and_bias_shifts_land_in_the_qdq_file():
    weight = np.random.default_rng(6).standard_normal((4, 3, 3, 3)).astype(np.float32)
    model = conv_model(weight, bias=np.ones(4))
    ints = np.random.default_rng(7).integers(-100, 100, weight.shape)
    shift = np.array([0.5, -0.5, 0.25, 0.0], np.float32)
    for target in ("trt", "cpu"):
        q = insert_qdq(model, {"x": QParams(0.05, 0, "int8" if target == "trt" else "uint8")}, target,
                       rounded={"conv": ints}, bias_shift={"conv": shift}, reduce_range=False)
        inits = initializers(q.graph)
        conv = next(n for n in q.graph.node if n.op_type == "Conv")
        made_by = producers(q.graph)
        np.testing.assert_array_equal(inits[made_by[conv.input[1]].input[0]], ints.astype(np.int8))
        if target == "trt":
            np.testing.assert_allclose(inits[conv.input[2]], 1.0 + shift)
        else:  # int32 bias at input scale x weight scale
            dq = made_by[conv.input[2]]
            np.testing.assert_allclose(inits[dq.input[0]] * inits[dq.input[1]], 1.0 + shift, atol=1e-3)


def test_refinement_names_are_checked():
    assert parse_refinements("all") == ("ranges", "gptq", "bias")
    assert parse_refinements("none") == ()
    assert parse_refinements("bias, gptq") == ("bias", "gptq")
    with pytest.raises(InputError, match="unknown refinement 'adaround'.*ranges, gptq, bias"):
        parse_refinements("gptq,adaround")


def test_layers_of_reads_gemm_layouts():
    w = np.arange(12, dtype=np.float32).reshape(3, 4)  # out x in with transB=1
    graph = helper.make_graph([helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    layer = layers_of(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), set())[0]
    assert isinstance(layer, Layer) and layer.gemm and layer.weight.shape == (1, 3, 4)
    x = np.ones((2, 4), np.float32)
    np.testing.assert_allclose(layer.matmul(layer.rows(x, np.arange(2)))[:, 0], x @ w.T)
