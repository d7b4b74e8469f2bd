"""FP32 ONNX -> FP16 ONNX: FP16 weights and compute, FP32 inputs and outputs.

- Every float tensor becomes float16, except in nodes kept in FP32: numerically sensitive ops
  (global average pooling and reductions accumulate thousands of values) and any layer whose
  FP32 activations exceed the FP16 range (|x| > 65504) on the given data, which would
  overflow to Inf. Casts are inserted at the boundaries; the model's input and output stay float32.
- After conversion the FP16 model runs on the same data; NaN or Inf in its outputs is an error
  that names the first layers where non-finite values appear.

TensorRT 11 takes FP16 only from the ONNX types (no builder flag), so this file is what
`rexport trt --fp16` builds from.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport.calibration.stats import activation_tensors, run_intermediates
from rexport.console import log
from rexport.errors import CheckFailed, InputError
from rexport.files import atomic_output, check_output
from rexport.onnx_file import load_onnx
from rexport.onnx_graph import initializers, onnx_module, producers, topological_sort
from rexport.runtime.metadata import ModelInfo, Precision

FP16_MAX = 65504.0
SENSITIVE_OPS = ("GlobalAveragePool", "ReduceMean", "ReduceSum", "ReduceL2", "Softmax", "LogSoftmax")


@dataclass
class Fp16Result:
    path: Path
    info: ModelInfo
    kept_fp32: dict[str, str] = field(default_factory=dict)  # node -> why it stayed FP32
    overflow: dict[str, float] = field(default_factory=dict)  # tensor -> max |x| seen in FP32 (> 65504)
    samples: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        lines = [f"FP16 -> {self.path} ({self.path.stat().st_size / 1e6:.1f} MB, {self.seconds:.1f}s)"]
        if self.kept_fp32:
            lines.append("  kept in FP32: " + ", ".join(f"{n} ({why})" for n, why in self.kept_fp32.items()))
        if self.overflow:
            lines.append("  beyond the FP16 range in FP32: " +
                         ", ".join(f"{t} (max |x| {v:.3g})" for t, v in self.overflow.items()))
        return "\n".join(lines)


def read_model(path: str | os.PathLike):
    """Load an ONNX file (external data read in, weights finite: rexport.onnx_file) with its rexport
    description, checked against the graph; clear errors for the wrong file."""
    model = load_onnx(path)
    info = ModelInfo.read(model, str(path))
    if info is None:
        raise InputError(f"{path} carries no rexport description (metadata_props); use an ONNX made by "
                         "`rexport onnx`")
    return model, info


def overflowing_tensors(model, inputs: np.ndarray) -> dict[str, float]:
    """Tensors whose FP32 values exceed the FP16 range on these inputs -> their max |x|."""
    names = activation_tensors(model)
    peak = dict.fromkeys(names, 0.0)
    for values in run_intermediates(model, names, inputs):
        for name, v in values.items():
            peak[name] = max(peak[name], float(np.abs(v).max()))
    return {n: v for n, v in peak.items() if v > FP16_MAX}


def convert(model, keep_fp32: set[str]):
    """The FP16 graph: float tensors and initializers in float16 except around `keep_fp32` nodes."""
    onnx = onnx_module()

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    _convert_initializers(g, keep_fp32)
    float_inputs = [i for i in g.input if i.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    casts = _io_casts(g, keep_fp32, float_inputs)
    casts += _fp32_island_casts(g, keep_fp32, {i.name for i in float_inputs})
    g.node.extend(casts)
    del g.value_info[:]
    topological_sort(g)
    return onnx.shape_inference.infer_shapes(out, check_type=True)


def _convert_initializers(g, keep_fp32: set[str]) -> None:
    """Float initializers to float16 where FP16 nodes read them; FP32 nodes keep (a copy in) float32."""
    from onnx import TensorProto, numpy_helper

    fp16_readers: dict[str, int] = {}
    fp32_readers: dict[str, int] = {}
    for node in g.node:
        target = fp32_readers if node.name in keep_fp32 else fp16_readers
        for i in node.input:
            target[i] = target.get(i, 0) + 1

    inits = []
    for init in g.initializer:
        if init.data_type != TensorProto.FLOAT:
            inits.append(init)
            continue
        value = numpy_helper.to_array(init)
        if init.name in fp16_readers:
            with np.errstate(over="ignore"):  # out-of-range weights were kept FP32 by to_fp16
                inits.append(numpy_helper.from_array(value.astype(np.float16), init.name))
        if init.name in fp32_readers:
            copy = f"{init.name}_fp32" if init.name in fp16_readers else init.name
            inits.append(numpy_helper.from_array(value, copy))
            if copy != init.name:
                for node in g.node:
                    if node.name in keep_fp32:
                        node.input[:] = [copy if i == init.name else i for i in node.input]
    del g.initializer[:]
    g.initializer.extend(inits)


def _io_casts(g, keep_fp32: set[str], float_inputs: list) -> list:
    """Casts that keep the model's float inputs and outputs float32 around an FP16 inside."""
    from onnx import TensorProto, helper

    casts = []
    for gi in float_inputs:  # float32 in -> float16 inside
        cast_name = f"{gi.name}_fp16"
        casts.append(helper.make_node("Cast", [gi.name], [cast_name], name=f"{gi.name}_Cast_fp16",
                                      to=TensorProto.FLOAT16))
        for node in g.node:
            if node.name not in keep_fp32:
                node.input[:] = [cast_name if i == gi.name else i for i in node.input]
    for go in g.output:  # float16 inside -> float32 out
        if go.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        src = producers(g).get(go.name)
        if src is not None and src.name not in keep_fp32:
            inner = f"{go.name}_fp16"
            src.output[:] = [inner if o == go.name else o for o in src.output]
            casts.append(helper.make_node("Cast", [inner], [go.name], name=f"{go.name}_Cast_fp32",
                                          to=TensorProto.FLOAT))
    return casts


def _fp32_island_casts(g, keep_fp32: set[str], input_names: set[str]) -> list:
    """Casts around the nodes kept in FP32: in from FP16 neighbours, out to FP16 readers."""
    from onnx import TensorProto, helper

    casts = []
    initializer_names = {i.name for i in g.initializer}
    graph_outputs = {o.name for o in g.output}
    kept = [n for n in g.node if n.name in keep_fp32]
    fp32_name = {o: f"{o}_fp32" for n in kept for o in n.output if o and o not in graph_outputs}
    read_in_fp16 = {i for n in g.node if n.name not in keep_fp32 for i in n.input}
    for node in kept:  # FP32 islands: cast in from FP16 neighbours, out to FP16 readers
        for k, i in enumerate(node.input):
            if i in fp32_name:  # straight from another FP32 node: no round trip through FP16
                node.input[k] = fp32_name[i]
            elif i and i not in initializer_names and i not in input_names:
                casts.append(helper.make_node("Cast", [i], [f"{i}_to_fp32_{node.name}"],
                                              name=f"{node.name}_Cast_in{k}", to=TensorProto.FLOAT))
                node.input[k] = f"{i}_to_fp32_{node.name}"
        for k, o in enumerate(node.output):
            if o in fp32_name:
                node.output[k] = fp32_name[o]
                if o in read_in_fp16:
                    casts.append(helper.make_node("Cast", [fp32_name[o]], [o], name=f"{node.name}_Cast_out{k}",
                                                  to=TensorProto.FLOAT16))
    return casts


def nonfinite_layers(model, inputs: np.ndarray, limit: int = 3) -> list[str]:
    """The first layers (in graph order) whose outputs hold NaN or Inf on these inputs."""
    names = activation_tensors(model, float16=True)
    bad: list[str] = []
    for values in run_intermediates(model, names, inputs):
        bad += [n for n in names if n not in bad and not np.isfinite(values[n].astype(np.float32)).all()]
    made_by = producers(model.graph)
    return [made_by[n].name if n in made_by else n for n in bad[:limit]]


def to_fp16(onnx_path: str | os.PathLike, output: str | os.PathLike, *, inputs: np.ndarray | None = None,
            keep_float: tuple[str, ...] = (), overwrite: bool = False) -> Fp16Result:
    """Convert an FP32 rexport ONNX to FP16. `inputs` (preprocessed samples) are used to find
    layers beyond the FP16 range and to check the result; random inputs when None. `keep_float`:
    nodes to keep in FP32."""
    start = time.monotonic()
    output = check_output(output, overwrite=overwrite, inputs=[onnx_path])
    model, info = read_model(onnx_path)
    if info.precision != Precision.fp32:
        raise InputError(f"{onnx_path} is already {info.precision}; convert the FP32 export instead")
    if inputs is None:
        inputs = np.random.default_rng(0).standard_normal((8, *info.input_shape), dtype=np.float32)
        log.info("no data given: checking the FP16 range on 8 random inputs (pass data for a real check)")
    made_by = producers(model.graph)
    weights = initializers(model.graph)
    keep = {n.name: "numerically sensitive" for n in model.graph.node if n.op_type in SENSITIVE_OPS}
    keep.update({n: "kept by request" for n in keep_float})
    for node in model.graph.node:  # weights FP16 cannot hold
        for i in node.input:
            peak = float(np.abs(weights[i]).max()) if i in weights and weights[i].size else 0.0
            if weights.get(i) is not None and weights[i].dtype == np.float32 and peak > FP16_MAX:
                keep[node.name] = f"weights up to {peak:.3g} exceed the FP16 range"
    overflow = overflowing_tensors(model, inputs)
    for tensor, peak in overflow.items():
        if tensor in made_by:
            keep[made_by[tensor].name] = f"FP32 values up to {peak:.3g} exceed the FP16 range"
    if overflow:
        log.warning("warning: %d tensor(s) exceed the FP16 range in FP32 (e.g. %s); their layers stay FP32",
                    len(overflow), next(iter(overflow)))
    fp16 = convert(model, set(keep))
    info = info.replace(precision=Precision.fp16)
    info.write(fp16)
    onnx_module().checker.check_model(fp16, full_check=True)
    broken = nonfinite_layers(fp16, inputs)
    if broken:
        raise CheckFailed(f"the FP16 model produces NaN/Inf, first in {', '.join(broken)}; keep those layers "
                          "in FP32 (keep_float) or check the input normalisation", fields=("to_fp16.keep_float",))
    with atomic_output(output, overwrite=overwrite, inputs=[onnx_path]) as tmp:
        onnx_module().save(fp16, str(tmp))
    return Fp16Result(output, info, keep, overflow, len(inputs), time.monotonic() - start)
