"""Issue 10: ONNX files every command opens the same way (rexport/onnx_file.py, ModelInfo.check_graph).

Each failure the adversarial run found, reproduced on the tiny classifier (doubles/tiny_onnx.py,
milliseconds) and checked on every way in: the runtime's load() (predict, validate, bench, inspect),
read_model (fp16, calibrate) and the TensorRT builder's read_onnx.
- calibrate failed on a valid model with external data ("escapes working directory");
- missing external data said "not a readable ONNX file (ValidationError)";
- an empty .onnx said "has no rexport metadata";
- NaN/Inf initializers were accepted;
- metadata that contradicts the graph (10 classes, 4 logits) passed every command.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from doubles.tiny_onnx import NUM_CLASSES, tiny_info, tiny_inputs, write_tiny_classifier, write_tiny_dataset
from helpers import assert_clean_error
from rexport.calibration import QuantizeConfig, quantize, to_fp16
from rexport.calibration.fp16 import read_model
from rexport.errors import InputError
from rexport.exporter.tensorrt.precision import read_onnx
from rexport.runtime import load
from rexport.runtime.inspect import inspect_model
from rexport.runtime.metadata import BatchRange, GraphIO
from rexport.runtime.preprocess import Preprocess


def load_and_close(path):
    with load(path) as predictor:
        return predictor.info


def bundle_it(path: Path):
    from rexport.runtime.bundle import write_bundle

    return write_bundle([path], path.parent / "bundle")


OPENERS = {"load": load_and_close, "read_model": read_model, "read_onnx": read_onnx, "inspect": inspect_model,
           "bundle": bundle_it}


@pytest.fixture
def tiny_model(tmp_path) -> Path:
    return write_tiny_classifier(tmp_path / "tiny.onnx")


def with_external_data(src: Path, folder: Path, location: str = "tiny.onnx.data") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(src))
    out = folder / "tiny.onnx"
    onnx.save(model, str(out), save_as_external_data=True, all_tensors_to_one_file=True, location=location,
              size_threshold=0)
    return out


# -- external data ---------------------------------------------------------------------------------


def test_external_data_model_works_everywhere_calibrate_included(tmp_path, tiny_model):
    """calibrate handed ONNX Runtime the .onnx bytes, which cannot find weights stored beside the file."""
    ext = with_external_data(tiny_model, tmp_path / "ext")
    assert (tmp_path / "ext" / "tiny.onnx.data").stat().st_size > ext.stat().st_size / 2  # the weights are there
    x = tiny_inputs(8)
    with load(tiny_model) as reference, load(ext) as model:
        assert np.array_equal(model.run(x), reference.run(x))
    assert read_model(ext)[1] == read_model(tiny_model)[1]
    assert to_fp16(ext, tmp_path / "tiny.fp16.onnx").path.is_file()
    data = write_tiny_dataset(tmp_path / "tiny.npz", tiny_model)
    result = quantize(ext, tmp_path / "tiny.int8.onnx",
                      QuantizeConfig(calib_data=str(data), calib_samples=32, target="cpu", calib_refine=(),
                                     use_stats_cache=False))
    assert result.score.agreement > 0.9
    with load(result.path) as int8:
        assert int8.run(x).shape == (8, NUM_CLASSES)


@pytest.mark.parametrize("opener", OPENERS)
def test_missing_external_data_is_named(tmp_path, tiny_model, opener):
    ext = with_external_data(tiny_model, tmp_path / "ext")
    (tmp_path / "ext" / "tiny.onnx.data").unlink()
    with pytest.raises(InputError) as err:
        OPENERS[opener](ext)
    message = str(err.value)
    assert "external data file tiny.onnx.data of tiny.onnx is missing" in message, message
    assert str(tmp_path / "ext") in message and "ValidationError" not in message and "\n" not in message


@pytest.mark.parametrize("opener", ["load", "read_model", "read_onnx"])
def test_external_data_outside_the_models_folder_is_refused(tmp_path, tiny_model, opener):
    """A model may read only files next to it, so a bundle's model cannot name another file."""
    ext = with_external_data(tiny_model, tmp_path / "inner")
    model = onnx.load(str(ext), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = "../tiny.onnx.data"  # onnx.save refuses to write this; an attacker would not
    ext.write_bytes(model.SerializeToString())
    (tmp_path / "inner" / "tiny.onnx.data").rename(tmp_path / "tiny.onnx.data")  # it exists, outside
    with pytest.raises(InputError, match="outside the model's folder"):
        OPENERS[opener](ext)


def test_truncated_external_data_is_named(tmp_path, tiny_model):
    ext = with_external_data(tiny_model, tmp_path / "ext")
    data = tmp_path / "ext" / "tiny.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(InputError, match="tiny.onnx.data of tiny.onnx is shorter than the model says"):
        read_model(ext)


def test_cli_missing_external_data_is_one_line(run_cli, tmp_path, tiny_model):
    ext = with_external_data(tiny_model, tmp_path / "ext")
    (tmp_path / "ext" / "tiny.onnx.data").unlink()
    for args in (["fp16", ext, "-o", tmp_path / "f.onnx"], ["inspect", ext]):
        assert_clean_error(run_cli(*args), "external data file tiny.onnx.data", "is missing")


# -- files that are not ONNX models ----------------------------------------------------------------


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("content, fragment", [
    (b"", "is empty (0 bytes), not an ONNX model"),
    (b"\x00" * 16, "not a readable ONNX file"),
    (onnx.ModelProto(ir_version=8).SerializeToString(), "holds no graph"),
    (b"PK\x03\x04 this is a zip, not a model", "not a readable ONNX file"),
])
def test_empty_and_foreign_files_say_what_they_are(tmp_path, opener, content, fragment):
    """An empty .onnx said 'has no rexport metadata'."""
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        OPENERS[opener](path)
    assert fragment in str(err.value) and "metadata" not in str(err.value), str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
@pytest.mark.parametrize("opener", OPENERS)
def test_special_files_are_refused_before_reading(tmp_path, opener):
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"model.onnx is a named pipe \(FIFO\), not a regular file"):
        OPENERS[opener](fifo)


def test_cli_empty_onnx_is_one_line(run_cli, tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    for command in ("fp16", "predict", "calibrate"):
        args = {"fp16": ["fp16", "m.onnx"], "predict": ["predict", "m.onnx", "x.png"],
                "calibrate": ["calibrate", "m.onnx", "--calib-data", "demo"]}[command]
        assert_clean_error(run_cli(*args), "m.onnx is empty")


# -- non-finite weights ----------------------------------------------------------------------------


@pytest.mark.parametrize("opener", ["read_model", "read_onnx"])
def test_nan_initializers_are_refused_naming_them(nan_model, opener):
    with pytest.raises(InputError) as err:
        OPENERS[opener](nan_model)
    message = str(err.value)
    assert "1 tensor holds NaN or Inf (fc.bias)" in message and "corrupt or training diverged" in message, message


def test_nan_model_is_refused_by_fp16_and_calibrate(tmp_path, nan_model):
    with pytest.raises(InputError, match="NaN or Inf"):
        to_fp16(nan_model, tmp_path / "f.onnx")
    with pytest.raises(InputError, match="NaN or Inf"):
        quantize(nan_model, tmp_path / "q.onnx", QuantizeConfig(calib_data="demo", calib_samples=8))
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan])
def test_non_finite_constants_and_external_weights_are_refused(tmp_path, tiny_model, value):
    model = onnx.load(str(tiny_model))
    w1 = next(i for i in model.graph.initializer if i.name == "w1")
    array = numpy_helper.to_array(w1).copy()
    array[0, 0, 0, 0] = value
    w1.CopyFrom(numpy_helper.from_array(array, "w1"))
    onnx.save(model, str(tmp_path / "bad.onnx"))
    ext = with_external_data(tmp_path / "bad.onnx", tmp_path / "ext")  # weights beside the file are checked too
    with pytest.raises(InputError, match=r"1 tensor holds NaN or Inf \(w1\)"):
        read_model(ext)
    const = onnx.load(str(tiny_model))  # a scale kept in a Constant node
    node = helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array([1.0, value], np.float32)),
                            name="k")
    const.graph.node.insert(0, node)  # read by nothing: being in the file is enough
    onnx.save(const, str(tmp_path / "const.onnx"))
    with pytest.raises(InputError, match=r"1 tensor holds NaN or Inf \(k\)"):
        read_model(tmp_path / "const.onnx")


# -- metadata that contradicts the graph ----------------------------------------------------------


def with_info(src: Path, out: Path, **changes) -> Path:
    model = onnx.load(str(src))
    del model.metadata_props[:]
    for k, v in tiny_info().replace(**changes).to_props().items():
        model.metadata_props.add(key=k, value=v)
    onnx.save(model, str(out))
    return out


MISMATCHES = {
    "classes": ({"num_classes": 10}, "the metadata says 10 classes but the graph outputs 5 logits"),
    "size": ({"input_shape": (3, 16, 16), "preprocess": Preprocess.cifar(16)},
             "the metadata says input 3x16x16 (CxHxW) but the graph takes 3x8x8"),
    "channels": ({"input_shape": (1, 8, 8), "preprocess": Preprocess.cifar(8, "L")},
                 "the metadata says input 1x8x8 (CxHxW) but the graph takes 3x8x8"),
    "input name": ({"input_name": "image"}, "names the input 'image' but the graph's input is 'input'"),
    "output name": ({"output_name": "probs"}, "names the output 'probs' but the graph's outputs are 'logits'"),
}


@pytest.mark.parametrize("opener", OPENERS)
@pytest.mark.parametrize("mismatch", MISMATCHES)
def test_metadata_is_checked_against_the_graph(tmp_path, tiny_model, opener, mismatch):
    changes, fragment = MISMATCHES[mismatch]
    path = with_info(tiny_model, tmp_path / "lying.onnx", **changes)
    with pytest.raises(InputError) as err:
        OPENERS[opener](path)
    message = str(err.value)
    assert "rexport metadata does not match its graph" in message and fragment in message, message
    assert "lying.onnx" in message and "\n" not in message


def test_a_fixed_batch_must_be_what_the_metadata_says(tmp_path):
    static = write_tiny_classifier(tmp_path / "static.onnx", static_batch=2)
    assert load_and_close(static).batch == BatchRange(2, 2, 2)  # the writer records it: fine
    lying = with_info(static, tmp_path / "lying.onnx", batch=BatchRange(1, 4, 8))
    with pytest.raises(InputError, match="the metadata says batch 1:4:8 but the graph's input has a fixed batch of 2"):
        read_model(lying)


def test_cli_metadata_mismatch_is_one_line_in_every_command(run_cli, tmp_path, tiny_model):
    path = with_info(tiny_model, tmp_path / "lying.onnx", num_classes=10)
    data = write_tiny_dataset(tmp_path / "d.npz", tiny_model, count=16)
    for args in (["predict", path, Path(__file__).parent / "data" / "flower.jpg"], ["fp16", path],
                 ["calibrate", path, "--calib-data", data], ["validate", path, "--val-data", data], ["bench", path],
                 ["inspect", path]):
        assert_clean_error(run_cli(*args), "10 classes but the graph outputs 5 logits")


def test_check_graph_accepts_dynamic_axes_and_names_what_differs():
    info = tiny_info()
    info.check_graph([GraphIO("input", (None, 3, None, None), "float32")], [GraphIO("logits", (None, None))], "m")
    info.check_graph([GraphIO("input", None)], [GraphIO("logits", None), GraphIO("features", (None, 4))], "m")
    with pytest.raises(InputError, match="the input 'input' is float16, but rexport feeds float32"):
        info.check_graph([GraphIO("input", (None, 3, 8, 8), "float16")], [GraphIO("logits", (None, 5))], "m")
    with pytest.raises(InputError, match="the output 'logits' is int64, not float logits"):
        info.check_graph([GraphIO("input", (None, 3, 8, 8))], [GraphIO("logits", (None, 5), "int64")], "m")
    with pytest.raises(InputError, match="one image input, the graph has 2"):
        info.check_graph([GraphIO("input", None), GraphIO("mask", None)], [GraphIO("logits", None)], "m")
    with pytest.raises(InputError, match="graph's input is 3x8x8"):
        info.check_graph([GraphIO("input", (3, 8, 8))], [GraphIO("logits", None)], "m")
