"""Commands on the device: run, describe, self-test and time a model; report the environment."""

from __future__ import annotations

from pathlib import Path

import click

from rexport.cli.app import cli
from rexport.cli.common import JsonReport, Outputs
from rexport.errors import InputError
from rexport.options import LOADING, fill, flag, options


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
    from rexport.runtime.selftest import require_pass

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
    from rexport.runtime.backends.choice import installed_backends, saturating
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
                drifts = bool(saturating(loaded.info.calibration, loaded.backend.name))
                measured[f"{name} [{loaded.backend.name}]"] = (Path(m), loaded.model_file.name, backend, drifts)
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
    """bench --save-choice: per bundle, each model's fastest backend at the largest batch measured
    (one whose INT8 kernels saturate here comes after those that stay exact)."""
    from rexport.runtime.backends.choice import save_choice

    largest = max(r.batch for r in rows)
    for bundle_dir in dict.fromkeys(where for where, *_ in measured.values()):
        fastest = {}
        for row in sorted((r for r in rows if r.batch == largest), key=lambda r: (measured[r.model][3], r.p50_ms)):
            where, file, backend, _ = measured[row.model]
            if where == bundle_dir:
                fastest.setdefault(file, backend)
        click.echo(f"saved the fastest backend at batch {largest} for this machine -> "
                   f"{save_choice(bundle_dir, fastest)}: " + ", ".join(f"{f} {b}" for f, b in fastest.items()))


@cli.command("doctor")
@options("json", "overwrite")
def doctor_cmd(json: str | None, overwrite: bool) -> None:
    """Report TensorRT, CUDA, cuda-python, onnxruntime, the GPU and DLA: what is here, what is missing."""
    from rexport.runtime.environment import inspect_environment

    report = JsonReport(json, overwrite)
    result = inspect_environment()
    report.echo(result.format())
    report.write(result.to_dict())
