"""Pytest fixtures around the doubles; test modules import the ones they use (and the ones those use).

`trt` runs a test once per API surface (TensorRT 10.x and 11.x) and fails it afterwards if the
code under test touched an API that surface removed (even when the AttributeError was swallowed)
or set the EXPLICIT_BATCH network flag. `rtx` is the TensorRT for RTX surface as `tensorrt_rtx`
(TensorRT hidden, so rexport's default choice is RTX too) on a fake RTX GPU (compute capability
8.9), held to the same rule. `make_trt(version, flavour=..., compute_capability=..., ...)` installs
one of a given kind.

`tiny` writes the tiny classifier (tiny_onnx.py); its "fp16" and "int8" variants are made once
per session by the real rexport.calibration.to_fp16 and quantize (trt target, calibrated on
`tiny_data`) and copied into each test's directory. `pipeline` spies on the calls the builder
makes into calibration and validation (spy.py) without changing what they do.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from doubles.fake_tensorrt import SURFACES, FakeTensorRT, hide_tensorrt, install_fake_tensorrt
from doubles.spy import PipelineSpy, install_pipeline_spy
from doubles.tiny_onnx import VARIANTS, write_tiny_classifier, write_tiny_dataset
from rexport.calibration.fp16 import to_fp16
from rexport.calibration.int8 import QuantizeConfig, quantize


def assert_clean(fake: FakeTensorRT) -> None:
    assert fake.removed_touched == [], f"touched APIs TensorRT {fake.__version__} removed: {fake.removed_touched}"
    assert not fake.explicit_batch_used, "set NetworkDefinitionCreationFlag.EXPLICIT_BATCH (never on TensorRT >= 10)"


@pytest.fixture(params=list(SURFACES.values()), ids=list(SURFACES))
def trt(request, monkeypatch) -> FakeTensorRT:
    fake = install_fake_tensorrt(monkeypatch, request.param)
    yield fake
    assert_clean(fake)


@pytest.fixture
def rtx(monkeypatch) -> FakeTensorRT:
    hide_tensorrt(monkeypatch, rtx=False)
    fake = install_fake_tensorrt(monkeypatch, flavour="rtx")
    yield fake
    assert_clean(fake)


@pytest.fixture
def make_trt(monkeypatch):
    """Install a FakeTensorRT of a given version (and GPU; flavour="rtx": TensorRT for RTX, default version
    RTX_SURFACE); later calls replace earlier ones of the same flavour."""
    made: list[FakeTensorRT] = []

    def make(version: str | None = None, **kwargs) -> FakeTensorRT:
        if version is None and kwargs.get("flavour", "tensorrt") == "tensorrt":
            version = SURFACES["10.x"]
        fake = install_fake_tensorrt(monkeypatch, version, **kwargs)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        assert_clean(fake)


@pytest.fixture
def pipeline(monkeypatch) -> PipelineSpy:
    return install_pipeline_spy(monkeypatch)


class TinyModels:
    """Tiny classifier files made once per session: FP32 by hand, FP16 and INT8 by rexport."""

    def __init__(self, root: Path):
        self.root = root
        self._made: dict[tuple, Path] = {}
        self.data = write_tiny_dataset(root / "tiny.npz", self.get("fp32"))

    def get(self, variant: str = "fp32", **kwargs) -> Path:
        key = (variant, tuple(sorted(kwargs.items())))
        if key not in self._made:
            folder = self.root / f"v{len(self._made)}"
            folder.mkdir()
            if variant in VARIANTS:
                path = write_tiny_classifier(folder / "m.onnx", variant, **kwargs)
            elif variant == "fp16":
                path = to_fp16(self.get("fp32", **kwargs), folder / "m.fp16.onnx").path
            elif variant == "int8":
                path = quantize(self.get("fp32", **kwargs), folder / "m.int8.onnx",
                                QuantizeConfig(calib_data=str(self.data), target="trt")).path
            else:
                raise ValueError(f"no tiny variant {variant!r}")
            self._made[key] = Path(path)
        return self._made[key]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def tiny_data(tiny_models) -> Path:
    """64 labelled tiny inputs (.npz, outside tmp_path): calibration and validation data."""
    return tiny_models.data


@pytest.fixture
def tiny(tmp_path, tiny_models):
    """tiny(variant="fp32", name=None, **kwargs) -> path of a tiny classifier ONNX in tmp_path."""

    def make(variant: str = "fp32", name: str | None = None, **kwargs) -> Path:
        target = tmp_path / (name or f"m{'' if variant == 'fp32' else '.' + variant}.onnx")
        return Path(shutil.copyfile(tiny_models.get(variant, **kwargs), target))

    return make
