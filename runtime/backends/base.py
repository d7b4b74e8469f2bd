"""The interface every backend implements; checks that are common live here, not in backends."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from rexport.errors import InputError


class Backend(ABC):
    """Runs one model on NCHW float32 batches. Subclasses set the attributes in __init__ and
    implement `_run`; `run` validates the input first, so backends see only good batches."""

    name: str = "backend"
    input_name: str
    output_name: str
    input_shape: tuple  # (N, C, H, W); N (and others) may be -1 when dynamic

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype != np.float32:
            raise InputError(f"model input must be float32, got {x.dtype}; preprocess images first "
                             "(Predictor.predict does) or cast with .astype(np.float32)")
        expected = self.input_shape
        if x.ndim != len(expected) or any(e not in (-1, None) and e != s for e, s in zip(expected[1:], x.shape[1:])):
            want = "x".join("N" if i == 0 else ("?" if d in (-1, None) else str(d)) for i, d in enumerate(expected))
            raise InputError(f"input has shape {'x'.join(map(str, x.shape))} but {self.name} model takes {want}")
        if x.shape[0] == 0:
            raise InputError("input batch is empty")
        if expected[0] not in (-1, None) and x.shape[0] != expected[0]:
            raise InputError(f"this model takes a fixed batch of {expected[0]}, got {x.shape[0]}")
        if not np.isfinite(x).all():
            raise InputError("input contains NaN or Inf values")
        return self._run(np.ascontiguousarray(x))

    def run_batched(self, x: np.ndarray, max_batch: int = 32) -> np.ndarray:
        """Run any number of samples, `max_batch` at a time (what `run` takes at most)."""
        if len(x) <= max_batch:
            return self.run(x)
        return np.concatenate([self.run(x[i:i + max_batch]) for i in range(0, len(x), max_batch)])

    @abstractmethod
    def _run(self, x: np.ndarray) -> np.ndarray: ...

    def close(self) -> None:
        """Release device resources; the backend is unusable afterwards."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
