"""Test helpers shared by tests and by the fixture generators in tests/fixtures/."""

from __future__ import annotations

import subprocess
import zlib

import numpy as np


def deterministic_tensor(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """Weights that depend only on the key name and shape, with realistic scales, so a model
    built by another library can be given identical weights without storing them."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    noise = rng.standard_normal(shape).astype(np.float32)
    if len(shape) == 4 or (len(shape) == 2 and key.endswith("weight")):  # conv / linear weight
        fan_in = int(np.prod(shape[1:]))
        return noise * np.float32(np.sqrt(2.0 / fan_in))
    if key.endswith("running_var"):
        return 1.0 + 0.2 * np.abs(noise)
    if key.endswith("weight"):  # batchnorm gamma, small enough that deep stacks stay in range
        return 0.25 + 0.05 * noise
    return 0.1 * noise  # biases, betas, running means


def deterministic_state_dict(shapes: dict[str, tuple[int, ...]]):
    import torch

    return {k: torch.from_numpy(deterministic_tensor(k, tuple(s))) for k, s in shapes.items()}


def env_without(directory, *modules: str) -> dict:
    """An environment in which a subprocess cannot import `modules` (as if not installed)."""
    import os
    from pathlib import Path

    folder = Path(directory) / "hidden-modules"
    folder.mkdir(exist_ok=True)
    for name in modules:
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is hidden by a test')\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


class CliResult:
    def __init__(self, proc: subprocess.CompletedProcess):
        self.exit_code = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def __repr__(self) -> str:
        return f"<exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"


def assert_clean_error(result: CliResult, *fragments: str, code: int | None = None) -> None:
    """A user error: non-zero exit, exactly one `error:` line naming the problem, no traceback."""
    assert result.exit_code != 0, result
    if code is not None:
        assert result.exit_code == code, result
    assert "Traceback" not in result.stderr, result
    assert len(result.error_lines) == 1, result
    for fragment in fragments:
        assert fragment.lower() in result.error_lines[0].lower(), result
