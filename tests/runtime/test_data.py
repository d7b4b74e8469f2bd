"""Calibration data sources, sampling, and the errors and warnings for bad data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from rexport.runtime.data import load_dataset
from rexport.errors import InputError
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.preprocess import Preprocess

INFO = ModelInfo(num_classes=3, input_shape=(3, 32, 32), preprocess=Preprocess.cifar(32), labels=("cat", "dog", "emu"))


def make_images(root, per_class: dict[str, int], size=(40, 36)):
    rng = np.random.default_rng(0)
    for cls, n in per_class.items():
        folder = root / cls if cls else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return root


def test_class_folders_named_after_labels(tmp_path):
    root = make_images(tmp_path / "data", {"emu": 2, "cat": 3})
    data = load_dataset(root, INFO, samples=None)
    assert data.inputs.shape == (5, 3, 32, 32) and data.inputs.dtype == np.float32
    assert sorted(data.labels.tolist()) == [0, 0, 0, 2, 2]  # cat = 0, emu = 2: the model's label order


def test_numbered_folders_and_sorted_order(tmp_path):
    data = load_dataset(make_images(tmp_path / "n", {"0": 1, "2": 1}), INFO, samples=None)
    assert sorted(data.labels.tolist()) == [0, 2]
    unnamed = ModelInfo(num_classes=3, input_shape=(3, 32, 32), preprocess=Preprocess.cifar(32))
    data = load_dataset(make_images(tmp_path / "s", {"b": 1, "a": 1, "c": 1}), unnamed, samples=None)
    assert sorted(data.labels.tolist()) == [0, 1, 2]


def test_flat_folder_is_unlabelled(tmp_path):
    data = load_dataset(make_images(tmp_path / "flat", {"": 4}), INFO, samples=None)
    assert data.labels is None and len(data) == 4
    with pytest.raises(InputError, match="needs labelled data"):
        data.require_labels("--max-top1-drop")


def test_sampling_is_seeded_and_class_balanced(tmp_path):
    root = make_images(tmp_path / "d", {"cat": 20, "dog": 4, "emu": 20})
    a = load_dataset(root, INFO, samples=12, seed=1)
    b = load_dataset(root, INFO, samples=12, seed=1)
    c = load_dataset(root, INFO, samples=12, seed=2)
    assert np.array_equal(a.inputs, b.inputs) and a.sha256 == b.sha256
    assert a.sha256 != c.sha256
    assert np.bincount(a.labels, minlength=3).tolist() == [4, 4, 4]


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = make_images(tmp_path / "d", {"cat": 3})
    (root / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "cat" / "empty.png").write_bytes(b"")
    data = load_dataset(root, INFO, samples=None)
    assert len(data) == 3 and len(data.skipped) == 2
    assert "skipped 2 unreadable" in data.describe()


def test_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match="could be decoded"):
        load_dataset(tmp_path / "d", INFO)


def test_empty_folder_and_missing_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_dataset(tmp_path / "empty", INFO)
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nowhere", INFO)


def test_arrays(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(load_dataset(tmp_path / "x.npy", INFO, samples=None).inputs, x)
    np.savez(tmp_path / "x.npz", input=x, labels=np.arange(6) % 3, other=np.zeros(2))
    data = load_dataset(tmp_path / "x.npz", INFO, samples=None)
    assert np.array_equal(data.inputs, x) and data.labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 3, 64, 64), np.float32), "shape 3x64x64 but the model takes 3x32x32"),
    (np.zeros((4, 32, 32, 3), np.float32), "shape 32x32x3"),
    (np.zeros((3, 32, 32), np.float32), "N x C x H x W"),
])
def test_wrong_input_size(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InputError, match=message):
        load_dataset(tmp_path / "x.npy", INFO)


def test_nan_in_arrays(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    x[2, 1, 5, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="NaN or Inf values \\(first in sample 2\\)"):
        load_dataset(tmp_path / "x.npy", INFO)


@pytest.mark.parametrize("array, warning", [
    (np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32)).astype(np.float32), "looks unnormalised"),
    (np.full((4, 3, 32, 32), 0.5, np.float32), "constant"),
    (np.zeros((4, 3, 32, 32), np.float32), "every input value is zero"),
])
def test_suspicious_inputs_warn(tmp_path, caplog, array, warning):
    np.save(tmp_path / "x.npy", array)
    with caplog.at_level(logging.WARNING, logger="rexport"):
        data = load_dataset(tmp_path / "x.npy", INFO)
    assert any(warning in w for w in data.warnings)
    assert warning in caplog.text


def test_demo_source():
    from rexport.demo import data as demo

    info = ModelInfo(num_classes=10, input_shape=(3, 32, 32), preprocess=demo.demo_preprocess())
    train = load_dataset("demo", info, samples=100)
    assert len(train) == 100 and set(train.labels.tolist()) == set(range(10))
    assert len(load_dataset("demo:test", info, samples=None)) == 360
    with pytest.raises(InputError, match="unknown demo split"):
        load_dataset("demo:val", info)


# -- .npy / .npz: what is accepted, what is refused, and what is read (issue 10) ---------------

X = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)


class RunsCode:
    """Unpickling this writes a file: proof that a pickle was (or was not) loaded."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def write(path, **arrays):
    if path.suffix == ".npy":
        np.save(path, arrays["input"], allow_pickle=True)
    else:
        np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("name, arrays, message", [
    ("complex.npy", {"input": X.astype(np.complex64)}, "the inputs are complex numbers"),
    ("int64.npy", {"input": X.astype(np.int64)}, "the inputs are int64 integers"),
    ("bool.npy", {"input": X > 0}, "the inputs are booleans"),
    ("strings.npy", {"input": X.astype(str)}, "the inputs are strings"),
    ("wide.npy", {"input": X.astype(np.float64) * 1e300}, "beyond the float32 range"),
    ("string_labels.npz", {"input": X, "labels": np.array(["cat", "dog", "emu", "cat", "dog", "yak"])},
     "label 'yak' is not one of the model's labels"),
    ("fractional.npz", {"input": X, "labels": np.array([0, 1.5, 2, 0, 1, 2])}, "not whole numbers \\(e.g. 1.5"),
    ("nan_labels.npz", {"input": X, "labels": np.array([0, np.nan, 2, 0, 1, 2])}, "not whole numbers"),
    ("huge_labels.npz", {"input": X, "labels": np.array([0, 1e30, 2, 0, 1, 2])}, "labels outside 0..2"),
    ("bool_labels.npz", {"input": X, "labels": np.ones(6, bool)}, "the labels are booleans"),
    ("column_labels.npz", {"input": X, "labels": np.zeros((6, 1), np.int64)}, "not an array of shape \\(6, 1\\)"),
    ("short_labels.npz", {"input": X, "labels": np.zeros(5, np.int64)}, "5 labels for 6 inputs"),
    ("two_arrays.npz", {"a": X, "b": X}, "holds a, b; store the inputs under the model's input name"),
])
def test_arrays_of_the_wrong_kind_are_refused_in_one_line(tmp_path, name, arrays, message):
    """Issue 10: string labels gave "unexpected ... this is a bug"; a complex .npy gave numpy's
    ComplexWarning and was accepted; int64/bool inputs and fractional labels passed without a word."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning / RuntimeWarning on the way to the refusal
        with pytest.raises(InputError, match=message) as error:
            load_dataset(write(tmp_path / name, **arrays), INFO)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("where", ["inputs.npy", "inputs.npz", "labels.npz"])
def test_pickled_arrays_are_never_loaded(tmp_path, where):
    marker = tmp_path / "unpickled"
    objects = np.array([RunsCode(marker)] * 6, dtype=object)
    path = tmp_path / where
    if where == "inputs.npy":
        np.save(path, objects, allow_pickle=True)
    else:
        np.savez(path, **({"input": objects} if where == "inputs.npz" else {"input": X, "labels": objects}))
    with pytest.raises(InputError, match="holds Python objects \\(pickled data\\), which rexport never loads"):
        load_dataset(path, INFO)
    assert not marker.exists()


def test_damaged_array_files_are_refused_in_one_line(tmp_path):
    np.save(tmp_path / "x.npy", X)
    np.savez_compressed(tmp_path / "x.npz", input=X, labels=np.arange(6) % 3)
    whole_npy, whole_npz = (tmp_path / "x.npy").read_bytes(), (tmp_path / "x.npz").read_bytes()
    cases = {
        "cut.npy": (whole_npy[: len(whole_npy) // 2], "cannot read arrays from"),
        "cut.npz": (whole_npz[: len(whole_npz) // 2], "cannot read arrays from"),
        "header_only.npy": (whole_npy[:100], "cannot read arrays from"),
        "empty.npy": (b"", "not a NumPy .npy or .npz file"),
        "text.npz": (b"input,labels\n1,2\n", "not a NumPy .npy or .npz file"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(InputError, match=message):
            load_dataset(tmp_path / name, INFO)
    import zipfile  # an .npz member whose header promises more data than the member holds

    with zipfile.ZipFile(tmp_path / "lying.npz", "w") as z:
        z.writestr("input.npy", whole_npy[:-4096])
    with pytest.raises(InputError, match="truncated or damaged"):
        load_dataset(tmp_path / "lying.npz", INFO)


def test_accepted_array_kinds(tmp_path):
    from rexport.runtime.preprocess import normalize

    names = np.array(["emu", "cat", "dog", "emu", "cat", "dog"])
    data = load_dataset(write(tmp_path / "names.npz", input=X, labels=names), INFO, samples=None)
    assert data.labels.tolist() == [2, 0, 1, 2, 0, 1]  # label names map onto the model's indices
    data = load_dataset(write(tmp_path / "f.npz", input=X, labels=np.array([0., 1, 2, 0, 1, 2])), INFO,
                                 samples=None)
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 2, 0, 1, 2]
    for kind in (np.float16, np.float64, ">f4"):
        assert np.allclose(load_dataset(write(tmp_path / "k.npy", input=X.astype(kind)), INFO,
                                                 samples=None).inputs, X, atol=5e-3)
    pixels = np.random.default_rng(1).integers(0, 256, (4, 3, 32, 32), dtype=np.uint8)
    data = load_dataset(write(tmp_path / "px.npy", input=pixels), INFO, samples=None)
    expected = np.stack([normalize(p.transpose(1, 2, 0), INFO.preprocess) for p in pixels])
    assert data.inputs.dtype == np.float32 and np.allclose(data.inputs, expected, atol=1e-6)
    np.savez_compressed(tmp_path / "c.npz", input=np.asfortranarray(X), labels=np.arange(6) % 3)
    np.save(tmp_path / "npz_named.npy", X)  # told apart by content, not by name
    (tmp_path / "npy_content.npz").write_bytes((tmp_path / "npz_named.npy").read_bytes())
    for name in ("c.npz", "npy_content.npz"):
        assert np.array_equal(load_dataset(tmp_path / name, INFO, samples=None).inputs, X)


@pytest.mark.parametrize("form", ["npy", "npz", "npz_compressed", "npz_labelled"])
def test_only_the_samples_used_are_read(tmp_path, form):
    """Issue 10: a huge .npy was read whole even with --samples 16 (1.2 GB RSS); now a .npy is
    memory-mapped and an .npz member read one sample at a time."""
    import tracemalloc

    big = np.random.default_rng(2).standard_normal((1024, 3, 32, 32)).astype(np.float32)  # 12.6 MB
    path = tmp_path / f"big.{form[:3]}"
    if form == "npy":
        np.save(path, big)
    elif form == "npz_compressed":
        np.savez_compressed(path, input=big)
    else:
        np.savez(path, input=big, **({"labels": np.arange(1024) % 3} if form == "npz_labelled" else {}))
    del big
    tracemalloc.start()
    try:
        data = load_dataset(path, INFO, samples=16, seed=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(data) == 16 and peak < 2 << 20, f"{peak / 2**20:.1f} MB traced for 16 samples (0.2 MB)"
    whole = np.load(path)
    whole = whole if form == "npy" else whole["input"]
    from rexport.runtime.data import _pick

    labels = (np.arange(1024) % 3).tolist() if form == "npz_labelled" else None
    assert np.array_equal(data.inputs, whole[_pick(1024, labels, 16, 3)])  # the same samples as before
