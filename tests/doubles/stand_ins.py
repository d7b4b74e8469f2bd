"""Stand-ins for the pipeline functions `rexport trt` calls but that live in other modules (some still
being written): rexport.calibration.to_fp16 / quantize / QuantizeConfig,
rexport.calibration.data.load_calibration_data and rexport.runtime.validate.validate_backends.

They do just enough to let the TensorRT layer be tested: the FP16 stand-in stores weights as FP16
(cast back up) and says fp16 in the metadata; the INT8 stand-in puts one symmetric Q/DQ pair on the
input and writes a TensorRT-10-style calibration cache; calibration data is seeded noise; the
validation stand-in compares every candidate with the reference using rexport.runtime.compare.
None of them is the real implementation, and none of their numbers mean anything about accuracy.
"""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import rexport.calibration
import rexport.runtime
from rexport.console import table
from rexport.runtime.compare import Tolerance, compare
from rexport.runtime.validate import Gates


def _set_props(model, **changes: str) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)


def _check_output(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise FileExistsError(path)


@dataclass
class StandIns:
    calls: list[tuple] = field(default_factory=list)
    tolerance: Tolerance = Tolerance(0.5, 0.5)  # loose: Q/DQ stand-ins change logits; tests tighten it

    # rexport.calibration.to_fp16
    def to_fp16(self, onnx_path, output_path, overwrite: bool = False):
        self.calls.append(("to_fp16", Path(onnx_path), Path(output_path), overwrite))
        _check_output(Path(output_path), overwrite)
        model = onnx.load(str(onnx_path))
        casts = []
        for init in model.graph.initializer:
            if init.data_type == TensorProto.FLOAT:
                value = numpy_helper.to_array(init)
                name = init.name
                init.CopyFrom(numpy_helper.from_array(value.astype(np.float16), f"{name}_fp16"))
                casts.append(helper.make_node("Cast", [f"{name}_fp16"], [name], to=TensorProto.FLOAT))
        nodes = casts + list(model.graph.node)
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        _set_props(model, precision="fp16")
        onnx.save(model, str(output_path))
        return types.SimpleNamespace(path=Path(output_path))

    # rexport.calibration.quantize (+ QuantizeConfig below)
    def quantize(self, onnx_path, output_path, config):
        self.calls.append(("quantize", Path(onnx_path), Path(output_path), config))
        _check_output(Path(output_path), config.overwrite)
        model = onnx.load(str(onnx_path))
        graph = model.graph
        name = graph.input[0].name
        for node in graph.node:
            node.input[:] = [f"{name}_dq" if i == name else i for i in node.input]
        graph.initializer.extend([numpy_helper.from_array(np.array(0.05, np.float32), "qdq_scale"),
                                  numpy_helper.from_array(np.array(0, np.int8), "qdq_zero")])
        qdq = [helper.make_node("QuantizeLinear", [name, "qdq_scale", "qdq_zero"], [f"{name}_q"]),
               helper.make_node("DequantizeLinear", [f"{name}_q", "qdq_scale", "qdq_zero"], [f"{name}_dq"])]
        nodes = qdq + list(graph.node)
        del graph.node[:]
        graph.node.extend(nodes)
        _set_props(model, precision="int8")
        onnx.save(model, str(output_path))
        cache = Path(output_path).with_suffix(".cache")
        cache.write_text(f"TRT-100300-EntropyCalibration2\n{name}: 3d4ccccd\n")
        return types.SimpleNamespace(path=Path(output_path), cache_path=cache)

    # rexport.calibration.data.load_calibration_data
    def load_calibration_data(self, source, info, samples: int = 512, seed: int = 0):
        self.calls.append(("load_calibration_data", source, samples, seed))
        rng = np.random.default_rng(seed)
        return types.SimpleNamespace(inputs=rng.standard_normal((samples, *info.input_shape), dtype=np.float32),
                                     labels=None)

    # rexport.runtime.validate.validate_backends
    def validate_backends(self, reference, candidates, inputs, labels=None, gates=None, **names):
        self.calls.append(("validate_backends", reference, dict(candidates), inputs.shape))
        batch = names.get("max_batch", 32)
        ref = reference.run_batched(inputs, batch)
        return StandInValidationReport({name: compare(backend.run_batched(inputs, batch), ref, self.tolerance)
                                        for name, backend in candidates.items()})

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]


@dataclass
class StandInQuantizeConfig:
    data: str
    method: str = "entropy"
    target: str = "trt"
    samples: int = 512
    seed: int = 0
    overwrite: bool = False
    trt_version: str = "10.3.0"


@dataclass
class StandInValidationReport:
    comparisons: dict

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.comparisons.values())

    def format(self) -> str:
        return "validation (stand-in):\n" + table(("candidate", "max abs", "top-1"), [
            (n, f"{c.max_abs:.2e}", f"{c.top1_agreement:.2f}") for n, c in self.comparisons.items()])

    def to_dict(self) -> dict:
        return {"passed": self.passed, "candidates": {n: c.to_dict() for n, c in self.comparisons.items()}}


def install_stand_ins(monkeypatch) -> StandIns:
    s = StandIns()
    monkeypatch.setattr(rexport.calibration, "to_fp16", s.to_fp16, raising=False)
    monkeypatch.setattr(rexport.calibration, "quantize", s.quantize, raising=False)
    monkeypatch.setattr(rexport.calibration, "QuantizeConfig", StandInQuantizeConfig, raising=False)
    data = types.ModuleType("rexport.calibration.data")
    data.load_calibration_data = s.load_calibration_data
    monkeypatch.setitem(sys.modules, "rexport.calibration.data", data)
    monkeypatch.setattr(rexport.calibration, "data", data, raising=False)
    validate = types.ModuleType("rexport.runtime.validate")
    validate.validate_backends = s.validate_backends
    validate.Gates = Gates
    monkeypatch.setitem(sys.modules, "rexport.runtime.validate", validate)
    monkeypatch.setattr(rexport.runtime, "validate", validate, raising=False)
    return s
