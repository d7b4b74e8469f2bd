"""One vocabulary (issue 11): every option of every command comes from the one table
(rexport/options.py), each concept under one flag and each flag with one meaning; choices come
from the registries; the Python API's errors name fields and the CLI names the flags."""

from __future__ import annotations

import ast
import json
import shutil
from collections import defaultdict
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rexport.cli import cli
from rexport.errors import InputError
from rexport.options import REGISTRIES, RENAMED, TABLE, command_line, fill

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("rexport", "calibration", "exporter", "runtime")


def all_options():
    for name, command in sorted(cli.commands.items()):
        for param in command.params:
            if isinstance(param, click.Option):
                yield name, param


def meaning(param: click.Option) -> tuple:
    """What a flag means, whichever command has it (defaults may differ per command)."""
    kind = param.type
    return (param.help, type(kind).__name__, tuple(getattr(kind, "choices", ()) or ()),
            getattr(kind, "file_okay", None), getattr(kind, "dir_okay", None), param.is_flag, param.flag_value,
            param.multiple)


def test_every_option_of_every_command_comes_from_the_table():
    for command, param in all_options():
        assert param.name in TABLE, f"rexport {command}: {param.opts} is not in rexport/options.py"
        option = TABLE[param.name]
        assert param.opts == [d for d in (option.short, option.flag) if d], (command, param.name)
        assert param.help == option.help, (command, param.name)
        if option.choices is not None:
            assert list(param.type.choices) == list(option.choices), (command, param.name)
        if option.is_flag:
            assert param.is_flag and param.flag_value == option.flag_value, (command, param.name)


def test_one_concept_one_flag_and_one_flag_one_meaning():
    flags, concepts, meanings = defaultdict(set), defaultdict(set), defaultdict(set)
    for command, param in all_options():
        flags[param.name].add(tuple(param.opts))
        for opt in param.opts:
            concepts[opt].add(param.name)
            meanings[opt].add(meaning(param))
    assert {c: f for c, f in flags.items() if len(f) > 1} == {}, "one concept under several flags"
    assert {f: c for f, c in concepts.items() if len(c) > 1} == {}, "one flag for several concepts"
    assert {f: m for f, m in meanings.items() if len(m) > 1} == {}, "one flag with several meanings"
    for name, option in TABLE.items():  # the table itself: one entry per flag
        others = [o.name for o in TABLE.values() if o.flag == option.flag and o.name != name]
        assert others == [], (name, others)


def test_choices_are_the_registries():
    for name, option in TABLE.items():
        if option.choices is not None:
            assert any(option.choices is r for r in REGISTRIES.values()), f"{name}: a choices list of its own"


def string_lists(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
            yield node, {e.value for e in node.elts}


def test_no_list_in_the_package_repeats_a_registry():
    """The calibration methods were written out four times; every registry is written once."""
    registries = {name: set(r) for name, r in REGISTRIES.items()}
    repeats = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text())
            defined = {(t.id, node.value.lineno) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                       for t in node.targets if isinstance(t, ast.Name)}
            for node, values in string_lists(tree):
                for name, registry in registries.items():
                    if values == registry and (name, node.lineno) not in defined:
                        repeats.append(f"{path.relative_to(ROOT)}:{node.lineno} repeats {name}")
    assert repeats == []


@pytest.mark.parametrize("args, hint", [
    (["calibrate", "m.onnx", "--data", "demo"], "--data was renamed --calib-data"),
    (["calibrate", "m.onnx", "--calib-data", "demo", "--samples", "8"], "--samples was renamed --calib-samples"),
    (["calibrate", "m.onnx", "--calib-data", "demo", "--method", "mse"], "--method was renamed --calib-method"),
    (["calibrate", "m.onnx", "--calib-data", "demo", "--refine", "none"], "--refine was renamed --calib-refine"),
    (["calibrate", "m.onnx", "--calib-data", "demo", "--cache", "c"], "--cache was renamed --calib-cache"),
    (["fp16", "m.onnx", "--keep-fp32", "fc"], "--keep-fp32 was renamed --keep-float"),
    (["validate", "m.onnx", "--data", "demo"], "--data was renamed --val-data"),
    (["bundle", "m.onnx", "-o", "b", "--samples", "4"], "--samples was renamed --val-samples"),
    (["bench", "m.onnx", "--batch", "1,8"], "--batch was renamed --batch-sizes"),
    (["trt", "m.onnx", "--data", "demo"], "--data was renamed --calib-data or --val-data"),
    (["inspect", "m.onnx", "--json"], "--json takes a file: --json FILE, or --json - to print the report"),
])
def test_a_renamed_flag_says_its_new_name(args, hint):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    assert f"Error: {hint}" in result.output


def test_renamed_flags_are_gone_and_their_new_names_exist():
    flags = {o.flag for o in TABLE.values()}
    for old, concepts in RENAMED.items():
        assert all(TABLE[c].flag in flags for c in concepts)
        assert all(old not in p.opts for command, p in all_options() if p.name in concepts)
    assert "--batch" in flags  # still the batch range of onnx and trt


def test_json_dash_prints_the_report_and_json_file_writes_it(tmp_path, demo_fp32, monkeypatch):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(demo_fp32, "m.onnx")
    runner = CliRunner()
    printed = runner.invoke(cli, ["inspect", "m.onnx", "--json", "-"])
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout)["model"]["precision"] == "fp32"  # only the report on stdout

    written = runner.invoke(cli, ["inspect", "m.onnx", "--json", "r.json"])
    assert written.exit_code == 0, written.output
    assert "precision" in written.stdout and not written.stdout.lstrip().startswith("{")  # the text
    assert json.loads(Path("r.json").read_text()) == json.loads(printed.stdout)

    again = runner.invoke(cli, ["inspect", "m.onnx", "--json", "r.json"])  # the rule for every output
    assert again.exit_code == 1 and "r.json already exists; pass --force" in again.output
    assert runner.invoke(cli, ["inspect", "m.onnx", "--json", "r.json", "--force"]).exit_code == 0
    onto_input = runner.invoke(cli, ["inspect", "m.onnx", "--json", "m.onnx", "--force"])
    assert onto_input.exit_code == 1 and "refusing to write m.onnx" in onto_input.output
    assert Path("m.onnx").read_bytes() == Path(demo_fp32).read_bytes()


@pytest.mark.parametrize("make, api, cli_args, flags", [
    (lambda: __import__("rexport.exporter.tensorrt", fromlist=["BuildConfig"]).BuildConfig(fp16_flag=True),
     "fp16_flag goes with precision='fp16'", ["trt", "m.onnx", "--fp16-flag"], "--fp16-flag goes with --fp16"),
    (lambda: __import__("rexport.calibration", fromlist=["QuantizeConfig"]).QuantizeConfig(calib_data="demo",
                                                                                           calib_samples=0),
     "calib_samples must be at least 1, not 0",
     ["calibrate", "m.onnx", "--calib-data", "demo", "--calib-samples", "0"],
     "--calib-samples must be at least 1, not 0"),
    (lambda: __import__("rexport.runtime.bench", fromlist=["BenchConfig"]).BenchConfig(bench_threads=0, warmup=-1),
     "iterations and bench_threads must be >= 1 and warmup >= 0", ["bench", "m.onnx", "--bench-threads", "0"],
     "--iterations and --bench-threads must be >= 1 and --warmup >= 0"),
])
def test_api_errors_name_fields_and_the_cli_names_flags(tmp_path, monkeypatch, make, api, cli_args, flags):
    with pytest.raises(InputError) as error:
        make()
    assert str(error.value) == api
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, cli_args)
    assert result.exit_code == 1 and f"error: {flags}\n" in result.output, result.output


def test_config_fields_are_named_as_their_concepts():
    """A config field is named as the concept it fills (`QuantizeConfig.calib_method`, as in
    `BuildConfig` and `--calib-method`): the few under another name are listed in the table's
    `also`, and each of those names a field that exists."""
    from dataclasses import fields

    from rexport.calibration import QuantizeConfig
    from rexport.exporter import ExportConfig, ParityConfig
    from rexport.exporter.tensorrt import BuildConfig
    from rexport.runtime.bench import BenchConfig
    from rexport.runtime.gates import Gates, Tolerance
    from rexport.runtime.preprocess import PreprocessOverrides

    configs = {c.__name__: c for c in (QuantizeConfig, ExportConfig, ParityConfig, BuildConfig, BenchConfig, Gates,
                                       Tolerance, PreprocessOverrides)}
    aliases = {a.partition("=")[0] for o in TABLE.values() for a in o.also if a.split(".")[0] in configs}
    assert aliases == {"ParityConfig.enabled", "BuildConfig.precision", "BuildConfig.flavour"}
    for alias in aliases:
        owner, _, name = alias.partition(".")
        assert name in {f.name for f in fields(configs[owner])}, alias
    assert {f.name for f in fields(QuantizeConfig)} >= {"calib_data", "calib_method", "calib_samples", "calib_refine",
                                                        "calib_cache", "val_data", "val_samples", "keep_float"}


def test_the_rebuild_command_is_the_trt_command_for_the_same_config():
    """BuildConfig -> flags (the engine sidecar's rebuild command) -> `rexport trt`'s parser -> the
    same BuildConfig: one mapping, so a renamed flag cannot leave the rebuild command behind."""
    from rexport.exporter.tensorrt import BuildConfig

    config = BuildConfig(
        precision="int8", flavour="rtx", compute_capabilities="8.9,12.0", weakly_typed=True, calib_data="demo",
        calib_method="minmax", calib_samples=64, calib_refine="bias", calib_cache="c.cache", batch="1:4:16",
        workspace="3G", timing_cache="t.cache", merge_timing_caches=("a.cache", "b.cache"), optimization_level=4,
        hardware_compatibility="ampere_plus", version_compatible=True, dla_core=1, gpu_fallback=False,
        val_data="demo:test", val_samples=32, min_agreement=0.9, max_top1_drop=1.5, reference="r.onnx", seed=7)
    words = command_line(config, skip=("validate", "overwrite"))
    trt = cli.commands["trt"]
    params = trt.make_context("trt", ["m.onnx", *words]).params
    again = fill(BuildConfig, params, precision="int8" if params["int8"] else None,
                 flavour="rtx" if params["rtx"] else None)
    assert again == config
    shapes = BuildConfig(min_shapes="input:1x3x8x8", opt_shapes="input:2x3x8x8", max_shapes="input:4x3x8x8")
    params = trt.make_context("trt", ["m.onnx", *command_line(shapes)]).params
    assert fill(BuildConfig, params) == shapes
