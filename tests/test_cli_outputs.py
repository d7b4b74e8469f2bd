"""The rule for every output, command by command (issue 10): never onto an input (not even with
--force, also through a link), every output checked before the work, a write that fails for want
of space as one line with the old file kept, and SIGTERM/SIGHUP cleaning up as Ctrl-C does."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from helpers import assert_clean_error
from rexport import files
from rexport.errors import InputError
from rexport.cli import cli


class Result:  # the shape assert_clean_error reads, for in-process runs
    def __init__(self, result):
        self.exit_code, self.stdout = result.exit_code, result.stdout
        self.stderr = result.stderr

    @property
    def error_lines(self):
        return [line for line in self.stderr.splitlines() if line.startswith("error:")]

    def __repr__(self):
        return f"<exit {self.exit_code}\nstdout:\n{self.stdout}\nstderr:\n{self.stderr}>"


def invoke(*args) -> Result:
    return Result(CliRunner().invoke(cli, [str(a) for a in args]))


def hidden(*folders: Path) -> list[str]:
    return [p.name for folder in folders if folder.exists() for p in folder.rglob(".*")]


@pytest.fixture
def workdir(tmp_path, monkeypatch, demo_fp32):
    """m.onnx (the demo model) with symlinks and a hard link to it, the demo weights, an image folder."""
    from PIL import Image

    from rexport.demo import data

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(demo_fp32, "m.onnx")
    os.symlink("m.onnx", "s.onnx")
    os.link("m.onnx", "h.onnx")
    os.symlink("m.onnx", "m.tar.gz")
    shutil.copyfile(data.WEIGHTS_FILE, "w.safetensors")
    os.mkdir("images")
    Image.fromarray(np.zeros((8, 8), np.uint8), "L").save("images/a.png")
    np.save("data.npy", np.zeros((4, 3, 32, 32), np.float32))
    return tmp_path


ONTO_AN_INPUT = [
    *[["fp16", "m.onnx", "-o", target] for target in ("m.onnx", "s.onnx", "h.onnx")],
    *[["calibrate", "m.onnx", "--calib-data", "demo", "-o", target] for target in ("m.onnx", "s.onnx", "h.onnx")],
    ["calibrate", "m.onnx", "--calib-data", "data.npy", "-o", "data.npy"],
    ["calibrate", "m.onnx", "--calib-data", "demo", "-o", "q.onnx", "--calib-cache", "s.onnx"],
    ["onnx", "w.safetensors", "--arch", "resnet20", "-o", "w.safetensors"],
    ["onnx", "w.safetensors", "--arch", "resnet20", "-o", "d.onnx", "--fp16", "--labels", "d.fp16.onnx"],
    ["bundle", "m.onnx", "-o", "m.tar.gz", "--archive"],
    ["trt", "m.onnx", "-o", "h.onnx"],
    ["trt", "m.onnx", "--timing-cache", "s.onnx"],
]


@pytest.mark.parametrize("args", ONTO_AN_INPUT, ids=lambda a: " ".join(a))
def test_no_output_replaces_an_input_even_with_force(workdir, args):
    """Issue 10: `rexport fp16 m.onnx -o m.onnx --force` (calibrate, onnx; also through a link)
    destroyed the input."""
    before = {p: Path(p).read_bytes() for p in ("m.onnx", "w.safetensors", "data.npy")}
    Path("d.fp16.onnx").write_text("labels")
    assert_clean_error(invoke(*args, "--force"), "refusing to write", "not even --force")
    assert {p: Path(p).read_bytes() for p in before} == before
    assert hidden(workdir) == [] and files._protected == []


def test_the_python_api_never_writes_onto_its_input(workdir):
    """The same rule without the CLI: quantize, to_fp16, export_onnx and build_engine refuse an
    output that is their input, even with overwrite=True (through a link too)."""
    from rexport.calibration import QuantizeConfig, quantize, to_fp16
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx
    from rexport.exporter.tensorrt import BuildConfig, build_engine

    before = {p: Path(p).read_bytes() for p in ("m.onnx", "w.safetensors", "data.npy")}
    attempts = [
        lambda: quantize("m.onnx", "h.onnx", QuantizeConfig(calib_data="demo", overwrite=True)),
        lambda: quantize("m.onnx", "data.npy", QuantizeConfig(calib_data="data.npy", overwrite=True)),
        lambda: to_fp16("m.onnx", "s.onnx", overwrite=True),
        lambda: export_onnx("w.safetensors", "w.safetensors",
                            ExportConfig(arch="resnet20", overwrite=True, parity=ParityConfig(enabled=False))),
        lambda: build_engine("m.onnx", "h.onnx", BuildConfig(overwrite=True)),
    ]
    for attempt in attempts:
        with pytest.raises(InputError, match="refusing to write .*not even overwrite=True"):
            attempt()
    assert {p: Path(p).read_bytes() for p in before} == before


@pytest.mark.parametrize("args, fragment", [
    (["bundle", "m.onnx", "-o", "."], "refusing to replace the directory .: it holds m.onnx"),
    (["bundle", "m.onnx", "--val-data", "images", "-o", "images"],
     "refusing to replace the directory images: it is images"),
    (["calibrate", "m.onnx", "--calib-data", "demo", "-o", "q.cache"],
     "q.cache (the output) and q.cache (the calibration cache) would overwrite each other"),
    (["calibrate", "m.onnx", "--calib-data", "demo", "-o", "b/q.onnx", "--bundle", "b"],
     "(the bundle) would overwrite"),
    (["onnx", "w.safetensors", "--arch", "resnet20", "-o", "x.onnx", "--int8", "--calib-data", "demo",
      "--bundle", "x.int8.onnx"], "would overwrite each other"),
    (["trt", "m.onnx", "--json", "m.engine"], "refusing to write m.engine"),  # the default engine name
    (["trt", "m.onnx", "-o", "e.plan", "--json", "e.plan.json"], "refusing to write e.plan.json"),  # its sidecar
    (["trt", "m.onnx", "--timing-cache", "m.engine"], "m.engine (the engine) and m.engine (the timing cache)"),
])
def test_outputs_that_collide_are_refused_before_the_work(workdir, args, fragment):
    """`trt --json` naming the engine or its sidecar used to be found only after the build; every
    output of every command is now checked up front (here before TensorRT is even looked for)."""
    os.mkdir("b")
    result = invoke(*args, "--force")
    assert_clean_error(result, fragment)
    assert "tensorrt" not in result.stderr.lower()
    assert Path("m.onnx").read_bytes() == Path("h.onnx").read_bytes() and len(os.listdir("images")) == 1
    assert hidden(workdir) == []


def test_a_full_disk_is_one_line_and_keeps_the_old_output(workdir, monkeypatch):
    """Issue 10: a full disk in fp16, calibrate and bundle gave "unexpected OSError ... this is a bug"."""
    import onnx

    Path("out.onnx").write_text("old")

    def save_half(model, path, *a, **k):
        Path(path).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(onnx, "save", save_half)
    assert_clean_error(invoke("fp16", "m.onnx", "-o", "out.onnx", "--force"),
                       "cannot write out.onnx: No space left on device; free space or choose another output")
    assert Path("out.onnx").read_text() == "old" and hidden(workdir) == []


def test_a_full_disk_anywhere_is_not_called_a_bug(monkeypatch):
    import rexport.exporter

    def full(*a, **k):  # e.g. a staging folder in /tmp, outside any output's temporary file
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/rexport-bundle-x/m.onnx")

    monkeypatch.setattr(rexport.exporter, "list_models", full)
    result = invoke("models")
    assert_clean_error(result, "cannot write /tmp/rexport-bundle-x/m.onnx: No space left on device; free space")
    assert "bug" not in result.stderr


def test_verbose_shows_the_traceback_of_a_bug_then_one_line(monkeypatch):
    """Issue 10: `rexport -v ...` on an unexpected EOFError printed only "Aborted!"."""
    import rexport.exporter

    def broken(*a, **k):
        raise EOFError("Compressed file ended before the end-of-stream marker was reached")

    monkeypatch.setattr(rexport.exporter, "list_models", broken)
    quiet = invoke("models")
    assert_clean_error(quiet, "unexpected EOFError: Compressed file ended", "this is a bug")
    assert "Traceback" not in quiet.stderr
    verbose = Result(CliRunner().invoke(cli, ["-v", "models"]))
    assert verbose.exit_code == 1 and "Aborted" not in verbose.stderr
    assert "Traceback" in verbose.stderr and verbose.error_lines[-1].startswith("error: unexpected EOFError")


# -- real processes: file-size limits and signals ----------------------------------------------


def rexport(args, cwd, *, env=None, preexec_fn=None, driver=None, **popen):
    """rexport as a terminal starts it: SIGINT, SIGHUP and SIGTERM at their defaults (pytest itself
    may run in the background, SIGINT ignored, or under nohup, SIGHUP ignored, and a child
    inherits what is ignored), then `preexec_fn`."""
    def start() -> None:
        for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        if preexec_fn is not None:
            preexec_fn()

    command = [sys.executable, *([str(driver)] if driver else ["-m", "rexport"]), *map(str, args)]
    return subprocess.Popen(command, cwd=cwd, env=env, preexec_fn=start, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen)


@pytest.mark.parametrize("args", [
    ["fp16", "m.onnx", "-o", "out.onnx"],
    ["calibrate", "m.onnx", "--calib-data", "demo", "--calib-samples", "16", "--calib-refine", "none",
     "-o", "out.onnx"],
    ["bundle", "m.onnx", "-o", "out"],
    ["bundle", "m.onnx", "-o", "out", "--archive"],  # staged in the system's temporary folder
], ids=lambda a: " ".join(a[:1] + a[-2:]))
def test_a_real_write_failure_is_one_line(tmp_path, demo_fp32, args):
    """A file size limit (RLIMIT_FSIZE: writes past it fail with EFBIG, as on a full disk with ENOSPC)."""
    import resource

    shutil.copyfile(demo_fp32, tmp_path / "m.onnx")
    env = {**os.environ, "REXPORT_CACHE_DIR": str(tmp_path / "cache")}
    limit = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))  # noqa: E731
    proc = rexport(args, tmp_path, env=env, preexec_fn=limit)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, (out, err)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "File too large" in errors[0] and "bug" not in errors[0], err
    assert sorted(os.listdir(tmp_path)) == ["cache", "m.onnx"] or sorted(os.listdir(tmp_path)) == ["m.onnx"]
    assert hidden(tmp_path, tmp_path / "cache") == []


PAUSE = """\
import os, sys, time, pathlib
rename = os.replace
def paused(src, dst, *args, **kwargs):  # every output is complete in its temporary file: wait here
    if pathlib.Path(os.fspath(src)).name.endswith(".tmp"):
        pathlib.Path(os.environ["PAUSED"]).write_text(os.fspath(dst))
        time.sleep(300)
    return rename(src, dst, *args, **kwargs)
os.replace = paused
from rexport.cli import main
main()
"""


@pytest.mark.parametrize("args, sig", [
    (["calibrate", "m.onnx", "--calib-data", "demo", "--calib-samples", "16", "--calib-refine", "none",
      "-o", "q.onnx"], "SIGTERM"),
    (["bundle", "m.onnx", "--val-data", "demo", "--val-samples", "4", "-o", "b"], "SIGHUP"),
    (["fp16", "m.onnx", "-o", "h.onnx"], "SIGINT"),
], ids=lambda a: a if isinstance(a, str) else a[0])
def test_signals_remove_unfinished_outputs(tmp_path, demo_fp32, args, sig):
    """Issue 10: SIGTERM (kill, systemd, CI) left hidden .*.tmp files and directories behind; SIGINT
    was clean. Each command is stopped while its output sits complete in its temporary file."""
    shutil.copyfile(demo_fp32, tmp_path / "m.onnx")
    (tmp_path / "pause.py").write_text(PAUSE)
    paused = tmp_path / "paused"
    env = {**os.environ, "REXPORT_CACHE_DIR": str(tmp_path / "cache"), "PAUSED": str(paused)}
    proc = rexport(args, tmp_path, env=env, driver=tmp_path / "pause.py")
    deadline = time.monotonic() + 300
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.exists(), proc.communicate()
    assert hidden(tmp_path, tmp_path / "cache")  # the temporary output is there...
    proc.send_signal(getattr(signal, sig))
    out, err = proc.communicate(timeout=120)
    signum = getattr(signal, sig)
    assert proc.returncode == 128 + signum, (out, err)
    assert "interrupted" in err and "Traceback" not in err
    assert hidden(tmp_path, tmp_path / "cache") == []  # ...and gone
    assert sorted(p for p in os.listdir(tmp_path) if p not in ("cache", "paused")) == ["m.onnx", "pause.py"]


def test_sigterm_during_an_export_leaves_nothing(tmp_path):
    """A real export killed while it writes (no hook): the temporary file appears before the export
    starts and is renamed after the parity check, so the signal lands mid-write."""
    from rexport.demo import data

    proc = rexport(["onnx", data.WEIGHTS_FILE, "--arch", "resnet20", "-o", "d.onnx"], tmp_path)
    deadline = time.monotonic() + 300
    while not hidden(tmp_path) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    if proc.poll() is not None:
        pytest.skip("the export finished before its temporary file was seen")
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err, (out, err)
    assert os.listdir(tmp_path) == []


def test_a_signal_the_parent_ignores_stays_ignored(tmp_path, demo_fp32):
    """Under `nohup` SIGHUP is ignored, and rexport keeps it so; SIGTERM still cleans up."""
    shutil.copyfile(demo_fp32, tmp_path / "m.onnx")
    (tmp_path / "pause.py").write_text(PAUSE)
    paused = tmp_path / "paused"
    env = {**os.environ, "PAUSED": str(paused)}
    proc = rexport(["fp16", "m.onnx", "-o", "h.onnx"], tmp_path, env=env, driver=tmp_path / "pause.py",
                   preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN))
    deadline = time.monotonic() + 300
    while not paused.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert paused.exists(), proc.communicate()
    proc.send_signal(signal.SIGHUP)
    time.sleep(1)
    assert proc.poll() is None  # still working
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143 and "interrupted by SIGTERM" in err, (out, err)
    assert hidden(tmp_path) == [] and not (tmp_path / "h.onnx").exists()
