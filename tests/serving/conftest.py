"""Fixtures for the serving tests: the demo's held-out digits as PNG bytes, and a Triton model
repository of the demo bundle with the runtime-backed classifier, served by a real tritonserver
(one per module, on free 127.0.0.1 ports, always stopped)."""

from __future__ import annotations

import io

import numpy as np
import pytest


def png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="session")
def heldout():
    """32 of the demo's held-out test digits: (PNG bytes, true labels)."""
    from rexport.demo import data

    test = data.split("test")
    return [png_bytes(img) for img in test.images[:32]], test.labels[:32]


@pytest.fixture(scope="session")
def runtime_repository(demo_bundle, tmp_path_factory):
    from rexport.serving import RepositoryConfig, export_triton

    out = tmp_path_factory.mktemp("triton") / "model_repository"
    return export_triton(demo_bundle, out, RepositoryConfig(classifier="runtime", queue_delay_us=2000))


@pytest.fixture(scope="module")
def triton(runtime_repository):
    """tritonserver on the runtime repository, stopped when the module's tests are done."""
    from rexport.serving import TritonServer

    server = TritonServer(runtime_repository.path)
    try:
        server.start()
        yield server
    finally:
        server.stop()
