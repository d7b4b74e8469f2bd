"""Activation statistics: run the FP32 model on calibration data and record, for every float
activation tensor, its min, max and a histogram of |x|. Every calibrator (minmax, percentile,
entropy, mse) works from these, so they are collected once and cached by model hash + data
hash: trying another method does not run the model again.

Two passes over the data: the first finds each tensor's range, the second fills a histogram of
|x| over [0, max|x|] with `BINS` bins (TensorRT's entropy calibrator uses 2048).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rexport.console import log, progress
from rexport.onnx_graph import onnx_module

BINS = 2048
STATS_VERSION = "1"  # bump when the format or the collection changes


@dataclass
class TensorStats:
    min: float
    max: float
    hist: np.ndarray  # counts of |x| in BINS equal bins over [0, absmax]

    @property
    def absmax(self) -> float:
        return max(abs(self.min), abs(self.max))

    @property
    def bin_width(self) -> float:
        return self.absmax / BINS if self.absmax > 0 else 1.0


def cache_dir() -> Path:
    root = os.environ.get("REXPORT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "rexport")
    return Path(root) / "calibration"


def activation_tensors(model, float16: bool = False) -> list[str]:
    """The graph input and every float32 (and, if asked, float16) tensor a node produces."""
    onnx = onnx_module()
    wanted = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16} if float16 else {onnx.TensorProto.FLOAT}
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {vi.name: vi.type.tensor_type.elem_type
             for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]}
    inits = {i.name for i in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in inits]
    names += [o for n in model.graph.node for o in n.output if o and o not in inits]
    return [n for n in dict.fromkeys(names) if types.get(n, onnx.TensorProto.FLOAT) in wanted]


def with_outputs(model, names: list[str]):
    """A copy of `model` that also outputs `names` (to read intermediate tensors)."""
    onnx = onnx_module()
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    inferred = onnx.shape_inference.infer_shapes(copy)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in inferred.graph.value_info}
    existing = {o.name for o in copy.graph.output}
    copy.graph.output.extend(onnx.helper.make_tensor_value_info(n, types.get(n, onnx.TensorProto.FLOAT), None)
                             for n in names if n not in existing)
    return copy


def run_intermediates(model, names: list[str], inputs: np.ndarray, batch_size: int = 16, desc: str = ""):
    """Yield {tensor name: array} for each batch of `inputs`, running the model in ONNX Runtime."""
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(with_outputs(model, names).SerializeToString(), providers=["CPUExecutionProvider"])
    session = backend.session
    input_name = session.get_inputs()[0].name
    starts = range(0, len(inputs), batch_size)
    for start in progress(starts, desc=desc, unit="batches") if desc else starts:
        values = session.run(names, {input_name: inputs[start:start + batch_size]})
        yield dict(zip(names, values))


def collect(model, inputs: np.ndarray, tensors: list[str], batch_size: int = 16) -> dict[str, TensorStats]:
    lo = {t: np.inf for t in tensors}
    hi = {t: -np.inf for t in tensors}
    for values in run_intermediates(model, tensors, inputs, batch_size, "calibration pass 1/2 (ranges)"):
        for t, v in values.items():
            lo[t] = min(lo[t], float(v.min()))
            hi[t] = max(hi[t], float(v.max()))
    hists = {t: np.zeros(BINS, np.int64) for t in tensors}
    for values in run_intermediates(model, tensors, inputs, batch_size, "calibration pass 2/2 (histograms)"):
        for t, v in values.items():
            top = max(abs(lo[t]), abs(hi[t]))
            if top == 0:
                hists[t][0] += v.size
                continue
            idx = np.minimum((np.abs(v.ravel()) * (BINS / top)).astype(np.int64), BINS - 1)
            hists[t] += np.bincount(idx, minlength=BINS)
    return {t: TensorStats(lo[t], hi[t], hists[t]) for t in tensors}


def collect_cached(model, model_bytes: bytes, inputs: np.ndarray, data_sha256: str,
                   batch_size: int = 16, use_cache: bool = True) -> tuple[dict[str, TensorStats], bool]:
    """Statistics for every activation tensor, from the cache when this model and data were seen.
    Returns (stats, cache_hit)."""
    key = hashlib.sha256(model_bytes + data_sha256.encode() + STATS_VERSION.encode()).hexdigest()[:32]
    path = cache_dir() / f"{key}.npz"
    tensors = activation_tensors(model)
    if use_cache and path.exists():
        stats = _load(path, tensors)
        if stats is not None:
            log.info("using cached activation statistics (%s)", path)
            return stats, True
    stats = collect(model, inputs, tensors, batch_size)
    if use_cache:
        _save(path, stats)
    return stats, False


def _load(path: Path, tensors: list[str]) -> dict[str, TensorStats] | None:
    """A cache entry, or None (logged) when it cannot be used: truncated, corrupt, or not what this
    version writes. A cache is an optimisation: such an entry is collected again and rewritten."""
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:  # np.load(path) leaks the file on a bad zip
            names, lo, hi, hist = (z[k] for k in ("names", "min", "max", "hist"))
        names = [str(n) for n in names.tolist()]
        if (names != tensors or lo.shape != (len(names),) or hi.shape != (len(names),)
                or hist.shape != (len(names), BINS) or hist.dtype.kind not in "iu" or lo.dtype.kind != "f"
                or hi.dtype.kind != "f"):
            raise ValueError("its arrays do not describe this model's activations")
        return {n: TensorStats(float(a), float(b), h.astype(np.int64)) for n, a, b, h in zip(names, lo, hi, hist)}
    except Exception as e:  # BadZipFile, EOFError, zlib.error, KeyError, ValueError, OSError, ...
        log.info("ignoring an unreadable statistics cache entry %s (%s: %s); collecting the statistics again",
                 path, type(e).__name__, " ".join(str(e).split()))
        return None


def _save(path: Path, stats: dict[str, TensorStats]) -> None:
    from rexport.files import atomic_output

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        names = list(stats)
        with atomic_output(path, overwrite=True) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, names=np.array(names), min=np.array([stats[n].min for n in names]),
                         max=np.array([stats[n].max for n in names]),
                         hist=np.stack([stats[n].hist for n in names]))
    except Exception as e:  # a cache is an optimisation: never fail the calibration over it
        log.info("activation statistics not cached: %s", " ".join(str(e).split()))
