"""The `rexport` command. Thin: each command parses its flags into a config and calls one
public function. Errors a user can cause are `RexportError`s: printed as one line, with a
non-zero exit code (1 for errors, 3 for a failed quality gate, 2 for bad usage)."""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from pathlib import Path

import click

from rexport import __version__
from rexport.console import log, setup_logging, table
from rexport.errors import InputError, RexportError


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised in the main thread like Ctrl-C's KeyboardInterrupt so that every
    `finally` (temporary files and directories) runs on the way out; `except Exception` in
    library code does not catch it."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _terminate(signum, frame) -> None:
    for sig in TERMINATING:  # a second signal must not interrupt the cleanup of the first
        signal.signal(sig, signal.SIG_IGN)
    raise Terminated(signum)


TERMINATING = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name))


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


class RexportGroup(click.Group):
    """Turns RexportErrors (and anything unexpected) into one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RexportError as e:
            click.echo(f"error: {e}", err=True)
            report = getattr(e, "report", None)
            if report is not None and hasattr(report, "format"):
                click.echo(report.format(), err=True)
            ctx.exit(e.exit_code)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM/SIGHUP (Terminated): every cleanup has run
            signum = getattr(e, "signum", signal.SIGINT)
            by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
            click.echo(f"interrupted{by} (unfinished outputs were not written)", err=True)
            ctx.exit(128 + signum)
        except OSError as e:
            from rexport.files import FULL, WRITE_FAILURES

            if e.errno not in FULL:  # a full disk is not a bug, wherever it shows (e.g. in a staging folder)
                self._bug(ctx, e)
            where = e.filename2 or e.filename
            click.echo(f"error: cannot write{f' {where}' if where else ''}: {e.strerror}; {WRITE_FAILURES[e.errno]}",
                       err=True)
            ctx.exit(1)
        except Exception as e:
            self._bug(ctx, e)

    @staticmethod
    def _bug(ctx: click.Context, e: Exception):
        """A bug: say so in one line; with -v, the traceback first."""
        if log.isEnabledFor(logging.DEBUG):
            traceback.print_exc()
        click.echo(f"error: unexpected {type(e).__name__}: {one_line(e)} (this is a bug in rexport; "
                   "run with -v for the traceback and please report it)", err=True)
        ctx.exit(1)


@click.group(cls=RexportGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rexport")
@click.option("-v", "--verbose", count=True, help="More detail (and tracebacks for internal errors).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors on stderr.")
def cli(verbose: int, quiet: bool) -> None:
    """Export ResNet-family classifiers to ONNX, FP16, INT8 and TensorRT, and prove they
    still agree with PyTorch."""
    setup_logging(verbose, quiet)


# -- parsing helpers ---------------------------------------------------------------------------


def parse_size(text: str | None) -> tuple[int, int] | None:
    """"224" or "224x192" (height x width)."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        return parts[0], parts[0]
    if len(parts) == 2:
        return parts[0], parts[1]
    raise InputError(f"size must be N or HxW (e.g. 224 or 224x192), not {text!r}")


def parse_floats(text: str | None, what: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"{what} must be comma-separated numbers (e.g. 0.485,0.456,0.406), not {text!r}") from None


def parse_key_map(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise InputError(f"--key-map takes OLD=NEW (a key prefix and its replacement), not {item!r}")
        out.append((old, new))
    return tuple(out)


class JsonReport:
    """`--json FILE`: checked by the rule for every output before the work starts (an existing file
    needs --force; never one of the command's inputs or other outputs) and written after it, as
    strict JSON, through a temporary file."""

    def __init__(self, path: str | None, force: bool, *inputs: str | Path | None):
        from rexport.files import check_output

        self.path, self.force, self.inputs = path, force, inputs
        self.existed = bool(path) and Path(path).exists()
        if path:
            check_output(path, overwrite=force, inputs=inputs)

    def write(self, payload: dict) -> None:
        if not self.path:
            return
        from rexport.files import write_json

        if Path(self.path).exists() and not self.existed:  # e.g. a default output name of the command
            raise InputError(f"refusing to write the report to {self.path}: this command has just written "
                             "another output there; choose another --json file")
        write_json(self.path, payload, overwrite=self.force, inputs=self.inputs)


def data_path(source: str | None) -> str | None:
    """A data source that names a file or folder (None for the embedded demo data)."""
    if source is None or source == "demo" or str(source).startswith("demo:"):
        return None
    return source


class Outputs:
    """The rule for every output of a command, applied to all of them together before its work:
    a file output is new, or --force is given; no output is one of the command's inputs or another
    of its outputs (also through a link; not even with --force); a directory output holds none of
    them. `caches` are read and rewritten (no --force needed) but follow the rest of the rule.
    Then, until the command ends, its inputs are protected (`rexport.files.protect`): nothing
    written below it, by any library call, may replace them. `.json` is the --json report."""

    def __init__(self, force: bool, reads, *, files: dict | None = None, caches: dict | None = None,
                 directories: dict | None = None, json: str | None = None):
        from rexport.files import check_output, check_output_dir, inside, protect, same_file

        reads = [p for p in reads if p is not None]
        named = [(what, Path(p), kind) for kind, group in (("file", files), ("cache", caches), ("dir", directories))
                 for what, p in (group or {}).items() if p is not None]
        for i, (what, path, kind) in enumerate(named):
            for other_what, other, other_kind in named[i + 1:]:
                if same_file(path, other) or (kind == "dir" and inside(other, path)) or (
                        other_kind == "dir" and inside(path, other)):
                    raise InputError(f"{path} (the {what}) and {other} (the {other_what}) would overwrite each "
                                     "other; choose different outputs")
            others = [p for j, (_, p, _) in enumerate(named) if j != i]
            if kind == "dir":
                check_output_dir(path, overwrite=force, inputs=[*reads, *others])
            else:
                check_output(path, overwrite=force or kind == "cache", inputs=[*reads, *others])
        self.json = JsonReport(json, force, *reads, *(p for _, p, _ in named))
        click.get_current_context().with_resource(protect(reads))


def echo_json(payload) -> None:
    """A --json report on stdout: strict JSON, like the files."""
    from rexport.files import json_text

    click.echo(json_text(payload), nl=False)


# -- commands ----------------------------------------------------------------------------------


@cli.command("models")
@click.option("--family", help="Only this family (e.g. resnet, cifar_resnet, preact_resnet, plain).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_cmd(family: str | None, as_json: bool) -> None:
    """List the architectures rexport can export."""
    from rexport.exporter import count_parameters, list_models

    archs = [a for a in list_models() if family is None or a.family == family]
    if not archs:
        raise InputError(f"no family {family!r}; families: "
                         f"{', '.join(sorted({a.family for a in list_models()}))}")
    rows = [{"arch": a.name, "family": a.family, "input": f"{a.input_size}x{a.input_size}",
             "classes": a.num_classes, "params": count_parameters(a.name),
             "shortcuts": "/".join(a.shortcuts) or "-"} for a in archs]
    if as_json:
        echo_json(rows)
        return
    click.echo(table(("arch", "family", "input", "classes", "params", "shortcut"),
                     [(r["arch"], r["family"], r["input"], r["classes"], f"{r['params']:,}", r["shortcuts"])
                      for r in rows], indent=""))


def preprocess_options(f):
    """Flags that override the preprocessing recorded in the model."""
    for decorator in reversed([
        click.option("--mean", help="Per-channel mean after scaling, e.g. 0.485,0.456,0.406."),
        click.option("--std", help="Per-channel std, e.g. 0.229,0.224,0.225."),
        click.option("--resize", type=int, help="Shorter side before the center crop (default: input/0.875, "
                                                 "or the input size for CIFAR archs)."),
        click.option("--channels", type=click.Choice(["RGB", "BGR", "L"]), help="Channel order the model expects."),
        click.option("--interpolation", type=click.Choice(["nearest", "bilinear", "bicubic", "lanczos", "box",
                                                           "hamming"]), help="Resize filter (default bilinear)."),
        click.option("--max-pixel-value", type=float, help="Pixels are divided by this (255: 0..1, 1: 0..255)."),
    ]):
        f = decorator(f)
    return f


def preprocess_overrides(*, mean, std, resize, channels, interpolation, max_pixel_value):
    from rexport.runtime.preprocess import PreprocessOverrides

    return PreprocessOverrides(resize=resize, mean=parse_floats(mean, "--mean"), std=parse_floats(std, "--std"),
                               interpolation=interpolation, channels=channels, max_pixel_value=max_pixel_value)


def calibration_options(f):
    """Flags shared by `rexport calibrate` and `rexport onnx --int8`."""
    for decorator in reversed([
        click.option("--method", type=click.Choice(["minmax", "percentile", "entropy", "mse"]), default="entropy",
                     show_default=True, help="Calibrator for activation ranges."),
        click.option("--percentile", type=float, default=99.99, show_default=True, help="For --method percentile."),
        click.option("--target", type=click.Choice(["trt", "cpu"]), default="trt", show_default=True,
                     help="trt: int8 symmetric for TensorRT; cpu: uint8 activations for ONNX Runtime on CPUs."),
        click.option("--no-reduce-range", is_flag=True,
                     help="cpu target: weights in [-127, 127] instead of [-64, 64]; exact only on x86 CPUs with "
                          "VNNI (without it, ONNX Runtime's int16 sums saturate)."),
        click.option("--refine", default="all", show_default=True, metavar="LIST",
                     help="After calibration: ranges (by layer output error), gptq (weight rounding), bias "
                          "(bias correction); a comma list, all or none."),
        click.option("--samples", type=int, default=512, show_default=True, help="Calibration samples."),
        click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed."),
        click.option("--val-data", help="Held-out data for scores and the budget (default: 256 samples held "
                                       "out of the calibration data)."),
        click.option("--max-top1-drop", type=float, help="Accuracy budget in top-1 points (needs labels)."),
        click.option("--min-agreement", type=float, help="Budget as a top-1 agreement floor with FP32, 0..1."),
        click.option("--keep-float", multiple=True, metavar="NODE", help="Keep this Conv/Gemm in float (repeatable)."),
        click.option("--no-stats-cache", is_flag=True, help="Recollect activation statistics."),
    ]):
        f = decorator(f)
    return f


def quantize_config(data, *, method, percentile, target, no_reduce_range, refine, samples, seed, val_data,
                    max_top1_drop, min_agreement, keep_float, no_stats_cache, overwrite, preprocess=None, cache=None):
    from rexport.calibration import Budget, QuantizeConfig
    from rexport.calibration.refine import parse_refinements

    return QuantizeConfig(data=data, method=method, percentile=percentile, target=target,
                          reduce_range=False if no_reduce_range else None, refine=parse_refinements(refine),
                          samples=samples,
                          seed=seed, val_data=val_data, budget=Budget(max_top1_drop, min_agreement),
                          keep_float=tuple(keep_float), use_stats_cache=not no_stats_cache, overwrite=overwrite,
                          preprocess=preprocess, cache=cache)


def sibling(path: str | Path, tag: str) -> Path:
    """model.onnx -> model.<tag>.onnx"""
    path = Path(path)
    return path.with_name(f"{path.stem}.{tag}{path.suffix or '.onnx'}")


@cli.command("onnx")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--arch", help="Architecture (see `rexport models`); detected from the checkpoint if left out.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output .onnx (default: CHECKPOINT name + .onnx).")
@click.option("--num-classes", type=int, help="Default: read from the checkpoint's classifier.")
@click.option("--input-size", help="N or HxW (default: the arch's, 224 or 32).")
@click.option("--batch", default="1:8:32", show_default=True, help="N (static), MIN:MAX or MIN:OPT:MAX (dynamic).")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (torchscript exporter 13-20; dynamo 18-23).")
@click.option("--exporter", type=click.Choice(["torchscript", "dynamo"]), default="torchscript", show_default=True)
@click.option("--labels", type=click.Path(dir_okay=False), help="Labels file: one per line, or JSON.")
@click.option("--key-map", multiple=True, metavar="OLD=NEW", help="Rewrite a key prefix (repeatable).")
@click.option("--shortcut", type=click.Choice(["A", "B"]), help="CIFAR ResNets: shortcut option (default: detected).")
@click.option("--unsafe-pickle", is_flag=True, help="Allow full unpickling (runs code from the file: trusted files only).")
@preprocess_options
@click.option("--images", type=click.Path(file_okay=False), help="Also check parity on real images from this folder.")
@click.option("--atol", type=float, default=1e-3, show_default=True, help="Parity: absolute tolerance on logits.")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="Parity: relative tolerance on logits.")
@click.option("--no-parity", is_flag=True, help="Skip the ONNX Runtime vs PyTorch check.")
@click.option("--fp16", is_flag=True, help="Also write OUTPUT.fp16.onnx.")
@click.option("--int8", is_flag=True, help="Also calibrate OUTPUT.int8.onnx (needs --calib-data).")
@click.option("--calib-data", help="Calibration data for --int8 (and the FP16 range check).")
@calibration_options
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False),
              help="Also write a bundle of every output with references (see `rexport bundle`).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the export report as JSON.")
@click.option("--force", is_flag=True, help="Replace existing output files.")
def onnx_cmd(checkpoint, arch, output, num_classes, input_size, batch, opset, exporter, labels, key_map, shortcut,
             unsafe_pickle, mean, std, resize, channels, interpolation, max_pixel_value, images, atol, rtol,
             no_parity, fp16, int8, calib_data, method, percentile, target, no_reduce_range, refine, samples, seed,
             val_data,
             max_top1_drop, min_agreement, keep_float, no_stats_cache, bundle_dir, json_path, force) -> None:
    """Export CHECKPOINT to a verified ONNX file (and FP16 / INT8 versions, and a bundle)."""
    if int8 and not calib_data:
        raise InputError("--int8 needs --calib-data (an image folder, .npy/.npz or demo)")
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_checkpoint
    from rexport.exporter.checkpoint import detect_arch
    from rexport.runtime.compare import Tolerance
    from rexport.runtime.metadata import BatchRange, load_labels

    keys = parse_key_map(key_map)
    output = output or Path(checkpoint).with_suffix(".onnx").name
    int8_cache = sibling(output, "int8").with_suffix(".cache") if int8 and target == "trt" else None
    json_report = Outputs(force, [checkpoint, labels, images, data_path(calib_data), data_path(val_data)],
                          files={"output": output, "FP16 output": fp16 and sibling(output, "fp16") or None,
                                 "INT8 output": int8 and sibling(output, "int8") or None,
                                 "calibration cache": int8_cache},
                          directories={"bundle": bundle_dir}, json=json_path).json
    ckpt = load_checkpoint(checkpoint, unsafe_pickle=unsafe_pickle)
    if arch is None:
        arch = detect_arch(ckpt, key_map=keys)
        log.info("arch: %s (detected from the checkpoint; pass --arch to choose)", arch)
    config = ExportConfig(arch=arch, num_classes=num_classes, input_size=parse_size(input_size),
                          batch=BatchRange.parse(batch), opset=opset, exporter=exporter,
                          labels=load_labels(labels) if labels else None, key_map=keys, shortcut=shortcut,
                          unsafe_pickle=unsafe_pickle, overwrite=force,
                          preprocess=preprocess_overrides(mean=mean, std=std, resize=resize, channels=channels,
                                                          interpolation=interpolation, max_pixel_value=max_pixel_value),
                          parity=ParityConfig(enabled=not no_parity, tolerance=Tolerance(atol, rtol), images=images))
    result = export_onnx(ckpt, output, config)
    report = {"export": result.to_dict()}
    click.echo(result.format())
    if fp16:
        from rexport.calibration import load_calibration_data, to_fp16

        inputs = load_calibration_data(calib_data, result.info, samples=64).inputs if calib_data else None
        converted = to_fp16(output, sibling(output, "fp16"), inputs=inputs, overwrite=force)
        report["fp16"] = {"output": str(converted.path), "kept_fp32": converted.kept_fp32}
        click.echo(converted.format())
    if int8:
        from rexport.calibration import quantize

        quantized = quantize(output, sibling(output, "int8"), quantize_config(
            calib_data, method=method, percentile=percentile, target=target, no_reduce_range=no_reduce_range,
            refine=refine, samples=samples, seed=seed, val_data=val_data, max_top1_drop=max_top1_drop, min_agreement=min_agreement, keep_float=keep_float,
            no_stats_cache=no_stats_cache, overwrite=force))
        report["int8"] = quantized.to_dict()
        click.echo(quantized.format())
    if bundle_dir:
        from rexport.runtime.bundle import make_bundle

        written = [Path(output)] + [sibling(output, t) for t, wanted in (("fp16", fp16), ("int8", int8)) if wanted]
        report["bundle"] = str(make_bundle(written, bundle_dir, data=val_data or calib_data or images,
                                           checkpoint=checkpoint, overwrite=force))
        click.echo(f"bundle -> {report['bundle']}")
    json_report.write(report)


@cli.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Image folder (class subfolders or flat), .npy/.npz, or demo[:train|:test].")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output (default: MODEL.int8.onnx).")
@calibration_options
@click.option("--cache", "cache_path", type=click.Path(dir_okay=False),
              help="TensorRT 10 calibration cache to write (trt target; default: OUTPUT with .cache).")
@preprocess_options
@click.option("--bundle", "bundle_dir", type=click.Path(file_okay=False),
              help="Also write a bundle of MODEL and the INT8 output with references.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace existing outputs.")
def calibrate_cmd(model, data, output, method, percentile, target, no_reduce_range, refine, samples, seed, val_data,
                  max_top1_drop,
                  min_agreement, keep_float, no_stats_cache, cache_path, mean, std, resize, channels, interpolation,
                  max_pixel_value, bundle_dir, json_path, force) -> None:
    """Calibrate MODEL (an FP32 ONNX from `rexport onnx`) to an INT8 Q/DQ ONNX."""
    from rexport.calibration import quantize

    output = Path(output or sibling(model, "int8"))
    trt_cache = (cache_path or output.with_suffix(".cache")) if target == "trt" else None
    json_report = Outputs(force, [model, data_path(data), data_path(val_data)],
                          files={"output": output, "calibration cache": trt_cache},
                          directories={"bundle": bundle_dir}, json=json_path).json
    config = quantize_config(
        data, method=method, percentile=percentile, target=target, no_reduce_range=no_reduce_range, refine=refine,
        samples=samples,
        seed=seed, val_data=val_data,
        max_top1_drop=max_top1_drop, min_agreement=min_agreement, keep_float=keep_float,
        no_stats_cache=no_stats_cache, overwrite=force, cache=cache_path,
        preprocess=preprocess_overrides(mean=mean, std=std, resize=resize, channels=channels,
                                        interpolation=interpolation, max_pixel_value=max_pixel_value))
    result = quantize(model, output, config)
    json_report.write(result.to_dict())
    click.echo(result.format())
    if bundle_dir:
        from rexport.runtime.bundle import make_bundle

        click.echo(f"bundle -> {make_bundle([model, result.path], bundle_dir, data=val_data or data, overwrite=force)}")


@cli.command("fp16")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Output (default: MODEL.fp16.onnx).")
@click.option("--data", help="Samples to check the FP16 range on (default: random inputs).")
@click.option("--samples", type=int, default=64, show_default=True)
@click.option("--keep-fp32", multiple=True, metavar="NODE", help="Keep this node in FP32 (repeatable).")
@click.option("--force", is_flag=True, help="Replace an existing output.")
def fp16_cmd(model, output, data, samples, keep_fp32, force) -> None:
    """Convert MODEL (an FP32 ONNX) to FP16 weights and compute with FP32 inputs and outputs."""
    from rexport.calibration import load_calibration_data, to_fp16
    from rexport.calibration.fp16 import read_model

    output = output or sibling(model, "fp16")
    Outputs(force, [model, data_path(data)], files={"output": output})
    inputs = None
    if data:
        inputs = load_calibration_data(data, read_model(model)[1], samples=samples).inputs
    result = to_fp16(model, output, inputs=inputs, keep_fp32=tuple(keep_fp32), overwrite=force)
    click.echo(result.format())


@cli.command("validate")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--data", help="Image folder, .npy/.npz, or demo[:train|:test] (default for a bundle: its "
                             "reference inputs and stored reference logits).")
@click.option("--checkpoint", type=click.Path(dir_okay=False),
              help="Use the PyTorch model as the reference (needs torch); default: the FP32 ONNX among MODELS.")
@click.option("--samples", type=int, help="Use at most this many samples (default: all).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-top1-drop", type=float, help="Gate: top-1 points below the reference (needs labels).")
@click.option("--min-agreement", type=float, help="Gate: top-1 agreement with the reference, 0..1.")
@click.option("--providers", default="cpu", show_default=True, help="onnxruntime providers: cpu, cuda, tensorrt or auto.")
@click.option("--unsafe-pickle", is_flag=True, help="Allow a full unpickle of --checkpoint (trusted files only).")
@preprocess_options
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --json report.")
def validate_cmd(models, data, checkpoint, samples, seed, max_top1_drop, min_agreement, providers, unsafe_pickle,
                 mean, std, resize, channels, interpolation, max_pixel_value, json_path, force) -> None:
    """Run MODELS (ONNX files, engines, bundles) on the same data and compare them with the reference."""
    from rexport.errors import CheckFailed
    from rexport.runtime.validate import Gates, validate

    json_report = Outputs(force, [*models, data_path(data), checkpoint], json=json_path).json
    report = validate(list(models), data, checkpoint=checkpoint, samples=samples, seed=seed,
                      gates=Gates(max_top1_drop, min_agreement), providers=providers, unsafe_pickle=unsafe_pickle,
                      preprocess=preprocess_overrides(mean=mean, std=std, resize=resize, channels=channels,
                                                      interpolation=interpolation, max_pixel_value=max_pixel_value))
    json_report.write(report.to_dict())
    click.echo(report.format())
    if not report.passed:
        failed = [r for r in report.rows if not r.passed]
        raise CheckFailed(f"{len(failed)} model(s) failed the gates ({report.gates.describe()}): "
                          + "; ".join(f"{r.name}: {', '.join(r.failures)}" for r in failed))


def load_options(f):
    """Flags shared by the commands that load a model for inference."""
    for decorator in reversed([
        click.option("--model", "variant", help="Which model of a bundle: fp32, fp16, int8, engine or a file name."),
        click.option("--providers", default="auto", show_default=True,
                     help="onnxruntime providers: auto, cpu, cuda, tensorrt (or a comma list)."),
        click.option("--threads", type=int, help="onnxruntime intra-op threads (default: its choice)."),
    ]):
        f = decorator(f)
    return f


@cli.command("bundle")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("-o", "--output", required=True, type=click.Path(), help="Bundle directory (or archive with --archive).")
@click.option("--data", help="Reference inputs and images from here (image folder, .npy/.npz or demo); also validates.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), help="Use PyTorch's logits as the reference (needs torch).")
@click.option("--samples", type=int, default=8, show_default=True, help="Reference inputs to store.")
@click.option("--no-validate", is_flag=True, help="Do not run and store the validation report.")
@click.option("--default", "default_model", help="The model load() picks by default (a file name).")
@click.option("--archive", is_flag=True, help="Write a single .tar.gz instead of a directory.")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
def bundle_cmd(models, output, data, checkpoint, samples, no_validate, default_model, archive, force) -> None:
    """Bundle MODELS (ONNX files, engines with sidecars) with references for a device self-test."""
    from rexport.runtime.bundle import ARCHIVE_SUFFIXES, make_bundle, open_bundle
    from rexport.runtime.engine_sidecar import sidecar_path

    out = Path(output)
    if archive and not out.name.endswith(ARCHIVE_SUFFIXES):
        out = out.with_name(out.name + ".tar.gz")
    sidecars = [sidecar_path(m) for m in models if sidecar_path(m).is_file()]
    Outputs(force, [*models, *sidecars, data_path(data), checkpoint], files={"bundle": out if archive else None},
            directories={"bundle": None if archive else out})
    path = make_bundle(list(models), output, data=data, checkpoint=checkpoint, samples=samples,
                       validate=not no_validate, default=default_model, archive=archive, overwrite=force)
    bundle = open_bundle(path)
    try:
        files = ", ".join(f"{m['file']} ({m['precision']})" for m in bundle.models)
        click.echo(f"bundle -> {path}: {files}; default {bundle.manifest['default']}; "
                   f"{bundle.manifest['reference']['samples']} reference inputs "
                   f"({bundle.manifest['reference']['source']})")
    finally:
        bundle.cleanup()


@cli.command("predict")
@click.argument("model", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("-k", "--top-k", type=int, default=5, show_default=True)
@load_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict_cmd(model, images, top_k, variant, providers, threads, as_json) -> None:
    """Classify IMAGES with MODEL (bundle, .onnx or .engine) and print the top-k."""
    from rexport.runtime import load

    with load(model, model=variant, providers=providers, threads=threads) as predictor:
        predictions = predictor.predict(list(images), top_k=top_k)
    if as_json:
        echo_json({img: p.to_dict() for img, p in zip(images, predictions)})
        return
    for img, p in zip(images, predictions):
        click.echo(f"{img}: {p}")


@cli.command("inspect")
@click.argument("model", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect_cmd(model, as_json) -> None:
    """Show what MODEL (bundle, .onnx or .engine) says about itself: metadata, I/O, precision census."""
    from rexport.runtime.inspect import inspect_model

    report = inspect_model(model)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.format())


@cli.command("selftest")
@click.argument("bundle", type=click.Path())
@load_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def selftest_cmd(bundle, variant, providers, threads, as_json) -> None:
    """Replay a bundle's reference inputs and images on this machine and compare."""
    from rexport.runtime import load
    from rexport.runtime.bundle import require_pass

    with load(bundle, model=variant, providers=providers, threads=threads) as predictor:
        report = predictor.selftest()
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.format())
    require_pass(report)


@cli.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--batch", default="1", show_default=True, help="Batch sizes, comma separated (e.g. 1,8).")
@click.option("--iterations", type=int, default=100, show_default=True)
@click.option("--duration", type=float, help="Seconds per measurement (stops before --iterations if reached).")
@click.option("--warmup", type=int, default=10, show_default=True)
@click.option("--bench-threads", type=int, default=1, show_default=True, help="Concurrent callers.")
@load_options
@click.option("--images", type=click.Path(file_okay=False), help="Time preprocessing on these images.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --json report.")
def bench_cmd(models, batch, iterations, duration, warmup, bench_threads, variant, providers, threads, images,
              json_path, force) -> None:
    """Latency (p50/p90/p99) and throughput of MODELS, and preprocessing time, in one table."""
    from rexport.runtime import load
    from rexport.runtime.bench import BenchConfig, bench
    from rexport.runtime.preprocess import is_image_file

    try:
        sizes = tuple(int(b) for b in batch.split(","))
    except ValueError:
        raise InputError(f"--batch takes comma-separated sizes (e.g. 1,8), not {batch!r}") from None
    json_report = Outputs(force, [*models, images], json=json_path).json
    config = BenchConfig(batch_sizes=sizes, iterations=iterations, duration=duration, warmup=warmup,
                         threads=bench_threads)
    files = sorted(p for p in Path(images).rglob("*") if is_image_file(p))[:32] if images else None
    if images and not files:
        raise InputError(f"--images {images} holds no images")
    predictors = {}
    try:
        for m in dict.fromkeys(str(Path(m).resolve()) for m in models):  # each model once, in order
            name = Path(m).name if Path(m).name not in predictors else m
            predictors[name] = load(m, model=variant, providers=providers, threads=threads)
        report = bench(predictors, config, files)
    finally:
        for p in predictors.values():
            p.close()
    json_report.write(report.to_dict())
    click.echo(report.format())


@cli.command("demo")
@click.option("-o", "--output", default="rexport-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for everything the demo writes.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the results as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing --json report.")
def demo_cmd(output: str, json_path: str | None, force: bool) -> None:
    """Run the whole pipeline on the embedded default model (ResNet-20 trained on digits)."""
    from rexport.demo.pipeline import run_demo

    json_report = JsonReport(json_path, force, output)
    result = run_demo(output)
    click.echo(result.format())
    json_report.write(result.to_dict())
    if not result.passed:
        from rexport.errors import CheckFailed

        raise CheckFailed("a model form missed the demo's accuracy gate (see the table above)")


@cli.command("trt")
@click.argument("onnx_path", metavar="ONNX|BUNDLE", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False),
              help="Output engine (default: ONNX name [+ .fp16/.int8] + .engine, inside a bundle when built from "
                   "one); the sidecar is OUTPUT.json.")
@click.option("--fp16", is_flag=True, help="FP16 engine: from an FP16 ONNX (made on the fly from an FP32 one).")
@click.option("--int8", is_flag=True, help="INT8 engine: from a Q/DQ ONNX (calibrated on the fly with --calib-data).")
@click.option("--rtx", is_flag=True, help="Build with TensorRT for RTX (the default when it is the only TensorRT "
                                         "installed); works without a GPU.")
@click.option("--compute-capability", metavar="CC[,CC...]",
              help="TensorRT for RTX: the GPUs to build for, e.g. 8.6,8.9,12.0 (default: the GPU here; without "
                   "one, 8.6,8.9,12.0).")
@click.option("--fp16-flag", is_flag=True, help="TensorRT 10.x: BuilderFlag.FP16 on the FP32 ONNX instead.")
@click.option("--legacy-calibrator", is_flag=True, help="TensorRT 10.x: TensorRT's own INT8 calibrator instead of Q/DQ.")
@click.option("--weakly-typed", is_flag=True, help="TensorRT 10.x: build an FP16/Q-DQ ONNX weakly typed (with flags).")
@click.option("--calib-data", help="Calibration data: image folder, .npy/.npz or demo (also validates, unless --val-data).")
@click.option("--calib-method", type=click.Choice(["entropy", "minmax", "percentile", "mse"]), default="entropy",
              show_default=True)
@click.option("--calib-samples", type=int, default=512, show_default=True)
@click.option("--calib-refine", default="all", show_default=True, metavar="LIST",
              help="After calibration: ranges, gptq, bias (as calibrate's --refine); a comma list, all or none.")
@click.option("--calib-cache", type=click.Path(dir_okay=False),
              help="TensorRT 10 calibration cache: read if it exists, written after calibrating.")
@click.option("--batch", help="MIN:OPT:MAX batch profile (default: the batch range recorded in the ONNX).")
@click.option("--min-shapes", help="trtexec style NAME:DxDxDxD[,...]; with --opt-shapes and --max-shapes.")
@click.option("--opt-shapes", help="See --min-shapes.")
@click.option("--max-shapes", help="See --min-shapes.")
@click.option("--workspace", help="Workspace limit: MiB, or with a unit (512M, 2G).")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Load if it exists; save after the build.")
@click.option("--merge-timing-cache", multiple=True, type=click.Path(dir_okay=False),
              help="Merge another timing cache in first (repeatable).")
@click.option("--opt-level", type=int, help="Builder optimization level 0-5 (TensorRT's default 3).")
@click.option("--hardware-compat", type=click.Choice(["none", "ampere_plus", "same_compute_capability"]),
              default="none", show_default=True)
@click.option("--version-compatible", is_flag=True, help="Engine that also runs on later TensorRT versions.")
@click.option("--dla-core", type=int, help="Build for this DLA core (Jetson), with GPU fallback.")
@click.option("--no-gpu-fallback", is_flag=True, help="With --dla-core: fail instead of running layers on the GPU.")
@click.option("--no-validate", is_flag=True, help="Skip the check against ONNX Runtime on the FP32 ONNX.")
@click.option("--val-data", help="Validation data (default: --calib-data, else random inputs).")
@click.option("--val-samples", type=int, default=64, show_default=True)
@click.option("--min-agreement", type=float,
              help="Gate: top-1 agreement with the reference, 0..1 (default 0.99, INT8 0.95).")
@click.option("--max-top1-drop", type=float, help="Gate: top-1 points below the reference (labelled --val-data).")
@click.option("--reference", type=click.Path(dir_okay=False),
              help="FP32 ONNX to validate against (default: the input when it is FP32).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the build report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing engine and sidecar.")
def trt_cmd(onnx_path, output, fp16, int8, rtx, compute_capability, fp16_flag, legacy_calibrator, weakly_typed, calib_data, calib_method,
            calib_samples, calib_refine, calib_cache, batch, min_shapes, opt_shapes, max_shapes, workspace, timing_cache,
            merge_timing_cache, opt_level, hardware_compat, version_compatible, dla_core, no_gpu_fallback,
            no_validate, val_data, val_samples, min_agreement, max_top1_drop, reference, seed, json_path,
            force) -> None:
    """Build a TensorRT engine (+ sidecar) from an ONNX or a bundle and validate it against ONNX Runtime.

    With TensorRT for RTX (--rtx) the engine can be built on a machine without a GPU, for the RTX
    GPUs named by --compute-capability; it is validated where it runs (`rexport validate`)."""
    from rexport.exporter.tensorrt import BuildConfig, build_engine
    from rexport.runtime.engine_sidecar import sidecar_path

    if fp16 and int8:
        raise InputError("give --fp16 or --int8, not both")
    precision = "fp16" if fp16 else "int8" if int8 else None
    engine = Path(output) if output else default_engine(Path(onnx_path), precision)
    json_report = Outputs(force, [onnx_path, data_path(calib_data), data_path(val_data), reference,
                                  *merge_timing_cache],
                          files={"engine": engine, "engine sidecar": sidecar_path(engine)},
                          caches={"timing cache": timing_cache, "calibration cache": calib_cache}, json=json_path).json
    config = BuildConfig(precision=precision, flavour="rtx" if rtx else None,
                         compute_capabilities=compute_capability, fp16_flag=fp16_flag, legacy_calibrator=legacy_calibrator,
                         weakly_typed=weakly_typed, calib_data=calib_data, calib_method=calib_method,
                         calib_samples=calib_samples, calib_refine=calib_refine, calib_cache=calib_cache, batch=batch, min_shapes=min_shapes,
                         opt_shapes=opt_shapes, max_shapes=max_shapes, workspace=workspace, timing_cache=timing_cache,
                         merge_timing_caches=merge_timing_cache, optimization_level=opt_level,
                         hardware_compatibility=hardware_compat, version_compatible=version_compatible,
                         dla_core=dla_core, gpu_fallback=not no_gpu_fallback, validate=not no_validate,
                         val_data=val_data, val_samples=val_samples, min_agreement=min_agreement,
                         max_top1_drop=max_top1_drop, reference=reference, seed=seed, overwrite=force)
    result = build_engine(onnx_path, output, config)
    json_report.write(result.to_dict())
    click.echo(result.format())


def default_engine(source: Path, precision: str | None) -> Path:
    """Where `rexport trt` writes the engine without -o (as build_engine decides), to check it up front."""
    from rexport.exporter.tensorrt.build import bundle_source
    from rexport.exporter.tensorrt.config import default_engine_name
    from rexport.runtime.bundle import is_bundle

    if is_bundle(source):
        return source / default_engine_name(bundle_source(source, precision), precision)
    return Path(default_engine_name(source, precision))


@cli.command("doctor")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def doctor_cmd(as_json: bool) -> None:
    """Report TensorRT, CUDA, cuda-python, onnxruntime, the GPU and DLA: what is here, what is missing."""
    from rexport.runtime.trt_compat import inspect_environment

    report = inspect_environment()
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(report.format())


def main() -> None:
    """The console entry point: SIGTERM and SIGHUP (kill, systemd, CI, a closed terminal) end a
    command as Ctrl-C does, removing its temporary files, with exit code 128 + the signal. A signal
    the parent ignores (SIGHUP under nohup) stays ignored."""
    for sig in TERMINATING:
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _terminate)
    cli(prog_name="rexport")


if __name__ == "__main__":
    sys.exit(main())
