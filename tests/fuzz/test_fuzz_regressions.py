"""What the loader fuzzing found (issue 10), each as the smallest input that showed it. Every one
of these raised something other than a one-line RexportError, printed, warned, leaked a file, or
did not end, before its fix."""

from __future__ import annotations

import gc
import io
import struct
import warnings

import pytest
from fuzz_support import check_one_line

from rexport.errors import RexportError


def refused(call, *fragments: str) -> str:
    """call() raises a one-line RexportError (naming `fragments`), with no warning and nothing printed."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(RexportError) as info:
            call()
        gc.collect()
    check_one_line(info.value)
    noisy = [w for w in caught if not issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))]
    assert not noisy, [str(w.message) for w in noisy]
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
    return str(info.value)


# -- checkpoints ---------------------------------------------------------------------------------

def test_zip_checkpoint_with_a_name_that_is_not_utf8(tmp_path):
    """A zip member name flagged UTF-8 (general purpose bit 11) that is not: zipfile raised
    UnicodeDecodeError from the TorchScript and pickle-protocol sniffers."""
    torch = pytest.importorskip("torch")
    from rexport.exporter.checkpoint import load_checkpoint

    path = tmp_path / "model.pt"
    torch.save({"fc.weight": torch.ones(2, 2)}, path)
    raw = bytearray(path.read_bytes())
    raw[6:8] = struct.pack("<H", struct.unpack("<H", raw[6:8])[0] | 0x800)
    cd = raw.find(b"PK\x01\x02")
    raw[cd + 8:cd + 10] = struct.pack("<H", struct.unpack("<H", raw[cd + 8:cd + 10])[0] | 0x800)
    raw[cd + 46] = 0x80  # the first byte of the first name in the central directory
    path.write_bytes(raw)
    refused(lambda: load_checkpoint(path), "truncated or corrupt")


def test_empty_safetensors_checkpoint(tmp_path):
    """An empty safetensors file (header `{}`) loaded as an empty state dict, and load_model then
    looped for ever stripping wrapper prefixes (every key of an empty dict has every prefix),
    growing its notes until the memory ran out."""
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from rexport.exporter.checkpoint import Checkpoint, load_checkpoint, load_model

    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")
    refused(lambda: load_checkpoint(path), "holds no tensors")
    refused(lambda: load_model(path, "resnet20"), "holds no tensors")
    empty = Checkpoint(path, {}, "0" * 64, "safetensors")  # built by a caller: load_model fits it, and ends
    refused(lambda: load_model(empty, "resnet20"), "does not fit resnet20")
    assert torch  # imported for the skip


# -- ONNX and its metadata ------------------------------------------------------------------------

@pytest.fixture
def tiny(tmp_path):
    pytest.importorskip("onnxruntime")
    from doubles.tiny_onnx import write_tiny_classifier

    return write_tiny_classifier(tmp_path / "tiny.onnx")


def test_onnx_metadata_that_is_not_utf8(tiny):
    """metadata_props holding invalid UTF-8: onnxruntime's custom_metadata_map raised UnicodeDecodeError."""
    from rexport.runtime import load

    raw = tiny.read_bytes()
    assert raw.count(b"bilinear") == 1  # in the preprocess property
    tiny.write_bytes(raw.replace(b"bilinear", b"\x80ilinear"))
    refused(lambda: load(tiny, providers="cpu"), "not UTF-8")


def test_onnx_dimension_name_that_is_not_utf8(tiny):
    """The output's symbolic batch dimension holding invalid UTF-8: onnxruntime's NodeArg.shape
    raised UnicodeDecodeError when the graph was read for ModelInfo.check_graph (found by
    test_mutated_onnx in CI, 2026-12-02)."""
    from rexport.runtime import load

    raw = tiny.read_bytes()
    at = raw.rfind(b"\x12\x05batch")  # the last dim_param "batch": the output's
    assert at > 0
    tiny.write_bytes(raw[:at + 2] + b"\x80" + raw[at + 3:])
    refused(lambda: load(tiny, providers="cpu", backend="onnxruntime"), "not UTF-8")


def test_onnxruntime_session_failure_prints_nothing(tiny, capsys):
    """A node input name that is not UTF-8 makes creating the session fail with a ValueError, on which
    onnxruntime printed a four-line '*** EP Error ***' banner to stdout before retrying."""
    from rexport.runtime import load

    raw = tiny.read_bytes()
    tiny.write_bytes(raw.replace(b"\n\x05input", b"\n\x05\x80nput", 1))
    refused(lambda: load(tiny, providers="cpu"))
    printed = capsys.readouterr()
    assert "EP Error" not in printed.out + printed.err, printed


def _props(**changes) -> dict:
    from doubles.tiny_onnx import tiny_info

    return {**tiny_info().to_props(), **changes}


@pytest.mark.parametrize("changes, fragment", [
    ({"num_classes": "[" * 3000}, "nested too deeply"),          # RecursionError
    ({"output": "null"}, "incomplete or invalid"),                 # AttributeError: None.get
    ({"input": '{"name": "input", "shape": [3, 8, 8], "batch": 5}'}, "incomplete or invalid"),
    ({"num_classes": "Infinity"}, "incomplete or invalid"),       # OverflowError: int(inf)
    ({"output": '{"name": [], "kind": "logits"}'}, "must be strings"),  # TypeError in check_graph
    ({"input": '{"name": "input", "shape": [3, 8, 8], "batch": [1, 4.5, 8]}'}, "whole numbers"),
    ({"calibration": "true"}, "calibration must be a JSON object"),  # bool.get in load's INT8 check (test_metadata_in_onnx)
])
def test_model_description_of_any_shape(changes, fragment):
    pytest.importorskip("onnx")
    from rexport.runtime.metadata import ModelInfo

    refused(lambda: ModelInfo.from_props(_props(**changes)), fragment)


def test_external_data_location_with_a_nul_byte(tiny):
    """An external-data location holding a NUL byte: stat() raised ValueError('embedded null byte')."""
    onnx = pytest.importorskip("onnx")
    from rexport.onnx_file import load_onnx

    model = onnx.load(str(tiny))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "weights.bin\0x"
    onnx.save(model, str(tiny))
    refused(lambda: load_onnx(tiny), "weights.bin")


@pytest.mark.parametrize("suffix, blob, fragment", [
    (".txt", b"\xc0\x80", "not UTF-8"),                            # UnicodeDecodeError
    (".json", b"[" * 3000, "nested too deeply"),                   # RecursionError
    (".json", b'{"0": []}', "expected a list of names"),           # IndexError: [][-1]
    (".json", b'{"0": "a", "00": ["b"]}', "without gaps"),         # TypeError: sorting str with list
])
def test_labels_file(tmp_path, suffix, blob, fragment):
    from rexport.runtime.metadata import load_labels

    path = tmp_path / f"labels{suffix}"
    path.write_bytes(blob)
    refused(lambda: load_labels(path), fragment)


# -- arrays and caches ----------------------------------------------------------------------------

def _npy(header: str, body: bytes = b"") -> bytes:
    text = header.encode("latin-1")
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + body


def _info():
    from rexport.runtime.metadata import ModelInfo
    from rexport.runtime.preprocess import Preprocess

    return ModelInfo(num_classes=5, input_shape=(3, 8, 8), preprocess=Preprocess.cifar(8))


@pytest.mark.parametrize("header, fragment", [
    ("z'descr': '<f4', 'fortran_order': False, 'shape': (0, 3, 8, 8), }", "cannot read arrays"),  # TokenError
    ("{'descr': '<f4', 'fortran_order': False, 'shape': (4611686018427387904, 4611686018427387904, 1, 1), }",
     "truncated or damaged"),  # numpy's RuntimeWarning (overflow) from memmap
])
def test_npy_header(tmp_path, header, fragment):
    from rexport.runtime.data import load_dataset

    path = tmp_path / "data.npy"
    path.write_bytes(_npy(header))
    refused(lambda: load_dataset(path, _info(), samples=3), fragment)


def test_damaged_stats_cache_entry_leaks_no_file(tmp_path):
    """np.load(path) of a damaged zip left its file open (ResourceWarning); the entry is ignored."""
    from rexport.calibration.stats import _load

    path = tmp_path / "entry.npz"
    path.write_bytes(b"PK\x03\x04")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert _load(path, ["input"]) is None
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.mark.parametrize("value", ["7f800000", "7fc00000", "bf800000"])  # inf, NaN, -1
def test_calibration_cache_scale_no_engine_can_use(tmp_path, value):
    from rexport.calibration.cache import read_calibration_cache

    path = tmp_path / "calib.cache"
    path.write_text(f"TRT-100300-EntropyCalibration2\ninput: {value}\n")
    refused(lambda: read_calibration_cache(path), "line 2", "'input'")


# -- images ----------------------------------------------------------------------------------------

def _thin_png(height: int) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (1, height), 128).save(buf, "PNG")
    return buf.getvalue()


def test_thin_image_is_refused_before_resizing():
    """A 4 kB PNG of 1 x 2,000,000 pixels (2 MP, under the cap) asked Resize(256) for a 256 x 512,000,000
    image: MemoryError (20,000,000 pixels tall: PIL's OverflowError)."""
    from rexport.runtime.preprocess import Preprocess, preprocess_one

    refused(lambda: preprocess_one(_thin_png(2_000_000), Preprocess.imagenet(224)), "aspect ratio")
    refused(lambda: preprocess_one(_thin_png(200_000), Preprocess.cifar(8), max_pixels=1_000_000), "aspect ratio")
    assert preprocess_one(_thin_png(2_000), Preprocess.cifar(8)).shape == (3, 8, 8)  # thin, but fine


def test_multi_frame_image_file_is_closed(tmp_path):
    """PIL keeps the file of a multi-frame image (GIF, TIFF) open after load(): a ResourceWarning per image."""
    from PIL import Image

    from rexport.runtime.preprocess import Preprocess, preprocess_one

    path = tmp_path / "two.gif"
    Image.new("L", (4, 4), 1).save(path, save_all=True, append_images=[Image.new("L", (4, 4), 200)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert preprocess_one(path, Preprocess.cifar(8)).shape == (3, 8, 8)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def test_corrupt_exif_warns_nothing():
    """A TIFF whose first IFD offset points past the end: PIL's two-line 'Corrupt EXIF data' UserWarning."""
    from PIL import Image

    from rexport.runtime.preprocess import Preprocess, preprocess_one

    buf = io.BytesIO()
    Image.new("L", (2, 2), 7).save(buf, "TIFF")
    raw = bytearray(buf.getvalue())
    raw[4] = 0xFF
    refused(lambda: preprocess_one(bytes(raw), Preprocess.cifar(8)), "not an image PIL can decode")


def test_inputs_near_the_float32_limit(tmp_path):
    """Finite float32 inputs near 3.4e38: the data check's std() overflowed in float32 (numpy RuntimeWarning)."""
    import numpy as np

    from rexport.runtime.data import load_dataset

    path = tmp_path / "data.npy"
    x = np.zeros((2, 3, 8, 8), np.float32)
    x[0, 0, 0, 0] = 3e38
    np.save(path, x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(load_dataset(path, _info(), samples=None)) == 2


def test_float8_checkpoint(tmp_path):
    """A safetensors checkpoint holding float8 (F8_E4M3) weights: torch.isfinite has no float8 kernel
    (NotImplementedError) in the NaN/Inf check."""
    pytest.importorskip("safetensors")
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    from rexport.exporter.checkpoint import load_checkpoint

    path = tmp_path / "fp8.safetensors"
    save_file({"fc.weight": torch.ones(2, 2).to(torch.float8_e4m3fn)}, str(path))
    assert load_checkpoint(path).state_dict["fc.weight"].dtype == torch.float8_e4m3fn
    save_file({"fc.weight": torch.full((2, 2), float("nan")).to(torch.float8_e4m3fn)}, str(path))
    refused(lambda: load_checkpoint(path), "NaN or Inf", "fc.weight")
