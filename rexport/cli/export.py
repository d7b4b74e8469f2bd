"""Commands on the workstation: from a checkpoint to ONNX, FP16, INT8 and TensorRT engines."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import click

from rexport.cli.app import cli
from rexport.cli.common import (JsonReport, Outputs, data_path, parse_key_map, parse_size, preprocess_overrides,
                                quantize_config)
from rexport.console import log, table
from rexport.errors import InputError
from rexport.options import CALIBRATION, PREPROCESS, REQUIRED, fill, options
from rexport.pipeline import sibling


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
    from rexport.exporter import ExportConfig, ParityConfig, load_checkpoint
    from rexport.exporter.checkpoint import detect_arch
    from rexport.pipeline import PipelineConfig, planned_outputs, run_pipeline
    from rexport.runtime.gates import Tolerance
    from rexport.runtime.metadata import load_labels

    keys = parse_key_map(o["key_map"])
    output = o["output"] or Path(checkpoint).with_suffix(".onnx").name
    calib_data, val_data = o["calib_data"], o["val_data"]
    config = PipelineConfig(None, fp16=o["fp16"], fp16_data=calib_data,  # export: once the arch is known
                            int8=(quantize_config(o),) if o["int8"] else (), bundle=o["bundle"],
                            val_data=(val_data or calib_data or o["images"]) if o["bundle"] else None)
    report = Outputs(o["overwrite"], [checkpoint, o["labels"], o["images"], data_path(calib_data), data_path(val_data)],
                     files=planned_outputs(output, config), directories={"bundle": o["bundle"]}, json=o["json"]).json
    if o["arch"] is None:  # after the outputs are checked: reading a large checkpoint takes a while
        o["arch"] = detect_arch(load_checkpoint(checkpoint, unsafe_pickle=o["unsafe_pickle"]), key_map=keys)
        log.info("arch: %s (detected from the checkpoint; pass --arch to choose)", o["arch"])
    config = replace(config, export=fill(ExportConfig, o, input_size=parse_size(o["input_size"]), key_map=keys,
                                         labels=load_labels(o["labels"]) if o["labels"] else None,
                                         preprocess=preprocess_overrides(o),
                                         parity=fill(ParityConfig, o, tolerance=fill(Tolerance, o))))
    result = run_pipeline(checkpoint, output, config, overwrite=o["overwrite"])
    report.echo(result.format())
    report.write(result.to_dict())


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
