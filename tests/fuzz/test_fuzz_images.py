"""Fuzz the image loader (rexport.runtime.preprocess: open_image, then the model's preprocessing)
on mutated PNG/JPEG files, on images PIL writes in every mode and format it has (then damaged),
on PNG headers that claim any size, by path and as bytes; and image folders as calibration data
(rexport.runtime.data, which skips unreadable images). Property and settings: fuzz_support,
conftest."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import Seeds, fuzz_settings, mutations
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from rexport.runtime.data import Dataset, load_dataset
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.preprocess import Preprocess, preprocess_one

DATA = Path(__file__).parent.parent / "data"
SEED_FILES = ("china_tiny_8x8.png", "china_small_p_transparent.png", "china_small_cmyk.jpg", "china_small_l.png",
              "all_values_16x16.png", "flower.jpg")
SPECS = {c: Preprocess.cifar(8, channels=c) for c in ("RGB", "BGR", "L")}
CAP = 1 << 20  # pixels: the fuzz decodes small images; the cap itself is what is tested at this size


@pytest.fixture(scope="module")
def seeds() -> Seeds:
    return Seeds({name: (DATA / name).read_bytes() for name in SEED_FILES})


def check_tensor(x, spec: Preprocess) -> None:
    assert isinstance(x, np.ndarray) and x.dtype == np.float32
    assert x.shape == (spec.num_channels, *spec.size), x.shape
    assert np.isfinite(x).all()


def load_image(ws, blob: bytes, spec: Preprocess, as_path: bool, suffix: str = ".png") -> None:
    if not as_path:
        ws.attempt(lambda: preprocess_one(blob, spec, max_pixels=CAP), close=lambda x: check_tensor(x, spec))
        return
    with ws.case() as d:
        path = d / f"image{suffix}"
        path.write_bytes(blob)
        ws.attempt(lambda: preprocess_one(path, spec, max_pixels=CAP), close=lambda x: check_tensor(x, spec))


def test_seeds_load(seeds):
    for name, blob in seeds.items():
        for spec in SPECS.values():
            check_tensor(preprocess_one(blob, spec), spec)


@fuzz_settings(200)
@given(data=st.data(), name=st.sampled_from(SEED_FILES), channels=st.sampled_from(sorted(SPECS)),
       as_path=st.booleans())
def test_mutated_image(ws, seeds, data, name, channels, as_path):
    mutation = data.draw(mutations(len(seeds[name]), hot=1024), label="mutation")
    load_image(ws, mutation.apply(seeds[name]), SPECS[channels], as_path, Path(name).suffix)


MODES = ("1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "I;16", "F", "LA", "PA", "RGBX")
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM", "ICO", "TGA", "PCX", "SGI", "DDS", "QOI")


@st.composite
def written_image(draw) -> bytes | None:
    """An image PIL writes: any mode, size (thin and 1-pixel ones too) and format, or None when PIL
    cannot write that mode in that format; then perhaps damaged."""
    mode = draw(st.sampled_from(MODES))
    size = draw(st.tuples(st.integers(1, 24), st.integers(1, 24)) | st.sampled_from(((1, 1), (1, 3000), (3000, 1))))
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    img = Image.frombytes(mode, size, rng.integers(0, 256, 4 * 4 * size[0] * size[1], dtype=np.uint8).tobytes()) \
        if mode not in ("P", "PA") else Image.new(mode, size, 3)
    buf = io.BytesIO()
    try:
        img.save(buf, draw(st.sampled_from(FORMATS)))
    except Exception:  # PIL cannot write this mode in this format
        return None
    blob = buf.getvalue()
    if draw(st.booleans()):
        blob = draw(mutations(len(blob), max_ops=2, hot=256)).apply(blob)
    return blob


@fuzz_settings(300)
@given(blob=written_image(), channels=st.sampled_from(sorted(SPECS)), as_path=st.booleans())
def test_written_image(ws, blob, channels, as_path):
    if blob is None:
        return
    load_image(ws, blob, SPECS[channels], as_path)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


@st.composite
def png_header(draw) -> bytes:
    """A PNG whose IHDR claims any size, depth and colour type (with a valid CRC), and a little data."""
    width = draw(st.sampled_from((0, 1, 8, 1024, 1025, 2**16, 2**31 - 1, 2**32 - 1)) | st.integers(1, 64))
    height = draw(st.sampled_from((0, 1, 8, 1024, 1025, 2**16, 2**31 - 1, 2**32 - 1)) | st.integers(1, 64))
    depth, colour = draw(st.sampled_from((1, 2, 4, 8, 16, 3))), draw(st.sampled_from((0, 2, 3, 4, 6, 1)))
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, draw(st.sampled_from((0, 1, 2))))
    rows = b"".join(b"\x00" + b"\x7f" * min(width * 8, 256) for _ in range(min(height, 16)))
    idat = zlib.compress(rows)[: draw(st.sampled_from((None, 10, 0)))]
    chunks = _chunk(b"IHDR", ihdr)
    if colour == 3:
        chunks += _chunk(b"PLTE", bytes(range(48)))
    return b"\x89PNG\r\n\x1a\n" + chunks + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


@fuzz_settings(100)
@given(blob=png_header(), channels=st.sampled_from(sorted(SPECS)))
def test_png_header(ws, blob, channels):
    load_image(ws, blob, SPECS[channels], as_path=False)


# -- image folders as calibration data ------------------------------------------------------------

INFO = ModelInfo(num_classes=3, input_shape=(3, 8, 8), preprocess=Preprocess.cifar(8), labels=("a", "b", "c"))


def check_folder_data(data) -> None:
    assert isinstance(data, Dataset)
    assert data.inputs.dtype == np.float32 and data.inputs.shape[1:] == (3, 8, 8) and len(data.inputs) >= 1
    assert np.isfinite(data.inputs).all()
    if data.labels is not None:
        assert data.labels.shape == (len(data.inputs),) and ((0 <= data.labels) & (data.labels < 3)).all()


@fuzz_settings(30)
@given(data=st.data(), layout=st.lists(st.tuples(st.sampled_from(("a", "b", "c", "d", "", "x/y")),
                                                   st.sampled_from(SEED_FILES[:4]), st.booleans()),
                                         min_size=1, max_size=4))
def test_image_folder(ws, seeds, data, layout):
    """A folder of images in class subfolders (or not), some damaged: unreadable ones are skipped."""
    with ws.case() as d:
        root = d / "images"
        for i, (cls, name, damage) in enumerate(layout):
            blob = seeds[name]
            if damage:
                blob = data.draw(mutations(len(blob), hot=512), label=f"mutation {i}").apply(blob)
            (root / cls).mkdir(parents=True, exist_ok=True)
            (root / cls / f"{i}{Path(name).suffix}").write_bytes(blob)
        ws.attempt(lambda: load_dataset(root, INFO, samples=3), close=check_folder_data)
