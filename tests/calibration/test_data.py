"""Calibration data sources, sampling, and the errors and warnings for bad data."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from rexport.calibration import load_calibration_data
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
    data = load_calibration_data(root, INFO, samples=None)
    assert data.inputs.shape == (5, 3, 32, 32) and data.inputs.dtype == np.float32
    assert sorted(data.labels.tolist()) == [0, 0, 0, 2, 2]  # cat = 0, emu = 2: the model's label order


def test_numbered_folders_and_sorted_order(tmp_path):
    data = load_calibration_data(make_images(tmp_path / "n", {"0": 1, "2": 1}), INFO, samples=None)
    assert sorted(data.labels.tolist()) == [0, 2]
    unnamed = ModelInfo(num_classes=3, input_shape=(3, 32, 32), preprocess=Preprocess.cifar(32))
    data = load_calibration_data(make_images(tmp_path / "s", {"b": 1, "a": 1, "c": 1}), unnamed, samples=None)
    assert sorted(data.labels.tolist()) == [0, 1, 2]


def test_flat_folder_is_unlabelled(tmp_path):
    data = load_calibration_data(make_images(tmp_path / "flat", {"": 4}), INFO, samples=None)
    assert data.labels is None and len(data) == 4
    with pytest.raises(InputError, match="needs labelled data"):
        data.require_labels("--max-top1-drop")


def test_sampling_is_seeded_and_class_balanced(tmp_path):
    root = make_images(tmp_path / "d", {"cat": 20, "dog": 4, "emu": 20})
    a = load_calibration_data(root, INFO, samples=12, seed=1)
    b = load_calibration_data(root, INFO, samples=12, seed=1)
    c = load_calibration_data(root, INFO, samples=12, seed=2)
    assert np.array_equal(a.inputs, b.inputs) and a.sha256 == b.sha256
    assert a.sha256 != c.sha256
    assert np.bincount(a.labels, minlength=3).tolist() == [4, 4, 4]


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    root = make_images(tmp_path / "d", {"cat": 3})
    (root / "cat" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (root / "cat" / "empty.png").write_bytes(b"")
    data = load_calibration_data(root, INFO, samples=None)
    assert len(data) == 3 and len(data.skipped) == 2
    assert "skipped 2 unreadable" in data.describe()


def test_only_corrupt_images_is_an_error(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(InputError, match="could be decoded"):
        load_calibration_data(tmp_path / "d", INFO)


def test_empty_folder_and_missing_source(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no images"):
        load_calibration_data(tmp_path / "empty", INFO)
    with pytest.raises(InputError, match="does not exist"):
        load_calibration_data(tmp_path / "nowhere", INFO)


def test_arrays(tmp_path):
    x = np.random.default_rng(0).standard_normal((6, 3, 32, 32)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert np.array_equal(load_calibration_data(tmp_path / "x.npy", INFO, samples=None).inputs, x)
    np.savez(tmp_path / "x.npz", input=x, labels=np.arange(6) % 3, other=np.zeros(2))
    data = load_calibration_data(tmp_path / "x.npz", INFO, samples=None)
    assert np.array_equal(data.inputs, x) and data.labels.tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("array, message", [
    (np.zeros((4, 3, 64, 64), np.float32), "shape 3x64x64 but the model takes 3x32x32"),
    (np.zeros((4, 32, 32, 3), np.float32), "shape 32x32x3"),
    (np.zeros((3, 32, 32), np.float32), "N x C x H x W"),
])
def test_wrong_input_size(tmp_path, array, message):
    np.save(tmp_path / "x.npy", array)
    with pytest.raises(InputError, match=message):
        load_calibration_data(tmp_path / "x.npy", INFO)


def test_nan_in_arrays(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    x[2, 1, 5, 5] = np.nan
    np.save(tmp_path / "x.npy", x)
    with pytest.raises(InputError, match="NaN or Inf values \\(first in sample 2\\)"):
        load_calibration_data(tmp_path / "x.npy", INFO)


@pytest.mark.parametrize("array, warning", [
    (np.random.default_rng(0).integers(0, 255, (4, 3, 32, 32)).astype(np.float32), "looks unnormalised"),
    (np.full((4, 3, 32, 32), 0.5, np.float32), "constant"),
    (np.zeros((4, 3, 32, 32), np.float32), "every input value is zero"),
])
def test_suspicious_inputs_warn(tmp_path, caplog, array, warning):
    np.save(tmp_path / "x.npy", array)
    with caplog.at_level(logging.WARNING, logger="rexport"):
        data = load_calibration_data(tmp_path / "x.npy", INFO)
    assert any(warning in w for w in data.warnings)
    assert warning in caplog.text


def test_demo_source():
    from rexport.demo import data as demo

    info = ModelInfo(num_classes=10, input_shape=(3, 32, 32), preprocess=demo.demo_preprocess())
    train = load_calibration_data("demo", info, samples=100)
    assert len(train) == 100 and set(train.labels.tolist()) == set(range(10))
    assert len(load_calibration_data("demo:test", info, samples=None)) == 360
    with pytest.raises(InputError, match="unknown demo split"):
        load_calibration_data("demo:val", info)
