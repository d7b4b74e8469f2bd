"""`rexport validate`: run every form of a model on the same data and report, in one table,
accuracy (top-1/top-5, when labels exist), top-1 agreement with the reference, max/mean
absolute error and cosine similarity; gates decide the exit code.

The reference is the PyTorch model when a checkpoint is given (needs torch), otherwise the
FP32 ONNX among the models (run by ONNX Runtime on the CPU).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport.console import fmt_err, fmt_pct, log, table
from rexport.errors import InputError, field_error
from rexport.runtime.backends.base import Backend
from rexport.runtime.compare import compare, topk_accuracy
from rexport.runtime.gates import Gates
from rexport.runtime.metadata import ModelInfo, Precision


@dataclass
class Row:
    name: str
    top1: float | None
    top5: float | None
    agreement: float | None = None  # None for the reference itself
    max_abs: float | None = None
    mean_abs: float | None = None
    cosine: float | None = None
    ms_per_image: float | None = None
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_dict(self) -> dict:
        return {**{k: v for k, v in self.__dict__.items()}, "passed": self.passed}


@dataclass
class ValidationReport:
    reference: str
    samples: int
    data: str
    gates: Gates
    rows: list[Row]

    @property
    def passed(self) -> bool:
        return all(r.passed for r in self.rows)

    def to_dict(self) -> dict:
        return {"reference": self.reference, "samples": self.samples, "data": self.data,
                "gates": self.gates.to_dict(),
                "passed": self.passed, "rows": [r.to_dict() for r in self.rows]}

    def format(self) -> str:
        labelled = any(r.top1 is not None for r in self.rows)
        timed = any(r.ms_per_image is not None for r in self.rows)
        head = ["model", *(["top-1", "top-5"] if labelled else []), "agreement", "max abs", "mean abs",
                "cosine", *(["ms/img"] if timed else []), "gate"]
        rows = []
        for r in self.rows:
            cells = [r.name, *([fmt_pct(r.top1), fmt_pct(r.top5)] if labelled else []),
                     "(reference)" if r.agreement is None else fmt_pct(r.agreement),
                     "-" if r.max_abs is None else fmt_err(r.max_abs),
                     "-" if r.mean_abs is None else fmt_err(r.mean_abs),
                     "-" if r.cosine is None else f"{r.cosine:.5f}",
                     *(["-" if r.ms_per_image is None else f"{r.ms_per_image:.2f}"] if timed else []),
                     "ok" if r.passed else "FAIL"]
            rows.append(cells)
        lines = [f"validation on {self.data}; reference: {self.reference}; gates: {self.gates.describe()}",
                 table(head, rows)]
        lines += [f"  FAIL {r.name}: {'; '.join(r.failures)}" for r in self.rows if r.failures]
        return "\n".join(lines)


def _timed(run, inputs: np.ndarray) -> tuple[np.ndarray, float]:
    start = time.perf_counter()
    out = run(inputs)
    return out, 1000 * (time.perf_counter() - start) / max(1, len(inputs))


def validate_outputs(reference: np.ndarray, candidates: dict[str, np.ndarray], labels: np.ndarray | None,
                     gates: Gates = Gates(), reference_name: str = "reference",
                     timings: dict[str, float] | None = None, data: str = "the given inputs") -> ValidationReport:
    """Score candidate logits against reference logits; apply the gates."""
    timings = timings or {}
    gates.check_labels(labels)

    def acc(x, k):
        return None if labels is None else topk_accuracy(x, labels, k)

    def nonfinite(logits: np.ndarray) -> list[str]:  # fails every row, the reference's too
        bad = int(np.size(logits) - np.count_nonzero(np.isfinite(logits)))
        return [f"{bad} of {np.size(logits)} outputs are NaN/Inf"] if bad else []

    ref_top1 = acc(reference, 1)
    rows = [Row(reference_name, ref_top1, acc(reference, 5), ms_per_image=timings.get(reference_name),
                failures=nonfinite(reference))]
    for name, logits in candidates.items():
        c = compare(logits, reference)
        row = Row(name, acc(logits, 1), acc(logits, 5), c.top1_agreement, c.max_abs, c.mean_abs, c.cosine,
                  timings.get(name), nonfinite(logits))
        row.failures += gates.failures(None if labels is None else 100 * (ref_top1 - row.top1), c.top1_agreement)
        rows.append(row)
    return ValidationReport(reference_name, len(reference), data, gates, rows)


def validate_backends(reference: Backend, candidates: dict[str, Backend], inputs: np.ndarray,
                      labels: np.ndarray | None = None, gates: Gates = Gates(),
                      reference_name: str = "ONNX FP32 (onnxruntime)", max_batch: int = 32,
                      data: str = "the given inputs") -> ValidationReport:
    """Run the reference and every candidate backend on `inputs` and score them."""
    timings: dict[str, float] = {}
    ref, timings[reference_name] = _timed(lambda x: reference.run_batched(x, max_batch), inputs)
    outputs = {}
    for name, backend in candidates.items():
        outputs[name], timings[name] = _timed(lambda x, b=backend: b.run_batched(x, max_batch), inputs)
    return validate_outputs(ref, outputs, labels, gates, reference_name, timings, data)


def model_label(path: Path, precision: str, backend: str) -> str:
    return f"{path.name} ({precision.upper()}, {backend})"


def _open_models(models: list[str | os.PathLike], backend: str, providers) -> list:
    """Predictors for every model file, expanding bundles into their models (an engine this
    machine cannot run is skipped with a warning when it comes from a bundle)."""
    from rexport.errors import CompatibilityError, MissingDependency
    from rexport.runtime import load
    from rexport.runtime.bundle import is_bundle, open_bundle

    opened = []
    for m in models:
        path = Path(m)
        if not path.exists():
            raise InputError(f"model {path} does not exist")
        if not is_bundle(path):
            opened.append(load(path, backend=backend, providers=providers))
            continue
        bundle = open_bundle(path)
        files = [e["file"] for e in bundle.models]
        bundle.cleanup()
        for file in files:
            try:
                opened.append(load(path, model=file, backend=backend, providers=providers))
            except (MissingDependency, CompatibilityError) as e:
                log.warning("warning: skipping %s from %s: %s", file, path.name, e)
    return opened


def _one_model(infos: list[ModelInfo]) -> ModelInfo:
    """The FP32 form's description (else the first's), once every form is checked to be one model's."""
    base = next((i for i in infos if i.precision == Precision.fp32), infos[0])
    if any(i.input_shape != base.input_shape or i.num_classes != base.num_classes for i in infos):
        raise InputError("the models take different inputs or have different classes; validate one model's forms")
    if any(i.preprocess != base.preprocess for i in infos):
        log.warning("warning: the models record different preprocessing; using %s's", base.arch)
    return base


def validate(models: list[str | os.PathLike], data: str | None = None, *, checkpoint: str | os.PathLike | None = None,
             samples: int | None = None, seed: int = 0, gates: Gates = Gates(), backend: str = "auto",
             providers="cpu",
             preprocess=None, unsafe_pickle: bool = False) -> ValidationReport:
    """Validate ONNX files, engines and bundles on `data` against a reference: PyTorch when a
    checkpoint is given; else, without data, a bundle's stored reference logits on its reference
    inputs; else the FP32 ONNX among the models."""
    from rexport.runtime.data import load_dataset

    if not models:
        raise InputError("give at least one model to validate")
    predictors = _open_models(models, backend, providers)
    try:
        infos = [p.info for p in predictors]
        base = _one_model(infos)
        stored = None
        if data is None:
            stored = next((p.bundle for p in predictors if p.bundle is not None), None)
            if stored is None:
                raise field_error("validate", "give data (images, .npy/.npz or demo); only a bundle carries its "
                                  "own reference inputs", "data")
            ref_arrays = stored.reference()
            inputs, labels = ref_arrays["inputs"], None
            what = f"the {len(inputs)} reference inputs of {stored.root.name}"
        else:
            pre = preprocess.apply(base.preprocess) if preprocess else base.preprocess
            dataset = load_dataset(data, base, samples=samples, seed=seed, preprocess=pre)
            inputs, labels, what = dataset.inputs, dataset.labels, dataset.describe()
        gates.check_labels(labels)
        outputs, timings = {}, {}
        for p in predictors:
            name = model_label(p.model_file, p.info.precision, p.backend.name)
            outputs[name], timings[name] = _timed(p.run, inputs)
    finally:
        for p in predictors:
            p.close()

    if checkpoint is not None:
        from rexport.runtime.backends.pytorch import PyTorchBackend

        torch_model = PyTorchBackend.from_checkpoint(checkpoint, base, unsafe_pickle)
        ref_name = torch_model.name
        reference, timings[ref_name] = _timed(lambda x: torch_model.run_batched(x, 64), inputs)
        candidates = outputs
    elif stored is not None:
        ref_name = f"{stored.manifest['reference']['source']} (stored in the bundle)"
        reference, candidates = ref_arrays["reference"], outputs
    else:
        ref_index = next((k for k, i in enumerate(infos) if i.precision == Precision.fp32), None)
        if ref_index is None:
            raise field_error("validate", "no reference: include the FP32 ONNX among the models, give checkpoint "
                              "(the PyTorch model, needs torch), or validate a bundle without data", "checkpoint",
                              "data")
        ref_name = list(outputs)[ref_index]
        reference = outputs[ref_name]
        candidates = {k: v for k, v in outputs.items() if k != ref_name}
    return validate_outputs(reference, candidates, labels, gates, ref_name, timings, what)
