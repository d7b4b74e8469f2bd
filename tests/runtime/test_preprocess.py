"""rexport.runtime.preprocess: torchvision's eval transform, without torch.

tests/fixtures/preprocess_reference.npz holds what torchvision's real transforms (ImageFolder's
loader, Resize, CenterCrop, ToTensor, Normalize) made of the images in tests/data; see
tests/fixtures/make_preprocess_reference.py, which regenerates it.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import PIL
import pytest
from PIL import Image

from rexport.errors import InputError
from rexport.runtime.preprocess import (Preprocess, PreprocessOverrides, open_image, preprocess, resize_and_crop,
                                        to_mode)

TESTS = Path(__file__).parents[1]
DATA = TESTS / "data"
with np.load(TESTS / "fixtures" / "preprocess_reference.npz") as npz:
    REFERENCE = dict(npz)
META = json.loads(str(REFERENCE["meta"]))
CASES = {case["name"]: case for case in META["cases"]}
TOLERANCE = 1e-6  # the bound on |rexport - torchvision| for normalized values
REGENERATE = "python tests/fixtures/make_preprocess_reference.py"


def case_spec(name: str) -> Preprocess:
    return Preprocess.from_dict(CASES[name]["preprocess"])


def case_image(name: str) -> Path:
    return DATA / CASES[name]["image"]


def reference_crop(name: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(REFERENCE[f"{name}.crop_png"].tobytes())))


def load_pil(path: Path) -> Image.Image:
    image = Image.open(path)
    image.load()
    return image


# --- the reference: torchvision's transforms on real photos -------------------------------------

@pytest.mark.parametrize("image", sorted(META["decoded_sha256"]))
def test_images_decode_as_torchvision_loader_saw_them(image):
    """Decode + convert("RGB") gives the pixels ImageFolder's pil_loader gave the reference."""
    pixels = np.asarray(to_mode(open_image(DATA / image), "RGB"))
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == META["decoded_sha256"][image], (
        f"Pillow {PIL.__version__} decodes {image} differently from Pillow {META['pillow']}, which made "
        f"the reference; if that is the decoder, regenerate it: {REGENERATE}")


@pytest.mark.parametrize("name", CASES)
def test_resize_and_crop_equal_torchvision(name):
    spec = case_spec(name)
    crop = np.asarray(resize_and_crop(to_mode(open_image(case_image(name)), spec.channels), spec))
    expected = reference_crop(name)
    assert crop.shape == expected.shape
    differ = int(np.count_nonzero(crop != expected))
    assert differ == 0, f"{differ} of {crop.size} uint8 values differ from torchvision's Resize + CenterCrop"


@pytest.mark.parametrize("name", CASES)
def test_normalized_output_matches_torchvision(name):
    spec = case_spec(name)
    x = preprocess(case_image(name), spec)
    assert x.dtype == np.float32 and x.shape == (1, spec.num_channels, *spec.size)
    values = x[0].reshape(-1)[REFERENCE[f"{name}.index"]]
    np.testing.assert_allclose(values, REFERENCE[f"{name}.value"], rtol=0, atol=TOLERANCE)
    sums = x[0].astype(np.float64).sum(axis=(1, 2))
    np.testing.assert_allclose(sums, REFERENCE[f"{name}.channel_sum"], rtol=0, atol=TOLERANCE * x[0, 0].size)


def test_reference_covers_the_contract():
    """The reference holds the cases the issue names: both photos at Resize(256) + CenterCrop(224),
    upsampling, padding, a non-square crop, bicubic, a one-channel model, every input colour mode."""
    specs = {name: case_spec(name) for name in CASES}
    images = {name: load_pil(case_image(name)) for name in CASES}
    imagenet = {CASES[name]["image"] for name, spec in specs.items() if spec == Preprocess.imagenet(224)}
    assert {"flower.jpg", "china.png"} <= imagenet
    assert any(spec.resize and min(images[name].size) < spec.resize for name, spec in specs.items())
    assert any(spec.resize and max(spec.size) > spec.resize for spec in specs.values())  # the pad path
    assert any(spec.size[0] != spec.size[1] for spec in specs.values())
    assert {"bilinear", "bicubic"} <= {spec.interpolation for spec in specs.values()}
    assert "L" in {spec.channels for spec in specs.values()}
    modes = {(image.mode, "transparency" in image.info) for image in images.values()}
    assert {("RGB", False), ("L", False), ("RGBA", False), ("CMYK", False), ("P", False), ("P", True)} <= modes


# --- input kinds ------------------------------------------------------------------------------

def test_every_input_kind_gives_the_same_array():
    path = DATA / "flower.jpg"
    spec = Preprocess.imagenet(64)
    expected = preprocess(path, spec)
    data = path.read_bytes()
    pixels = np.asarray(load_pil(path).convert("RGB"))
    for src in [str(path), data, bytearray(data), memoryview(data), load_pil(path), pixels]:
        np.testing.assert_array_equal(preprocess(src, spec), expected, err_msg=type(src).__name__)
    batch = preprocess([path, data, load_pil(path), pixels], spec)
    np.testing.assert_array_equal(batch, np.concatenate([expected] * 4))


def test_grayscale_arrays_hw_and_hw1_equal_the_grayscale_file():
    path = DATA / "china_small_l.png"
    spec = Preprocess((28, 28), 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    expected = preprocess(path, spec)
    gray = np.asarray(load_pil(path))
    assert gray.ndim == 2
    np.testing.assert_array_equal(preprocess(gray, spec), expected)
    np.testing.assert_array_equal(preprocess(gray[:, :, None], spec), expected)
    assert np.ptp(expected) > 0.5  # a real photo, the same in all three channels
    np.testing.assert_array_equal(expected[0], np.broadcast_to(expected[0, 0], expected[0].shape))


def test_rgba_array_equals_the_rgba_file():
    path = DATA / "china_small_rgba.png"
    spec = Preprocess.imagenet(32)
    rgba = np.asarray(load_pil(path))
    assert rgba.shape[2] == 4 and len(np.unique(rgba[:, :, 3])) > 1
    np.testing.assert_array_equal(preprocess(rgba, spec), preprocess(path, spec))


def test_nhwc_batch_array_equals_images_one_by_one():
    spec = Preprocess.cifar(32)
    photo = np.asarray(load_pil(DATA / "china.png").convert("RGB"))
    batch = np.stack([photo[:100, :120], photo[100:, 180:], np.ascontiguousarray(photo[:100, :120, ::-1])])
    out = preprocess(batch, spec)
    assert out.shape == (3, 3, 32, 32)
    for image, expected in zip(batch, out):
        np.testing.assert_array_equal(preprocess(image, spec)[0], expected)
    assert not np.array_equal(out[0], out[2])


def test_bgr_reverses_the_channels():
    rgb = Preprocess.imagenet(64)
    bgr = Preprocess.imagenet(64, channels="BGR")
    x_rgb, x_bgr = preprocess(DATA / "flower.jpg", rgb), preprocess(DATA / "flower.jpg", bgr)
    np.testing.assert_array_equal(x_bgr, x_rgb[:, ::-1])
    assert not np.allclose(x_bgr, x_rgb)


def test_one_channel_models_take_every_input_kind():
    spec = Preprocess.imagenet(56, channels="L")
    path = DATA / "flower.jpg"
    expected = preprocess(path, spec)
    assert expected.shape == (1, 1, 56, 56)
    np.testing.assert_array_equal(preprocess(np.asarray(load_pil(path)), spec), expected)
    np.testing.assert_array_equal(preprocess(load_pil(path).convert("L"), spec), expected)


def test_one_channel_models_see_other_modes_through_rgb_like_imagefolder():
    """ImageFolder loads RGB, then Grayscale(): a YCbCr image must not take PIL's direct
    YCbCr -> L shortcut (it keeps Y, which differs by one level on many pixels)."""
    spec = Preprocess((200, 300), None, (0.0,), (1.0,), channels="L")
    ycbcr = load_pil(DATA / "china.png").convert("YCbCr")
    np.testing.assert_array_equal(preprocess(ycbcr, spec), preprocess(ycbcr.convert("RGB"), spec))


def test_16bit_grayscale_png_is_scaled_not_clipped(tmp_path):
    depth = np.linspace(0, 65535, 48 * 64).round().astype(np.uint16).reshape(48, 64)
    path = tmp_path / "depth.png"
    Image.fromarray(depth).save(path)
    assert load_pil(path).mode.startswith("I")
    for channels in ("L", "RGB"):
        n = 1 if channels == "L" else 3
        x = preprocess(path, Preprocess((48, 64), None, (0.0,) * n, (1.0,) * n, channels=channels))[0]
        expected = np.round(depth / 65535 * 255) / 255
        np.testing.assert_allclose(x, np.broadcast_to(expected, x.shape), rtol=0, atol=1e-6)
        assert x.min() == 0 and x.max() == 1 and np.mean(x == 1) < 0.01  # clipping would saturate almost all


def test_max_pixel_value_one_keeps_raw_pixel_values():
    pixels = np.asarray(load_pil(DATA / "all_values_16x16.png"))
    x = preprocess(pixels, Preprocess((16, 16), None, (0, 0, 0), (1, 1, 1), max_pixel_value=1.0))
    np.testing.assert_array_equal(x[0], pixels.transpose(2, 0, 1).astype(np.float32))


# --- errors -----------------------------------------------------------------------------------

def truncated_jpeg(tmp: Path) -> bytes:
    data = (DATA / "flower.jpg").read_bytes()
    return data[: len(data) // 2]


def text_file(tmp: Path) -> Path:
    path = tmp / "notes.jpg"
    path.write_text("not a picture")
    return path


@pytest.mark.parametrize("make_src, fragment", [
    (lambda tmp: tmp / "missing.jpg", "does not exist"),
    (lambda tmp: tmp, "is a directory"),
    (lambda tmp: b"this is not an image", "not an image PIL can decode (unknown or unsupported format)"),
    (text_file, "notes.jpg is not an image PIL can decode"),
    (truncated_jpeg, "image file is truncated"),
    (lambda tmp: np.zeros((8, 8, 3), np.float32), "must be uint8"),
    (lambda tmp: np.zeros((8, 8, 2), np.uint8), "C = 1, 3 or 4, got shape (8, 8, 2)"),
    (lambda tmp: np.zeros(8, np.uint8), "got shape (8,)"),
    (lambda tmp: np.zeros((1, 2, 8, 8, 3), np.uint8), "got shape (1, 2, 8, 8, 3)"),
    (lambda tmp: np.zeros((0, 8, 3), np.uint8), "must not be empty"),
    (lambda tmp: 42, "cannot read an image from int"),
    (lambda tmp: None, "cannot read an image from NoneType"),
    (lambda tmp: [DATA / "flower.jpg", 3.5], "cannot read an image from float"),
    (lambda tmp: [], "no images given"),
    (lambda tmp: np.zeros((0, 8, 8, 3), np.uint8), "no images given"),
    (lambda tmp: Image.new("La", (8, 8)), "cannot convert a La image to RGB"),
])
def test_bad_input_is_one_clear_input_error(tmp_path, make_src, fragment):
    with pytest.raises(InputError) as error:
        preprocess(make_src(tmp_path), Preprocess.imagenet(32))
    message = str(error.value)
    assert fragment in message and "\n" not in message and "0x" not in message, message


# --- the Preprocess description ---------------------------------------------------------------

@pytest.mark.parametrize("kwargs, fragment", [
    ({"mean": (0.5, 0.5), "std": (0.5, 0.5, 0.5)}, "RGB input needs 3 mean and 3 std values, got 2 and 3"),
    ({"channels": "L"}, "L input needs 1 mean and 1 std values, got 3 and 3"),
    ({"std": (0.5, 0.0, 0.5)}, "std values must be positive"),
    ({"std": (0.5, -1.0, 0.5)}, "std values must be positive"),
    ({"interpolation": "cubic"}, "interpolation must be one of nearest, lanczos, bilinear, bicubic"),
    ({"channels": "RGBA"}, "channels must be one of RGB, BGR, L"),
    ({"size": (0, 224)}, "size must be (height, width) > 0"),
    ({"size": (224,)}, "size must be (height, width) > 0"),
    ({"resize": 0}, "resize must be a positive shorter side"),
    ({"max_pixel_value": 0}, "max_pixel_value must be positive"),
])
def test_invalid_preprocess_is_an_input_error(kwargs, fragment):
    fields = {"size": (224, 224), "resize": 256, "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), **kwargs}
    with pytest.raises(InputError, match=re.escape(fragment)):
        Preprocess(**fields)


@pytest.mark.parametrize("spec", [
    Preprocess.imagenet(224),
    Preprocess.imagenet((192, 160), channels="BGR"),
    Preprocess.cifar(32, channels="L"),
    Preprocess((20, 30), None, (0.1, 0.2, 0.3), (1.0, 2.0, 3.0), interpolation="lanczos", max_pixel_value=1.0),
])
def test_to_dict_from_dict_round_trip_through_json(spec):
    description = json.loads(json.dumps(spec.to_dict()))  # as stored in ONNX metadata and rexport.json
    assert Preprocess.from_dict(description) == spec


@pytest.mark.parametrize("description", [{"resize": 256}, {"size": 224, "mean": [0.5], "std": [0.5]}, None])
def test_from_dict_rejects_broken_descriptions(description):
    with pytest.raises(InputError, match="invalid preprocess description"):
        Preprocess.from_dict(description)


def test_empty_overrides_change_nothing():
    base = Preprocess.imagenet(224)
    assert not PreprocessOverrides()
    assert PreprocessOverrides().apply(base) == base


def test_overrides_replace_only_what_they_name():
    base = Preprocess.imagenet(224)
    changed = PreprocessOverrides(resize=232, interpolation="bicubic").apply(base)
    assert PreprocessOverrides(resize=232)
    assert (changed.resize, changed.interpolation) == (232, "bicubic")
    assert (changed.size, changed.mean, changed.std, changed.channels) == (base.size, base.mean, base.std, "RGB")


@pytest.mark.parametrize("overrides, mean, std", [
    (PreprocessOverrides(channels="BGR"), (0.406, 0.456, 0.485), (0.225, 0.224, 0.229)),
    (PreprocessOverrides(channels="BGR", mean=(0.4, 0.5, 0.6)), (0.4, 0.5, 0.6), (0.225, 0.224, 0.229)),
    (PreprocessOverrides(channels="BGR", std=(0.2, 0.3, 0.4)), (0.406, 0.456, 0.485), (0.2, 0.3, 0.4)),
])
def test_rgb_to_bgr_override_reorders_the_statistics_it_keeps(overrides, mean, std):
    changed = overrides.apply(Preprocess.imagenet(224))
    assert (changed.channels, changed.mean, changed.std) == ("BGR", mean, std)


def test_bgr_override_and_back_restores_the_description():
    base = Preprocess.imagenet(224)
    bgr = PreprocessOverrides(channels="BGR").apply(base)
    assert bgr == Preprocess.imagenet(224, channels="BGR")
    assert PreprocessOverrides(channels="RGB").apply(bgr) == base


def test_override_to_grayscale_needs_new_statistics():
    base = Preprocess.imagenet(224)
    with pytest.raises(InputError, match="needs mean and std"):
        PreprocessOverrides(channels="L").apply(base)
    with pytest.raises(InputError, match="needs mean and std"):
        PreprocessOverrides(channels="L", mean=(0.45,)).apply(base)
    gray = PreprocessOverrides(channels="L", mean=(0.45,), std=(0.22,)).apply(base)
    assert (gray.channels, gray.mean, gray.std, gray.num_channels) == ("L", (0.45,), (0.22,), 1)


def test_invalid_override_is_an_input_error():
    with pytest.raises(InputError, match="interpolation must be one of"):
        PreprocessOverrides(interpolation="cubic").apply(Preprocess.imagenet(224))


def test_palette_with_transparency_converts_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = preprocess(DATA / "china_small_p_transparent.png", Preprocess.imagenet(32))
    assert x.shape == (1, 3, 32, 32)


def test_jpeg_draft_is_opt_in_close_and_only_for_large_jpegs():
    """draft=True decodes a JPEG much larger than the resize at reduced scale: close to the exact
    pixels, not equal; off by default; PNGs and JPEGs near the model's size are untouched."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:1600, 0:1200]
    smooth = np.stack([(x / 5) % 256, (y / 7) % 256, ((x + y) / 9) % 256], axis=-1) + rng.normal(0, 8, (1600, 1200, 3))
    big = Image.fromarray(np.clip(smooth, 0, 255).astype(np.uint8))
    jpeg, png = io.BytesIO(), io.BytesIO()
    big.save(jpeg, "JPEG", quality=90)
    big.save(png, "PNG")
    spec = Preprocess.imagenet(224)
    exact, drafted = preprocess(jpeg.getvalue(), spec), preprocess(jpeg.getvalue(), spec, draft=True)
    assert np.array_equal(exact, preprocess(jpeg.getvalue(), spec, draft=False))
    assert not np.array_equal(exact, drafted) and np.abs(exact - drafted).mean() < 0.1
    assert np.array_equal(preprocess(png.getvalue(), spec), preprocess(png.getvalue(), spec, draft=True))
    near = io.BytesIO()
    big.resize((300, 400)).save(near, "JPEG")
    assert np.array_equal(preprocess(near.getvalue(), spec), preprocess(near.getvalue(), spec, draft=True))


@pytest.mark.parametrize("channels, shape, mean", [("RGB", (20, 24, 3), (0.485, 0.456, 0.406)),
                                                   ("BGR", (20, 24, 3), (0.1, 0.2, 0.3)),
                                                   ("RGB", (20, 24), (0.485, 0.456, 0.406)), ("L", (20, 24), (0.5,))])
def test_normalize_is_bit_identical_to_the_plain_formula(channels, shape, mean):
    """normalize() works in place for speed; it must stay (x / max - mean) / std in float32, bit for bit."""
    from rexport.runtime.preprocess import normalize

    pixels = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    spec = Preprocess(size=shape[:2], resize=None, mean=mean, std=tuple(0.2 + 0.05 * i for i in range(len(mean))),
                      channels=channels)
    hwc = pixels[:, :, None] if pixels.ndim == 2 else pixels
    hwc = hwc[:, :, ::-1] if channels == "BGR" else hwc
    plain = (hwc.astype(np.float32) / np.float32(255) - np.asarray(mean, np.float32)) / np.asarray(spec.std, np.float32)
    out = normalize(pixels, spec)
    assert out.flags["C_CONTIGUOUS"] and np.array_equal(out, plain.transpose(2, 0, 1))
