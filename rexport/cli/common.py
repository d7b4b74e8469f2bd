"""What the commands share: parsing the few options that are not plain values, the rule for
every output (`Outputs`, `JsonReport`), and the configs more than one command builds."""

from __future__ import annotations

from pathlib import Path

import click

from rexport.errors import InputError
from rexport.options import fill, flag

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

    return fill(QuantizeConfig, o, calib_refine=parse_refinements(o["calib_refine"]), budget=fill(Gates, o), **extra)
