"""Opening an ONNX file: one set of checks, and one plain sentence for each way a file is wrong.

    check_model_path(path)     a regular, non-empty file: a FIFO or device would hang the reader,
                               an empty file parses as an empty model            (no onnx needed)
    load_onnx(path)            the ModelProto with its external data read in, every initializer
                               and constant finite                                (needs onnx)
    parse_onnx(path)           the ModelProto alone (no external data), refusing what is not ONNX
    explain_unloadable(path, message)
                               why ONNX Runtime could not load a file, in words: not ONNX, no graph,
                               external data missing or outside the model's folder
    graph_io(model)            the graph's inputs and outputs, for ModelInfo.check_graph

External data (weights stored beside the .onnx, as `onnx.save(save_as_external_data=True)` and
exporters of big models write) is read only from files in the model's own folder: a location
that is absolute or climbs out with `..` is refused, so a model never reads another file.

This module imports onnx only inside the functions that need it: the torch- and onnx-free
runtime uses `check_model_path` and `explain_unloadable`.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
from pathlib import Path

import numpy as np

from rexport.errors import InputError

FLOAT_TYPES = {1: "float32", 10: "float16", 11: "float64", 16: "bfloat16"}  # TensorProto data types
_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 4: "uint16", 5: "int16", 6: "int32", 7: "int64", 9: "bool",
           10: "float16", 11: "float64", 12: "uint32", 13: "uint64", 16: "bfloat16"}


def _first_line(e: BaseException | str) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def check_model_path(path: str | os.PathLike, what: str = "model") -> Path:
    """The path of an existing, regular, non-empty file; a one-line InputError otherwise.

    Checked with stat() before anything opens the file: opening a FIFO blocks until a writer
    comes, a character device never ends, and an empty file is a valid (empty) protobuf."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except OSError as e:  # permission denied on a parent, a loop of links, a name too long...
        raise InputError(f"cannot read {what} {path} ({e.strerror or _first_line(e)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{what} {path} is a directory, not a model file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{what} {path} is {_special_kind(st.st_mode)}, not a regular file; "
                         "give the model file itself")
    if st.st_size == 0:
        kind = "an ONNX model" if path.suffix.lower() == ".onnx" else f"a {what}"
        raise InputError(f"{what} {path} is empty (0 bytes), not {kind}; export or copy it again")
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {what} {path} (permission denied)")
    return path


def _special_kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a named pipe (FIFO)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


# ---------------------------------------------------------------------------------------------
# Reading with onnx


def _tensors(graph):
    """(name, TensorProto) for every tensor of a graph: initializers and node attributes (named by
    their node's output when the tensor has no name, as a Constant's), subgraphs included."""
    for init in graph.initializer:
        yield init.name, init
    for node in graph.node:
        label = node.output[0] if node.output else node.name
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t.name or label, attr.t
            for t in attr.tensors:
                yield t.name or label, t
            if attr.HasField("g"):
                yield from _tensors(attr.g)
            for sub in attr.graphs:
                yield from _tensors(sub)


def parse_onnx(path: Path):
    """The ModelProto without its external data; refuses what is not an ONNX model."""
    from rexport.onnx_graph import onnx_module

    onnx = onnx_module()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, or onnx's own errors
        raise InputError(f"{path} is not a readable ONNX file (it does not parse as an ONNX protobuf: {_first_line(e)})"
                         ) from None
    if not model.HasField("graph") or not model.graph.node:
        raise InputError(f"{path} is not an ONNX model: it holds no graph (an empty, truncated or other kind of file)")
    return model


def check_external_data(model, path: Path) -> None:
    """Every external-data reference names an existing file inside the model's folder, long enough."""
    sizes: dict[str, int] = {}
    for name, tensor in _tensors(model.graph):
        if tensor.data_location != 1:  # TensorProto.EXTERNAL
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        location = entries.get("location", "")
        norm = posixpath.normpath(location.replace("\\", "/")) if location else ""
        if not location or "\0" in location or posixpath.isabs(norm) or re.match(r"^[A-Za-z]:", norm) \
                or norm == ".." or norm.startswith("../"):
            raise InputError(f"{path}: tensor {name!r} keeps its data in {location!r}, outside the model's "
                             "folder; rexport reads external data only from files next to the model")
        file = path.parent / norm
        if norm not in sizes:
            try:
                st = file.stat()
            except OSError:
                raise InputError(f"the external data file {norm} of {path.name} is missing: it must lie next to the "
                                 f"model, in {path.parent} (first needed by tensor {name!r}); copy it together "
                                 "with the .onnx") from None
            if not stat.S_ISREG(st.st_mode):
                raise InputError(f"the external data {file} of {path.name} is {_special_kind(st.st_mode)}, "
                                 "not a regular file")
            sizes[norm] = st.st_size
        try:
            end = int(entries.get("offset", 0)) + int(entries.get("length", 0))
        except ValueError:
            raise InputError(f"{path}: tensor {name!r} has an unreadable external data offset or length"
                             ) from None
        if end > sizes[norm]:
            raise InputError(f"the external data file {norm} of {path.name} is shorter than the model says "
                             f"({sizes[norm]} bytes, tensor {name!r} ends at {end}): truncated? copy it again")


def check_finite(model, what: str) -> None:
    """Refuse float initializers and constants holding NaN or Inf: corrupt weights that no
    conversion, calibration or tolerance can repair. Tensors still in external data are skipped."""
    from onnx import numpy_helper

    bad = []
    for name, tensor in _tensors(model.graph):
        if tensor.data_type not in FLOAT_TYPES or tensor.data_location == 1:
            continue
        try:
            value = numpy_helper.to_array(tensor)
        except Exception as e:  # malformed raw data: say which tensor
            raise InputError(f"{what}: tensor {name!r} cannot be read ({_first_line(e)})") from None
        if value.size and not np.isfinite(value.astype(np.float32, copy=False)).all():
            bad.append(name or "(unnamed)")
    if bad:
        shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise InputError(f"{what}: {len(bad)} {'tensors hold' if len(bad) > 1 else 'tensor holds'} NaN or Inf "
                         f"({shown}); the weights are corrupt or training diverged: re-export from a good checkpoint")


def load_onnx(path: str | os.PathLike, what: str = "model"):
    """An ONNX file as a ModelProto, external data read in, after every check of this module."""
    from onnx.external_data_helper import load_external_data_for_model

    path = check_model_path(path, what)
    model = parse_onnx(path)
    check_external_data(model, path)
    try:
        load_external_data_for_model(model, str(path.parent))
    except Exception as e:  # checked above; a race or an odd file system is what is left
        raise InputError(f"cannot read the external data of {path} ({_first_line(e)})") from None
    check_finite(model, str(path))
    return model


def graph_io(model) -> tuple[list, list]:
    """(inputs, outputs) of the graph as metadata.GraphIO; initializers listed as inputs are left out."""
    from rexport.runtime.metadata import GraphIO

    def describe(vi):
        t = vi.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim) \
            if t.HasField("shape") else None
        return GraphIO(vi.name, shape, _DTYPES.get(t.elem_type))

    weights = {i.name for i in model.graph.initializer}
    return ([describe(i) for i in model.graph.input if i.name not in weights],
            [describe(o) for o in model.graph.output])


# ---------------------------------------------------------------------------------------------
# Explaining ONNX Runtime's refusals


def explain_unloadable(path: Path, message: str) -> str | None:
    """A plain sentence for why ONNX Runtime could not load `path`, or None when we cannot tell.

    With onnx installed the file itself is examined; without it, ONNX Runtime's message is read."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        pass
    else:
        try:
            check_external_data(parse_onnx(path), path)
        except InputError as e:
            return str(e)
        except Exception:  # the diagnosis must never hide the original failure
            return None
        return None
    missing = re.search(r'External data path does not exist: "?([^"]+)"?', message)
    if missing:
        return (f"the external data file {Path(missing.group(1)).name} of {path.name} is missing: it must lie next "
                f"to the model, in {path.parent}; copy it together with the .onnx")
    if "escapes" in message or "outside" in message:
        return f"{path} keeps external data outside the model's folder; rexport reads only files next to the model"
    if "Protobuf parsing failed" in message:
        return f"{path} is not a readable ONNX file (it does not parse as an ONNX protobuf)"
    if "No graph was found" in message:
        return f"{path} is not an ONNX model: it holds no graph (an empty, truncated or other kind of file)"
    return None
