"""A tiny classifier ONNX and a tiny labelled dataset for the TensorRT-layer tests (onnx.helper and
numpy: no torch, milliseconds).

Conv 3->4 (3x3) -> Relu -> GlobalAveragePool -> Flatten -> Gemm 4->5, input 3x8x8, dynamic batch,
with rexport metadata (ModelInfo) in metadata_props, so rexport's own FP16 conversion, INT8
calibration and validation read it like any export. The Gemm bias centres the logits on the
tiny dataset's features, so every class occurs and INT8/FP16 agreement means something.

Variants written here: "fp32"; "unsupported" (an op from a custom domain, which TensorRT's parser
has no importer for). The FP16 and INT8 variants are made from the FP32 one by the real
rexport.calibration.to_fp16 / quantize (see fixtures.py), never by hand.
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
VARIANTS = ("fp32", "unsupported")


def tiny_info(precision: str = "fp32", batch: BatchRange = BatchRange(1, 4, 8)) -> ModelInfo:
    return ModelInfo(num_classes=NUM_CLASSES, input_shape=INPUT_SHAPE, preprocess=Preprocess.cifar(8), batch=batch,
                     arch="tiny", precision=precision)


def tiny_inputs(count: int, seed: int = 0) -> np.ndarray:
    """Preprocessed-looking samples: noise around a per-sample colour, which the model tells apart."""
    rng = np.random.default_rng(seed)
    colour = rng.uniform(-1.5, 1.5, (count, INPUT_SHAPE[0], 1, 1))
    return (0.5 * rng.standard_normal((count, *INPUT_SHAPE)) + colour).astype(np.float32)


def _features(x: np.ndarray, w1: np.ndarray, b1: np.ndarray) -> np.ndarray:
    """GlobalAveragePool(Relu(Conv(x))) in numpy (pads 1, stride 1)."""
    h, w = x.shape[2:]
    padded = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    conv = sum(np.einsum("nchw,kc->nkhw", padded[:, :, i:i + h, j:j + w], w1[:, :, i, j])
               for i in range(3) for j in range(3)) + b1[None, :, None, None]
    return np.maximum(conv, 0).mean(axis=(2, 3))


def tiny_weights(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)
    b1 = (rng.standard_normal(4) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((NUM_CLASSES, 4)) * 0.5).astype(np.float32)
    b2 = -(w2 @ _features(tiny_inputs(256, seed=1000 + seed), w1, b1).mean(axis=0))
    return {"w1": w1, "b1": b1, "w2": w2, "b2": b2.astype(np.float32)}


def write_tiny_classifier(path: str | Path, variant: str = "fp32", *, batch: BatchRange = BatchRange(1, 4, 8),
                          static_batch: int | None = None, metadata: bool = True, seed: int = 10) -> Path:
    """The default seed gives logits with clear margins on the tiny dataset and on N(0, 1) inputs, so
    FP16 and INT8 agreement with FP32 stay within rexport's default gates (every class occurs)."""
    if variant not in VARIANTS:
        raise ValueError(f"write_tiny_classifier writes {' or '.join(VARIANTS)}, not {variant!r} (FP16 and INT8 "
                         "variants come from rexport.calibration; use the `tiny` fixture)")
    inits = [numpy_helper.from_array(value, name) for name, value in tiny_weights(seed).items()]
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
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
        batch_range = BatchRange(static_batch, static_batch, static_batch) if static_batch else batch
        for key, value in tiny_info("fp32", batch_range).to_props().items():
            model.metadata_props.add(key=key, value=value)
    path = Path(path)
    onnx.save(model, str(path))
    return path


def write_tiny_dataset(path: str | Path, model: str | Path, count: int = 64, seed: int = 1) -> Path:
    """An .npz of `count` tiny inputs (under "input") labelled with `model`'s FP32 predictions
    (so the reference's top-1 is 100% and any top-1 drop is the candidate's)."""
    import onnxruntime as ort

    inputs = tiny_inputs(count, seed)
    logits = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"input": inputs})[0]
    path = Path(path)
    np.savez(path, input=inputs, labels=logits.argmax(axis=1))
    return path
