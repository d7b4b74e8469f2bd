"""Shared fixtures. Tests use tiny models: CIFAR ResNet-20 at 32x32, ImageNet archs at 64x64."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for `helpers`
from helpers import CliResult  # noqa: E402


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
