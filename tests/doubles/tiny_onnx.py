"""Tiny classifier ONNX files for the TensorRT-layer tests (built with onnx.helper: no torch, milliseconds).

Conv 3->4 (3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm 4->5, input 3x8x8, dynamic batch,
with rexport metadata (ModelInfo) in metadata_props. Variants: "fp32"; "fp16" (FP16 weights cast
up, precision fp16 in the metadata); "int8" (symmetric int8 Q/DQ on the input, precision int8);
"unsupported" (an op from a custom domain, which TensorRT's parser has no importer for).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rexport.runtime.metadata import BatchRange, ModelInfo
from rexport.runtime.preprocess import Preprocess

INPUT_SHAPE = (3, 8, 8)
NUM_CLASSES = 5


def tiny_info(precision: str = "fp32", batch: BatchRange = BatchRange(1, 4, 8)) -> ModelInfo:
    return ModelInfo(num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, preprocess=Preprocess.cifar(8), batch=batch,
                     arch="tiny", precision=precision)


def write_tiny_classifier(path: str | Path, variant: str = "fp32", *, batch: BatchRange = BatchRange(1, 4, 8),
                          static_batch: int | None = None, metadata: bool = True, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((NUM_CLASSES, 4)) * 0.5).astype(np.float32)
    b2 = (rng.standard_normal(NUM_CLASSES) * 0.1).astype(np.float32)
    nodes, inits = [], []
    x = "input"
    if variant == "int8":
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
                  numpy_helper.from_array(np.array(0, np.int8), "x_zero")]
        nodes += [helper.make_node("QuantizeLinear", [x, "x_scale", "x_zero"], ["x_q"], name="quant_input"),
                  helper.make_node("DequantizeLinear", ["x_q", "x_scale", "x_zero"], ["x_dq"], name="dequant_input")]
        x = "x_dq"
    weights = {"w1": w1, "b1": b1, "w2": w2, "b2": b2}
    for name, value in weights.items():
        if variant == "fp16":
            inits.append(numpy_helper.from_array(value.astype(np.float16), f"{name}_h"))
            nodes.append(helper.make_node("Cast", [f"{name}_h"], [name], to=TensorProto.FLOAT, name=f"cast_{name}"))
        else:
            inits.append(numpy_helper.from_array(value, name))
    nodes += [helper.make_node("Conv", [x, "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
              helper.make_node("Relu", ["c1"], ["r1"], name="relu1")]
    last = "r1"
    if variant == "unsupported":
        nodes.append(helper.make_node("FancyActivation", ["r1"], ["f1"], domain="example.custom", name="fancy1"))
        last = "f1"
    nodes += [helper.make_node("GlobalAveragePool", [last], ["p1"], name="pool"),
              helper.make_node("Flatten", ["p1"], ["f"], name="flatten"),
              helper.make_node("Gemm", ["f", "w2", "b2"], ["logits"], transB=1, name="fc")]
    n = static_batch if static_batch is not None else "batch"
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, *INPUT_SHAPE])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [n, NUM_CLASSES])], inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("example.custom", 1)] if variant == "unsupported" else [])
    model = helper.make_model(graph, opset_imports=opsets, producer_name="rexport-tests")
    model.ir_version = 8
    if metadata:
        precision = {"fp16": "fp16", "int8": "int8"}.get(variant, "fp32")
        batch_range = BatchRange(static_batch, static_batch, static_batch) if static_batch else batch
        for key, value in tiny_info(precision, batch_range).to_props().items():
            model.metadata_props.add(key=key, value=value)
    path = Path(path)
    onnx.save(model, str(path))
    return path
