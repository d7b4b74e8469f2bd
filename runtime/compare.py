"""Comparing a model's outputs with a reference: the numbers every parity and accuracy report uses.

Tolerance semantics are numpy's `allclose`, per element: a candidate value passes when
`|candidate - reference| <= atol + rtol * |reference|`. `tolerance_ratio` is the worst element's
error divided by its bound, so <= 1 passes and the number says by how much it failed.
Tensor error alone says little about classification, so every comparison also reports top-1
agreement (same argmax as the reference) and cosine similarity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from rexport.errors import InputError
from rexport.runtime.gates import Tolerance


@dataclass(frozen=True)
class Comparison:
    samples: int
    max_abs: float  # max |candidate - reference|
    mean_abs: float
    max_rel: float  # max |c - r| / |r| over elements with |r| > atol (relative error is meaningless near 0)
    cosine: float  # mean over samples of the cosine similarity of the output vectors
    top1_agreement: float  # fraction of samples whose argmax matches the reference's
    tolerance_ratio: float  # worst |c - r| / (atol + rtol |r|); <= 1 passes
    nonfinite: int  # NaN / Inf values in the candidate

    @property
    def passed(self) -> bool:
        return self.nonfinite == 0 and self.tolerance_ratio <= 1.0

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def _as_2d(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x.reshape(x.shape[0], -1) if x.ndim > 1 else x.reshape(1, -1)


def compare(candidate: np.ndarray, reference: np.ndarray, tolerance: Tolerance = Tolerance()) -> Comparison:
    """Compare outputs of shape (N, ...) sample by sample."""
    c, r = _as_2d(candidate), _as_2d(reference)
    if c.shape != r.shape:
        raise InputError(f"cannot compare outputs of shape {np.shape(candidate)} with {np.shape(reference)}")
    nonfinite = int(np.size(c) - np.count_nonzero(np.isfinite(c)))
    c_safe = np.nan_to_num(c, nan=0.0, posinf=0.0, neginf=0.0)
    diff = np.abs(c_safe - r)
    big = np.abs(r) > tolerance.atol
    max_rel = float((diff[big] / np.abs(r[big])).max()) if big.any() else 0.0
    bound = tolerance.atol + tolerance.rtol * np.abs(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, diff / np.where(bound > 0, bound, 1), np.where(diff > 0, np.inf, 0))
    norms = np.linalg.norm(c_safe, axis=1) * np.linalg.norm(r, axis=1)
    dots = (c_safe * r).sum(axis=1)
    cos = np.where(norms > 0, dots / np.where(norms > 0, norms, 1), (np.abs(dots) == 0).astype(float))
    return Comparison(
        samples=int(c.shape[0]),
        max_abs=float(diff.max()) if diff.size else 0.0,
        mean_abs=float(diff.mean()) if diff.size else 0.0,
        max_rel=max_rel,
        cosine=float(cos.mean()),
        top1_agreement=float((c_safe.argmax(1) == r.argmax(1)).mean()),
        tolerance_ratio=float(ratio.max()) if ratio.size else 0.0,
        nonfinite=nonfinite,
    )


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> float:
    """Fraction of samples whose true label is among the k highest outputs."""
    logits = np.asarray(logits)
    labels = np.asarray(labels).reshape(-1)
    if logits.shape[0] != labels.shape[0]:
        raise InputError(f"{logits.shape[0]} outputs but {labels.shape[0]} labels")
    if labels.size == 0:
        raise InputError("no labels to score")
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())
