"""The accuracy budget: keep the layers that cost accuracy in float until the INT8 model meets it.

1. For every quantized Conv/Gemm, put that layer alone back in float and measure what the INT8
   model gains on the validation data (held out from calibration by default): top-1 agreement
   with FP32, and how much closer its logits come (mean squared error, normalised by the FP32
   logits' variance; continuous, so it ranks layers even when agreement barely moves).
2. Keep layers in float, best gain per MAC kept in float first (agreement, then logit error),
   until the budget holds: top-1 accuracy no more than `max_top1_drop` points below FP32 (needs
   labels), and/or top-1 agreement with FP32 of at least `min_agreement`. A cheap layer that
   fixes as much as an expensive one goes first: more of the MACs stay in INT8.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rexport.console import log, progress
from rexport.errors import InputError
from rexport.runtime.compare import compare, topk_accuracy


@dataclass(frozen=True)
class Budget:
    max_top1_drop: float | None = None  # percentage points
    min_agreement: float | None = None  # fraction of samples, 0..1

    def __post_init__(self) -> None:
        if self.max_top1_drop is not None and self.max_top1_drop < 0:
            raise InputError(f"--max-top1-drop must be >= 0 points, not {self.max_top1_drop}")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise InputError(f"--min-agreement must be a fraction between 0 and 1, not {self.min_agreement}")

    @property
    def active(self) -> bool:
        return self.max_top1_drop is not None or self.min_agreement is not None

    def describe(self) -> str:
        parts = []
        if self.max_top1_drop is not None:
            parts.append(f"top-1 drop <= {self.max_top1_drop:g} points")
        if self.min_agreement is not None:
            parts.append(f"top-1 agreement >= {100 * self.min_agreement:g}%")
        return " and ".join(parts) or "none"


@dataclass
class Score:
    """One model scored against the FP32 reference on the validation data."""

    agreement: float
    top1: float | None  # accuracy, when labels exist
    reference_top1: float | None
    max_abs: float

    @property
    def top1_drop(self) -> float | None:
        """In percentage points."""
        return None if self.top1 is None else 100 * (self.reference_top1 - self.top1)

    def meets(self, budget: Budget) -> bool:
        ok = True
        if budget.max_top1_drop is not None:
            ok &= self.top1_drop is not None and self.top1_drop <= budget.max_top1_drop + 1e-9
        if budget.min_agreement is not None:
            ok &= self.agreement >= budget.min_agreement - 1e-12
        return ok

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "top1": self.top1, "fp32_top1": self.reference_top1,
                "top1_drop_points": self.top1_drop, "max_abs": self.max_abs}


def score(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Score:
    c = compare(logits, reference)
    return Score(c.top1_agreement, None if labels is None else topk_accuracy(logits, labels),
                 None if labels is None else topk_accuracy(reference, labels), c.max_abs)


@dataclass
class BudgetResult:
    kept: list[str] = field(default_factory=list)  # layers kept in float, in the order they were kept
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> normalised logit MSE it removes
    gain: dict[str, float] = field(default_factory=dict)  # layer -> agreement gained in float alone
    steps: list[tuple[int, Score]] = field(default_factory=list)  # (layers kept, score)

    def to_dict(self) -> dict:
        return {"kept_float": self.kept,
                "sensitivity": {k: round(v, 8) for k, v in self.sensitivity.items()},
                "agreement_gain": {k: round(v, 6) for k, v in self.gain.items()},
                "steps": [{"kept": n, **s.to_dict()} for n, s in self.steps]}


def fit_budget(layers: list[str], evaluate: Callable[[frozenset[str]], np.ndarray], reference: np.ndarray,
               labels: np.ndarray | None, budget: Budget, macs: dict[str, int] | None = None) -> BudgetResult:
    """`evaluate(keep_float)` returns the INT8 model's logits with those layers in float; `macs`
    gives each layer's multiply-accumulates (missing: all cost the same)."""
    if budget.max_top1_drop is not None and labels is None:
        raise InputError("--max-top1-drop needs labelled validation data; give class folders or an .npz with "
                         "labels, or use --min-agreement")
    result = BudgetResult()
    all_int8 = evaluate(frozenset())
    current = score(all_int8, reference, labels)
    result.steps.append((0, current))
    if current.meets(budget):
        return result
    log.info("INT8 misses the budget (%s); measuring each layer's sensitivity...", budget.describe())
    variance = float(np.var(reference)) or 1.0
    base = float(np.mean((all_int8 - reference) ** 2) / variance)
    for layer in progress(layers, desc="layer sensitivity", unit="layers"):
        logits = evaluate(frozenset({layer}))
        result.sensitivity[layer] = base - float(np.mean((logits - reference) ** 2) / variance)
        result.gain[layer] = score(logits, reference, labels).agreement - current.agreement
    cost = {n: max(1, (macs or {}).get(n, 1)) for n in layers}
    ranked = sorted(layers, key=lambda n: (-result.gain[n] / cost[n], -result.sensitivity[n] / cost[n]))
    for layer in ranked:
        result.kept.append(layer)
        current = score(evaluate(frozenset(result.kept)), reference, labels)
        result.steps.append((len(result.kept), current))
        log.info("kept %s in float (%d layers): agreement %.2f%%%s", layer, len(result.kept),
                 100 * current.agreement,
                 "" if current.top1_drop is None else f", top-1 drop {current.top1_drop:.2f} points")
        if current.meets(budget):
            break
    return result
