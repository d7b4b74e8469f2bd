"""What a model file says about itself: `ModelInfo`.

The same fields travel in three places, always through this module:
- ONNX `metadata_props` (string key -> string value; structured values as JSON),
- a bundle's `rexport.json`,
- a TensorRT engine's sidecar.
"""

from __future__ import annotations

import json
import numbers
import os
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path

from rexport import __version__
from rexport.errors import InputError
from rexport.runtime.preprocess import Preprocess

class Precision(str, Enum):
    """What a model file computes in; the values are the strings of metadata, manifests and reports
    (a Precision equals its string: `Precision.int8 == "int8"`)."""

    fp32 = "fp32"
    fp16 = "fp16"
    int8 = "int8"
    mixed = "mixed"  # INT8 with layers kept in float (the accuracy budget, keep_float)

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: object, what: str = "precision") -> "Precision":
        try:
            return cls(value)
        except ValueError:
            raise InputError(f"{what} must be one of {', '.join(cls)}, not {value!r}") from None


@dataclass(frozen=True)
class BatchRange:
    """Batch sizes a model accepts: min <= opt <= max (opt: what TensorRT tunes for)."""

    min: int = 1
    opt: int = 8
    max: int = 32

    def __post_init__(self) -> None:
        if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (self.min, self.opt, self.max)):
            raise InputError(f"batch range must be whole numbers, got {self.min!r}:{self.opt!r}:{self.max!r}")
        if not (1 <= self.min <= self.opt <= self.max):
            raise InputError(f"batch range must satisfy 1 <= min <= opt <= max, got "
                             f"{self.min}:{self.opt}:{self.max}")

    @property
    def static(self) -> bool:
        return self.min == self.max

    @classmethod
    def parse(cls, text: str | int | "BatchRange") -> "BatchRange":
        """"N" (static), "MIN:MAX" (opt = min(8, max) clamped into range) or "MIN:OPT:MAX"."""
        if isinstance(text, BatchRange):
            return text
        try:
            parts = [int(p) for p in str(text).split(":")]
        except ValueError:
            parts = []
        if len(parts) == 1:
            return cls(parts[0], parts[0], parts[0])
        if len(parts) == 2:
            return cls(parts[0], max(parts[0], min(8, parts[1])), parts[1])
        if len(parts) == 3:
            return cls(*parts)
        raise InputError(f"batch must be N, MIN:MAX or MIN:OPT:MAX (e.g. 1:8:32), not {text!r}", fields=("batch",))

    def __str__(self) -> str:
        return str(self.min) if self.static else f"{self.min}:{self.opt}:{self.max}"


FLOAT_TYPES = ("float32", "float16", "bfloat16", "float64")


@dataclass(frozen=True)
class GraphIO:
    """One input or output of a model graph or engine, as its file declares it.

    shape: one entry per axis, None where the axis is dynamic (symbolic); dtype: numpy's name
    ("float32", "float16", "int64"...), None when unknown."""

    name: str
    shape: tuple[int | None, ...] | None
    dtype: str | None = None

    def __post_init__(self) -> None:
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(d if isinstance(d, int) and d >= 0 else None
                                                    for d in self.shape))

    def describe(self) -> str:
        return "x".join("?" if d is None else str(d) for d in self.shape) if self.shape is not None else "?"


@dataclass(frozen=True)
class ModelInfo:
    """Everything needed to feed a model and read its answer, plus where it came from."""

    num_classes: int
    input_shape: tuple[int, int, int]  # C, H, W (layout NCHW)
    preprocess: Preprocess
    batch: BatchRange = BatchRange()
    input_name: str = "input"
    output_name: str = "logits"
    arch: str | None = None
    arch_options: dict = field(default_factory=dict)
    labels: tuple[str, ...] | None = None
    precision: str = "fp32"
    source_sha256: str | None = None  # the PyTorch checkpoint's
    calibration: dict | None = None  # method, target, data hash, samples, census...
    rexport_version: str = __version__

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        if self.labels is not None:
            object.__setattr__(self, "labels", tuple(str(v) for v in self.labels))
            if len(self.labels) != self.num_classes:
                raise InputError(f"{len(self.labels)} labels given for a model with "
                                 f"{self.num_classes} classes; give exactly one label per class")
        if not isinstance(self.input_name, str) or not isinstance(self.output_name, str):
            raise InputError(f"the input and output names must be strings, not {self.input_name!r} and "
                             f"{self.output_name!r}")
        object.__setattr__(self, "precision", Precision.parse(self.precision))
        if len(self.input_shape) != 3:
            raise InputError(f"input shape must be (channels, height, width), not {self.input_shape}")
        if self.input_shape[1:] != self.preprocess.size:
            raise InputError(f"preprocess crops to {self.preprocess.size} but the model takes "
                             f"{self.input_shape[1:]}; make them equal")
        if self.input_shape[0] != self.preprocess.num_channels:
            raise InputError(f"preprocess gives {self.preprocess.num_channels} channel(s) "
                             f"({self.preprocess.channels}) but the model takes {self.input_shape[0]}")

    def check_graph(self, inputs: list[GraphIO], outputs: list[GraphIO], where: str, *,
                    check_batch: bool = True, fix: str = "re-export it with `rexport onnx`") -> None:
        """Refuse a description that does not fit the graph it travels with: the input's name,
        channels and size, the output's name and number of classes, float I/O, and (for ONNX,
        check_batch) a fixed batch size. Dynamic axes match anything."""
        def refuse(what: str) -> None:
            raise InputError(f"{where}: its rexport metadata does not match its graph: {what}; the file was edited "
                             f"or assembled by hand: {fix}")

        names = ", ".join(repr(i.name) for i in inputs) or "none"
        if len(inputs) != 1:
            refuse(f"rexport models take one image input, the graph has {len(inputs)} ({names})")
        (inp,) = inputs
        if inp.name != self.input_name:
            refuse(f"the metadata names the input {self.input_name!r} but the graph's input is {inp.name!r}")
        by_name = {o.name: o for o in outputs}
        if self.output_name not in by_name:
            refuse(f"the metadata names the output {self.output_name!r} but the graph's outputs are "
                   f"{', '.join(repr(n) for n in by_name) or 'none'}")
        out = by_name[self.output_name]
        if inp.dtype is not None and inp.dtype != "float32":
            refuse(f"the input {inp.name!r} is {inp.dtype}, but rexport feeds float32 (preprocessed images)")
        if out.dtype is not None and out.dtype not in FLOAT_TYPES:
            refuse(f"the output {out.name!r} is {out.dtype}, not float logits")
        want = "x".join(map(str, self.input_shape))
        if inp.shape is not None:
            if len(inp.shape) != 4:
                refuse(f"the metadata says input N x {want} (NCHW) but the graph's input is {inp.describe()}")
            if any(g is not None and g != m for g, m in zip(inp.shape[1:], self.input_shape)):
                refuse(f"the metadata says input {want} (CxHxW) but the graph takes "
                       f"{'x'.join('?' if d is None else str(d) for d in inp.shape[1:])}")
            fixed = inp.shape[0]
            if check_batch and fixed is not None and not (self.batch.static and self.batch.min == fixed):
                refuse(f"the metadata says batch {self.batch} but the graph's input has a fixed batch of {fixed}")
        if out.shape is not None:
            if len(out.shape) < 2:
                refuse(f"the output {out.name!r} has shape {out.describe()}, not N x classes")
            if out.shape[-1] is not None and out.shape[-1] != self.num_classes:
                refuse(f"the metadata says {self.num_classes} classes but the graph outputs {out.shape[-1]} "
                       f"logits ({out.name!r} is {out.describe()})")

    def replace(self, **changes) -> "ModelInfo":
        return replace(self, **changes)

    def label(self, index: int) -> str:
        return self.labels[index] if self.labels else str(index)

    # -- serialisation -----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "rexport_version": self.rexport_version,
            "arch": self.arch,
            "arch_options": self.arch_options,
            "num_classes": self.num_classes,
            "input": {"name": self.input_name, "shape": list(self.input_shape), "layout": "NCHW",
                      "dtype": "float32", "batch": [self.batch.min, self.batch.opt, self.batch.max]},
            "output": {"name": self.output_name, "kind": "logits"},
            "preprocess": self.preprocess.to_dict(),
            "labels": list(self.labels) if self.labels else None,
            "precision": self.precision,
            "source_sha256": self.source_sha256,
            "calibration": self.calibration,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ModelInfo":
        try:
            inp, out = d["input"], d.get("output", {})
            if not isinstance(d.get("calibration") or {}, dict):
                raise TypeError(f"calibration must be a JSON object, not {type(d['calibration']).__name__}")
            return cls(num_classes=int(d["num_classes"]), input_shape=tuple(inp["shape"]),
                       preprocess=Preprocess.from_dict(d["preprocess"]),
                       batch=BatchRange(*inp.get("batch", (1, 8, 32))),
                       input_name=inp.get("name", "input"), output_name=out.get("name", "logits"),
                       arch=d.get("arch"), arch_options=d.get("arch_options") or {},
                       labels=d.get("labels"), precision=d.get("precision", "fp32"),
                       source_sha256=d.get("source_sha256"), calibration=d.get("calibration"),
                       rexport_version=d.get("rexport_version", "unknown"))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as e:  # a field of another type, inf
            raise InputError(f"model description is incomplete or invalid ({type(e).__name__}: {e}); "
                             "was this file written by rexport?") from None

    @classmethod
    def from_onnx(cls, props: dict[str, str], io: tuple[list, list] | None, where: str) -> "ModelInfo | None":
        """The description an ONNX file carries in its metadata_props (None when it carries none),
        checked against the graph's inputs and outputs `io` when given. Every reader of an ONNX file
        (onnx, ONNX Runtime, OpenVINO) comes here; `read` and `write` do it on an onnx ModelProto."""
        if "num_classes" not in props:
            return None
        info = cls.from_props(props)
        if io is not None:
            info.check_graph(*io, where=where)
        return info

    @classmethod
    def read(cls, model, where: str) -> "ModelInfo | None":
        """`from_onnx` on an onnx ModelProto."""
        from rexport.onnx_file import graph_io

        return cls.from_onnx({p.key: p.value for p in model.metadata_props}, graph_io(model), where)

    def write(self, model) -> None:
        """Into an onnx ModelProto's metadata_props, replacing what was there."""
        del model.metadata_props[:]
        for key, value in self.to_props().items():
            model.metadata_props.add(key=key, value=value)

    def to_props(self) -> dict[str, str]:
        """ONNX metadata_props: one key per top-level field; structured values as JSON."""
        return {k: v if isinstance(v, str) else json.dumps(v)
                for k, v in self.to_dict().items() if v is not None}

    @classmethod
    def from_props(cls, props: dict[str, str]) -> "ModelInfo":
        if "num_classes" not in props or "input" not in props:
            raise InputError("the ONNX file has no rexport metadata (num_classes, input, preprocess); "
                             "export it with `rexport onnx` or give the preprocessing explicitly")
        d = {}
        for k, v in props.items():
            try:
                d[k] = json.loads(v)
            except ValueError:
                d[k] = v  # plain strings (arch, precision, hashes)
            except RecursionError:
                raise InputError(f"the ONNX file's rexport metadata {k!r} is nested too deeply to be a model "
                                 "description; export it with `rexport onnx`") from None
        return cls.from_dict(d)


def load_labels(path: str | os.PathLike) -> tuple[str, ...]:
    """Labels from a text file (one per line) or JSON (a list, or {"0": "name"} / {"0": [id, name]})."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"labels file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"labels file {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as e:
            raise InputError(f"labels file {path} is not valid JSON: {e}") from None
        except RecursionError:
            raise InputError(f"labels file {path} is not a list of labels (JSON nested too deeply)") from None
        if isinstance(data, dict):
            try:
                items = sorted(((int(k), v) for k, v in data.items()), key=lambda item: item[0])
            except ValueError:
                raise InputError(f"labels file {path}: JSON object keys must be class indices") from None
            if [i for i, _ in items] != list(range(len(items))):
                raise InputError(f"labels file {path}: class indices must run 0..{len(items) - 1} without gaps")
            data = [v[-1] if isinstance(v, list) and v else v for _, v in items]
        if not isinstance(data, list) or not all(isinstance(v, (str, int)) for v in data):
            raise InputError(f"labels file {path}: expected a list of names or an index -> name object")
        labels = [str(v) for v in data]
    else:
        labels = [line.strip() for line in text.splitlines()]
        while labels and not labels[-1]:
            labels.pop()
    if not labels:
        raise InputError(f"labels file {path} is empty")
    return tuple(labels)
