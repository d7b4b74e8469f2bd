"""PyTorch checkpoint -> verified ONNX.

    load_model (checkpoint.py) -> torch.onnx.export (batch >= 2, dynamic batch axis)
    -> metadata_props (ModelInfo) -> shape inference -> onnx.checker (full_check)
    -> parity: ONNX Runtime vs the PyTorch model at batch 1 and a larger batch,
       on random inputs and on real images when given
    -> renamed into place only if every check passed.

BatchNorm is folded into the preceding convolutions by the exporter (checked: a Conv ->
BatchNormalization pair left in the graph is an error); pre-activation networks keep the
BatchNorms that follow additions, where nothing can absorb them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rexport import __version__
from rexport.console import fmt_err, fmt_pct, log, table
from rexport.errors import CheckFailed, InputError, RexportError, field_error, qualified, require
from rexport.exporter import DEFAULT_OPSET, EXPORTERS
from rexport.exporter.checkpoint import Checkpoint, LoadedModel, load_model
from rexport.files import atomic_output, check_output
from rexport.onnx_graph import consumers, fold_constants, producers
from rexport.runtime.compare import Comparison, compare
from rexport.runtime.gates import Tolerance
from rexport.runtime.metadata import BatchRange, ModelInfo
from rexport.runtime.preprocess import Preprocess, PreprocessOverrides

INPUT_NAME, OUTPUT_NAME = "input", "logits"


@dataclass(frozen=True)
class ParityConfig:
    """How the exported file is checked against PyTorch."""

    enabled: bool = True
    tolerance: Tolerance = Tolerance()
    batch_sizes: tuple[int, ...] = (1, 8)  # clipped into the model's batch range
    images: str | None = None  # a directory of real images (searched recursively)
    max_images: int = 64
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise InputError(f"parity batch sizes must be >= 1, not {self.batch_sizes}")
        if self.max_images < 1:
            raise InputError(f"max_images must be >= 1, not {self.max_images}")


@dataclass(frozen=True)
class ExportConfig:
    """Options of `rexport onnx`; CLI flags map one to one onto these fields."""

    arch: str
    num_classes: int | None = None
    input_size: tuple[int, int] | None = None  # (height, width); default: the arch's
    batch: BatchRange = BatchRange()
    opset: int = DEFAULT_OPSET
    exporter: str = "torchscript"
    labels: tuple[str, ...] | None = None
    preprocess: Preprocess | PreprocessOverrides | None = None  # default: ImageNet / CIFAR preset
    key_map: tuple[tuple[str, str], ...] = ()
    shortcut: str | None = None
    unsafe_pickle: bool = False
    parity: ParityConfig = ParityConfig()
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.exporter not in EXPORTERS:
            raise field_error(self, f"exporter must be one of {', '.join(EXPORTERS)}, not {self.exporter!r}",
                              "exporter")
        lo, hi = EXPORTERS[self.exporter]
        if not isinstance(self.opset, int) or not lo <= self.opset <= hi:
            raise field_error(self, f"opset {self.opset} is not supported by the {self.exporter} exporter; choose "
                              f"{lo} to {hi} (default {DEFAULT_OPSET if self.exporter == 'torchscript' else lo})",
                              "opset")
        if self.input_size is not None:
            size = tuple(int(v) for v in self.input_size)
            if len(size) != 2 or min(size) < 8:
                raise field_error(self, f"input_size must be at least 8x8, not {self.input_size}", "input_size")
            object.__setattr__(self, "input_size", size)
        object.__setattr__(self, "batch", BatchRange.parse(self.batch))


@dataclass
class ParityCase:
    inputs: str  # "random" or "images"
    batch: int
    comparison: Comparison
    reference_nonfinite: int = 0  # NaN / Inf values in PyTorch's output


@dataclass
class ParityReport:
    tolerance: Tolerance
    cases: list[ParityCase] = field(default_factory=list)
    skipped_images: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.comparison.passed for c in self.cases)

    def to_dict(self) -> dict:
        return {"atol": self.tolerance.atol, "rtol": self.tolerance.rtol, "passed": self.passed,
                "cases": [{"inputs": c.inputs, "batch": c.batch, **c.comparison.to_dict(),
                           "reference_nonfinite": c.reference_nonfinite} for c in self.cases],
                "skipped_images": self.skipped_images}

    def format(self) -> str:
        rows = [(c.inputs, c.batch, fmt_err(c.comparison.max_abs), fmt_err(c.comparison.max_rel),
                 fmt_pct(c.comparison.top1_agreement, 1), f"{c.comparison.cosine:.6f}",
                 "ok" if c.comparison.passed else "FAIL") for c in self.cases]
        head = f"parity, ONNX Runtime vs PyTorch (pass: |onnx - torch| <= {self.tolerance.atol:g} + " \
               f"{self.tolerance.rtol:g}*|torch| everywhere):"
        text = head + "\n" + table(("inputs", "batch", "max abs", "max rel", "top-1 agree", "cosine", ""), rows)
        if self.skipped_images:
            text += f"\n  skipped {len(self.skipped_images)} unreadable image(s), e.g. {self.skipped_images[0]}"
        return text


@dataclass
class ExportResult:
    path: Path
    info: ModelInfo
    parity: ParityReport | None
    notes: list[str]
    seconds: float

    def to_dict(self) -> dict:
        return {"output": str(self.path), "model": self.info.to_dict(), "notes": self.notes,
                "seconds": round(self.seconds, 2), "parity": self.parity.to_dict() if self.parity else None}

    def format(self) -> str:
        size = self.path.stat().st_size / 1e6
        b = self.info.batch
        lines = [f"{self.info.arch} -> {self.path} ({size:.1f} MB, {self.info.num_classes} classes, input "
                 f"{'x'.join(map(str, self.info.input_shape))}, batch {b}, {self.seconds:.1f}s)"]
        lines += [f"  note: {n}" for n in self.notes]
        if self.parity:
            lines.append(self.parity.format())
        return "\n".join(lines)


def default_preprocess(size: tuple[int, int], in_channels: int, cifar: bool) -> Preprocess:
    channels = "L" if in_channels == 1 else "RGB"
    if in_channels not in (1, 3):
        raise InputError(f"the model takes {in_channels} input channels; rexport's image preprocessing "
                         "handles 1 (grayscale) or 3 (RGB/BGR)")
    return Preprocess.cifar(size, channels) if cifar else Preprocess.imagenet(size, channels)


def export_onnx(checkpoint: str | os.PathLike | Checkpoint | LoadedModel, output: str | os.PathLike,
                config: ExportConfig) -> ExportResult:
    """Export a checkpoint (or an already loaded model) to a verified ONNX file at `output`."""
    start = time.monotonic()
    onnx = require("onnx", "export", "write ONNX files")
    source = None if isinstance(checkpoint, (Checkpoint, LoadedModel)) else checkpoint
    output = check_output(output, overwrite=config.overwrite, inputs=[source])  # never onto the checkpoint
    loaded = checkpoint if isinstance(checkpoint, LoadedModel) else load_model(
        checkpoint, config.arch, num_classes=config.num_classes, key_map=config.key_map,
        shortcut=config.shortcut, unsafe_pickle=config.unsafe_pickle)
    info = model_info(loaded, config)
    for note in loaded.notes:
        log.info("note: %s", note)

    with atomic_output(output, overwrite=config.overwrite) as tmp:
        log.info("exporting %s with the %s exporter (opset %d)...", loaded.arch, config.exporter, config.opset)
        _torch_export(loaded.model, tmp, info, config)
        model = fold_constants(onnx.load(str(tmp)))
        del model.graph.value_info[:]  # recomputed by shape inference below
        _name_batch_dim(model)
        _check_batchnorm_folded(model)
        info.write(model)
        model.doc_string = f"{info.arch} exported by rexport {__version__}"
        model = onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as e:
            raise RexportError(f"the exported ONNX failed onnx.checker: {str(e).splitlines()[0]}") from None
        onnx.save(model, str(tmp))
        report = None
        if config.parity.enabled:
            log.info("checking parity with ONNX Runtime...")
            report = check_parity(loaded.model, tmp, info, config.parity)
            _refuse_nonfinite(report)
            if not report.passed:
                worst = max(report.cases, key=lambda c: c.comparison.tolerance_ratio)
                raise CheckFailed(
                    f"ONNX Runtime disagrees with PyTorch beyond tolerance ({worst.inputs} inputs, batch "
                    f"{worst.batch}: max abs {fmt_err(worst.comparison.max_abs)}, {worst.comparison.tolerance_ratio:.1f}x "
                    f"the bound); nothing was written. Loosen atol/rtol if this is expected", report,
                    fields=qualified(Tolerance, "atol", "rtol"))
    return ExportResult(output, info, report, loaded.notes, time.monotonic() - start)


def _refuse_nonfinite(report: ParityReport) -> None:
    """NaN / Inf outputs fail parity, and no tolerance fixes them: say what does."""
    broken = [c for c in report.cases if c.reference_nonfinite or c.comparison.nonfinite]
    if not broken:
        return
    c = broken[0]
    where = f"{c.inputs} inputs, batch {c.batch}"
    if c.reference_nonfinite:
        raise CheckFailed(f"the model outputs NaN or Inf in PyTorch itself ({c.reference_nonfinite} values, {where}), "
                          "so no tolerance can make it pass: its weights overflow float32 or the checkpoint is "
                          "broken; nothing was written", report)
    raise CheckFailed(f"ONNX Runtime outputs NaN or Inf ({c.comparison.nonfinite} values, {where}) where PyTorch's "
                      "outputs are finite, so no tolerance can make it pass; try another opset or exporter; "
                      "nothing was written", report, fields=qualified(ExportConfig, "opset", "exporter"))


def model_info(loaded: LoadedModel, config: ExportConfig) -> ModelInfo:
    from rexport.exporter.zoo import get_arch

    spec = get_arch(loaded.arch)
    size = config.input_size or (spec.input_size, spec.input_size)
    pre = config.preprocess
    if not isinstance(pre, Preprocess):
        default = default_preprocess(size, loaded.in_channels, spec.cifar)
        pre = pre.apply(default) if pre else default
    if pre.size != size:
        raise InputError(f"preprocessing crops to {pre.size[0]}x{pre.size[1]} but the input size is "
                         f"{size[0]}x{size[1]}; make them equal")
    if pre.num_channels != loaded.in_channels:
        raise InputError(f"preprocessing gives {pre.num_channels} channel(s) ({pre.channels}) but the "
                         f"checkpoint's first conv takes {loaded.in_channels}")
    return ModelInfo(num_classes=loaded.num_classes, input_shape=(loaded.in_channels, *size), preprocess=pre,
                     batch=config.batch, input_name=INPUT_NAME, output_name=OUTPUT_NAME, arch=loaded.arch,
                     arch_options=loaded.arch_options, labels=config.labels, precision="fp32",
                     source_sha256=loaded.checkpoint.sha256 if loaded.checkpoint else None)


@contextlib.contextmanager
def _quiet_torch_onnx():
    """The exporters print progress and warn about deliberate choices; keep our output readable."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings(), open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for lg, level in zip(loggers, levels):
                lg.setLevel(level)


def _torch_export(model: torch.nn.Module, path: Path, info: ModelInfo, config: ExportConfig) -> None:
    b = info.batch
    # Trace with a batch of 2 or more so the batch axis cannot be specialised to 1.
    example = torch.randn(b.max if b.static else max(2, b.min), *info.input_shape)
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=config.opset)
    try:
        with _quiet_torch_onnx(), torch.inference_mode(False), torch.no_grad():
            if config.exporter == "dynamo":
                require("onnxscript", "export", "use the dynamo exporter")
                batch = torch.export.Dim("batch", min=b.min, max=max(b.max, 2))
                torch.onnx.export(model, (example,), str(path), dynamo=True, optimize=True,
                                  dynamic_shapes=None if b.static else ({0: batch},), **kwargs)
            else:
                axes = None if b.static else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                torch.onnx.export(model, (example,), str(path), dynamo=False, dynamic_axes=axes,
                                  do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL, **kwargs)
    except RexportError:
        raise
    except Exception as e:  # exporter internals raise many types; the first line says what broke
        raise RexportError(f"torch.onnx.export failed for {info.arch}: {str(e).strip().splitlines()[0]}") from None


def _name_batch_dim(model) -> None:
    """Call the symbolic batch axis 'batch' on the input and output (dynamo names it 's0' or 'batch')."""
    for vi in [*model.graph.input, *model.graph.output]:
        dim = vi.type.tensor_type.shape.dim[0]
        if dim.dim_param or not dim.HasField("dim_value"):
            dim.dim_param = "batch"


def _check_batchnorm_folded(model) -> None:
    """A BatchNorm whose input is a Conv output read by nothing else must have been folded."""
    made_by, read_by = producers(model.graph), consumers(model.graph)
    for node in model.graph.node:
        source = made_by.get(node.input[0])
        if (node.op_type == "BatchNormalization" and source is not None and source.op_type == "Conv"
                and len(read_by[node.input[0]]) == 1):
            raise RexportError(f"BatchNorm {node.name} was not folded into its convolution; "
                               "is the model in eval mode?")


def check_parity(model: torch.nn.Module, onnx_path: str | os.PathLike, info: ModelInfo,
                 config: ParityConfig = ParityConfig()) -> ParityReport:
    """Run ONNX Runtime and PyTorch on the same inputs; compare the logits."""
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from rexport.runtime.backends.pytorch import PyTorchBackend

    backend = OnnxRuntimeBackend(onnx_path, providers=["CPUExecutionProvider"])
    reference = PyTorchBackend(model, info)
    b = info.batch
    sizes = sorted({min(max(s, b.min), b.max) for s in config.batch_sizes})
    rng = np.random.default_rng(config.seed)
    inputs = [("random", rng.standard_normal((n, *info.input_shape), dtype=np.float32)) for n in sizes]
    report = ParityReport(config.tolerance)
    if config.images:
        from rexport.runtime.data import load_dataset

        data = load_dataset(config.images, info, samples=config.max_images, seed=config.seed)
        images, report.skipped_images = data.inputs, data.skipped
        # the first n images at each batch size, repeated cyclically when there are fewer
        inputs += [("images", np.resize(images, (n, *images.shape[1:]))) for n in sizes]
    for kind, x in inputs:
        ref, got = reference.run(x), backend.run(x)
        bad_ref = int(ref.size - np.count_nonzero(np.isfinite(ref)))
        with np.errstate(invalid="ignore", over="ignore"):
            comparison = compare(got, ref, config.tolerance)
        report.cases.append(ParityCase(kind, len(x), comparison, bad_ref))
    return report
