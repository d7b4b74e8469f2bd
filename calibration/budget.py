"""The accuracy budget: keep the layers that cost accuracy in float until the INT8 model meets it.

1. For every quantized Conv/Gemm, put that layer alone back in float and measure, on the
   validation data (held out from calibration by default), the top-1 agreement with FP32 that
   the INT8 model is expected to gain (`expected_agreement`) and how much closer its logits
   come (mean squared error, normalised by the FP32 logits' variance).
2. Keep layers in float, most expected agreement gained per MAC kept in float first (then logit
   error), until the budget holds on the measured scores: top-1 accuracy no more than
   `max_top1_drop` points below FP32 (needs labels), and/or top-1 agreement with FP32 of at least
   `min_agreement`. A cheap layer that fixes as much as an expensive one goes first: more of the
   MACs stay in INT8.

Why expected, not counted, agreement: near a 99% budget the inputs that flip are the few whose
FP32 top-1 and runner-up almost tie, and which of them flip is chance. Counted on a thousand
samples, one layer in float gains or loses about three flips whichever layer it is, so ranking by
counted flips fits noise, and the layers it picks fix nothing on other data. The expected
agreement uses every sample's error instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rexport.console import log, progress
from rexport.runtime.compare import compare, topk_accuracy
from rexport.runtime.gates import Gates


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

    def meets(self, budget: Gates) -> bool:
        return not budget.failures(self.top1_drop, self.agreement)

    def to_dict(self) -> dict:
        return {"agreement": self.agreement, "top1": self.top1, "fp32_top1": self.reference_top1,
                "top1_drop_points": self.top1_drop, "max_abs": self.max_abs}


def score(logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None) -> Score:
    c = compare(logits, reference)
    return Score(c.top1_agreement, None if labels is None else topk_accuracy(logits, labels),
                 None if labels is None else topk_accuracy(reference, labels), c.max_abs)


def expected_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 agreement with `reference` expected from how far `logits` move its margins.

    Each sample's FP32 margin m (top-1 minus runner-up logit) survives when the INT8 error e in
    that margin stays above -m. With e ~ N(0, s^2), s the root mean square of e over all samples,
    a sample agrees with probability Phi(m / s): a smooth estimate that every sample informs,
    where counted flips come from the few near-ties alone."""
    reference, logits = np.asarray(reference, np.float64), np.asarray(logits, np.float64)
    rows = np.arange(len(reference))
    order = np.argsort(reference, axis=1)
    top, second = order[:, -1], order[:, -2]
    margin = reference[rows, top] - reference[rows, second]
    spread = float(np.sqrt(np.mean(((logits[rows, top] - logits[rows, second]) - margin) ** 2)))
    if spread == 0.0:
        return 1.0
    phi = np.vectorize(lambda z: 0.5 * math.erfc(-z / math.sqrt(2)))
    return float(np.mean(phi(margin / spread)))


@dataclass
class BudgetResult:
    kept: list[str] = field(default_factory=list)  # layers kept in float, in the order they were kept
    sensitivity: dict[str, float] = field(default_factory=dict)  # layer -> normalised logit MSE it removes
    gain: dict[str, float] = field(default_factory=dict)  # layer -> expected agreement gained in float alone
    steps: list[tuple[int, Score]] = field(default_factory=list)  # (layers kept, score)

    def to_dict(self) -> dict:
        return {"kept_float": self.kept,
                "sensitivity": {k: round(v, 8) for k, v in self.sensitivity.items()},
                "expected_agreement_gain": {k: round(v, 6) for k, v in self.gain.items()},
                "steps": [{"kept": n, **s.to_dict()} for n, s in self.steps]}


def fit_budget(layers: list[str], evaluate: Callable[[frozenset[str]], np.ndarray], reference: np.ndarray,
               labels: np.ndarray | None, budget: Gates, macs: dict[str, int] | None = None) -> BudgetResult:
    """`evaluate(keep_float)` returns the INT8 model's logits with those layers in float; `macs`
    gives each layer's multiply-accumulates (missing: all cost the same)."""
    budget.check_labels(labels)
    result = BudgetResult()
    all_int8 = evaluate(frozenset())
    current = score(all_int8, reference, labels)
    result.steps.append((0, current))
    if current.meets(budget):
        return result
    log.info("INT8 misses the budget (%s); measuring each layer's sensitivity...", budget.describe())
    variance = float(np.var(reference)) or 1.0
    base = float(np.mean((all_int8 - reference) ** 2) / variance)
    expected = expected_agreement(all_int8, reference)
    for layer in progress(layers, desc="layer sensitivity", unit="layers"):
        logits = evaluate(frozenset({layer}))
        result.sensitivity[layer] = base - float(np.mean((logits - reference) ** 2) / variance)
        result.gain[layer] = expected_agreement(logits, reference) - expected
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
