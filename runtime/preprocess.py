"""The preprocessing contract between training and the torch-free runtime.

`Preprocess` describes the eval transform a model was trained with; `preprocess()` applies it
to images and returns the NCHW float32 batch the model takes. The steps and their arithmetic
are torchvision's eval transform on PIL images, so a model sees at the edge exactly what it
saw in validation:

    decode (PIL) -> .convert("RGB") (as ImageFolder's loader does)
    -> Resize(shorter side)    torchvision's size rule; PIL resampling, antialiased like PIL
    -> CenterCrop(h, w)        zero-pads first when the image is smaller, like CenterCrop
    -> ToTensor                uint8 HWC -> float32 CHW, divided by `max_pixel_value`
    -> Normalize(mean, std)    (x - mean) / std in float32

Calibration, validation, the demo's training and the Predictor all call this one module.

Decoding is bounded: an image file (or bytes) with more than `max_image_pixels()` pixels,
64 megapixels unless REXPORT_MAX_IMAGE_PIXELS or the `max_pixels` argument says otherwise, is
refused from its header, before any pixel is decoded (a 144 MP PNG would take ~0.8 GB). Paths
must be regular files: a FIFO or a device is refused instead of read forever.
"""

from __future__ import annotations

import io
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Union

import numpy as np

from rexport.errors import InputError, qualified

INTERPOLATIONS = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4, "hamming": 5}
CHANNEL_ORDERS = {"RGB": 3, "BGR": 3, "L": 1}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

ImageLike = Union[str, os.PathLike, bytes, np.ndarray, Any]  # Any: a PIL.Image.Image

MAX_IMAGE_PIXELS = 64_000_000  # the default cap on width x height of an image file we decode
MAX_IMAGE_PIXELS_ENV = "REXPORT_MAX_IMAGE_PIXELS"


def max_image_pixels() -> int:
    """The pixel cap: $REXPORT_MAX_IMAGE_PIXELS (a positive integer) or MAX_IMAGE_PIXELS."""
    text = os.environ.get(MAX_IMAGE_PIXELS_ENV, "").strip()
    if not text:
        return MAX_IMAGE_PIXELS
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        value = 0
    if value < 1:
        raise InputError(f"{MAX_IMAGE_PIXELS_ENV} must be a positive number of pixels (e.g. 100000000), "
                         f"not {text!r}")
    return value


@dataclass(frozen=True)
class Preprocess:
    """How raw images become model input.

    size:            final (height, width), the model's input size
    resize:          shorter side to resize to before the crop; None keeps the image size
    mean, std:       per channel, in the model's channel order, applied after scaling
    interpolation:   PIL resampling filter for the resize
    channels:        "RGB", "BGR" or "L" (grayscale, one channel)
    max_pixel_value: pixels are divided by this first (255: 0..1 as ToTensor; 1: raw 0..255)
    """

    size: tuple[int, int]
    resize: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    channels: str = "RGB"
    max_pixel_value: float = 255.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.size) != 2 or min(self.size) < 1:
            raise InputError(f"preprocess size must be (height, width) > 0, not {self.size}")
        if self.resize is not None and int(self.resize) < 1:
            raise InputError(f"preprocess resize must be a positive shorter side, not {self.resize}")
        if self.channels not in CHANNEL_ORDERS:
            raise InputError(f"channels must be one of {', '.join(CHANNEL_ORDERS)}, not {self.channels!r}")
        n = CHANNEL_ORDERS[self.channels]
        if len(self.mean) != n or len(self.std) != n:
            raise InputError(f"{self.channels} input needs {n} mean and {n} std values, "
                             f"got {len(self.mean)} and {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise InputError(f"std values must be positive, not {self.std}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                             f"not {self.interpolation!r}")
        if self.max_pixel_value <= 0:
            raise InputError(f"max_pixel_value must be positive, not {self.max_pixel_value}")

    @property
    def num_channels(self) -> int:
        return CHANNEL_ORDERS[self.channels]

    @classmethod
    def imagenet(cls, size: int | tuple[int, int] = 224, channels: str = "RGB") -> "Preprocess":
        """torchvision's classification preset: Resize(size/0.875) + CenterCrop(size)."""
        return cls._preset(size, channels, ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((0.449,), (0.226,)),
                           crop_fraction=0.875)

    @classmethod
    def cifar(cls, size: int | tuple[int, int] = 32, channels: str = "RGB") -> "Preprocess":
        """CIFAR-10 statistics; images are resized so the shorter side equals the input."""
        return cls._preset(size, channels, ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
                           ((0.4809,), (0.2392,)), crop_fraction=1.0)

    @classmethod
    def _preset(cls, size: int | tuple[int, int], channels: str, rgb: tuple, gray: tuple,
                crop_fraction: float) -> "Preprocess":
        """A dataset's (mean, std) for RGB and for grayscale; BGR reverses the RGB ones."""
        h, w = (size, size) if isinstance(size, int) else size
        mean, std = gray if channels == "L" else rgb
        if channels == "BGR":
            mean, std = mean[::-1], std[::-1]
        return cls((h, w), int(min(h, w) / crop_fraction), mean, std, channels=channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocess":
        try:
            return cls(size=tuple(d["size"]), resize=d.get("resize"), mean=tuple(d["mean"]),
                       std=tuple(d["std"]), interpolation=d.get("interpolation", "bilinear"),
                       channels=d.get("channels", "RGB"),
                       max_pixel_value=float(d.get("max_pixel_value", 255.0)))
        except (KeyError, TypeError, ValueError) as e:
            raise InputError(f"invalid preprocess description {d!r}: {e}") from None


@dataclass(frozen=True)
class PreprocessOverrides:
    """Changes to a model's recorded preprocessing (None keeps the recorded value)."""

    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    interpolation: str | None = None
    channels: str | None = None
    max_pixel_value: float | None = None

    def __bool__(self) -> bool:
        return any(v is not None for v in asdict(self).values())

    def apply(self, base: Preprocess) -> Preprocess:
        changes = {k: v for k, v in asdict(self).items() if v is not None}
        missing = [k for k in ("mean", "std") if k not in changes]
        if "channels" in changes and changes["channels"] != base.channels and missing:
            if {changes["channels"], base.channels} != {"RGB", "BGR"}:
                raise InputError(f"changing channels from {base.channels} to {changes['channels']} needs "
                                 "mean and std for the new channels", fields=qualified(self, "mean", "std"))
            for key in missing:  # RGB <-> BGR: the recorded statistics, in the new order
                changes[key] = getattr(base, key)[::-1]
        try:
            return replace(base, **changes)
        except InputError as e:  # about a value given here: name the fields, so the CLI names the flags
            raise InputError(str(e), fields=qualified(self, *changes)) from None


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise InputError("Pillow is needed to read images; run: pip install Pillow") from None
    return Image


def is_image_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def _check_image_path(src: str | os.PathLike) -> None:
    """A regular file: opening a FIFO blocks until a writer comes, and a device never ends."""
    try:
        mode = os.stat(src).st_mode
    except FileNotFoundError:
        raise InputError(f"image {src} does not exist") from None
    except OSError as e:
        raise InputError(f"cannot read image {src} ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise InputError(f"{src} is a directory, not an image")
    if not stat.S_ISREG(mode):
        kind = "a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a device" if (
            stat.S_ISCHR(mode) or stat.S_ISBLK(mode)) else "a socket" if stat.S_ISSOCK(mode) else "a special file"
        raise InputError(f"image {src} is {kind}, not a regular file; give image files")


def open_image(src: ImageLike, *, max_pixels: int | None = None, draft: Preprocess | None = None):
    """Decode a path, bytes, PIL image or HWC uint8 array into a loaded PIL image.

    Files and bytes with more than `max_pixels` pixels (default: max_image_pixels()) are
    refused after reading the header, before decoding. With `draft` (opt-in), a JPEG much larger
    than that preprocessing's resize is decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling,
    PIL's `Image.draft`), never below the resize's size: several times faster, not exact."""
    Image = _pil()
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, np.ndarray):
        return _array_to_pil(src)
    if isinstance(src, (bytes, bytearray, memoryview)):
        fp, name = io.BytesIO(bytes(src)), "image bytes"
    elif isinstance(src, (str, os.PathLike)):
        _check_image_path(src)
        fp, name = src, str(src)
    else:
        raise InputError(f"cannot read an image from {type(src).__name__}; give a path, bytes, "
                         "a PIL image or an HxWxC uint8 array")
    cap = max_image_pixels() if max_pixels is None else int(max_pixels)
    if cap < 1:
        raise InputError(f"max_pixels must be a positive number of pixels, not {max_pixels}")
    img = None
    try:
        # PIL's DecompressionBombWarning (the cap below decides, in one line) and its warnings about damaged
        # metadata ("Corrupt EXIF data", two lines on stderr): the image decodes, or fails below in one line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(fp)  # reads the header only
            width, height = img.size
            if width * height > cap:
                raise InputError(_too_big(name, f"{width}x{height} = {width * height / 1e6:.0f} MP", cap))
            if draft is not None and img.format == "JPEG":
                img.draft(img.mode, _draft_size(width, height, draft))
            img.load()
    except InputError:
        _close(img)
        raise
    except Image.DecompressionBombError as e:  # PIL's own hard limit, below our cap when the cap was raised
        _close(img)
        raise InputError(_too_big(name, f"more than PIL's limit ({_first_line(e)})", cap)) from None
    except Image.UnidentifiedImageError:  # its message names the file object, e.g. <_io.BytesIO at 0x...>
        _close(img)
        raise InputError(f"{name} is not an image PIL can decode (unknown or unsupported format)") from None
    except Exception as e:  # PIL raises many types: OSError (truncated), SyntaxError, ValueError...
        _close(img)
        raise InputError(f"{name} is not an image PIL can decode ({type(e).__name__}: {_first_line(e)})") from None
    return img


def _draft_size(width: int, height: int, spec: Preprocess) -> tuple[int, int]:
    """The smallest decoded size the preprocessing's resize (else its crop) still scales down from."""
    if spec.resize is not None:
        return resized_size(width, height, int(spec.resize))
    return spec.size[1], spec.size[0]


def _too_big(name: str, size: str, cap: int) -> str:
    return (f"refusing to decode {name}: {size} is more than the {cap / 1e6:g} MP rexport decodes (a "
            f"decompression bomb, or a photo to downscale first); set {MAX_IMAGE_PIXELS_ENV} to allow more")


def _close(img) -> None:
    if img is not None:
        try:
            img.close()
        except Exception:  # closing is best effort; the error that brought us here matters
            pass


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _array_to_pil(a: np.ndarray):
    Image = _pil()
    if a.dtype != np.uint8:
        raise InputError(f"image arrays must be uint8 HxW or HxWxC (C = 1, 3 or 4), got dtype {a.dtype}; "
                         "pass already-preprocessed float tensors to run() instead")
    if a.size == 0:
        raise InputError(f"image arrays must not be empty, got shape {a.shape}")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        return Image.fromarray(np.ascontiguousarray(a), "L")
    if a.ndim == 3 and a.shape[2] in (3, 4):
        return Image.fromarray(np.ascontiguousarray(a), "RGB" if a.shape[2] == 3 else "RGBA")
    raise InputError(f"image arrays must be HxW or HxWxC with C = 1, 3 or 4, got shape {a.shape}")


def to_mode(img, channels: str):
    """Convert to the model's colour mode the way torchvision's ImageFolder loader does
    (`.convert("RGB")`, then `Grayscale()` for "L" models), so grayscale, RGBA, CMYK and
    palette images match training."""
    target = "L" if channels == "L" else "RGB"
    if img.mode == target:
        return img
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):  # 16/32-bit grayscale: scale to 8 bits, not clip
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        img = _pil().fromarray(np.clip(a * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
        if img.mode == target:
            return img
    try:
        with warnings.catch_warnings():  # "Palette images with Transparency..." is expected here
            warnings.simplefilter("ignore")
            rgb = img if img.mode in ("RGB", "L") else img.convert("RGB")  # the loader, then Grayscale
            return rgb.convert(target)
    except ValueError as e:  # e.g. "conversion from La to RGB not supported"
        raise InputError(f"cannot convert a {img.mode} image to {target}: {e}") from None


def resized_size(width: int, height: int, shorter: int) -> tuple[int, int]:
    """torchvision's Resize(int) rule: the shorter side becomes `shorter`, the longer one is
    scaled and truncated. Returns (width, height)."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = shorter, int(shorter * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def resize_and_crop(img, spec: Preprocess, *, max_pixels: int | None = None):
    """Resize(shorter side) + CenterCrop(size) on a PIL image, as torchvision does.

    With `max_pixels`, a resized image above it is refused: a thin image file (1 x 2,000,000 pixels,
    4 kB as a PNG) would otherwise become a 256 x 512,000,000 one (preprocess_one passes the cap for
    files and bytes)."""
    Image = _pil()
    if spec.resize is not None:
        size = resized_size(img.width, img.height, int(spec.resize))
        if max_pixels is not None and size[0] * size[1] > max(max_pixels, spec.size[0] * spec.size[1]):
            raise InputError(f"refusing to resize a {img.width}x{img.height} image to {size[0]}x{size[1]} "
                             f"({size[0] * size[1] / 1e6:.0f} MP, more than the {max_pixels / 1e6:g} MP rexport "
                             "decodes): "
                             f"its aspect ratio is too extreme; crop it first, or set {MAX_IMAGE_PIXELS_ENV}")
        if size != img.size:
            img = img.resize(size, INTERPOLATIONS[spec.interpolation])
    crop_h, crop_w = spec.size
    if crop_w > img.width or crop_h > img.height:  # CenterCrop pads with zeros first
        left, top = (crop_w - img.width) // 2 if crop_w > img.width else 0, \
            (crop_h - img.height) // 2 if crop_h > img.height else 0
        canvas = Image.new(img.mode, (max(crop_w, img.width), max(crop_h, img.height)), 0)
        canvas.paste(img, (left, top))
        img = canvas
    if img.size == (crop_w, crop_h):
        return img
    top = int(round((img.height - crop_h) / 2.0))
    left = int(round((img.width - crop_w) / 2.0))
    return img.crop((left, top, left + crop_w, top + crop_h))


def normalize(pixels: np.ndarray, spec: Preprocess) -> np.ndarray:
    """uint8 HWC (or HW) -> float32 CHW: divide by max_pixel_value, then (x - mean) / std."""
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    if spec.channels == "BGR":
        pixels = pixels[:, :, ::-1]
    mean, std = np.asarray(spec.mean, np.float32), np.asarray(spec.std, np.float32)
    channels = np.broadcast_shapes(pixels.shape[2:], mean.shape, std.shape)[0]
    x = np.empty((channels, *pixels.shape[:2]), np.float32)
    x[...] = pixels.transpose(2, 0, 1)  # the same float32 operations as before, in place: 6x faster
    x /= np.float32(spec.max_pixel_value)
    x -= mean[:, None, None]
    x /= std[:, None, None]
    return x


def preprocess_one(src: ImageLike, spec: Preprocess, *, max_pixels: int | None = None,
                   draft: bool = False) -> np.ndarray:
    """One image -> float32 CHW array (max_pixels, draft: see open_image)."""
    img = open_image(src, max_pixels=max_pixels, draft=spec if draft else None)
    decoded = isinstance(src, np.ndarray) or img is src  # arrays and PIL images: already decoded, not capped
    cap = None if decoded else max_image_pixels() if max_pixels is None else int(max_pixels)
    try:
        out = resize_and_crop(to_mode(img, spec.channels), spec, max_pixels=cap)
        return normalize(np.asarray(out, dtype=np.uint8), spec)
    finally:
        if img is not src:  # ours: PIL keeps the file of a multi-frame image (GIF, TIFF) open until closed
            _close(img)


def _as_list(images: Any) -> list:
    """One image or several: a 4-D array is N x H x W x C; a single image or an unsupported
    object becomes a list of one (open_image then says what it cannot read)."""
    if isinstance(images, np.ndarray):
        return list(images) if images.ndim == 4 else [images]
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(images, "mode"):
        return [images]
    return list(images) if isinstance(images, Iterable) else [images]


def preprocess(images: ImageLike | Sequence[ImageLike] | Iterable[ImageLike], spec: Preprocess, *,
               max_pixels: int | None = None, draft: bool = False) -> np.ndarray:
    """Images -> float32 NCHW batch. A single image gives a batch of one (max_pixels, draft: see
    open_image; draft is off by default: the torchvision contract is exact)."""
    batch = [preprocess_one(img, spec, max_pixels=max_pixels, draft=draft) for img in _as_list(images)]
    if not batch:
        raise InputError("no images given")
    return np.stack(batch)
