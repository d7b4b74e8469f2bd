"""The `rexport` command. Thin: each command takes its options from the one table of them
(rexport/options.py), parses them into a config and calls one public function. Errors a user can
cause are `RexportError`s: printed as one line, with flags where the API named fields, and a
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
from rexport.options import CALIBRATION, LOADING, PREPROCESS, REQUIRED, fill, flag, options, renamed, with_flags


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


class RexportCommand(click.Command):
    """A command whose usage errors name the new flag of one renamed before 1.0."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as e:
            hint = renamed(e.option_name, (p.name for p in self.params))
            if hint is None:
                raise
            raise click.UsageError(hint, ctx) from None
        except click.BadOptionUsage as e:
            if e.option_name != flag("json"):
                raise
            raise click.UsageError(f"{e.option_name} takes a file: --json FILE, or --json - to print the report",
                                   ctx) from None


class RexportGroup(click.Group):
    """Turns RexportErrors (and anything unexpected) into one line and an exit code."""

    command_class = RexportCommand

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RexportError as e:
            click.echo(f"error: {with_flags(str(e), e.fields)}", err=True)
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
    raise InputError(f"{flag('input_size')} must be N or HxW (e.g. 224 or 224x192), not {text!r}")


def parse_floats(text: str | None, name: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.replace(" ", "").split(","))
    except ValueError:
        raise InputError(f"{flag(name)} must be comma-separated numbers (e.g. 0.485,0.456,0.406), "
                         f"not {text!r}") from None


def parse_key_map(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    out = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise InputError(f"{flag('key_map')} takes OLD=NEW (a key prefix and its replacement), not {item!r}")
        out.append((old, new))
    return tuple(out)


class JsonReport:
    """`--json FILE`: checked by the rule for every output before the work starts (an existing file
    needs --force; never one of the command's inputs or other outputs) and written after it, as
    strict JSON, through a temporary file. `--json -` prints the report on stdout in place of the
    text (`echo`)."""

    def __init__(self, path: str | None, force: bool, *inputs: str | Path | None):
        from rexport.files import check_output

        self.stdout = path == "-"
        self.path = None if self.stdout else path
        self.force, self.inputs = force, inputs
        self.existed = bool(self.path) and Path(self.path).exists()
        if self.path:
            check_output(self.path, overwrite=force, inputs=inputs)

    def echo(self, text: str) -> None:
        """The command's text, unless the report takes stdout."""
        if not self.stdout:
            click.echo(text)

    def write(self, payload) -> None:
        if self.stdout:
            from rexport.files import json_text

            click.echo(json_text(payload), nl=False)
            return
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


def preprocess_overrides(o: dict):
    from rexport.runtime.preprocess import PreprocessOverrides

    return fill(PreprocessOverrides, o, mean=parse_floats(o["mean"], "mean"), std=parse_floats(o["std"], "std"))


def quantize_config(o: dict, **extra):
    """The QuantizeConfig of `rexport calibrate` and `rexport onnx --int8`."""
    from rexport.calibration import QuantizeConfig
    from rexport.runtime.gates import Gates
    from rexport.calibration.refine import parse_refinements

    return fill(QuantizeConfig, o, refine=parse_refinements(o["calib_refine"]), budget=fill(Gates, o), **extra)


def sibling(path: str | Path, tag: str) -> Path:
    """model.onnx -> model.<tag>.onnx"""
    path = Path(path)
    return path.with_name(f"{path.stem}.{tag}{path.suffix or '.onnx'}")


# -- commands ----------------------------------------------------------------------------------


@cli.command("models")
@options("family", "json", "overwrite")
def models_cmd(family: str | None, json: str | None, overwrite: bool) -> None:
    """List the architectures rexport can export."""
    from rexport.exporter import count_parameters, list_models

    report = JsonReport(json, overwrite)
    archs = [a for a in list_models() if family is None or a.family == family]
    if not archs:
        raise InputError(f"no family {family!r}; families: "
                         f"{', '.join(sorted({a.family for a in list_models()}))}")
    rows = [{"arch": a.name, "family": a.family, "input": f"{a.input_size}x{a.input_size}",
             "classes": a.num_classes, "params": count_parameters(a.name),
             "shortcuts": "/".join(a.shortcuts) or "-"} for a in archs]
    report.echo(table(("arch", "family", "input", "classes", "params", "shortcut"),
                      [(r["arch"], r["family"], r["input"], r["classes"], f"{r['params']:,}", r["shortcuts"])
                       for r in rows], indent=""))
    report.write(rows)


@cli.command("onnx")
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@options("arch", "output", "num_classes", "input_size", "batch", "opset", "exporter", "labels", "key_map", "shortcut",
         "unsafe_pickle", *PREPROCESS, "images", "atol", "rtol", "parity", "fp16", "int8", "calib_data", *CALIBRATION,
         "bundle", "json", "overwrite", batch="1:8:32")
def onnx_cmd(checkpoint, **o) -> None:
    """Export CHECKPOINT to a verified ONNX file (and FP16 / INT8 versions, and a bundle).

    Writes CHECKPOINT's name + .onnx in the current directory unless -o says otherwise; --fp16
    and --int8 add OUTPUT.fp16.onnx and OUTPUT.int8.onnx."""
    if o["int8"] and not o["calib_data"]:
        raise InputError("--int8 needs --calib-data (an image folder, .npy/.npz or demo)")
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_checkpoint
    from rexport.exporter.checkpoint import detect_arch
    from rexport.runtime.gates import Tolerance
    from rexport.runtime.metadata import load_labels

    keys = parse_key_map(o["key_map"])
    output = o["output"] or Path(checkpoint).with_suffix(".onnx").name
    fp16, int8, calib_data, val_data, force = o["fp16"], o["int8"], o["calib_data"], o["val_data"], o["overwrite"]
    int8_cache = sibling(output, "int8").with_suffix(".cache") if int8 and o["target"] == "trt" else None
    report = Outputs(force, [checkpoint, o["labels"], o["images"], data_path(calib_data), data_path(val_data)],
                     files={"output": output, "FP16 output": fp16 and sibling(output, "fp16") or None,
                            "INT8 output": int8 and sibling(output, "int8") or None, "calibration cache": int8_cache},
                     directories={"bundle": o["bundle"]}, json=o["json"]).json
    ckpt = load_checkpoint(checkpoint, unsafe_pickle=o["unsafe_pickle"])
    if o["arch"] is None:
        o["arch"] = detect_arch(ckpt, key_map=keys)
        log.info("arch: %s (detected from the checkpoint; pass --arch to choose)", o["arch"])
    config = fill(ExportConfig, o, input_size=parse_size(o["input_size"]), key_map=keys,
                  labels=load_labels(o["labels"]) if o["labels"] else None, preprocess=preprocess_overrides(o),
                  parity=fill(ParityConfig, o, tolerance=fill(Tolerance, o)))
    result = export_onnx(ckpt, output, config)
    payload = {"export": result.to_dict()}
    report.echo(result.format())
    if fp16:
        from rexport.calibration import to_fp16
        from rexport.runtime.data import load_dataset

        inputs = load_dataset(calib_data, result.info, samples=64).inputs if calib_data else None
        converted = to_fp16(output, sibling(output, "fp16"), inputs=inputs, overwrite=force)
        payload["fp16"] = {"output": str(converted.path), "kept_fp32": converted.kept_fp32}
        report.echo(converted.format())
    if int8:
        from rexport.calibration import quantize

        quantized = quantize(output, sibling(output, "int8"), quantize_config(o))
        payload["int8"] = quantized.to_dict()
        report.echo(quantized.format())
    if o["bundle"]:
        from rexport.runtime.bundle import make_bundle

        written = [Path(output)] + [sibling(output, t) for t, wanted in (("fp16", fp16), ("int8", int8)) if wanted]
        payload["bundle"] = str(make_bundle(written, o["bundle"], data=val_data or calib_data or o["images"],
                                            checkpoint=checkpoint, overwrite=force))
        report.echo(f"bundle -> {payload['bundle']}")
    report.write(payload)


@cli.command("calibrate")
@click.argument("model", type=click.Path(dir_okay=False))
@options("calib_data", "output", *CALIBRATION, "calib_cache", *PREPROCESS, "bundle", "json", "overwrite",
         calib_data=REQUIRED)
def calibrate_cmd(model, **o) -> None:
    """Calibrate MODEL (an FP32 ONNX from `rexport onnx`) to an INT8 Q/DQ ONNX.

    Writes MODEL.int8.onnx unless -o says otherwise, and for the trt target the TensorRT 10
    calibration cache OUTPUT.cache unless --calib-cache says otherwise."""
    from rexport.calibration import quantize

    output = Path(o["output"] or sibling(model, "int8"))
    trt_cache = (o["calib_cache"] or output.with_suffix(".cache")) if o["target"] == "trt" else None
    report = Outputs(o["overwrite"], [model, data_path(o["calib_data"]), data_path(o["val_data"])],
                     files={"output": output, "calibration cache": trt_cache},
                     directories={"bundle": o["bundle"]}, json=o["json"]).json
    result = quantize(model, output, quantize_config(o, preprocess=preprocess_overrides(o)))
    report.write(result.to_dict())
    report.echo(result.format())
    if o["bundle"]:
        from rexport.runtime.bundle import make_bundle

        bundle = make_bundle([model, result.path], o["bundle"], data=o["val_data"] or o["calib_data"],
                             overwrite=o["overwrite"])
        report.echo(f"bundle -> {bundle}")


@cli.command("fp16")
@click.argument("model", type=click.Path(dir_okay=False))
@options("output", "calib_data", "calib_samples", "keep_float", "overwrite", calib_samples=64)
def fp16_cmd(model, output, calib_data, calib_samples, keep_float, overwrite) -> None:
    """Convert MODEL (an FP32 ONNX) to FP16 weights and compute with FP32 inputs and outputs.

    Writes MODEL.fp16.onnx unless -o says otherwise. The FP16 range is checked on --calib-data
    (default: random inputs)."""
    from rexport.calibration import to_fp16
    from rexport.runtime.data import load_dataset
    from rexport.calibration.fp16 import read_model

    output = output or sibling(model, "fp16")
    Outputs(overwrite, [model, data_path(calib_data)], files={"output": output})
    inputs = None
    if calib_data:
        inputs = load_dataset(calib_data, read_model(model)[1], samples=calib_samples).inputs
    result = to_fp16(model, output, inputs=inputs, keep_float=tuple(keep_float), overwrite=overwrite)
    click.echo(result.format())


@cli.command("validate")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@options("val_data", "checkpoint", "val_samples", "seed", "max_top1_drop", "min_agreement", "backend", "providers",
         "unsafe_pickle", *PREPROCESS, "json", "overwrite", providers="cpu")
def validate_cmd(models, **o) -> None:
    """Run MODELS (ONNX files, engines, bundles) on the same data and compare them with the reference.

    Without --val-data a bundle is validated on its reference inputs and stored reference logits."""
    from rexport.errors import CheckFailed
    from rexport.runtime.gates import Gates
    from rexport.runtime.validate import validate

    report = Outputs(o["overwrite"], [*models, data_path(o["val_data"]), o["checkpoint"]], json=o["json"]).json
    result = validate(list(models), o["val_data"], checkpoint=o["checkpoint"], samples=o["val_samples"],
                      seed=o["seed"], gates=fill(Gates, o), backend=o["backend"], providers=o["providers"],
                      unsafe_pickle=o["unsafe_pickle"], preprocess=preprocess_overrides(o))
    report.write(result.to_dict())
    report.echo(result.format())
    if not result.passed:
        failed = [r for r in result.rows if not r.passed]
        raise CheckFailed(f"{len(failed)} model(s) failed the gates ({result.gates.describe()}): "
                          + "; ".join(f"{r.name}: {', '.join(r.failures)}" for r in failed))


@cli.command("bundle")
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@options("output", "val_data", "checkpoint", "val_samples", "validate", "default", "archive", "overwrite",
         output=REQUIRED, val_samples=8)
def bundle_cmd(models, output, val_data, checkpoint, val_samples, validate, default, archive, overwrite) -> None:
    """Bundle MODELS (ONNX files, engines with sidecars) with references for a device self-test.

    -o names the bundle directory (or the archive, with --archive); its reference inputs are the
    first --val-samples of --val-data (else random inputs), which also validates the models."""
    from rexport.runtime.bundle import ARCHIVE_SUFFIXES, make_bundle, open_bundle
    from rexport.runtime.engine_sidecar import sidecar_path

    out = Path(output)
    if archive and not out.name.endswith(ARCHIVE_SUFFIXES):
        out = out.with_name(out.name + ".tar.gz")
    sidecars = [sidecar_path(m) for m in models if sidecar_path(m).is_file()]
    Outputs(overwrite, [*models, *sidecars, data_path(val_data), checkpoint],
            files={"bundle": out if archive else None}, directories={"bundle": None if archive else out})
    path = make_bundle(list(models), output, data=val_data, checkpoint=checkpoint, samples=val_samples,
                       validate=validate, default=default, archive=archive, overwrite=overwrite)
    bundle = open_bundle(path)
    try:
        files = ", ".join(f"{m['file']} ({m['precision']})" for m in bundle.models)
        click.echo(f"bundle -> {path}: {files}; default {bundle.manifest['default']}; "
                   f"{bundle.manifest['reference']['samples']} reference inputs "
                   f"({bundle.manifest['reference']['source']})")
    finally:
        bundle.cleanup()


@cli.command("predict")
@click.argument("path", metavar="MODEL", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@options("top_k", "draft", *LOADING, "json", "overwrite")
def predict_cmd(path, images, top_k, draft, model, backend, providers, threads, json, overwrite) -> None:
    """Classify IMAGES with MODEL (bundle, .onnx or .engine) and print the top-k."""
    from rexport.runtime import load

    report = Outputs(overwrite, [path, *images], json=json).json
    with load(path, model=model, backend=backend, providers=providers, threads=threads) as predictor:
        predictions = predictor.predict(list(images), top_k=top_k, draft=draft)
    report.echo("\n".join(f"{img}: {p}" for img, p in zip(images, predictions)))
    report.write({img: p.to_dict() for img, p in zip(images, predictions)})


@cli.command("inspect")
@click.argument("path", metavar="MODEL", type=click.Path())
@options("json", "overwrite")
def inspect_cmd(path, json, overwrite) -> None:
    """Show what MODEL (bundle, .onnx or .engine) says about itself: metadata, I/O, precision census."""
    from rexport.runtime.inspect import inspect_model

    report = Outputs(overwrite, [path], json=json).json
    result = inspect_model(path)
    report.echo(result.format())
    report.write(result.to_dict())


@cli.command("selftest")
@click.argument("bundle", type=click.Path())
@options(*LOADING, "json", "overwrite")
def selftest_cmd(bundle, model, backend, providers, threads, json, overwrite) -> None:
    """Replay a bundle's reference inputs and images on this machine and compare."""
    from rexport.runtime import load
    from rexport.runtime.bundle import require_pass

    report = Outputs(overwrite, [bundle], json=json).json
    with load(bundle, model=model, backend=backend, providers=providers, threads=threads) as predictor:
        result = predictor.selftest()
    report.echo(result.format())
    report.write(result.to_dict())
    require_pass(result)


@cli.command("bench")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@options("batch_sizes", "iterations", "duration", "warmup", "bench_threads", *LOADING, "save_choice", "images", "json",
         "overwrite")
def bench_cmd(models, **o) -> None:
    """Latency (p50/p90/p99) and throughput of MODELS, and preprocessing time, in one table."""
    from rexport.runtime import load
    from rexport.runtime.bench import BenchConfig, bench
    from rexport.runtime.backends.choice import installed_backends
    from rexport.runtime.preprocess import is_image_file

    try:
        sizes = tuple(int(b) for b in o["batch_sizes"].split(","))
    except ValueError:
        raise InputError(f"{flag('batch_sizes')} takes comma-separated sizes (e.g. 1,8), "
                         f"not {o['batch_sizes']!r}") from None
    report = Outputs(o["overwrite"], [*models, o["images"]], json=o["json"]).json
    config = fill(BenchConfig, o, batch_sizes=sizes)
    images = o["images"]
    files = sorted(p for p in Path(images).rglob("*") if is_image_file(p))[:32] if images else None
    if images and not files:
        raise InputError(f"{flag('images')} {images} holds no images")
    if o["save_choice"] and (o["backend"] != "all" or not all(Path(m).is_dir() for m in models)):
        raise InputError(f"{flag('save_choice')} records what {flag('backend')} all measures on bundle directories; "
                         f"give {flag('backend')} all and bundle directories (not archives or single files)")
    predictors, measured = {}, {}  # measured: predictor name -> (bundle, model file, backend)
    try:
        for m in dict.fromkeys(str(Path(m).resolve()) for m in models):  # each model once, in order
            name = Path(m).name if Path(m).name not in predictors else m
            if o["backend"] != "all":
                predictors[name] = load(m, model=o["model"], backend=o["backend"], providers=o["providers"],
                                        threads=o["threads"])
                continue
            for backend in installed_backends(model_file(m, o["model"])):
                loaded = load(m, model=o["model"], backend=backend, providers=o["providers"], threads=o["threads"])
                predictors[f"{name} [{loaded.backend.name}]"] = loaded
                measured[f"{name} [{loaded.backend.name}]"] = (Path(m), loaded.model_file.name, backend)
        result = bench(predictors, config, files)
    finally:
        for p in predictors.values():
            p.close()
    report.write(result.to_dict())
    report.echo(result.format())
    if o["save_choice"]:
        save_fastest(result.rows, measured)


def model_file(path: str, model: str | None) -> Path:
    """The model file `load(path, model=model)` would run, read off a bundle's manifest (no model loaded)."""
    from rexport.runtime.bundle import is_bundle, open_bundle

    if not is_bundle(Path(path)):
        return Path(path)
    bundle = open_bundle(path)
    try:
        return Path(bundle.model_file(model).name)
    finally:
        bundle.cleanup()


def save_fastest(rows, measured: dict) -> None:
    """bench --save-choice: per bundle, each model's fastest backend at the largest batch measured."""
    from rexport.runtime.backends.choice import save_choice

    largest = max(r.batch for r in rows)
    for bundle_dir in dict.fromkeys(where for where, _, _ in measured.values()):
        fastest = {}
        for row in sorted((r for r in rows if r.batch == largest), key=lambda r: r.p50_ms):
            where, file, backend = measured[row.model]
            if where == bundle_dir:
                fastest.setdefault(file, backend)
        click.echo(f"saved the fastest backend at batch {largest} for this machine -> "
                   f"{save_choice(bundle_dir, fastest)}: " + ", ".join(f"{f} {b}" for f, b in fastest.items()))


@cli.command("demo")
@options("output", "json", "overwrite", output="rexport-demo")
def demo_cmd(output: str, json: str | None, overwrite: bool) -> None:
    """Run the whole pipeline on the embedded default model (ResNet-20 trained on digits).

    Everything goes into -o DIR; a directory an earlier demo wrote is replaced."""
    from rexport.demo.pipeline import run_demo

    report = JsonReport(json, overwrite, output)
    result = run_demo(output)
    report.echo(result.format())
    report.write(result.to_dict())
    if not result.passed:
        from rexport.errors import CheckFailed

        raise CheckFailed("a model form missed the demo's accuracy gate (see the table above)")


@cli.command("trt")
@click.argument("onnx_path", metavar="ONNX|BUNDLE", type=click.Path())
@options("output", "fp16", "int8", "rtx", "compute_capabilities", "fp16_flag", "legacy_calibrator", "weakly_typed",
         "calib_data", "calib_method", "calib_samples", "calib_refine", "calib_cache", "batch", "min_shapes",
         "opt_shapes", "max_shapes", "workspace", "timing_cache", "merge_timing_caches", "optimization_level",
         "hardware_compatibility", "version_compatible", "dla_core", "gpu_fallback", "validate", "val_data",
         "val_samples", "min_agreement", "max_top1_drop", "reference", "seed", "json", "overwrite", val_samples=64)
def trt_cmd(onnx_path, **o) -> None:
    """Build a TensorRT engine (+ sidecar) from an ONNX or a bundle and validate it against ONNX Runtime.

    Writes the ONNX's name [+ .fp16/.int8] + .engine (inside a bundle when built from one) unless
    -o says otherwise; the sidecar is ENGINE.json. With TensorRT for RTX (--rtx) the engine can be
    built on a machine without a GPU, for the RTX GPUs named by --compute-capability; it is
    validated where it runs (`rexport validate`)."""
    from rexport.exporter.tensorrt import BuildConfig, build_engine
    from rexport.runtime.engine_sidecar import sidecar_path

    if o["fp16"] and o["int8"]:
        raise InputError("give --fp16 or --int8, not both")
    precision = "fp16" if o["fp16"] else "int8" if o["int8"] else None
    engine = Path(o["output"]) if o["output"] else default_engine(Path(onnx_path), precision)
    report = Outputs(o["overwrite"], [onnx_path, data_path(o["calib_data"]), data_path(o["val_data"]), o["reference"],
                                      *o["merge_timing_caches"]],
                     files={"engine": engine, "engine sidecar": sidecar_path(engine)},
                     caches={"timing cache": o["timing_cache"], "calibration cache": o["calib_cache"]},
                     json=o["json"]).json
    config = fill(BuildConfig, o, precision=precision, flavour="rtx" if o["rtx"] else None)
    result = build_engine(onnx_path, o["output"], config)
    report.write(result.to_dict())
    report.echo(result.format())


def default_engine(source: Path, precision: str | None) -> Path:
    """Where `rexport trt` writes the engine without -o (as build_engine decides), to check it up front."""
    from rexport.exporter.tensorrt.build import bundle_source
    from rexport.exporter.tensorrt.config import default_engine_name
    from rexport.runtime.bundle import is_bundle

    if is_bundle(source):
        return source / default_engine_name(bundle_source(source, precision), precision)
    return Path(default_engine_name(source, precision))


@cli.command("doctor")
@options("json", "overwrite")
def doctor_cmd(json: str | None, overwrite: bool) -> None:
    """Report TensorRT, CUDA, cuda-python, onnxruntime, the GPU and DLA: what is here, what is missing."""
    from rexport.runtime.trt_compat import inspect_environment

    report = JsonReport(json, overwrite)
    result = inspect_environment()
    report.echo(result.format())
    report.write(result.to_dict())


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
