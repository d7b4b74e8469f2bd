"""Small ONNX graph helpers shared by the exporter and calibration (needs `onnx`, never torch)."""

from __future__ import annotations

import heapq
from collections import defaultdict

import numpy as np

from rexport.errors import InputError, require


def onnx_module():
    return require("onnx", "calibrate", "read and write ONNX graphs")


def producers(graph) -> dict:
    """tensor name -> the node that outputs it."""
    return {o: n for n in graph.node for o in n.output if o}


def consumers(graph) -> dict[str, list]:
    """tensor name -> nodes that read it (graph outputs are not nodes: check them separately)."""
    out: dict[str, list] = defaultdict(list)
    for n in graph.node:
        for i in n.input:
            if i:
                out[i].append(n)
    return out


def initializers(graph) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    return {i.name: numpy_helper.to_array(i) for i in graph.initializer}


def fold_constants(model):
    """Evaluate nodes whose inputs are all constants and store their outputs as initializers.

    Exporters leave shape arithmetic (e.g. the pads of a channel-padding shortcut) and Identity
    nodes on shared weights behind; folding them gives a graph where every Conv/Gemm weight is
    an initializer, which quantization and TensorRT's parser both want. Node names are kept.
    """
    onnx = onnx_module()
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    graph = model.graph
    known = initializers(graph)
    opset = [o for o in model.opset_import]
    graph_outputs = {o.name for o in graph.output}
    kept = []
    for node in graph.node:
        inputs = [i for i in node.input if i]
        foldable = (node.domain in ("", "ai.onnx") and all(i in known for i in inputs)
                    and not any(o in graph_outputs for o in node.output)
                    and node.op_type not in ("RandomNormal", "RandomUniform", "RandomNormalLike",
                                             "RandomUniformLike", "Multinomial", "Bernoulli"))
        if not foldable:
            kept.append(node)
            continue
        single = helper.make_model(
            helper.make_graph([node], "fold", [helper.make_tensor_value_info(i, onnx.TensorProto.UNDEFINED, None)
                                               for i in dict.fromkeys(inputs)],
                              [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output]),
            opset_imports=opset)
        values = ReferenceEvaluator(single).run(None, {i: known[i] for i in inputs})
        for name, value in zip(node.output, values):
            known[name] = np.asarray(value)
    used = {i for n in kept for i in n.input} | graph_outputs
    new_inits = [numpy_helper.from_array(known[name], name) for name in known if name in used]
    del graph.node[:]
    graph.node.extend(kept)
    del graph.initializer[:]
    graph.initializer.extend(new_inits)
    return model


def topological_sort(graph) -> None:
    """Put nodes in the dependency order ONNX requires (after appending new ones), in place.
    Kahn's algorithm, keeping the original order where it is free to."""
    available = {i.name for i in graph.initializer} | {i.name for i in graph.input} | {""}
    nodes = list(graph.node)
    waiting = [sum(1 for i in set(n.input) if i not in available) for n in nodes]
    readers: dict[str, list[int]] = {}
    for k, n in enumerate(nodes):
        for i in set(n.input):
            if i not in available:
                readers.setdefault(i, []).append(k)
    ready = [k for k, w in enumerate(waiting) if w == 0]
    heapq.heapify(ready)
    ordered = []
    while ready:
        k = heapq.heappop(ready)
        ordered.append(nodes[k])
        for o in nodes[k].output:
            for r in readers.pop(o, ()):
                waiting[r] -= 1
                if waiting[r] == 0:
                    heapq.heappush(ready, r)
    if len(ordered) != len(nodes):
        raise InputError("the graph has a cycle or an undefined input; cannot order its nodes")
    del graph.node[:]
    graph.node.extend(ordered)
