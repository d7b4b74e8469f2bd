"""The on-device self-test of a bundle: replay its references through a loaded Predictor.

First the preprocessing of the reference images on this machine, then the model against the
reference logits (top-1 agreement, a floor per precision), then against its own logits recorded
by ONNX Runtime on the CPU when the bundle was made.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from rexport.console import fmt_err, fmt_pct, log, table
from rexport.errors import CheckFailed
from rexport.runtime.compare import compare
from rexport.runtime.gates import PREPROCESS_TOLERANCE, SAME_FILE_TOLERANCE, SELFTEST_AGREEMENT
from rexport.runtime.metadata import Precision

if TYPE_CHECKING:
    from rexport.runtime.bundle import Bundle


@dataclass
class SelfTestReport:
    model: str
    backend: str
    checks: list[tuple[str, str, bool]]  # (what, measured, passed)

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.checks)

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "passed": self.passed,
                "checks": [{"check": w, "result": r, "passed": ok} for w, r, ok in self.checks]}

    def format(self) -> str:
        rows = [(what, result, "ok" if ok else "FAIL") for what, result, ok in self.checks]
        return f"self-test of {self.model} on {self.backend}:\n" + table(("check", "result", ""), rows) + \
            f"\n{'PASS' if self.passed else 'FAIL'}"


def selftest(predictor) -> SelfTestReport:
    """Replay a bundle's references through a loaded Predictor; see the module docstring."""
    bundle: Bundle = predictor.bundle
    ref = bundle.reference()
    model_file = predictor.model_file.name
    checks: list[tuple[str, str, bool]] = []
    images = bundle.manifest["reference"].get("images") or []
    if images:
        got = predictor.preprocess([bundle.root / n for n in images])
        err = float(np.abs(got - ref["image_tensors"]).max())
        checks.append((f"preprocessing of {len(images)} reference image(s)", f"max abs {fmt_err(err)}", err <= PREPROCESS_TOLERANCE))
    logits = predictor.run(ref["inputs"])
    c = compare(logits, ref["reference"])
    floor = SELFTEST_AGREEMENT.get(predictor.info.precision, 0.75)
    checks.append((f"top-1 agreement with {bundle.manifest['reference']['source']} ({len(logits)} inputs)",
                   f"{fmt_pct(c.top1_agreement)} (needs {fmt_pct(floor)}), max abs {fmt_err(c.max_abs)}",
                   c.top1_agreement >= floor and c.nonfinite == 0))
    own = ref.get(f"outputs/{model_file}")
    if own is not None:  # the same file, recorded by ONNX Runtime on the CPU when bundled
        same = compare(logits, own, SAME_FILE_TOLERANCE)
        if predictor.info.precision == Precision.fp32:
            checks.append((f"same logits as when bundled (atol {SAME_FILE_TOLERANCE.atol:g}, "
                           f"rtol {SAME_FILE_TOLERANCE.rtol:g})", f"max abs {fmt_err(same.max_abs)}", same.passed))
        else:  # reduced precision: kernels differ between CPUs in rounding; the classes must not
            checks.append(("same top-1 as when bundled", f"{fmt_pct(same.top1_agreement)}, max abs "
                           f"{fmt_err(same.max_abs)}", same.top1_agreement == 1.0))
    report = SelfTestReport(model_file or str(predictor.source), predictor.backend.name, checks)
    if not report.passed:
        log.warning("warning: self-test failed: %s", "; ".join(w for w, _, ok in checks if not ok))
    return report


def require_pass(report: SelfTestReport) -> SelfTestReport:
    if not report.passed:
        raise CheckFailed(f"the self-test of {report.model} failed", report)
    return report
