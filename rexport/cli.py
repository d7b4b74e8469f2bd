"""The `rexport` command. Thin: each command parses its flags into a config and calls one
public function. Errors a user can cause are `RexportError`s: printed as one line, with a
non-zero exit code (1 for errors, 3 for a failed quality gate, 2 for bad usage)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import click

from rexport import __version__
from rexport.console import log, setup_logging, table
from rexport.errors import InputError, RexportError


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
        except KeyboardInterrupt:
            click.echo("interrupted; nothing was written", err=True)
            ctx.exit(130)
        except Exception as e:  # a bug: say so in one line, the traceback with -v
            if log.isEnabledFor(logging.DEBUG):
                raise
            click.echo(f"error: unexpected {type(e).__name__}: {e} (this is a bug in rexport; "
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


def write_json(path: str | None, payload: dict) -> None:
    if path:
        from rexport.files import atomic_output

        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_text(json.dumps(payload, indent=2) + "\n")


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
        click.echo(json.dumps(rows, indent=2))
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
@click.option("--json", "json_path", type=click.Path(dir_okay=False), help="Write the export report as JSON.")
@click.option("--force", is_flag=True, help="Replace an existing output file.")
def onnx_cmd(checkpoint, arch, output, num_classes, input_size, batch, opset, exporter, labels, key_map, shortcut,
             unsafe_pickle, mean, std, resize, channels, interpolation, max_pixel_value, images, atol, rtol,
             no_parity, json_path, force) -> None:
    """Export CHECKPOINT to a verified ONNX file."""
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_checkpoint
    from rexport.exporter.checkpoint import detect_arch
    from rexport.runtime.compare import Tolerance
    from rexport.runtime.metadata import BatchRange, load_labels

    keys = parse_key_map(key_map)
    ckpt = load_checkpoint(checkpoint, unsafe_pickle=unsafe_pickle)
    if arch is None:
        arch = detect_arch(ckpt, key_map=keys)
        log.info("arch: %s (detected from the checkpoint; pass --arch to choose)", arch)
    output = output or Path(checkpoint).with_suffix(".onnx").name
    config = ExportConfig(arch=arch, num_classes=num_classes, input_size=parse_size(input_size),
                          batch=BatchRange.parse(batch), opset=opset, exporter=exporter,
                          labels=load_labels(labels) if labels else None, key_map=keys, shortcut=shortcut,
                          unsafe_pickle=unsafe_pickle, overwrite=force,
                          preprocess=preprocess_overrides(mean=mean, std=std, resize=resize, channels=channels,
                                                          interpolation=interpolation, max_pixel_value=max_pixel_value),
                          parity=ParityConfig(enabled=not no_parity, tolerance=Tolerance(atol, rtol), images=images))
    result = export_onnx(ckpt, output, config)
    write_json(json_path, result.to_dict())
    click.echo(result.format())


@cli.command("demo")
@click.option("-o", "--output", default="rexport-demo", show_default=True, type=click.Path(file_okay=False),
              help="Directory for everything the demo writes.")
def demo_cmd(output: str) -> None:
    """Run the whole pipeline on the embedded default model (ResNet-20 trained on digits)."""
    from rexport.demo.pipeline import run_demo

    result = run_demo(output)
    click.echo(result.format())


def main() -> None:
    cli(prog_name="rexport")


if __name__ == "__main__":
    sys.exit(main())
