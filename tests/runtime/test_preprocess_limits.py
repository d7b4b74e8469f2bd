"""Issue 10: what the image loader refuses before decoding: files above the pixel cap (PIL only
warned, then decoded a 144 MP PNG at 780 MB), and paths that are not regular files (a FIFO hung
`predict`)."""

from __future__ import annotations

import os
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import assert_clean_error
from rexport.errors import InputError
from rexport.runtime.preprocess import (MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS_ENV, Preprocess, max_image_pixels,
                                        open_image, preprocess)

DATA = Path(__file__).parent.parent / "data"


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height grayscale pixels but holds almost no data: decoding it would
    fail as truncated, so an error about its size proves nothing was decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture
def big_png(tmp_path) -> Path:
    path = tmp_path / "huge.png"
    path.write_bytes(png_header(12000, 12000))  # 144 MP, the size in the issue
    return path


def test_the_default_cap_is_64_megapixels(monkeypatch):
    monkeypatch.delenv(MAX_IMAGE_PIXELS_ENV, raising=False)
    assert max_image_pixels() == MAX_IMAGE_PIXELS == 64_000_000


def test_an_image_above_the_cap_is_refused_from_its_header(big_png):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's DecompressionBombWarning used to come first
        with pytest.raises(InputError) as err:
            open_image(big_png)
    message = str(err.value)
    assert "huge.png" in message and "12000x12000 = 144 MP" in message and "64 MP" in message
    assert MAX_IMAGE_PIXELS_ENV in message and "\n" not in message
    assert "truncated" not in message  # refused before decoding: the pixel data is not even there


@pytest.mark.parametrize("as_bytes", [False, True])
def test_the_cap_applies_to_files_and_bytes_through_preprocess(big_png, as_bytes):
    with pytest.raises(InputError, match="144 MP"):
        preprocess(big_png.read_bytes() if as_bytes else big_png, Preprocess.imagenet(32))


def test_the_cap_is_an_argument_and_an_environment_variable(monkeypatch):
    spec = Preprocess.imagenet(32)
    flower = DATA / "flower.jpg"
    pixels = Image.open(flower).size[0] * Image.open(flower).size[1]
    with pytest.raises(InputError, match="refusing to decode"):
        preprocess(flower, spec, max_pixels=pixels - 1)
    assert preprocess(flower, spec, max_pixels=pixels).shape == (1, 3, 32, 32)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(pixels - 1))
    with pytest.raises(InputError, match=f"set {MAX_IMAGE_PIXELS_ENV}"):
        preprocess(flower, spec)
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "lots")
    with pytest.raises(InputError, match="must be a positive number of pixels"):
        preprocess(flower, spec)


def test_arrays_and_pil_images_are_already_decoded_and_not_capped(monkeypatch):
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, "10")
    spec = Preprocess.imagenet(32)
    assert preprocess(np.zeros((40, 40, 3), np.uint8), spec).shape == (1, 3, 32, 32)
    assert preprocess(Image.new("RGB", (40, 40)), spec).shape == (1, 3, 32, 32)


def test_a_raised_cap_is_silent_and_pils_own_bomb_error_is_one_line(tmp_path, monkeypatch):
    """Between PIL's warning (89 MP) and error (179 MP) limits PIL warned; above them it raised
    DecompressionBombError. Both are one line now."""
    monkeypatch.setenv(MAX_IMAGE_PIXELS_ENV, str(10 ** 10))
    warned = tmp_path / "warned.png"
    warned.write_bytes(png_header(10000, 10000))  # 100 MP: over PIL's warning limit
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match="truncated"):  # decoded (the cap allows it), no warning
            open_image(warned)
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header(20000, 20000))  # 400 MP: over PIL's error limit
    with pytest.raises(InputError) as err:
        open_image(bomb)
    assert "refusing to decode" in str(err.value) and "PIL's limit" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_a_fifo_is_refused_not_read_forever(tmp_path):
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    with pytest.raises(InputError, match=r"image .*photo.jpg is a named pipe \(FIFO\), not a regular file"):
        preprocess(fifo, Preprocess.imagenet(32))


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_a_device_is_refused_not_read_forever():
    with pytest.raises(InputError, match="is a device, not a regular file"):
        preprocess("/dev/zero", Preprocess.imagenet(32))


def test_a_link_to_an_image_still_works(tmp_path):
    link = tmp_path / "link.jpg"
    link.symlink_to(DATA / "flower.jpg")
    assert np.array_equal(preprocess(link, Preprocess.imagenet(32)), preprocess(DATA / "flower.jpg",
                                                                                Preprocess.imagenet(32)))


# -- the command line ------------------------------------------------------------------------------


def test_cli_predict_refuses_a_huge_image_in_one_line(run_cli, demo_fp32, big_png):
    result = run_cli("predict", demo_fp32, big_png)
    assert_clean_error(result, "refusing to decode", "144 MP")
    assert "DecompressionBomb" not in result.stderr and result.stderr.strip().count("\n") == 0, result


@pytest.mark.skipif(not hasattr(os, "mkfifo") or sys.platform == "win32", reason="needs named pipes")
def test_cli_predict_on_a_fifo_or_device_does_not_hang(run_cli, demo_fp32, tmp_path):
    fifo = tmp_path / "digit.png"
    os.mkfifo(fifo)
    assert_clean_error(run_cli("predict", demo_fp32, fifo, timeout=120), "named pipe (FIFO)")
    assert_clean_error(run_cli("predict", demo_fp32, "/dev/zero", timeout=120), "is a device")
    model_fifo = tmp_path / "model.onnx"
    os.mkfifo(model_fifo)
    assert_clean_error(run_cli("predict", model_fifo, DATA / "flower.jpg", timeout=120), "named pipe (FIFO)")
