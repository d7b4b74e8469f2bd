"""Fuzz ONNX loading and the metadata ONNX files carry: rexport.onnx_file.load_onnx and
rexport.runtime.load (ONNX Runtime session, ModelInfo from metadata_props checked against the
graph, then a run), on mutated bytes of a small rexport ONNX, on generated metadata_props, on graph
edits (I/O types, shapes, names, external data locations), and ModelInfo.from_props / from_dict
and engine sidecars directly. Property and settings: fuzz_support, conftest."""

from __future__ import annotations

import json

import numpy as np
import pytest
from fuzz_support import Seeds, check_predictor, check_predictor_run, edited_json, fuzz_settings, json_values, mutated, mutations
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from doubles.tiny_onnx import tiny_info, write_tiny_classifier  # noqa: E402
from onnx import TensorProto  # noqa: E402

from rexport.onnx_file import load_onnx  # noqa: E402
from rexport.runtime import load  # noqa: E402
from rexport.runtime.metadata import ModelInfo  # noqa: E402


@pytest.fixture(scope="module")
def seeds(ws) -> Seeds:
    out = Seeds()
    out["tiny.onnx"] = write_tiny_classifier(ws.seeds / "tiny.onnx").read_bytes()
    out["static.onnx"] = write_tiny_classifier(ws.seeds / "static.onnx", static_batch=2).read_bytes()
    out["bare.onnx"] = write_tiny_classifier(ws.seeds / "bare.onnx", metadata=False).read_bytes()
    return out


def check_proto(model) -> None:
    assert isinstance(model, onnx.ModelProto) and model.graph.node


def load_both(ws, path) -> None:
    ws.attempt(lambda: load_onnx(path), close=check_proto)
    ws.attempt(lambda: load(path, providers="cpu"), close=check_predictor_run)


def test_seeds_load(ws, seeds):
    for name in seeds:
        path = ws.seeds / name
        check_proto(load_onnx(path))
        check_predictor(load(path, providers="cpu"))


@fuzz_settings(120)
@given(data=st.data(), kind=st.sampled_from(("tiny.onnx", "static.onnx", "bare.onnx")))
def test_mutated_onnx(ws, seeds, data, kind):
    """Byte-level mutations of a whole (1.6 kB) rexport ONNX file: every part is structure."""
    mutation = data.draw(mutations(len(seeds[kind]), hot=4096), label="mutation")
    with ws.case() as d:
        path = d / "model.onnx"
        path.write_bytes(mutation.apply(seeds[kind]))
        load_both(ws, path)


# -- metadata_props ----------------------------------------------------------------------------

PROP_KEYS = ("num_classes", "input", "output", "preprocess", "labels", "precision", "arch", "arch_options",
             "source_sha256", "calibration", "rexport_version")


@st.composite
def prop_value(draw, valid: str) -> str:
    """A metadata_props value: the valid one edited, JSON of any type, text, or JSON nested without end."""
    kind = draw(st.sampled_from(("json", "text", "edit", "deep", "field")))
    if kind == "json":
        return json.dumps(draw(json_values()))
    if kind == "text":
        return draw(st.text(max_size=20) | st.sampled_from(("NaN", "Infinity", "-1", "1e400", "null", "{", "")))
    if kind == "deep":
        depth = draw(st.sampled_from((50, 3000)))
        return "[" * depth + "]" * draw(st.sampled_from((0, depth)))
    if kind == "field" and valid.startswith("{"):  # one field of a JSON object takes any value
        obj = json.loads(valid)
        if obj:
            key = draw(st.sampled_from(sorted(obj)))
            obj[key] = draw(json_values(4))
            return json.dumps(obj)
    return draw(mutated(valid.encode(), max_ops=2)).decode("utf-8", "replace")


@st.composite
def metadata_props(draw) -> dict[str, str]:
    props = dict(tiny_info().to_props())
    for key in draw(st.lists(st.sampled_from(PROP_KEYS), max_size=3, unique=True)):
        if draw(st.integers(0, 5)) == 0:
            props.pop(key, None)
        else:
            props[key] = draw(prop_value(props.get(key, "")))
    return props


def check_info(info) -> None:
    assert isinstance(info, ModelInfo)
    assert len(info.input_shape) == 3 and info.num_classes is not None


@fuzz_settings(200)
@given(props=metadata_props())
def test_metadata_from_props(ws, props):
    """ModelInfo from an ONNX file's metadata_props, straight (cheap, so many examples)."""
    ws.attempt(lambda: ModelInfo.from_props(props), close=check_info)


@fuzz_settings(150)
@given(d=st.one_of(edited_json(tiny_info().to_dict(), max_edits=4), json_values(12)))
def test_metadata_from_dict(ws, d):
    """ModelInfo.from_dict (bundle manifests and engine sidecars hold this form) on any JSON value."""
    ws.attempt(lambda: ModelInfo.from_dict(d), close=check_info)


@fuzz_settings(30)
@given(props=metadata_props())
def test_metadata_in_onnx(ws, seeds, props):
    """The same metadata in a real file, loaded and run by rexport.runtime.load."""
    model = onnx.load_from_string(seeds["tiny.onnx"])
    del model.metadata_props[:]
    for k, v in props.items():
        model.metadata_props.add(key=k, value=v)
    with ws.case() as d:
        path = d / "model.onnx"
        onnx.save(model, str(path))
        ws.attempt(lambda: load(path, providers="cpu"), close=check_predictor_run)


# -- graph edits -------------------------------------------------------------------------------

ELEM_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.INT64, TensorProto.UINT8,
              TensorProto.BOOL, TensorProto.STRING, 0, 999)
LOCATIONS = ("weights.bin", "../weights.bin", "/etc/hostname", "sub/../weights.bin", "./weights.bin", "",
             "C:\\weights.bin", "..", "missing.bin", "sub/weights.bin", "weights.bin\0x")


EDITS = ("input_type", "output_type", "input_shape", "output_shape", "rename_input", "rename_output", "extra_input",
         "extra_output", "drop_node", "external", "ir_version", "opset", "nan_weight")
DIMS = st.lists(st.one_of(st.integers(-2, 9), st.sampled_from(("batch", "", "N"))), max_size=5) | st.none()


class Edit:
    """One edit of a ModelProto's graph, drawn in full up front (so a failure prints it)."""

    def __init__(self, what: str, **params):
        self.what, self.params = what, params

    def __repr__(self) -> str:
        return f"Edit({self.what!r}, {self.params!r})"

    def apply(self, model, folder) -> None:
        g, p = model.graph, self.params
        if self.what in ("input_type", "output_type"):
            (g.input if self.what == "input_type" else g.output)[0].type.tensor_type.elem_type = p["elem_type"]
        elif self.what in ("input_shape", "output_shape"):
            t = (g.input if self.what == "input_shape" else g.output)[0].type.tensor_type
            t.ClearField("shape")
            for d in p["dims"] or ():
                dim = t.shape.dim.add()
                if isinstance(d, int):
                    dim.dim_value = d
                else:
                    dim.dim_param = d
        elif self.what in ("rename_input", "rename_output"):
            (g.input if self.what == "rename_input" else g.output)[0].name = p["name"]
        elif self.what == "extra_input":
            g.input.add().CopyFrom(onnx.helper.make_tensor_value_info("extra", TensorProto.FLOAT, [1]))
        elif self.what == "extra_output":
            g.output.add().CopyFrom(onnx.helper.make_tensor_value_info(p["name"], TensorProto.FLOAT, None))
        elif self.what == "drop_node":
            del g.node[p["index"] % len(g.node)]
        elif self.what == "ir_version":
            model.ir_version = p["version"]
        elif self.what == "opset":
            model.opset_import[0].version = p["version"]
        else:
            inline = [t for t in g.initializer if t.data_location != TensorProto.EXTERNAL]
            if not inline:
                return
            tensor = inline[p["index"] % len(inline)]
            if self.what == "nan_weight":
                value = onnx.numpy_helper.to_array(tensor).copy()
                value.flat[0] = p["value"]
                tensor.CopyFrom(onnx.numpy_helper.from_array(value, tensor.name))
                return
            raw = tensor.raw_data or np.asarray(onnx.numpy_helper.to_array(tensor)).tobytes()
            tensor.ClearField("raw_data")
            tensor.ClearField("float_data")
            tensor.data_location = TensorProto.EXTERNAL
            length = len(raw) if p["length"] is None else p["length"]
            for key, value in (("location", p["location"]), ("offset", str(p["offset"])), ("length", str(length))):
                if key not in p["omit"]:
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
            if p["file"] is not None:  # the bytes beside the model: all, half, none
                (folder / "weights.bin").write_bytes(raw[:int(len(raw) * p["file"])])


@st.composite
def graph_edit(draw) -> Edit:
    what = draw(st.sampled_from(EDITS))
    if what in ("input_type", "output_type"):
        return Edit(what, elem_type=draw(st.sampled_from(ELEM_TYPES)))
    if what in ("input_shape", "output_shape"):
        return Edit(what, dims=draw(DIMS))
    if what in ("rename_input", "rename_output"):
        return Edit(what, name=draw(st.sampled_from(("x", "", "logits", "w1", "input", "r1"))))
    if what == "extra_output":
        return Edit(what, name=draw(st.sampled_from(("r1", "p1", "nowhere"))))
    if what == "drop_node":
        return Edit(what, index=draw(st.integers(0, 9)))
    if what == "ir_version":
        return Edit(what, version=draw(st.sampled_from((0, 1, 3, 9, 10, 11, 99, 2**40))))
    if what == "opset":
        return Edit(what, version=draw(st.sampled_from((0, 1, 7, 13, 21, 99))))
    if what == "nan_weight":
        return Edit(what, index=draw(st.integers(0, 9)), value=draw(st.sampled_from((np.nan, np.inf, -np.inf, 3e38))))
    if what == "external":
        return Edit(what, index=draw(st.integers(0, 9)), location=draw(st.sampled_from(LOCATIONS)),
                    offset=draw(st.sampled_from((0, 0, 4, -1, 2**40))), length=draw(st.sampled_from((None, 0, 2**40))),
                    omit=draw(st.sets(st.sampled_from(("location", "offset", "length")), max_size=1)),
                    file=draw(st.sampled_from((1.0, 1.0, 0.5, 0.0, None))))
    return Edit(what)


@fuzz_settings(100)
@given(edits=st.lists(graph_edit(), min_size=1, max_size=2), kind=st.sampled_from(("tiny.onnx", "static.onnx")))
def test_graph_edits(ws, seeds, edits, kind):
    """A rexport ONNX whose graph was edited: its metadata may now contradict it, or its weights be
    elsewhere (external data, possibly outside the folder), missing, short or not finite."""
    model = onnx.load_from_string(seeds[kind])
    with ws.case() as d:
        for edit in edits:
            edit.apply(model, d)
        path = d / "model.onnx"
        path.write_bytes(model.SerializeToString())
        load_both(ws, path)


# -- engine sidecars ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sidecar_seed() -> dict:
    return {"format": "rexport-engine-sidecar/2", "tensorrt_version": "10.3.0", "gpu_name": "Orin",
            "compute_capability": "8.7", "precision": "fp16",
            "profile": {"input": {"min": [1, 3, 8, 8], "opt": [4, 3, 8, 8], "max": [8, 3, 8, 8]}},
            "source_onnx": {"path": "tiny.onnx", "sha256": "0" * 64}, "built_from": {}, "build_options": {},
            "model": tiny_info("fp16").to_dict(), "rebuild_command": "rexport trt tiny.onnx", "flavour": "tensorrt",
            "targets": ["8.7"]}


@fuzz_settings(150)
@given(data=st.data())
def test_engine_sidecar(ws, sidecar_seed, data):
    """An engine's sidecar (its metadata): fields of any type anywhere, or damaged text."""
    from rexport.runtime.engine_sidecar import EngineSidecar

    text = json.dumps(data.draw(edited_json(sidecar_seed, max_edits=4), label="sidecar")).encode()
    if data.draw(st.integers(0, 3), label="damage") == 0:
        text = data.draw(mutated(text, max_ops=2), label="text")
    with ws.case() as d:
        path = d / "model.engine.json"
        path.write_bytes(text)
        ws.attempt(lambda: EngineSidecar.read(path), close=check_sidecar)


def check_sidecar(sidecar) -> None:
    from rexport.runtime.engine_sidecar import EngineSidecar

    assert isinstance(sidecar, EngineSidecar)
    assert sidecar.model is None or isinstance(sidecar.model, ModelInfo)


# -- label files ---------------------------------------------------------------------------------

@st.composite
def labels_file(draw) -> tuple[str, bytes]:
    """A labels file (--labels): text lines, or JSON (a list, or an index -> name object) of any shape."""
    suffix = draw(st.sampled_from((".txt", ".json")))
    if suffix == ".txt":
        text = "\n".join(draw(st.lists(st.text(max_size=8), max_size=6))).encode()
    else:
        doc = draw(st.one_of(st.lists(st.text(max_size=6) | st.integers(), max_size=5),
                             st.dictionaries(st.sampled_from(("0", "1", "2", "00", "-1", "a", "1e3")),
                                             st.text(max_size=4) | st.lists(st.text(max_size=4), max_size=2)
                                             | st.integers(), max_size=4),
                             json_values(6), st.sampled_from(("[" * 3000, '{"0": []}', '{"0": "a", "00": ["b"]}'))))
        text = (doc if isinstance(doc, str) else json.dumps(doc)).encode()
    if draw(st.integers(0, 4)) == 0:
        text = draw(mutated(text, max_ops=2))
    return suffix, text


@fuzz_settings(120)
@given(case=labels_file())
def test_labels_file(ws, case):
    from rexport.runtime.metadata import load_labels

    def check(labels) -> None:
        assert isinstance(labels, tuple) and labels and all(isinstance(v, str) for v in labels)

    suffix, blob = case
    with ws.case() as d:
        path = d / f"labels{suffix}"
        path.write_bytes(blob)
        ws.attempt(lambda: load_labels(path), close=check)
