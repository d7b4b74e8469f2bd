"""Shared fixtures. Tests use tiny models: CIFAR ResNet-20 at 32x32, ImageNet archs at 64x64."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `helpers`
from helpers import CliResult  # noqa: E402


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (pyproject's addopts): a worker per core, at most 4 (each worker builds its own
    session fixtures and holds models of up to ~1 GB while exporting the largest archs)."""
    import os

    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1, 4))


@pytest.fixture
def run_cli(tmp_path):
    """Run the real `rexport` console entry point in a subprocess (exit codes, stderr, no traceback)."""

    def run(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: float = 600) -> CliResult:
        proc = subprocess.run([sys.executable, "-m", "rexport", *map(str, args)], capture_output=True,
                              text=True, cwd=cwd or tmp_path, env=env, timeout=timeout)
        return CliResult(proc)

    return run


@pytest.fixture(autouse=True, scope="session")
def _private_cache_dir(tmp_path_factory):
    """Calibration statistics caches go to a temporary directory, not the user's ~/.cache."""
    import os

    os.environ["REXPORT_CACHE_DIR"] = str(tmp_path_factory.mktemp("rexport-cache"))


@pytest.fixture(scope="session")
def demo_fp32(tmp_path_factory) -> Path:
    """The embedded demo model (real trained weights) as an FP32 rexport ONNX."""
    from rexport.demo import data
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_model

    out = tmp_path_factory.mktemp("demo") / "demo.onnx"
    export_onnx(load_model(data.WEIGHTS_FILE, data.ARCH), out,
                ExportConfig(arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(),
                             parity=ParityConfig(enabled=False)))
    return out


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """Export a zoo arch with deterministic weights: exported("resnet18") -> path (64x64 for ImageNet archs)."""
    from helpers import deterministic_state_dict

    from rexport.exporter import ExportConfig, ParityConfig, build_model, export_onnx
    from rexport.exporter.checkpoint import LoadedModel
    from rexport.exporter.zoo import get_arch

    cache: dict[str, Path] = {}

    def make(arch: str) -> Path:
        if arch not in cache:
            model = build_model(arch)
            model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
            spec = get_arch(arch)
            out = tmp_path_factory.mktemp(arch) / f"{arch}.onnx"
            export_onnx(LoadedModel(model.eval(), arch, spec.num_classes, 3, {}, None, []), out,
                        ExportConfig(arch=arch, input_size=None if spec.cifar else (64, 64),
                                     parity=ParityConfig(enabled=False)))
            cache[arch] = out
        return cache[arch]

    return make


@pytest.fixture(scope="session")
def nan_model(demo_fp32, tmp_path_factory) -> Path:
    """The demo model with a NaN classifier bias: a valid rexport ONNX whose every output is NaN."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(demo_fp32))
    bias = next(t for t in model.graph.initializer if t.name == model.graph.node[-1].input[2])
    bias.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(bias), np.nan), bias.name))
    out = tmp_path_factory.mktemp("nan") / "nan.onnx"
    onnx.save(model, str(out))
    return out


@pytest.fixture(scope="session")
def demo_bundle(demo_fp32, tmp_path_factory) -> Path:
    """A bundle of the demo model in FP32 and INT8 (cpu target) with references from held-out digits."""
    from rexport.calibration import QuantizeConfig, quantize
    from rexport.runtime.bundle import make_bundle

    root = tmp_path_factory.mktemp("bundle")
    int8 = quantize(demo_fp32, root / "demo.int8.onnx",
                    QuantizeConfig(calib_data="demo:train", calib_samples=128, target="cpu"))
    images = root / "images"
    from PIL import Image

    from rexport.demo import data

    test = data.split("test")
    for i in range(6):
        (images / str(test.labels[i])).mkdir(parents=True, exist_ok=True)
        Image.fromarray(test.images[i], "L").save(images / str(test.labels[i]) / f"{i}.png")
    return make_bundle([demo_fp32, int8.path], root / "bundle", data=str(images), samples=6)


@pytest.fixture(autouse=True)
def _library_logging():
    """Tests that run the CLI in-process configure the `rexport` logger as the CLI does (own
    handler, no propagation); give every test the library's default back so caplog sees records."""
    import logging

    logger = logging.getLogger("rexport")
    logger.handlers.clear()
    logger.propagate = True
    logger.setLevel(logging.NOTSET)
    yield
