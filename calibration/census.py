"""Which convolutions and matrix products of a graph run in INT8, and which stayed in float.

Works on any ONNX: a Conv/Gemm counts as INT8 when both its activation and its weight come
from DequantizeLinear. The share is reported by count and by multiply-accumulates (MACs), the
number that decides speed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from rexport.onnx_graph import initializers, onnx_module, producers


@dataclass
class Census:
    int8: list[str] = field(default_factory=list)
    float: dict[str, str] = field(default_factory=dict)  # node -> why it is not INT8
    macs: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.int8) + len(self.float)

    @property
    def int8_share(self) -> float:
        return len(self.int8) / self.total if self.total else 0.0

    @property
    def int8_mac_share(self) -> float:
        total = sum(self.macs.values())
        return sum(self.macs.get(n, 0) for n in self.int8) / total if total else 0.0

    def to_dict(self) -> dict:
        return {"int8_layers": len(self.int8), "float_layers": len(self.float), "layers": self.total,
                "int8_share": round(self.int8_share, 4), "int8_mac_share": round(self.int8_mac_share, 4),
                "float": self.float}

    def format(self) -> str:
        text = (f"{len(self.int8)}/{self.total} convs/gemms in INT8 ({100 * self.int8_share:.1f}% of layers, "
                f"{100 * self.int8_mac_share:.1f}% of MACs)")
        if self.float:
            text += "; in float: " + ", ".join(f"{n} ({why})" for n, why in self.float.items())
        return text


def _macs(node, out_shape, weight_shape) -> int:
    if not out_shape or not weight_shape or any(d <= 0 for d in out_shape[1:]):
        return 0
    if node.op_type == "Conv":  # per sample: output elements x (Cin/groups x kh x kw)
        return int(np.prod(out_shape[1:]) * np.prod(weight_shape[1:]))
    return int(np.prod(weight_shape))  # Gemm: in x out


def census(model, reasons: dict[str, str] | None = None) -> Census:
    """Classify every Conv/Gemm; `reasons` explains float layers the caller chose to keep."""
    onnx = onnx_module()
    reasons = reasons or {}
    graph = model.graph
    made_by = producers(graph)
    inits = initializers(graph)
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {vi.name: [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
              for vi in [*inferred.graph.value_info, *inferred.graph.output]}
    result = Census()
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm") or len(node.input) < 2:
            continue
        x_src, w_src = made_by.get(node.input[0]), made_by.get(node.input[1])
        w_name = w_src.input[0] if w_src is not None and w_src.op_type == "DequantizeLinear" else node.input[1]
        weight_shape = list(inits[w_name].shape) if w_name in inits else None
        result.macs[node.name] = _macs(node, shapes.get(node.output[0]), weight_shape)
        x_q = x_src is not None and x_src.op_type == "DequantizeLinear"
        w_q = w_src is not None and w_src.op_type == "DequantizeLinear"
        if x_q and w_q:
            result.int8.append(node.name)
        elif node.name in reasons:
            result.float[node.name] = reasons[node.name]
        elif node.input[1] not in inits and not w_q:
            result.float[node.name] = "weight is not a constant"
        else:
            result.float[node.name] = "not quantized" if not (x_q or w_q) else "partly quantized"
    return result
