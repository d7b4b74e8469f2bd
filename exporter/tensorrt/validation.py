"""The check after a build: run the engine and ONNX Runtime (CPU) on the same inputs and gate
the engine's top-1 agreement (and, with labels, its top-1 drop) against the reference ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rexport.console import log
from rexport.errors import field_error
from rexport.exporter.tensorrt.config import BuildConfig
from rexport.runtime.gates import DEFAULT_AGREEMENT, Gates
from rexport.runtime.engine_sidecar import EngineSidecar
from rexport.runtime.metadata import ModelInfo


def validation_inputs(config: BuildConfig, info: ModelInfo | None, shape: tuple[int, ...],
                      count: int) -> tuple[np.ndarray, np.ndarray | None, str]:
    """Inputs for validation: val_data (else calib_data) through load_dataset, else random."""
    source = config.val_data or config.calib_data
    if source is None:
        rng = np.random.default_rng(config.seed)
        return rng.standard_normal((count, *shape), dtype=np.float32), None, "random inputs"
    if info is None:
        raise field_error(config, f"{source} cannot be preprocessed without the model's rexport metadata; leave "
                          "out val_data to validate on random inputs", "val_data")
    from rexport.runtime.data import load_dataset

    data = load_dataset(source, info, samples=count, seed=config.seed)
    return np.asarray(data.inputs, dtype=np.float32)[:count], getattr(data, "labels", None), str(source)


def validate_engine(engine: Path, sidecar: EngineSidecar, reference: Path, intermediate: Path | None,
              config: BuildConfig, info: ModelInfo | None) -> Any:
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from rexport.runtime.backends.tensorrt import TensorRTBackend
    from rexport.runtime.validate import validate_backends

    with TensorRTBackend(engine, sidecar=sidecar, runtime_cache=False) as trt_backend:  # engine: a temporary name
        inputs, labels, what = validation_inputs(config, info, trt_backend.profile[1][1:], config.val_samples)
        if len(inputs) < trt_backend.min_batch:
            raise field_error(config, f"only {len(inputs)} validation samples for an engine whose min batch is "
                              f"{trt_backend.min_batch}; give more val_samples or data", "val_samples")
        if labels is not None:
            labels = np.asarray(labels)[:len(inputs)]
        log.info("validating the engine against ONNX Runtime (CPU) on %d %s...", len(inputs), what)
        candidates = {}
        if intermediate is not None:
            candidates[f"onnxruntime {sidecar.built_from.get('precision')} (cpu)"] = OnnxRuntimeBackend(
                intermediate, providers=["CPUExecutionProvider"])
        candidates[f"tensorrt {sidecar.precision}"] = trt_backend
        reference_backend = OnnxRuntimeBackend(reference, providers=["CPUExecutionProvider"])
        agreement = config.min_agreement if config.min_agreement is not None else DEFAULT_AGREEMENT.get(
            sidecar.precision, 0.95)
        return validate_backends(reference_backend, candidates, inputs, labels,
                                 Gates(max_top1_drop=config.max_top1_drop, min_agreement=agreement),
                                 reference_name=f"onnxruntime {reference.name} (cpu)",
                                 max_batch=trt_backend.max_batch, data=f"{len(inputs)} {what}")
