"""Datasets: images or arrays -> preprocessed NCHW float32 batches, for everyone who reads data:
calibration, validation, parity images, bundle references, TensorRT validation. It lives in the
runtime (numpy and Pillow only), so the runtime never reaches back into calibration for it.

Sources
- a directory of images: ImageNet-style class subfolders (labelled) or flat (unlabelled);
- `.npy` or `.npz` (the array under the model's input name, or its only array; optional
  `labels`): N x C x H x W, either float (preprocessed: the values the model takes) or uint8
  (pixels at the model's input size, in its channel order, scaled and normalised here as its
  preprocessing says); labels are integer class indices (integer-valued floats too) or the
  model's label names. Anything else (other integer types, booleans, complex numbers, strings,
  records, Python objects) is refused with one line; pickled arrays are never loaded. Only the
  samples used are read: a .npy is memory-mapped, an .npz member read one sample at a time;
- `demo`, `demo:train`, `demo:test`: the embedded digits dataset (train by default).

Images go through `rexport.runtime.preprocess`, the same code the runtime uses, with the
preprocessing recorded in the model (overridable). Sampling is seeded and class-balanced when
classes are known. Unreadable images are skipped and counted; no usable sample is an error.
"""

from __future__ import annotations

import hashlib
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport.console import log, progress
from rexport.errors import InputError, one_line
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.preprocess import Preprocess, is_image_file, preprocess_one


@dataclass
class Dataset:
    inputs: np.ndarray  # N x C x H x W float32, preprocessed
    labels: np.ndarray | None  # N class indices, when the source has them
    source: str
    skipped: list[str] = field(default_factory=list)  # unreadable files
    warnings: list[str] = field(default_factory=list)

    @property
    def sha256(self) -> str:
        """Identifies exactly these samples (for caches and provenance)."""
        h = hashlib.sha256(np.ascontiguousarray(self.inputs).tobytes())
        if self.labels is not None:
            h.update(np.ascontiguousarray(self.labels, dtype=np.int64).tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.inputs)

    def require_labels(self, why: str) -> np.ndarray:
        if self.labels is None:
            raise InputError(f"{why} needs labelled data, but {self.source} has none: use class subfolders "
                             "named after the model's labels (or 0..N-1), an .npz with a `labels` array, "
                             "or an agreement floor instead of an accuracy budget")
        return self.labels

    def split(self, count: int, seed: int = 0, keep: int | None = None) -> tuple[Dataset, Dataset]:
        """(at most `keep` of the rest, `count` samples held out), the held-out ones seeded and class-balanced."""
        labels = None if self.labels is None else self.labels.tolist()
        held = set(_pick(len(self), labels, count, seed + 1))
        rest = [i for i in range(len(self)) if i not in held]
        rest = [rest[j] for j in sorted(_pick(len(rest), labels and [labels[i] for i in rest], keep, seed + 2))]
        held_idx = sorted(held)

        def part(idx: list[int], source: str) -> Dataset:
            return Dataset(self.inputs[idx], None if self.labels is None else self.labels[idx], source,
                                   self.skipped, self.warnings)
        return part(rest, self.source), part(held_idx, f"{self.source}, held out from calibration")

    def describe(self) -> str:
        text = f"{len(self)} samples from {self.source}" + (" (labelled)" if self.labels is not None else "")
        if self.skipped:
            text += f"; skipped {len(self.skipped)} unreadable image(s), e.g. {self.skipped[0]}"
        return text


def load_dataset(source: str | os.PathLike, info: ModelInfo, *, samples: int | None = 512, seed: int = 0,
              preprocess: Preprocess | None = None) -> Dataset:
    """Read `source` for a model described by `info`; at most `samples` samples (None: all)."""
    if samples is not None and samples < 1:
        raise InputError(f"the number of samples must be at least 1, not {samples}")
    pre = preprocess or info.preprocess
    text = str(source)
    if text == "demo" or text.startswith("demo:"):
        data = _demo(text, info, pre)
    else:
        path = Path(source)
        if not path.exists():
            raise InputError(f"data source {path} does not exist (give an image folder, .npy, .npz or 'demo')")
        if path.is_dir():
            data = _folder(path, info, pre, samples, seed)
        elif path.suffix.lower() in (".npy", ".npz"):
            data = _arrays(path, info, pre, samples, seed)
        else:
            raise InputError(f"data source {path} is not a folder, .npy or .npz file")
    data = _subsample(data, samples, seed)
    _check(data, info)
    for w in data.warnings:
        log.warning("warning: %s", w)
    return data


def _demo(text: str, info: ModelInfo, pre: Preprocess) -> Dataset:
    from rexport.demo import data as demo

    split = text.partition(":")[2] or "train"
    try:
        part = demo.split(split)
    except ValueError:
        raise InputError(f"unknown demo split {split!r}; use demo:train or demo:test") from None
    if info.num_classes != len(demo.LABELS):
        raise InputError(f"the demo dataset has 10 classes but the model has {info.num_classes}")
    return Dataset(demo.to_batch(part.images, pre), part.labels.copy(), f"demo:{split}")


def _class_index(names: list[str], info: ModelInfo) -> dict[str, int] | None:
    """Map class folder names to model class indices: by label, by number, or sorted order."""
    if info.labels and all(n in info.labels for n in names):
        return {n: info.labels.index(n) for n in names}
    if all(n.isdigit() and int(n) < info.num_classes for n in names):
        return {n: int(n) for n in names}
    if len(names) == info.num_classes:
        log.info("class folders do not match the model's labels; using sorted folder order (ImageFolder)")
        return {n: i for i, n in enumerate(sorted(names))}
    return None


def _folder(root: Path, info: ModelInfo, pre: Preprocess, samples: int | None, seed: int) -> Dataset:
    files = sorted(p for p in root.rglob("*") if p.is_file() and is_image_file(p))
    if not files:
        raise InputError(f"{root} holds no images (.jpg, .png, .bmp, ...); give a folder of images")
    classes = sorted({p.relative_to(root).parts[0] for p in files if len(p.relative_to(root).parts) > 1})
    index = _class_index(classes, info) if classes and all(len(p.relative_to(root).parts) > 1 for p in files) \
        else None
    if classes and index is None:
        log.warning("warning: %d class folders in %s do not map onto the model's %d classes; "
                    "accuracy cannot be measured on it", len(classes), root, info.num_classes)
    labels = [index[p.relative_to(root).parts[0]] for p in files] if index else None
    chosen = _pick(len(files), labels, samples, seed)
    arrays, kept, skipped = [], [], []
    for i in progress(chosen, desc=f"reading {root}", unit="images"):
        try:
            arrays.append(preprocess_one(files[i], pre))
            kept.append(i)
        except InputError:
            skipped.append(str(files[i]))
    if not arrays:
        raise InputError(f"none of the {len(chosen)} images read from {root} could be decoded "
                         f"(e.g. {skipped[0]}); check the files")
    return Dataset(np.stack(arrays), np.array([labels[i] for i in kept]) if labels else None,
                           str(root), skipped)


NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a member first; an empty archive
# SyntaxError, TokenError: numpy parses a damaged .npy header as Python source (ast, tokenize)
READ_ERRORS = (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
               SyntaxError, tokenize.TokenError)
KINDS = {"b": "booleans", "c": "complex numbers", "U": "strings", "S": "byte strings", "V": "records",
         "M": "dates", "m": "time spans", "O": "Python objects"}


def _arrays(path: Path, info: ModelInfo, pre: Preprocess, samples: int | None, seed: int) -> Dataset:
    """A .npy or .npz (told apart by content, not name), reading only the samples used."""
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
        if magic.startswith(ZIP_MAGICS):
            with zipfile.ZipFile(path) as z:
                arrays = {m[:-4]: m for m in z.namelist() if m.endswith(".npy")}
                keys = [k for k in arrays if k != "labels"]
                key = info.input_name if info.input_name in keys else keys[0] if len(keys) == 1 else None
                if key is None:
                    raise InputError(f"{path} holds {', '.join(keys) or 'no arrays'}; store the inputs under "
                                     f"the model's input name {info.input_name!r}")
                inputs = _Member(z, arrays[key], f"{path} ({key})")
                labels = _Member(z, arrays["labels"], f"{path} (labels)") if "labels" in arrays else None
                return _select(str(path), inputs.shape, inputs.dtype, inputs.rows, labels, info, pre, samples, seed)
        if magic == NPY_MAGIC:
            with open(path, "rb") as f:
                shape, _, dtype = _header(f, str(path))  # refuses Python objects before numpy sees the data
                offset, size = f.tell(), os.fstat(f.fileno()).st_size
            if any(d < 0 for d in shape) or math.prod(shape) * dtype.itemsize > size - offset:
                raise InputError(f"cannot read arrays from {path}: it is truncated or damaged (its header describes "
                                 f"{math.prod(shape)} values of {dtype} in {'x'.join(map(str, shape)) or 'a scalar'}, "
                                 f"the file holds {size - offset} bytes of data)")
            mapped = np.load(path, mmap_mode="r", allow_pickle=False)
            return _select(str(path), mapped.shape, mapped.dtype, lambda idx: np.array(mapped[idx]), None, info,
                           pre, samples, seed)
        raise InputError(f"{path} is not a NumPy .npy or .npz file (it has neither header)")
    except READ_ERRORS as e:
        if isinstance(e, InputError):
            raise
        raise InputError(f"cannot read arrays from {path}: {one_line(e)}") from None


def _header(f, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of the .npy at `f`'s position; refuses Python objects."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        raise InputError(f"{where}: NumPy file format {version[0]}.{version[1]} is not supported; save the "
                         "array with numpy.save / numpy.savez")
    if dtype.hasobject:
        raise InputError(f"{where} holds Python objects (pickled data), which rexport never loads; store plain "
                         "numeric arrays")
    return shape, fortran, dtype


class _Member:
    """An array inside an .npz, read only as far as needed: `rows(idx)` holds just those samples."""

    def __init__(self, z: zipfile.ZipFile, member: str, where: str):
        self.z, self.member, self.where = z, member, where
        with z.open(member) as f:
            self.shape, self.fortran, self.dtype = _header(f, where)
            self.offset = f.tell()
        self.nbytes = math.prod(self.shape) * self.dtype.itemsize
        if z.getinfo(member).file_size != self.offset + self.nbytes:
            raise InputError(f"{where} is truncated or damaged: its header describes {self.offset + self.nbytes} "
                             f"bytes, the archive holds {z.getinfo(member).file_size}")

    def read(self) -> np.ndarray:
        with self.z.open(self.member) as f:
            return np.lib.format.read_array(f, allow_pickle=False)

    def rows(self, idx: list[int]) -> np.ndarray:
        if self.fortran or len(self.shape) < 1:  # samples are not contiguous: the whole array
            return self.read()[idx]
        row = self.nbytes // self.shape[0] if self.shape[0] else 0
        out = np.empty((len(idx), *self.shape[1:]), self.dtype)
        with self.z.open(self.member) as f:
            position = 0
            for j in np.argsort(idx, kind="stable").tolist():  # forward only: a deflated member cannot seek back
                start = self.offset + idx[j] * row
                while position < start:  # skip in small reads (ZipExtFile.seek reads up to 16 MB at once)
                    skipped = len(f.read(min(start - position, 1 << 18)))
                    if not skipped:
                        break
                    position += skipped
                block = f.read(row)
                position += len(block)
                if len(block) != row:
                    raise InputError(f"{self.where} is truncated (sample {idx[j]} is cut short)")
                out[j] = np.frombuffer(block, self.dtype).reshape(self.shape[1:])
        return out


def _select(where: str, shape: tuple[int, ...], dtype: np.dtype, rows, labels: _Member | None, info: ModelInfo,
            pre: Preprocess, samples: int | None, seed: int) -> Dataset:
    """Check the inputs' shape and type and the labels, then read the chosen samples only."""
    if dtype.kind != "f" and dtype != np.uint8:
        what = KINDS.get(dtype.kind, f"{dtype} integers" if dtype.kind in "iu" else str(dtype))
        raise InputError(f"{where}: the inputs are {what}; rexport takes float arrays (preprocessed, the values the "
                         "model takes) or uint8 pixels (normalised here with the model's preprocessing)")
    if len(shape) != 4:
        raise InputError(f"{where}: expected N x C x H x W arrays, got shape {tuple(shape)}")
    if tuple(shape[1:]) != info.input_shape:
        raise InputError(f"{where} has samples of shape {'x'.join(map(str, shape[1:]))} but the model "
                         f"takes {'x'.join(map(str, info.input_shape))}; preprocess to the model's input size")
    n = shape[0]
    y = None if labels is None else _labels(labels, n, where, info)
    chosen = _pick(n, None if y is None else y.tolist(), samples, seed)
    x = rows(chosen)
    if dtype == np.uint8:  # pixels, in the model's channel order, at its input size
        x = x.astype(np.float32) / np.float32(pre.max_pixel_value)
        x = (x - np.asarray(pre.mean, np.float32)[:, None, None]) / np.asarray(pre.std, np.float32)[:, None, None]
    else:
        with np.errstate(over="ignore", invalid="ignore"):
            wide = x
            x = x.astype(np.float32)
        beyond = np.isinf(x) & np.isfinite(wide)
        if beyond.any():
            raise InputError(f"{where} holds values beyond the float32 range (e.g. {wide[beyond].flat[0]:g}); "
                             "the model takes float32 inputs: check the preprocessing")
    return Dataset(np.ascontiguousarray(x), None if y is None else y[chosen], where)


def _labels(member: _Member, n: int, where: str, info: ModelInfo) -> np.ndarray:
    """Class indices from an .npz's `labels`: integers, integer-valued floats, or label names."""
    if len(member.shape) != 1:
        raise InputError(f"{where}: labels must be one class index per input, not an array of shape "
                         f"{tuple(member.shape)}")
    if member.shape[0] != n:
        raise InputError(f"{where}: {member.shape[0]} labels for {n} inputs")
    kind = member.dtype.kind
    if kind not in "iufUS":
        raise InputError(f"{where}: the labels are {KINDS.get(kind, str(member.dtype))}; store class indices "
                         f"0..{info.num_classes - 1} (integers) or the model's label names")
    labels = member.read()
    if kind in "US":
        names = labels.astype(str)
        if not info.labels:
            raise InputError(f"{where}: the labels are names (e.g. {names[0]!r}) but the model has no label names; "
                             f"store class indices 0..{info.num_classes - 1}")
        unknown = sorted(set(names.tolist()) - set(info.labels))
        if unknown:
            raise InputError(f"{where}: label {unknown[0]!r} is not one of the model's labels "
                             f"({', '.join(info.labels[:5])}{', ...' if len(info.labels) > 5 else ''})")
        index = {name: i for i, name in enumerate(info.labels)}
        return np.array([index[name] for name in names.tolist()], np.int64)
    if kind == "f":
        whole = np.isfinite(labels) & (labels == np.floor(labels))
        if not whole.all():
            raise InputError(f"{where}: labels must be class indices, but some are not whole numbers "
                             f"(e.g. {labels[~whole][0]:g} for sample {int(np.argmin(whole))})")
    if len(labels) and (labels.min() < 0 or labels.max() >= info.num_classes):
        raise InputError(f"{where} has labels outside 0..{info.num_classes - 1}")
    return labels.astype(np.int64)


def _pick(n: int, labels: list[int] | None, samples: int | None, seed: int) -> list[int]:
    """Indices of the samples to use: seeded, and balanced across classes when labelled."""
    rng = np.random.default_rng(seed)
    if samples is None or samples >= n:
        return list(range(n))
    if labels is None:
        return sorted(rng.choice(n, samples, replace=False).tolist())
    by_class: dict[int, list[int]] = {}
    for i in rng.permutation(n).tolist():
        by_class.setdefault(labels[i], []).append(i)
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    while len(chosen) < samples:  # round robin over classes
        for q in queues:
            if q and len(chosen) < samples:
                chosen.append(q.pop())
    return sorted(chosen)


def _subsample(data: Dataset, samples: int | None, seed: int) -> Dataset:
    if samples is None or len(data) <= samples:
        return data
    idx = _pick(len(data), None if data.labels is None else data.labels.tolist(), samples, seed)
    return Dataset(data.inputs[idx], None if data.labels is None else data.labels[idx], data.source,
                           data.skipped, data.warnings)


def _check(data: Dataset, info: ModelInfo) -> None:
    x = data.inputs
    if len(x) == 0:
        raise InputError(f"{data.source} holds no samples")
    if tuple(x.shape[1:]) != info.input_shape:
        raise InputError(f"{data.source} has samples of shape {'x'.join(map(str, x.shape[1:]))} but the model "
                         f"takes {'x'.join(map(str, info.input_shape))}; preprocess to the model's input size")
    bad = ~np.isfinite(x)
    if bad.any():
        first = int(np.argwhere(bad.reshape(len(x), -1).any(1))[0][0])
        raise InputError(f"{data.source} contains NaN or Inf values (first in sample {first}); "
                         "remove or fix those samples")
    if data.labels is not None and (data.labels.min() < 0 or data.labels.max() >= info.num_classes):
        raise InputError(f"{data.source} has labels outside 0..{info.num_classes - 1}")
    lo, hi, std = float(x.min()), float(x.max()), float(x.std(dtype=np.float64))  # float32 squares overflow
    if hi == 0 and lo == 0:
        data.warnings.append(f"{data.source}: every input value is zero")
    elif std < 1e-6:
        data.warnings.append(f"{data.source}: inputs are constant ({lo:g})")
    elif lo >= 0 and hi > 2.5:
        data.warnings.append(f"{data.source}: inputs range {lo:g}..{hi:g}, which looks unnormalised (0..255?); "
                             "normalised inputs usually lie around -3..3: check mean, std and max_pixel_value")
