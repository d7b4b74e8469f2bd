"""FP32 ONNX + calibration data -> INT8 (Q/DQ) ONNX: `rexport calibrate`, `quantize()`.

    read the FP32 model and its description (preprocessing, input) from metadata_props
    -> calibration data (data.py) -> activation statistics (stats.py, cached)
    -> thresholds by method (observers.py) -> refinements: ranges by layer output error, GPTQ
       weight rounding, bias correction (refine.py) -> Q/DQ for the target (qdq.py)
    -> TensorRT rules check (rules.py, trt target) -> score against FP32 on validation data
       (held out from the calibration data unless given)
    -> accuracy budget: keep the worst layers in float until it holds (budget.py)
    -> census (census.py) -> the INT8 ONNX + (trt target) TensorRT 10 calibration cache
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport.calibration.budget import BudgetResult, Score, fit_budget
from rexport.calibration.cache import DEFAULT_TRT_VERSION, write_calibration_cache
from rexport.calibration.census import Census, census
from rexport.runtime.data import Dataset, load_dataset
from rexport.calibration.fp16 import read_model
from rexport.calibration.observers import METHODS, threshold
from rexport.calibration.qdq import (SAME_SCALE, TARGETS, QParams, activation_qparams, insert_qdq,
                                     quantizable_nodes, uses_reduce_range)
from rexport.calibration.refine import REFINEMENTS, refine
from rexport.calibration.rules import check_trt_rules
from rexport.calibration.stats import TensorStats, collect_cached
from rexport.console import fmt_pct, log

HOLDOUT = 256  # samples held out of the calibration data to score on, when no --val-data is given
MIN_HOLDOUT_POOL = 64  # with fewer samples than this, score on the calibration data (and say so)
AGREEMENT_FLOOR = 0.90  # below this top-1 agreement with FP32 the report warns
from rexport.errors import CheckFailed, InputError, field_error
from rexport.runtime.gates import Gates
from rexport.files import atomic_output, check_output
from rexport.onnx_graph import onnx_module, producers
from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
from rexport.runtime.metadata import ModelInfo, Precision
from rexport.runtime.preprocess import PreprocessOverrides


@dataclass(frozen=True)
class QuantizeConfig:
    """Options of `rexport calibrate`: its flags fill these fields (rexport/options.py). Errors name
    the fields; the CLI says the flags."""

    calib_data: str  # image folder, .npy/.npz, or demo[:train|:test]
    calib_method: str = "entropy"
    target: str = "trt"
    # cpu target: weights in [-64, 64] so x86 CPUs without VNNI compute exactly (None: yes for cpu,
    # no for trt); False keeps [-127, 127] for files that only run on x86 CPUs with VNNI
    reduce_range: bool | None = None
    calib_samples: int = 512
    seed: int = 0
    percentile: float = 99.99
    preprocess: PreprocessOverrides | None = None
    val_data: str | None = None  # scores and the budget use this; default: the calibration data
    val_samples: int | None = None
    budget: Gates = Gates()
    calib_refine: tuple[str, ...] = REFINEMENTS  # after calibration: ranges, gptq, bias (refine.py); () for none
    keep_float: tuple[str, ...] = ()
    calib_cache: str | None = None  # TensorRT 10 calibration cache path; default OUTPUT with .cache (trt target)
    trt_version: str = DEFAULT_TRT_VERSION  # for the cache header
    use_stats_cache: bool = True
    batch_size: int = 16
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.calib_method not in METHODS:
            raise field_error(self, f"calib_method must be one of {', '.join(METHODS)}, not {self.calib_method!r}",
                              "calib_method")
        if self.target not in TARGETS:
            raise field_error(self, f"target must be trt (TensorRT: int8 symmetric) or cpu (ONNX Runtime: uint8), "
                              f"not {self.target!r}", "target")
        uses_reduce_range(self.target, self.reduce_range)  # refuses reduce_range for TensorRT
        if not 0 < self.percentile <= 100:
            raise field_error(self, f"percentile must be in (0, 100], not {self.percentile}", "percentile")
        unknown = [r for r in self.calib_refine if r not in REFINEMENTS]
        if unknown:
            raise field_error(self, f"calib_refine takes {', '.join(REFINEMENTS)}, all or none, not {unknown[0]!r}",
                              "calib_refine")
        for name in ("calib_samples", "batch_size"):
            if getattr(self, name) < 1:
                raise field_error(self, f"{name} must be at least 1, not {getattr(self, name)}", name)


@dataclass
class QuantizeResult:
    path: Path
    cache_path: Path | None
    info: ModelInfo
    census: Census
    calibration: Dataset
    validation: Dataset
    score: Score  # the final INT8 model against FP32 on the validation data
    budget: BudgetResult
    config: QuantizeConfig
    stats_cache_hit: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"output": str(self.path), "calibration_cache": str(self.cache_path) if self.cache_path else None,
                "method": self.config.calib_method, "target": self.config.target,
                "reduce_range": uses_reduce_range(self.config.target, self.config.reduce_range),
                "refine": list(self.config.calib_refine),
                "calibration_data": self.calibration.describe(), "validation_data": self.validation.describe(),
                "score": self.score.to_dict(), "census": self.census.to_dict(), "budget": self.budget.to_dict(),
                "stats_cache_hit": self.stats_cache_hit, "seconds": round(self.seconds, 2), "notes": self.notes}

    def format(self) -> str:
        c = self.config
        s = self.score
        lines = [f"INT8 ({c.target} target, {c.calib_method}{_weights_note(c)}, "
                 f"refine: {', '.join(c.calib_refine) or 'none'}) -> {self.path} "
                 f"({self.path.stat().st_size / 1e6:.1f} MB, "
                 f"{self.seconds:.1f}s)",
                 f"  calibrated on {self.calibration.describe()}" +
                 (" [cached statistics]" if self.stats_cache_hit else ""),
                 f"  {self.census.format()}",
                 f"  vs FP32 on {self.validation.describe()}: top-1 agreement {fmt_pct(s.agreement)}" +
                 ("" if s.top1 is None else
                  f", top-1 {fmt_pct(s.top1)} (FP32 {fmt_pct(s.reference_top1)}, drop {s.top1_drop:.2f} points)")]
        if c.budget.active:
            lines.append(f"  budget {c.budget.describe()}: {'met' if s.meets(c.budget) else 'MISSED'}" +
                         (f", {len(self.budget.kept)} layer(s) kept in float" if self.budget.kept else ""))
        if self.cache_path:
            lines.append(f"  TensorRT 10 calibration cache -> {self.cache_path}")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _weights_note(config: QuantizeConfig) -> str:
    """What the report says about the cpu target's weight range."""
    if config.target != "cpu":
        return ""
    return ", reduce_range" if uses_reduce_range(config.target, config.reduce_range) else ", full-range weights"


def activation_params(model, stats: dict[str, TensorStats], method: str, target: str,
                      percentile: float) -> dict[str, QParams]:
    """Per-tensor Q parameters; pooling/reshaping outputs reuse their input's (cpu target)."""
    params = {}
    for name, st in stats.items():
        levels = 255 if (target == "cpu" and st.min >= 0) else 127
        params[name] = activation_qparams(st.min, st.max, target,
                                          threshold(st, method, percentile=percentile, levels=levels))
    if target == "cpu":
        for node in model.graph.node:  # in graph order, so chains of same-scale ops propagate
            if node.op_type in SAME_SCALE and node.input[0] in params:
                params[node.output[0]] = params[node.input[0]]
    return params


def _held_out(config: QuantizeConfig, info: ModelInfo, pre, notes: list[str]):
    """Calibration data and held-out scoring data from one source (HOLDOUT samples set aside)."""
    wanted = config.val_samples or HOLDOUT
    pool = load_dataset(config.calib_data, info, samples=config.calib_samples + wanted, seed=config.seed,
                        preprocess=pre)
    if len(pool) < MIN_HOLDOUT_POOL:
        notes.append(f"scored on the calibration data itself ({len(pool)} samples, too few to hold any out): "
                     "the agreement is optimistic; give other images as validation data")
        return pool, pool
    keep = min(config.calib_samples, len(pool) - len(pool) // 4)  # a short pool still scores on a quarter of it
    return pool.split(min(wanted, len(pool) - keep), config.seed, keep=keep)


def _logits(model_bytes: bytes, inputs: np.ndarray) -> np.ndarray:
    return OnnxRuntimeBackend(model_bytes, providers=["CPUExecutionProvider"]).run_batched(inputs, 64)


def quantize(onnx_path: str | os.PathLike, output: str | os.PathLike, config: QuantizeConfig) -> QuantizeResult:
    """Calibrate and quantize an FP32 rexport ONNX; see the module docstring for the steps."""
    start = time.monotonic()
    onnx_module()  # a missing onnx is said first, naming the extra to install
    output, cache_path = _outputs(onnx_path, output, config)
    model, info = read_model(onnx_path)
    if info.precision != Precision.fp32:
        raise InputError(f"{onnx_path} is {info.precision}; calibrate the FP32 export instead")
    notes = []
    calib, val = _datasets(config, info, notes)
    if config.target == "cpu" and not uses_reduce_range(config.target, config.reduce_range):
        notes.append("weights in [-127, 127] (reduce_range off): x86 CPUs without VNNI saturate int16 sums and "
                     "lose accuracy on this file; run it only on CPUs with VNNI")

    # the loaded model, not the file: its external data (weights beside the .onnx) is read in, and
    # ONNX Runtime cannot resolve external data for a model given as bytes
    model_bytes = model.SerializeToString()
    stats, cache_hit = collect_cached(model, model_bytes, calib.inputs, calib.sha256, config.batch_size,
                                      config.use_stats_cache)
    params = activation_params(model, stats, config.calib_method, config.target, config.percentile)
    layers = [n.name for n in quantizable_nodes(model) if n.name not in config.keep_float]
    requested = frozenset(config.keep_float)
    refined = refine(model, params, stats, calib.inputs, target=config.target, reduce_range=config.reduce_range,
                     refinements=config.calib_refine, keep_float=set(requested), batch_size=config.batch_size,
                     seed=config.seed)
    params = refined.params

    def build(keep: frozenset[str]):
        return insert_qdq(model, params, config.target, requested | keep, config.reduce_range, refined.rounded,
                          {n: b for n, b in refined.bias_shift.items() if n not in keep})

    reference = _logits(model_bytes, val.inputs)
    budget = fit_budget(layers, lambda keep: _logits(build(keep).SerializeToString(), val.inputs), reference,
                        val.labels, config.budget, census(model).macs)
    final_score = budget.steps[-1][1]
    _check_score(final_score, budget, val, config, notes)
    qmodel = build(frozenset(budget.kept))
    if config.target == "trt":
        check_trt_rules(qmodel)
    counts = _census(qmodel, budget, config, notes)
    info = _int8_info(info, config, calib, counts, final_score)
    _save(qmodel, info, output, config, cache_path, model, stats, params)
    log.info("INT8: %s", counts.format())
    return QuantizeResult(output, cache_path, info, counts, calib, val, final_score, budget, config, cache_hit,
                          time.monotonic() - start, notes)


def _outputs(onnx_path: str | os.PathLike, output: str | os.PathLike,
             config: QuantizeConfig) -> tuple[Path, Path | None]:
    """The INT8 ONNX and (trt target) the calibration cache, checked before any work, never onto an input."""
    reads = [onnx_path, *(Path(d) for d in (config.calib_data, config.val_data) if d and Path(d).exists())]
    output = check_output(output, overwrite=config.overwrite, inputs=reads)  # never onto an input
    cache_path = None
    if config.target == "trt":
        cache_path = check_output(config.calib_cache or output.with_suffix(".cache"), overwrite=config.overwrite,
                                  inputs=[*reads, output])
    return output, cache_path


def _datasets(config: QuantizeConfig, info: ModelInfo, notes: list[str]) -> tuple[Dataset, Dataset]:
    """The calibration data and the data to score on (--val-data, else held out of the calibration data)."""
    pre = config.preprocess.apply(info.preprocess) if config.preprocess else info.preprocess
    if config.val_data is None:
        return _held_out(config, info, pre, notes)
    calib = load_dataset(config.calib_data, info, samples=config.calib_samples, seed=config.seed, preprocess=pre)
    val = load_dataset(config.val_data, info, samples=config.val_samples, seed=config.seed,
                                preprocess=pre)
    return calib, val


def _check_score(score: Score, budget: BudgetResult, val: Dataset, config: QuantizeConfig, notes: list[str]) -> None:
    """Warn below AGREEMENT_FLOOR; CheckFailed when the budget is missed even with layers kept in float."""
    if score.agreement < AGREEMENT_FLOOR:
        warning = (f"INT8 agrees with FP32 on only {fmt_pct(score.agreement)} of {val.describe()}: check "
                   "that the calibration data looks like the model's real inputs and is preprocessed the same "
                   "way (mean, std, resize), or set an accuracy gate (min_agreement or max_top1_drop) that keeps "
                   "sensitive layers in float")
        log.warning("warning: %s", warning)
        notes.append(warning)
    if config.budget.active and not score.meets(config.budget):
        raise CheckFailed(f"the INT8 model misses the budget ({config.budget.describe()}) even with "
                          f"{len(budget.kept)} layer(s) in float; check the calibration data and preprocessing")


def _census(qmodel, budget: BudgetResult, config: QuantizeConfig, notes: list[str]) -> Census:
    """What runs in INT8 and why each float layer stayed float."""
    reasons = {n: "kept by request" for n in config.keep_float}
    reasons.update({n: f"kept for the accuracy budget (sensitivity {budget.sensitivity[n]:.2e})"
                    for n in budget.kept})
    counts = census(qmodel, reasons)
    if counts.int8_mac_share < 0.5:
        notes.append(f"only {100 * counts.int8_mac_share:.0f}% of the MACs run in INT8: expect little speed-up; "
                     "check the calibration data and preprocessing")
    return counts


def _int8_info(info: ModelInfo, config: QuantizeConfig, calib: Dataset, counts: Census, score: Score) -> ModelInfo:
    """The INT8 model's description: its precision and how it was calibrated."""
    return info.replace(precision=Precision.int8, calibration={
        "method": config.calib_method, "target": config.target,
        "reduce_range": uses_reduce_range(config.target, config.reduce_range), "refine": list(config.calib_refine),
        "percentile": config.percentile if config.calib_method == "percentile" else None,
        "samples": len(calib), "data": calib.source, "data_sha256": calib.sha256,
        "census": counts.to_dict(), "score": score.to_dict(),
        "budget": config.budget.describe() if config.budget.active else None})


def _save(qmodel, info: ModelInfo, output: Path, config: QuantizeConfig, cache_path: Path | None, model,
          stats: dict[str, TensorStats], params: dict[str, QParams]) -> None:
    """Write the checked INT8 ONNX with its metadata and (trt target) its TensorRT 10 calibration cache."""
    onnx = onnx_module()
    info.write(qmodel)
    onnx.checker.check_model(qmodel, full_check=True)
    with atomic_output(output, overwrite=config.overwrite) as tmp:
        onnx.save(qmodel, str(tmp))
        if cache_path is not None:  # trt target: every scale is the tensor's threshold / 127
            fp32_tensors = set(producers(model.graph)) | {i.name for i in model.graph.input}
            scales = {n: params[n].scale for n in stats if n in fp32_tensors}
            write_calibration_cache(cache_path, scales, method=config.calib_method, trt_version=config.trt_version,
                                    overwrite=config.overwrite)
