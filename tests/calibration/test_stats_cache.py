"""The activation-statistics cache (calibration/stats.py): an optimisation that can never fail a
calibration. Issue 10: a truncated entry made `calibrate` fail with "unexpected BadZipFile ...
this is a bug" until the cache was deleted."""

from __future__ import annotations

import logging
import zipfile

import numpy as np
import pytest

from rexport.calibration.fp16 import read_model
from rexport.calibration.stats import BINS, cache_dir, collect_cached


def damage(entry, how: str) -> None:
    data = entry.read_bytes()
    if how == "truncated":
        entry.write_bytes(data[: len(data) // 2])
    elif how == "empty":
        entry.write_bytes(b"")
    elif how == "garbage":
        entry.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 8)
    elif how == "directory":
        entry.unlink()
        entry.mkdir()
    elif how == "wrong arrays":  # a readable zip that is not what this version writes
        np.savez(entry, names=np.array(["x"]), min=np.zeros(1), max=np.ones(1), hist=np.zeros((1, 7), np.int64))
    elif how == "pickled":
        np.savez(entry, names=np.array([object()], dtype=object), min=np.zeros(1), max=np.ones(1),
                 hist=np.zeros((1, BINS), np.int64))
    elif how == "flipped":  # a bit flip in the compressed data: CRC error on read
        data = bytearray(data)
        data[len(data) // 3] ^= 0xFF
        entry.write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["truncated", "empty", "garbage", "directory", "wrong arrays", "pickled", "flipped"])
def test_an_unreadable_entry_is_ignored_and_rewritten(demo_fp32, tmp_path, monkeypatch, caplog, how):
    monkeypatch.setenv("REXPORT_CACHE_DIR", str(tmp_path))
    model, _ = read_model(demo_fp32)
    model_bytes = demo_fp32.read_bytes()
    inputs = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    fresh, hit = collect_cached(model, model_bytes, inputs, "sha-of-these-inputs")
    assert not hit
    [entry] = cache_dir().glob("*.npz")
    damage(entry, how)
    with caplog.at_level(logging.INFO, logger="rexport"):
        again, hit = collect_cached(model, model_bytes, inputs, "sha-of-these-inputs")
    assert not hit and "ignoring an unreadable statistics cache entry" in caplog.text
    assert again.keys() == fresh.keys()
    assert all(np.array_equal(again[t].hist, fresh[t].hist) and again[t].max == fresh[t].max for t in fresh)
    if how != "directory":  # rewritten (a directory in the way stays: the write is logged and skipped)
        assert zipfile.is_zipfile(entry)
        cached, hit = collect_cached(model, model_bytes, inputs, "sha-of-these-inputs")
        assert hit and all(np.array_equal(cached[t].hist, fresh[t].hist) for t in fresh)
    assert [p.name for p in cache_dir().iterdir() if p.name.startswith(".")] == []  # written atomically


def test_calibrate_survives_a_truncated_cache_entry(run_cli, tmp_path, demo_fp32):
    import os

    env = {**os.environ, "REXPORT_CACHE_DIR": str(tmp_path / "cache")}
    args = ["calibrate", demo_fp32, "--calib-data", "demo", "--calib-samples", "16", "--calib-refine", "none", "--force"]
    assert run_cli(*args, "-o", "a.onnx", env=env).exit_code == 0
    [entry] = (tmp_path / "cache" / "calibration").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:1000])
    result = run_cli(*args, "-o", "b.onnx", env=env)
    assert result.exit_code == 0, result  # was: error: unexpected BadZipFile ... this is a bug
    assert "bug" not in result.stderr and (tmp_path / "b.onnx").is_file()
    assert zipfile.is_zipfile(entry)  # rewritten
