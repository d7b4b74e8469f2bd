"""Commands that prove the models agree and pack them for the device."""

from __future__ import annotations

from pathlib import Path

import click

from rexport.cli.app import cli
from rexport.cli.common import Outputs, data_path, preprocess_overrides
from rexport.options import PREPROCESS, REQUIRED, fill, options


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
    from rexport.runtime.archive import ARCHIVE_SUFFIXES
    from rexport.runtime.bundle import make_bundle, open_bundle
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
