"""Fuzz the array loaders: calibration/validation data from .npy and .npz
(rexport.runtime.data.load_dataset: generated headers with any dtype, shape and
order, any values, labels of any type, damaged files), the activation statistics cache
(calibration.stats._load, which must never fail a calibration) and the TensorRT calibration
cache text (calibration.cache.read_calibration_cache). Property and settings: fuzz_support, conftest."""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
import pytest
from fuzz_support import Seeds, fuzz_settings, mutated, mutations
from hypothesis import given
from hypothesis import strategies as st

from rexport.runtime.data import Dataset, load_dataset
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.preprocess import Preprocess

LABELS = ("cat", "dog", "fox", "owl", "yak")
INFO = ModelInfo(num_classes=5, input_shape=(3, 8, 8), preprocess=Preprocess.cifar(8), labels=LABELS)
SAMPLES = st.sampled_from((None, 1, 3, 512))


def check_data(data, samples) -> None:
    assert isinstance(data, Dataset)
    x = data.inputs
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1:] == INFO.input_shape, (x.dtype, x.shape)
    assert 1 <= len(x) <= (samples or len(x))
    assert np.isfinite(x).all()
    if data.labels is not None:
        y = data.labels
        assert y.dtype == np.int64 and y.shape == (len(x),), (y.dtype, y.shape)
        assert ((0 <= y) & (y < INFO.num_classes)).all()


def load_data(ws, path, samples) -> None:
    ws.attempt(lambda: load_dataset(path, INFO, samples=samples), close=lambda d: check_data(d, samples))


@pytest.fixture(scope="module")
def seeds(ws) -> Seeds:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3, 8, 8)).astype(np.float32)
    out = Seeds()
    buf = io.BytesIO()
    np.save(buf, x)
    out["x.npy"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez(buf, input=x, labels=np.arange(6) % 5)
    out["xy.npz"] = buf.getvalue()
    buf = io.BytesIO()
    np.savez_compressed(buf, input=(x * 40 + 128).clip(0, 255).astype(np.uint8), labels=np.array(LABELS + ("cat",)))
    out["pixels.npz"] = buf.getvalue()
    return out


def test_seeds_load(ws, seeds):
    for name, blob in seeds.items():
        path = ws.seeds / name
        path.write_bytes(blob)
        check_data(load_dataset(path, INFO, samples=4), 4)


@fuzz_settings(80)
@given(data=st.data(), kind=st.sampled_from(("x.npy", "xy.npz", "pixels.npz")), samples=SAMPLES,
       suffix=st.sampled_from((".npy", ".npz")))
def test_mutated_arrays(ws, seeds, data, kind, samples, suffix):
    mutation = data.draw(mutations(len(seeds[kind]), hot=1024), label="mutation")
    with ws.case() as d:
        path = d / f"data{suffix}"
        path.write_bytes(mutation.apply(seeds[kind]))
        load_data(ws, path, samples)


# -- generated .npy headers ---------------------------------------------------------------------

DESCRS = ("<f4", "<f8", "<f2", ">f4", ">f8", "|u1", "<i8", "|i1", "<u2", "|b1", "<c8", "<U3", "|S2", "|O", "<M8[s]",
          "<m8[s]", "<f16", "|V4", [("a", "<f4")], [("a", "|O")], "zz", "", 3)
FILLS = ("normal", "pixels", "zeros", "nan", "inf", "huge", "constant")


def _values(dtype: np.dtype, shape: tuple, fill: str, seed: int) -> bytes:
    """`shape` values of `dtype` (as bytes), filled as `fill` says."""
    n = math.prod(shape)
    rng = np.random.default_rng(seed)
    base = {"normal": rng.standard_normal(n), "pixels": rng.integers(0, 256, n).astype(np.float64),
            "zeros": np.zeros(n), "nan": np.where(rng.random(n) < 0.1, np.nan, 0.5),
            "inf": np.where(rng.random(n) < 0.1, np.inf, -0.5), "huge": np.full(n, 1e300),
            "constant": np.full(n, 7.0)}[fill]
    if dtype.kind in "fc":
        with np.errstate(all="ignore"):
            return base.astype(dtype).tobytes()
    if dtype.kind in "iub":
        with np.errstate(all="ignore"):
            return np.nan_to_num(base, posinf=1, neginf=-1).astype(dtype).tobytes()
    return rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).tobytes()


NPY_PARTS = ("descr", "shape", "fortran", "version", "text", "size", "values")


@st.composite
def npy_file(draw) -> bytes:
    """A .npy whose header is generated: a valid file (float or uint8 pixels, N x 3 x 8 x 8) with 0..3
    of its parts broken: a dtype, shape or order of any kind, a version numpy has or not, header text
    damaged, data longer or shorter than the header says, values NaN / Inf / beyond float32."""
    broken = draw(st.sets(st.sampled_from(NPY_PARTS), max_size=3))
    descr = draw(st.sampled_from(DESCRS)) if "descr" in broken else draw(st.sampled_from(("<f4", "|u1", ">f4", "<f2")))
    shape = draw(st.one_of(st.tuples(st.integers(0, 6), st.integers(1, 4), st.integers(7, 9), st.just(8)),
                           st.lists(st.integers(-1, 9), max_size=5).map(tuple),
                           st.sampled_from(((2**40, 3, 8, 8), (2**62, 2**62, 1, 1), (1.5, 3, 8, 8), "3,8,8")))) \
        if "shape" in broken else (draw(st.integers(1, 6)), 3, 8, 8)
    fortran = draw(st.sampled_from((True, "yes", None, 1))) if "fortran" in broken else False
    text = "{'descr': %r, 'fortran_order': %r, 'shape': %r, }" % (descr, fortran, shape)
    if "text" in broken:
        text = draw(mutated(text.encode(), max_ops=2)).decode("latin-1")
    version = draw(st.sampled_from(((2, 0), (3, 0), (0, 9), (1, 1)))) if "version" in broken else (1, 0)
    prefix = 10 if version[0] < 2 else 12
    header = text.encode("latin-1") + b" " * ((-(prefix + len(text) + 1)) % 64) + b"\n"
    length = len(header).to_bytes(2 if prefix == 10 else 4, "little")
    try:
        dtype = np.dtype(descr if not isinstance(descr, list) else [tuple(f) for f in descr])
        count = math.prod(shape) if all(isinstance(s, int) and 0 <= s for s in shape) else -1
    except Exception:  # not a dtype numpy has, or a shape that is not one
        dtype, count = None, -1
    if dtype is not None and 0 <= count <= 4096 and not dtype.hasobject:
        fill = draw(st.sampled_from(FILLS)) if "values" in broken else draw(st.sampled_from(("normal", "pixels")))
        body = _values(dtype, shape, fill, draw(st.integers(0, 3)))
        cut = draw(st.sampled_from((1, 7, -3, len(body)))) if "size" in broken else 0
        body = body[:len(body) - cut] if cut >= 0 else body + b"\x00" * -cut
    else:
        body = draw(st.binary(max_size=64))
    return b"\x93NUMPY" + bytes(version) + length + header + body


@fuzz_settings(150)
@given(blob=npy_file(), samples=SAMPLES)
def test_generated_npy(ws, blob, samples):
    with ws.case() as d:
        path = d / "data.npy"
        path.write_bytes(blob)
        load_data(ws, path, samples)


# -- generated .npz ------------------------------------------------------------------------------

@st.composite
def input_arrays(draw) -> np.ndarray:
    dtype = np.dtype(draw(st.sampled_from(("<f4", "|u1")) |
                          st.sampled_from(("<f4", "<f8", "<f2", ">f4", "|u1", "<i8", "|b1", "<c8", "<U3", "|O"))))
    shape = draw(st.tuples(st.integers(1, 5), st.just(3), st.just(8), st.just(8))
                 | st.one_of(st.tuples(st.integers(0, 5), st.just(3), st.just(8), st.just(8)),
                             st.lists(st.integers(0, 4), max_size=4).map(tuple)))
    if dtype.hasobject:
        a = np.empty(shape, dtype)
        a.fill(draw(st.sampled_from((None, 1.5, "x"))))
        return a
    raw = _values(dtype, shape, draw(st.sampled_from(FILLS)), draw(st.integers(0, 3)))
    return np.frombuffer(raw, dtype).reshape(shape) if dtype.kind not in "U" else \
        np.full(shape, draw(st.sampled_from(("a", "1.5"))), dtype)


@st.composite
def label_arrays(draw, n: int) -> np.ndarray:
    kind = draw(st.sampled_from(("int", "float", "names")) |
                st.sampled_from(("int", "float", "names", "bool", "2d", "count", "object", "complex")))
    rng = np.random.default_rng(draw(st.integers(0, 3)))
    if kind == "int":
        return rng.integers(draw(st.sampled_from((0, -1))), draw(st.sampled_from((5, 6, 2**40))), n)
    if kind == "float":
        return rng.integers(0, 5, n) + draw(st.sampled_from((0.0, 0.5, np.nan, np.inf)))
    if kind == "names":
        return np.array([draw(st.sampled_from(LABELS + ("wolf", ""))) for _ in range(n)], dtype=str)
    if kind == "bool":
        return rng.random(n) < 0.5
    if kind == "2d":
        return rng.integers(0, 5, (n, 2))
    if kind == "count":
        return rng.integers(0, 5, max(0, n + draw(st.sampled_from((-1, 1)))))
    if kind == "object":
        return np.array([1] * n, dtype=object)
    return (rng.integers(0, 5, n) + 0j).astype(np.complex64)


@st.composite
def npz_file(draw) -> bytes:
    inputs = draw(input_arrays())
    arrays = {draw(st.sampled_from(("input", "input", "input", "x", "labels.npy"))): inputs}
    if draw(st.booleans()):
        arrays["labels"] = draw(label_arrays(len(inputs) if inputs.ndim else 1))
    if draw(st.integers(0, 4)) == 0:
        arrays[draw(st.sampled_from(("extra", "input2")))] = draw(input_arrays())
    buf = io.BytesIO()
    (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **arrays)
    blob = buf.getvalue()
    if draw(st.integers(0, 5)) == 0:  # a member that is not an array, or an archive of other things
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(draw(st.sampled_from(("input.npy", "labels.npy", "readme.txt", "../input.npy"))),
                       draw(st.binary(max_size=64)))
        blob = buf.getvalue()
    return blob


@fuzz_settings(120)
@given(blob=npz_file(), samples=SAMPLES)
def test_generated_npz(ws, blob, samples):
    with ws.case() as d:
        path = d / "data.npz"
        path.write_bytes(blob)
        load_data(ws, path, samples)


# -- caches ----------------------------------------------------------------------------------------

TENSORS = ["input", "/conv1/Conv_output_0", "logits"]


@st.composite
def stats_entry(draw) -> bytes:
    from rexport.calibration.stats import BINS

    n = len(TENSORS)
    arrays = {"names": np.array(TENSORS), "min": np.zeros(n), "max": np.ones(n),
              "hist": np.ones((n, BINS), np.int64)}
    for key in draw(st.lists(st.sampled_from(sorted(arrays)), max_size=2, unique=True)):
        arrays[key] = draw(st.sampled_from((
            np.array([], np.float64), np.zeros((n, 3)), np.array(["a"] * n), np.zeros(n, np.complex64),
            np.ones((n, BINS), np.float32), np.array([None] * n, dtype=object), np.array(TENSORS[:2]),
            np.full(n, np.nan), np.zeros((n + 1, BINS), np.int64))))
    if draw(st.integers(0, 4)) == 0:
        del arrays[draw(st.sampled_from(sorted(arrays)))]
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    blob = buf.getvalue()
    if draw(st.booleans()):
        blob = draw(mutations(len(blob), hot=2048)).apply(blob)
    return blob


@fuzz_settings(80)
@given(blob=stats_entry())
def test_stats_cache_entry(ws, blob):
    """A statistics cache entry is an optimisation: whatever it holds, _load gives stats or None
    (collect again), never an error."""
    from rexport.calibration.stats import BINS, TensorStats, _load

    def check(stats) -> None:
        if stats is not None:
            assert list(stats) == TENSORS
            assert all(isinstance(s, TensorStats) and s.hist.shape == (BINS,) for s in stats.values())

    with ws.case() as d:
        path = d / "entry.npz"
        path.write_bytes(blob)
        outcome = ws.attempt(lambda: _load(path, TENSORS), close=check)
        assert outcome.ok, f"a damaged cache entry failed the calibration: {outcome.error}"


@st.composite
def calibration_cache_text(draw) -> bytes:
    lines = [draw(st.sampled_from(("TRT-100300-EntropyCalibration2", "TRT-8601-MinMaxCalibration"))
                  | st.sampled_from(("TRT--x", "", "trt-1-a", "TRT-1-\u00e9")))]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(("input", "/layer1/Relu_output_0", "", "a:b", " ")))
        value = draw(st.sampled_from(("3c010a14", "3d8a3b5c")) |
                     st.sampled_from(("7f800000", "7fc00000", "0", "zz", "3c010a1400", "")))
        lines.append(draw(st.sampled_from((f"{name}: {value}", f"{name}: {value}", f"{name}:{value}", name, value))))
    text = "\n".join(lines).encode()
    if draw(st.integers(0, 4)) == 0:
        text = draw(mutated(text, max_ops=2))
    return text


@fuzz_settings(100)
@given(blob=calibration_cache_text())
def test_calibration_cache_text(ws, blob):
    from rexport.calibration.cache import read_calibration_cache

    def check(result) -> None:
        header, scales = result
        assert isinstance(header, str) and all(isinstance(k, str) and isinstance(v, float) for k, v in scales.items())
        bad = {k: v for k, v in scales.items() if not (math.isfinite(v) and v >= 0)}
        assert not bad, f"scales no TensorRT engine can use were accepted: {bad}"

    with ws.case() as d:
        path = d / "calib.cache"
        path.write_bytes(blob)
        ws.attempt(lambda: read_calibration_cache(path), close=check)
