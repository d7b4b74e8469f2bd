"""The one pipeline: checkpoint -> verified ONNX -> FP16 -> calibrated INT8 -> validated bundle.

`rexport onnx --fp16 --int8 --bundle DIR` and `rexport demo` both run `run_pipeline`. Each step
is the public function of its package (`export_onnx`, `to_fp16`, `quantize`, `validate`,
`make_bundle`); this module only decides the file names and passes each step's output on:

    MODEL.onnx                 export_onnx, checked against PyTorch
    MODEL.fp16.onnx            to_fp16 (fp16=True)
    MODEL.int8.onnx            quantize, one per QuantizeConfig (several: MODEL.int8-<target>.onnx)
    BUNDLE/                    every form above, validated on val_data against PyTorch
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rexport.console import log
from rexport.errors import InputError, field_error
from rexport.runtime.gates import Gates


@dataclass(frozen=True)
class PipelineConfig:
    export: Any  # ExportConfig (rexport.exporter; imported lazily: the pipeline needs torch only to run)
    fp16: bool = False
    fp16_data: str | None = None  # samples that check the FP16 range (64 of them); default: random inputs
    int8: tuple = ()  # QuantizeConfigs, one INT8 model each
    bundle: str | None = None  # the bundle directory; None: no bundle
    val_data: str | None = None  # the bundle's reference inputs and the validation of every form
    gates: Gates = Gates()  # the validation's gates (needs val_data)

    def __post_init__(self) -> None:
        targets = [q.target for q in self.int8]
        if len(set(targets)) != len(targets):
            raise field_error(self, f"one INT8 model per target, not {', '.join(targets)}", "int8")


def sibling(path: str | Path, tag: str) -> Path:
    """model.onnx -> model.<tag>.onnx"""
    path = Path(path)
    return path.with_name(f"{path.stem}.{tag}{path.suffix or '.onnx'}")


def int8_path(output: str | Path, config: PipelineConfig, quantize_config) -> Path:
    return sibling(output, "int8" if len(config.int8) == 1 else f"int8-{quantize_config.target}")


def planned_outputs(output: str | Path, config: PipelineConfig) -> dict[str, Path | None]:
    """Every file `run_pipeline` writes, by what it is: checked before any work starts."""
    files: dict[str, Path | None] = {"output": Path(output), "FP16 output": sibling(output, "fp16") if config.fp16
                                     else None}
    for q in config.int8:
        path = int8_path(output, config, q)
        files[f"INT8 output ({q.target})"] = path
        if q.target == "trt":
            files[f"calibration cache ({q.target})"] = Path(q.calib_cache or path.with_suffix(".cache"))
    return files


@dataclass
class PipelineResult:
    export: Any  # ExportResult
    fp16: Any = None  # Fp16Result
    int8: list = field(default_factory=list)  # QuantizeResults
    validation: Any = None  # ValidationReport of every form, when val_data is given
    bundle: Path | None = None

    @property
    def models(self) -> list[Path]:
        return [self.export.path, *([self.fp16.path] if self.fp16 else []), *(q.path for q in self.int8)]

    @property
    def passed(self) -> bool:
        return self.validation is None or self.validation.passed

    def to_dict(self) -> dict:
        out: dict = {"export": self.export.to_dict()}
        if self.fp16:
            out["fp16"] = {"output": str(self.fp16.path), "kept_fp32": self.fp16.kept_fp32}
        if self.int8:
            out["int8"] = self.int8[0].to_dict() if len(self.int8) == 1 else [q.to_dict() for q in self.int8]
        if self.validation is not None:
            out["validation"] = self.validation.to_dict()
        if self.bundle is not None:
            out["bundle"] = str(self.bundle)
        return out

    def sections(self) -> list[tuple[str, str]]:
        """(title, text) of each step that ran."""
        out = [("export to ONNX", self.export.format())]
        if self.fp16 or self.int8:
            reduced = [*([self.fp16.format()] if self.fp16 else []), *(q.format() for q in self.int8)]
            out.append(("FP16 and calibrated INT8" if self.fp16 and self.int8 else
                        "FP16" if self.fp16 else "calibrated INT8", "\n".join(reduced)))
        if self.validation is not None:
            out.append(("every form side by side", self.validation.format()))
        if self.bundle is not None:
            out.append(("bundle for the device", f"bundle -> {self.bundle}"))
        return out

    def format(self) -> str:
        return "\n".join(text for _, text in self.sections())


def run_pipeline(checkpoint: str | os.PathLike, output: str | os.PathLike, config: PipelineConfig, *,
                 overwrite: bool = False) -> PipelineResult:
    """Export `checkpoint` to `output` and make the forms `config` asks for (see the module docstring)."""
    from rexport.calibration import quantize, to_fp16
    from rexport.exporter import export_onnx
    from rexport.runtime.data import load_dataset

    if config.gates.active and config.val_data is None:
        raise InputError("gates need validation data: give val_data, or no gates")
    result = PipelineResult(export_onnx(checkpoint, output, config.export))
    if config.fp16:
        inputs = load_dataset(config.fp16_data, result.export.info, samples=64).inputs if config.fp16_data else None
        result.fp16 = to_fp16(output, sibling(output, "fp16"), inputs=inputs, overwrite=overwrite)
    result.int8 = [quantize(output, int8_path(output, config, q), q) for q in config.int8]
    if config.val_data is not None:
        from rexport.runtime.validate import validate

        log.info("validating every form on %s...", config.val_data)
        result.validation = validate(result.models, config.val_data, checkpoint=checkpoint, gates=config.gates)
    if config.bundle is not None:
        from rexport.runtime.bundle import make_bundle

        result.bundle = make_bundle(result.models, config.bundle, data=config.val_data, checkpoint=checkpoint,
                                    validation=result.validation, overwrite=overwrite)
    return result
