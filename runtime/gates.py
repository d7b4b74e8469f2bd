"""Every quality gate and tolerance rexport applies, in one place.

- `Tolerance`: how close two tensors of logits must be, element by element (numpy's `allclose`:
  `|candidate - reference| <= atol + rtol * |reference|`). Export parity uses the default.
- `Gates`: how close a model's *classifications* must stay to a reference's: the top-1 drop in
  percentage points (needs labels) and/or the top-1 agreement. `validate`, the engine validation
  of `rexport trt` and the INT8 accuracy budget (`QuantizeConfig.budget`) all take one.
- The defaults each check uses when the user gives none: `DEFAULT_AGREEMENT` (a built engine
  against its ONNX), `SELFTEST_AGREEMENT`, `SAME_FILE_TOLERANCE` and `PREPROCESS_TOLERANCE` (a
  bundle's self-test on the device).
"""

from __future__ import annotations

from dataclasses import dataclass

from rexport.errors import field_error


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-3
    rtol: float = 1e-3

    def __post_init__(self) -> None:
        if not (self.atol >= 0 and self.rtol >= 0):
            raise field_error(self, f"tolerances must be >= 0, got atol={self.atol} rtol={self.rtol}", "atol", "rtol")


@dataclass(frozen=True)
class Gates:
    max_top1_drop: float | None = None  # percentage points below the reference's top-1 (needs labels)
    min_agreement: float | None = None  # top-1 agreement with the reference, 0..1

    def __post_init__(self) -> None:
        if self.max_top1_drop is not None and self.max_top1_drop < 0:
            raise field_error(self, f"max_top1_drop must be >= 0 points, not {self.max_top1_drop}", "max_top1_drop")
        if self.min_agreement is not None and not 0 <= self.min_agreement <= 1:
            raise field_error(self, f"min_agreement must be a fraction between 0 and 1, not {self.min_agreement}",
                              "min_agreement")

    @property
    def active(self) -> bool:
        return self.max_top1_drop is not None or self.min_agreement is not None

    def check_labels(self, labels) -> None:
        """max_top1_drop compares accuracies: it needs labels."""
        if self.max_top1_drop is not None and labels is None:
            raise field_error(self, "max_top1_drop needs labelled data (class subfolders or an .npz with labels); "
                              "use min_agreement for unlabelled data", "max_top1_drop", "min_agreement")

    def failures(self, top1_drop: float | None, agreement: float) -> list[str]:
        """What a model with this top-1 drop (points; None without labels) and agreement fails."""
        failed = []
        if self.max_top1_drop is not None:
            if top1_drop is None:
                failed.append("top-1 drop unknown (no labels)")
            elif top1_drop > self.max_top1_drop + 1e-9:
                failed.append(f"top-1 drop {top1_drop:.2f} points > {self.max_top1_drop:g}")
        if self.min_agreement is not None and agreement < self.min_agreement - 1e-12:
            failed.append(f"agreement {100 * agreement:.2f}% < {100 * self.min_agreement:.2f}%")
        return failed

    def describe(self) -> str:
        parts = ([f"top-1 drop <= {self.max_top1_drop:g} points"] if self.max_top1_drop is not None else []) + \
                ([f"top-1 agreement >= {100 * self.min_agreement:g}%"] if self.min_agreement is not None else [])
        return " and ".join(parts) or "none (outputs must be finite)"

    def to_dict(self) -> dict:
        return {"max_top1_drop": self.max_top1_drop, "min_agreement": self.min_agreement}


# A built TensorRT engine against its ONNX (ONNX Runtime, CPU), unless min_agreement says otherwise.
DEFAULT_AGREEMENT = {"fp32": 0.99, "fp16": 0.99, "int8": 0.95, "mixed": 0.95}

# A bundle's self-test on the device: top-1 agreement with the bundled reference (PyTorch or FP32),
SELFTEST_AGREEMENT = {"fp32": 1.0, "fp16": 0.95, "int8": 0.75, "mixed": 0.75}
# the same FP32 file's logits as recorded when bundled (another machine, another kernel order),
SAME_FILE_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-3)
# and the preprocessing of the bundled reference images (max abs difference of the tensors).
PREPROCESS_TOLERANCE = 1e-5
