"""The TensorRT Q/DQ rules, checked on an ONNX graph. Every trt-target file rexport writes
passes `check_trt_rules`; a file that breaks them is rejected with the rule and node named.

1. INT8 only, zero point 0 (symmetric).
2. Scales are constant initializers, finite and > 0.
3. Per-channel scales only on constant weights, on the output-channel axis (0 for Conv KCRS).
4. Activations per-tensor (one scale).
5. On a residual Add whose main branch is a quantized Conv: Q/DQ on the identity input, none
   between that Conv and the Add (so TensorRT can fuse Conv + Add + ReLU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rexport.calibration.qdq import residual_adds, weight_axis
from rexport.errors import CheckFailed
from rexport.onnx_graph import consumers, initializers, producers


@dataclass(frozen=True)
class Violation:
    rule: str
    node: str
    detail: str

    def __str__(self) -> str:
        return f"{self.node}: {self.rule} ({self.detail})"


def _attr(node, name: str, default: int) -> int:
    return next((a.i for a in node.attribute if a.name == name), default)


def trt_violations(model) -> list[Violation]:
    graph = model.graph
    inits = initializers(graph)
    made_by, read_by = producers(graph), consumers(graph)
    found: list[Violation] = []
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        scale_name = node.input[1]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        if scale_name not in inits:
            found.append(Violation("scale must be a constant initializer", node.name, scale_name))
            continue
        scale = inits[scale_name]
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            found.append(Violation("scales must be finite and > 0", node.name, f"min {float(np.min(scale)):g}"))
        if zp_name:
            zp = inits.get(zp_name)
            if zp is None:
                found.append(Violation("zero point must be a constant initializer", node.name, zp_name))
            elif zp.dtype != np.int8:
                found.append(Violation("INT8 only (TensorRT rejects uint8 / asymmetric)", node.name, str(zp.dtype)))
            elif np.any(zp != 0):
                found.append(Violation("zero point must be 0 (symmetric)", node.name, f"max {int(np.max(np.abs(zp)))}"))
        if scale.size > 1:
            data_in = node.input[0]
            is_weight = data_in in inits
            readers = read_by.get(node.output[0], [])
            if not is_weight:
                found.append(Violation("activations must be quantized per tensor", node.name,
                                       f"{scale.size} scales on {data_in}"))
            else:
                for r in readers:
                    if r.op_type in ("Conv", "Gemm") and list(r.input).index(node.output[0]) == 1:
                        want = weight_axis(r, inits[data_in])
                        got = _attr(node, "axis", 1)
                        if got != want:
                            found.append(Violation("per-channel weight scales must be on the output-channel axis",
                                                   node.name, f"axis {got}, expected {want} for {r.name}"))

    for add_name, (identity, main) in residual_adds(model).items():
        main_src = made_by.get(main)
        if main_src is not None and main_src.op_type == "DequantizeLinear":
            found.append(Violation("no Q/DQ between the main-branch Conv and the residual Add", add_name,
                                   f"input {main} comes from {main_src.name}"))
            continue
        if main_src is None or main_src.op_type != "Conv":
            continue
        conv_input = made_by.get(main_src.input[0])
        conv_quantized = conv_input is not None and conv_input.op_type == "DequantizeLinear"
        id_src = made_by.get(identity)
        if conv_quantized and (id_src is None or id_src.op_type != "DequantizeLinear"):
            found.append(Violation("the identity input of a residual Add must be quantized", add_name,
                                   f"input {identity} is not produced by a DequantizeLinear"))
    return found


def check_trt_rules(model, what: str = "the INT8 model") -> None:
    found = trt_violations(model)
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise CheckFailed(f"{what} breaks TensorRT's Q/DQ rules: {found[0]}{more}", found)
