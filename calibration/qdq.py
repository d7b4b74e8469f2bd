"""Q/DQ insertion: an FP32 ONNX plus activation ranges -> an INT8 ONNX (QuantizeLinear /
DequantizeLinear pairs), for one of two targets.

target "trt" (what TensorRT's parser requires and fuses best):
  - int8 activations, symmetric (zero point 0), one scale per tensor;
  - int8 weights, symmetric, one scale per output channel (axis 0 of KCRS), stored as int8;
  - Q/DQ on the input of every quantized Conv/Gemm, and on the *identity* (shortcut) input of
    each residual Add, never between the block's last Conv and the Add, so TensorRT fuses
    Conv + Add (+ ReLU) into one INT8 kernel; biases stay float.
target "cpu" (what ONNX Runtime's x86 kernels fuse into QLinearConv / QLinearAdd / ...):
  - uint8 activations (asymmetric), int8 per-channel weights, int32 biases;
  - weights in [-64, 64] ("reduce_range", the default): x86 CPUs without VNNI (AVX2 only, and
    AVX-512 without VNNI) multiply with VPMADDUBSW, which adds two uint8 x int8 products into an
    int16 and saturates: 2 x 255 x 127 = 64770 overflows 32767, 2 x 255 x 64 = 32640 does not.
    So with this range ONNX Runtime computes every file exactly on every x86 CPU; the same
    kernels run (VNNI where the CPU has it), only the weights lose one bit. reduce_range=False
    keeps [-127, 127] for files that will only run on x86 CPUs with VNNI;
  - Q/DQ on every activation a quantized op reads or writes; a ReLU after a Conv or Add is
    removed and folded into the following QuantizeLinear (zero point 0 clamps exactly like ReLU);
  - pooling and reshaping ops reuse their input's scale, so ONNX Runtime runs them in uint8;
  - an Add, pooling or reshaping op runs in int8 only where its inputs are int8 anyway (see
    `cpu_int8_nodes`): next to Conv/Gemm layers kept in float it stays in float.

Nodes named in `keep_float` stay in floating point (the accuracy budget uses this); with every
Conv/Gemm kept in float, either target gives back the FP32 model.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rexport.errors import InputError
from rexport.onnx_graph import consumers, initializers, onnx_module, producers, topological_sort

TARGETS = ("trt", "cpu")
WEIGHT_QMAX = 127  # int8 weights in [-127, 127]
REDUCED_WEIGHT_QMAX = 64  # reduce_range: 2 * 255 * 64 <= 32767, no int16 saturation without VNNI
QUANTIZABLE = ("Conv", "Gemm")
SAME_SCALE = ("MaxPool", "Flatten", "Reshape")  # cpu target: output keeps the input's scale
CPU_ACTIVATION_OPS = ("Conv", "Gemm", "Add", "GlobalAveragePool", *SAME_SCALE)


@dataclass(frozen=True)
class QParams:
    scale: float
    zero_point: int
    dtype: str  # "int8" | "uint8"


def activation_qparams(lo: float, hi: float, target: str, threshold: float) -> QParams:
    """Per-tensor parameters from a tensor's observed range and its calibrated |x| threshold."""
    t = max(float(threshold), 1e-8)
    if target == "trt":
        return QParams(t / 127.0, 0, "int8")
    lo, hi = max(min(lo, 0.0), -t), min(max(hi, 0.0), t)  # clip by the threshold, always include 0
    if hi - lo < 1e-8:
        hi = lo + 1e-8
    scale = (hi - lo) / 255.0
    return QParams(scale, int(np.clip(round(-lo / scale), 0, 255)), "uint8")


def fake_quant(x: np.ndarray, q: QParams) -> np.ndarray:
    """Quantize then dequantize, as ONNX's QuantizeLinear / DequantizeLinear pair computes it."""
    lo, hi = (-128, 127) if q.dtype == "int8" else (0, 255)
    return ((np.clip(np.round(x / np.float32(q.scale)) + q.zero_point, lo, hi) - q.zero_point)
            * np.float32(q.scale)).astype(np.float32)


def weight_scales(w: np.ndarray, axis: int, qmax: int) -> np.ndarray:
    """Per-output-channel symmetric scales: each channel's max |w| maps to qmax."""
    scales = (np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(axis=1) / qmax).astype(np.float32)
    scales[scales == 0] = 1e-8
    return scales


def weight_qmax(target: str, reduce_range: bool | None = None) -> int:
    return REDUCED_WEIGHT_QMAX if uses_reduce_range(target, reduce_range) else WEIGHT_QMAX


def uses_reduce_range(target: str, reduce_range: bool | None = None) -> bool:
    """Whether the target's weights use the reduced range [-64, 64]: by default for the cpu
    target (exact on x86 CPUs with or without VNNI), never for TensorRT (no int16 saturation)."""
    if reduce_range is None:
        return target == "cpu"
    if reduce_range and target != "cpu":
        raise InputError("reduce_range is for the cpu target (x86 CPUs without VNNI); TensorRT uses the full int8 range")
    return bool(reduce_range)


def weight_axis(node, weight: np.ndarray) -> int:
    """The output-channel axis of a Conv (KCRS: 0) or Gemm weight (0 if transB else 1)."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    return 0


def quantizable_nodes(model) -> list:
    """Conv and Gemm nodes whose weight is a constant (an initializer)."""
    inits = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type in QUANTIZABLE and len(n.input) > 1 and n.input[1] in inits]


def _conv_distances(tensor: str, made_by: dict, constants: set[str], limit: int = 128) -> dict[str, int]:
    """Ancestor tensor -> fewest Conv/Gemm nodes on a path from it to `tensor` (Dijkstra
    backwards over activations, stopping after `limit` tensors: blocks are local)."""
    dist = {tensor: 0}
    heap = [(0, tensor)]
    while heap and len(dist) < limit:
        d, t = heapq.heappop(heap)
        node = made_by.get(t)
        if d > dist[t] or node is None:
            continue
        cost = d + (node.op_type in QUANTIZABLE)
        for i in node.input:
            if i and i not in constants and cost < dist.get(i, 1 << 30):
                dist[i] = cost
                heapq.heappush(heap, (cost, i))
    return dist


def residual_adds(model) -> dict[str, tuple[str, str]]:
    """Add node name -> (identity input, main input) for each residual addition.

    The identity (shortcut) branch is the input reached through fewer convolutions from the
    nearest common ancestor of both inputs: 0 for an identity shortcut, 1 for a projection,
    against 2 or 3 on the main branch."""
    made_by = producers(model.graph)
    inits = {i.name for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type != "Add" or len(node.input) != 2 or any(i in inits for i in node.input):
            continue
        a, b = node.input
        da, db = _conv_distances(a, made_by, inits), _conv_distances(b, made_by, inits)
        common = set(da) & set(db)
        if not common:
            continue
        c = min(common, key=lambda t: (da[t] + db[t], t))
        if da[c] != db[c]:
            out[node.name] = (a, b) if da[c] < db[c] else (b, a)
    return out


def fold_relus(model, sources: set[str]) -> None:
    """cpu target: remove a Relu that alone reads the output of one of the `sources` (int8 Conv/Add
    nodes, whose output is quantized), giving that node the Relu's output name: that tensor's
    zero point is 0 (calibrated after the Relu), which clamps exactly like the Relu."""
    read_by = consumers(model.graph)
    graph_outputs = {o.name for o in model.graph.output}
    made_by = producers(model.graph)
    drop = []
    for relu in model.graph.node:
        if relu.op_type != "Relu":
            continue
        src = made_by.get(relu.input[0])
        if (src is None or src.op_type not in ("Conv", "Add") or src.name not in sources
                or len(read_by[relu.input[0]]) != 1 or relu.input[0] in graph_outputs):
            continue
        src.output[0] = relu.output[0]
        drop.append(relu)
    for relu in drop:
        model.graph.node.remove(relu)


class _Builder:
    """Accumulates new initializers and nodes; one Q/DQ pair per quantized tensor."""

    def __init__(self, model):
        self.onnx = onnx_module()
        self.model = model
        self.inits: list = []
        self.nodes: list = []
        self.dequantized: dict[str, str] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def activation(self, tensor: str, q: QParams) -> str:
        if tensor in self.dequantized:
            return self.dequantized[tensor]
        helper = self.onnx.helper
        dtype = np.int8 if q.dtype == "int8" else np.uint8
        scale = self.const(f"{tensor}_scale", np.float32(q.scale))
        zp = self.const(f"{tensor}_zero_point", dtype(q.zero_point))
        self.nodes.append(helper.make_node("QuantizeLinear", [tensor, scale, zp], [f"{tensor}_quantized"],
                                           name=f"{tensor}_QuantizeLinear"))
        self.nodes.append(helper.make_node("DequantizeLinear", [f"{tensor}_quantized", scale, zp],
                                           [f"{tensor}_dequantized"], name=f"{tensor}_DequantizeLinear"))
        self.dequantized[tensor] = f"{tensor}_dequantized"
        return self.dequantized[tensor]

    def weight(self, name: str, w: np.ndarray, axis: int, qmax: int = WEIGHT_QMAX,
               rounded: np.ndarray | None = None) -> tuple[str, np.ndarray]:
        """Per-channel symmetric int8 in [-qmax, qmax], stored quantized; returns (dequantized name, scales).
        `rounded`: the integers to store (e.g. from GPTQ) instead of round-to-nearest."""
        scales = weight_scales(w, axis, qmax)
        shape = [1] * w.ndim
        shape[axis] = -1
        q = np.round(w / scales.reshape(shape)) if rounded is None else rounded
        q = np.clip(q, -qmax, qmax).astype(np.int8)
        self.const(f"{name}_quantized", q)
        self.const(f"{name}_scale", scales)
        self.const(f"{name}_zero_point", np.zeros(len(scales), np.int8))
        self.nodes.append(self.onnx.helper.make_node(
            "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
            [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=axis))
        return f"{name}_dequantized", scales

    def bias(self, name: str, b: np.ndarray, input_scale: float, weight_scales: np.ndarray) -> str:
        scales = (np.float32(input_scale) * weight_scales).astype(np.float32)
        q = np.clip(np.round(b / scales), -(2 ** 31) + 1, 2 ** 31 - 1).astype(np.int32)
        self.const(f"{name}_quantized", q)
        self.const(f"{name}_scale", scales)
        self.const(f"{name}_zero_point", np.zeros(len(scales), np.int32))
        self.nodes.append(self.onnx.helper.make_node(
            "DequantizeLinear", [f"{name}_quantized", f"{name}_scale", f"{name}_zero_point"],
            [f"{name}_dequantized"], name=f"{name}_DequantizeLinear", axis=0))
        return f"{name}_dequantized"


def insert_qdq(model, qparams: dict[str, QParams], target: str, keep_float: frozenset[str] = frozenset(),
               reduce_range: bool | None = None, rounded: dict[str, np.ndarray] | None = None,
               bias_shift: dict[str, np.ndarray] | None = None):
    """Return a quantized copy of the FP32 `model` (for cpu, Relus folded: see `fold_relus`).

    `qparams` gives per-tensor activation parameters for every tensor that may be quantized;
    `reduce_range`: weights in [-64, 64] (None: the target's default, see `uses_reduce_range`);
    `rounded`: node name -> integer weights to store instead of round-to-nearest (refine.py);
    `bias_shift`: node name -> per-output-channel amount added to the bias of that node when it
    is quantized (bias correction, refine.py)."""
    onnx = onnx_module()
    if target not in TARGETS:
        raise InputError(f"target must be 'trt' (TensorRT) or 'cpu' (ONNX Runtime on CPUs), not {target!r}")
    qmax = weight_qmax(target, reduce_range)
    rounded, bias_shift = rounded or {}, bias_shift or {}
    _check_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    weights = initializers(graph)
    b = _Builder(out)
    int8: set[str] = set()
    if target == "cpu":  # decide what runs in int8, then fold the Relus after it into the Q/DQ
        int8 = cpu_int8_nodes(out, {n.name for n in quantizable_nodes(out) if n.name not in keep_float}, keep_float)
        fold_relus(out, int8)
    quantized = [n for n in quantizable_nodes(out) if n.name not in keep_float]
    residuals = residual_adds(model) if target == "trt" else {}  # on the graph as it was
    graph_outputs = {o.name for o in graph.output}

    def act(tensor: str) -> str | None:
        q = qparams.get(tensor)
        return None if q is None or tensor in graph_outputs else b.activation(tensor, q)

    for node in quantized:
        _quantize_layer(node, act, b, weights, qparams, target, qmax, rounded, bias_shift)
    if target == "trt":  # the shortcut of each block whose last conv runs in INT8
        _quantize_shortcuts(graph, quantized, residuals, act)
    else:  # cpu: every activation an int8 node touches is quantized; all readers use it
        _quantize_cpu_activations(out, int8, qparams, act)
    used = set(weights) - {i for n in graph.node for i in n.input}
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.inits)
    _drop_initializers(graph, used)
    topological_sort(graph)
    return out


def _check_opset(model) -> None:
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise InputError(f"INT8 with per-channel weights needs ONNX opset 13 or newer; this model has {opset}: "
                         "re-export it at opset 17 (`rexport onnx --opset 17`)")


def _quantize_layer(node, act: Callable[[str], str | None], b: _Builder, weights: dict[str, np.ndarray],
                    qparams: dict[str, QParams], target: str, qmax: int, rounded: dict[str, np.ndarray],
                    bias_shift: dict[str, np.ndarray]) -> None:
    """A Conv/Gemm whose input has Q parameters: Q/DQ on its input, per-channel int8 weights, its
    corrected bias (bias_shift) and, for cpu, an int32 bias."""
    x, w = node.input[0], node.input[1]
    new_x = act(x)
    if new_x is None:
        return
    node.input[0] = new_x
    node.input[1], scales = b.weight(w, weights[w], weight_axis(node, weights[w]), qmax, rounded.get(node.name))
    if node.name in bias_shift:
        _shift_bias(node, b, weights, bias_shift[node.name])
    if target == "cpu" and len(node.input) > 2 and node.input[2] in weights:
        node.input[2] = b.bias(node.input[2], weights[node.input[2]], qparams[x].scale, scales)


def _quantize_shortcuts(graph, quantized: list, residuals: dict[str, tuple[str, str]],
                        act: Callable[[str], str | None]) -> None:
    """trt target: Q/DQ on the identity input of each residual Add whose main branch ends in an INT8 conv."""
    made_by = producers(graph)
    quantized_names = {n.name for n in quantized}
    for add_name, (identity, main) in residuals.items():
        main_src = made_by.get(main)
        if main_src is None or main_src.name not in quantized_names:
            continue
        add = next(n for n in graph.node if n.name == add_name)
        new_identity = act(identity)
        if new_identity is not None:
            add.input[list(add.input).index(identity)] = new_identity


def _quantize_cpu_activations(model, int8: set[str], qparams: dict[str, QParams],
                              act: Callable[[str], str | None]) -> None:
    """cpu target: every activation an int8 node touches is quantized, and all its readers use it."""
    touched = _cpu_tensors(model, int8)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in touched and name in qparams:
                node.input[i] = act(name) or name


def _shift_bias(node, b: _Builder, weights: dict[str, np.ndarray], shift: np.ndarray) -> None:
    """Add `shift` to the node's bias under a new name (creating the bias if it has none)."""
    has_bias = len(node.input) > 2 and node.input[2] in weights
    bias = weights[node.input[2]] if has_bias else np.zeros(len(shift), np.float32)
    name = b.const(f"{node.name}_corrected_bias", (bias + shift).astype(np.float32))
    weights[name] = np.asarray(bias + shift, np.float32)
    if has_bias:
        node.input[2] = name
    else:
        while len(node.input) < 2:
            node.input.append("")
        node.input.append(name)


def cpu_int8_nodes(model, quantized: set[str], keep_float: frozenset[str]) -> set[str]:
    """cpu target: the nodes ONNX Runtime runs in int8. The quantized Conv/Gemm, and each Add,
    pooling or reshaping node not kept in float, unless one of its inputs comes (directly or
    through a Relu) from such a node left in float and is not quantized anyway for a quantized
    Conv/Gemm that reads it. So keeping a block's last conv in float keeps its residual Add in
    float too, and keeping every Conv/Gemm in float gives back the FP32 model."""
    made_by = producers(model.graph)
    read_by = consumers(model.graph)
    int8 = set(quantized)

    def from_float(tensor: str) -> bool:
        src = made_by.get(tensor)
        if src is not None and src.op_type == "Relu":
            src = made_by.get(src.input[0])
        return (src is not None and src.op_type in CPU_ACTIVATION_OPS and src.name not in int8
                and not any(r.name in quantized and r.input[0] == tensor for r in read_by.get(tensor, ())))

    for node in model.graph.node:  # in graph (topological) order: producers are decided first
        if node.op_type in CPU_ACTIVATION_OPS and node.op_type not in QUANTIZABLE and node.name not in keep_float:
            if not any(from_float(i) for i in node.input if i):
                int8.add(node.name)
    return int8


def _cpu_tensors(model, int8: set[str]) -> set[str]:
    """Activation tensors read or written by the int8 nodes (a Conv/Gemm: its data input)."""
    made_by = producers(model.graph)
    graph_inputs = {g.name for g in model.graph.input}
    touched: set[str] = set()
    for node in model.graph.node:
        if node.name not in int8:
            continue
        acts = [i for i in node.input if i and (i in made_by or i in graph_inputs)]
        touched.update(acts[:1] if node.op_type in QUANTIZABLE else acts)
        touched.update(o for o in node.output if o)
    return touched


def _drop_initializers(graph, names: set[str]) -> None:
    keep = [i for i in graph.initializer if i.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(keep)
