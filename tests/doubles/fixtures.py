"""Pytest fixtures around the doubles; test modules import the ones they use.

`trt` runs a test once per API surface (TensorRT 10.x and 11.x) and fails it afterwards if the
code under test touched an API that surface removed (even when the AttributeError was swallowed)
or set the EXPLICIT_BATCH network flag.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from doubles.fake_tensorrt import SURFACES, FakeTensorRT, install_fake_tensorrt
from doubles.stand_ins import StandIns, install_stand_ins
from doubles.tiny_onnx import write_tiny_classifier


def assert_clean(fake: FakeTensorRT) -> None:
    assert fake.removed_touched == [], f"touched APIs TensorRT {fake.__version__} removed: {fake.removed_touched}"
    assert not fake.explicit_batch_used, "set NetworkDefinitionCreationFlag.EXPLICIT_BATCH (never on TensorRT >= 10)"


@pytest.fixture(params=list(SURFACES.values()), ids=list(SURFACES))
def trt(request, monkeypatch) -> FakeTensorRT:
    fake = install_fake_tensorrt(monkeypatch, request.param)
    yield fake
    assert_clean(fake)


@pytest.fixture
def make_trt(monkeypatch):
    """Install a FakeTensorRT of a given version (and GPU); later calls replace earlier ones."""
    made: list[FakeTensorRT] = []

    def make(version: str = SURFACES["10.x"], **kwargs) -> FakeTensorRT:
        fake = install_fake_tensorrt(monkeypatch, version, **kwargs)
        made.append(fake)
        return fake

    yield make
    for fake in made:
        assert_clean(fake)


@pytest.fixture
def stand_ins(monkeypatch) -> StandIns:
    return install_stand_ins(monkeypatch)


@pytest.fixture
def tiny(tmp_path):
    """tiny(variant="fp32", name=None, **kwargs) -> path of a tiny classifier ONNX in tmp_path."""

    def make(variant: str = "fp32", name: str | None = None, **kwargs) -> Path:
        return write_tiny_classifier(tmp_path / (name or f"m{'' if variant == 'fp32' else '.' + variant}.onnx"),
                                     variant, **kwargs)

    return make
