"""Engines in bundles, against FakeTensorRT (a double of the TensorRT API: see tests/doubles/;
this checks rexport's bookkeeping around the engine, not TensorRT)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from doubles.fixtures import trt  # noqa: F401 - fixture
from rexport.errors import InputError
from rexport.exporter.tensorrt import BuildConfig, build_engine
from rexport.runtime import load
from rexport.runtime.bundle import write_bundle
from rexport.runtime.manifest import MANIFEST


def test_an_engine_built_from_a_bundle_joins_it(tmp_path, trt, demo_bundle):
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    result = build_engine(bundle, None, BuildConfig(precision="fp16", val_data="demo:test", val_samples=16))
    assert result.path == bundle / "demo.fp16.engine" and result.validation.passed
    manifest = json.loads((bundle / MANIFEST).read_text())
    assert {"demo.fp16.engine", "demo.fp16.engine.json"} <= set(manifest["files"])
    assert {"file": "demo.fp16.engine", "kind": "engine", "precision": "fp16"} in manifest["models"]
    with load(bundle, model="engine") as engine, load(bundle) as fp32:
        assert engine.backend.name.startswith("tensorrt") and engine.info.precision == "fp16"
        x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
        assert (engine.run(x).argmax(1) == fp32.run(x).argmax(1)).all()
        report = engine.selftest()
    assert report.passed, report.format()


def test_int8_from_a_bundle_calibrates_its_fp32_model(tmp_path, trt, demo_bundle):
    # the bundle's INT8 ONNX is a cpu-target (uint8) file TensorRT cannot take: calibrate the FP32 one
    bundle = tmp_path / "bundle"
    shutil.copytree(demo_bundle, bundle)
    result = build_engine(bundle, None, BuildConfig(precision="int8", calib_data="demo:train", calib_samples=64,
                                                    val_data="demo:test", val_samples=32))
    assert result.sidecar.source_onnx["path"] == "demo.onnx" and result.plan.how == "quantize"
    assert result.path.parent == bundle


def test_archived_bundles_must_be_extracted_first(tmp_path, trt, demo_fp32):
    archive = write_bundle([demo_fp32], tmp_path / "b", archive=True)
    with pytest.raises(InputError, match="extract it"):
        build_engine(archive, None, BuildConfig(precision="fp16"))
