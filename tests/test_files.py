"""rexport/files.py: the one rule for every output, and strict JSON reports."""

from __future__ import annotations

import errno
import json
import os
import re
import tempfile

import pytest

from rexport.errors import InputError
from rexport.files import atomic_directory, atomic_output, check_output, json_text, write_json


def test_json_text_is_strict_json():
    text = json_text({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5], "c": (2, None)})
    assert json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}")) == \
        {"a": None, "b": [None, None, 1.5], "c": [2, None]}


@pytest.mark.parametrize("link", ["symlink", "hardlink", "relative"])
def test_an_output_is_never_an_input_even_with_force(tmp_path, monkeypatch, link):
    model = tmp_path / "m.onnx"
    model.write_bytes(b"model")
    out = tmp_path / "report.json"
    if link == "symlink":
        out.symlink_to(model)
    elif link == "hardlink":
        os.link(model, out)
    else:
        monkeypatch.chdir(tmp_path)
        out = "./sub/../m.onnx"
        (tmp_path / "sub").mkdir()
    with pytest.raises(InputError, match="not even overwrite=True"):
        write_json(out, {"x": 1}, overwrite=True, inputs=[None, "demo:test", model])
    assert model.read_bytes() == b"model"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_report_needs_force(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(InputError, match="already exists; pass overwrite=True"):
        write_json(out, {"x": 1})
    assert out.read_text() == "old"
    write_json(out, {"x": float("nan")}, overwrite=True)
    assert json.loads(out.read_text()) == {"x": None}
    assert check_output(tmp_path / "new.json", inputs=[out]) == tmp_path / "new.json"


def test_protected_inputs_are_never_replaced_by_any_writer(tmp_path):
    """Issue 10: with --force, `rexport fp16 m.onnx -o m.onnx` (calibrate, onnx; also through a link)
    destroyed the input. The CLI protects each command's inputs, so no writer below it can replace one."""
    from rexport.files import atomic_directory, atomic_output, check_output_dir, protect

    model = tmp_path / "models" / "m.onnx"
    model.parent.mkdir()
    model.write_bytes(b"model")
    (tmp_path / "link.onnx").symlink_to(model)
    with protect([model, None]):
        for target in (model, tmp_path / "link.onnx"):
            with pytest.raises(InputError, match="not even overwrite=True"):
                with atomic_output(target, overwrite=True) as tmp:
                    tmp.write_bytes(b"oops")
        with pytest.raises(InputError, match="holds .*m.onnx"):  # a directory output holding an input
            check_output_dir(tmp_path / "models", overwrite=True)
        with pytest.raises(InputError, match="holds"):
            with atomic_directory(tmp_path, overwrite=True):
                pass
        write_json(tmp_path / "elsewhere.json", {}, overwrite=True)  # other outputs are fine
    assert model.read_bytes() == b"model"
    with atomic_output(model, overwrite=True) as tmp:  # outside the command, the usual rule
        tmp.write_bytes(b"new")
    assert model.read_bytes() == b"new"
    assert not [p for p in tmp_path.rglob(".*")]


@pytest.mark.parametrize("code, hint", [
    (errno.ENOSPC, "No space left on device; free space or choose another output"),
    (errno.EDQUOT, "free space (disk quota exceeded)"),
    (errno.EFBIG, "does not allow a file this large"),
    (errno.EROFS, "read-only"),
    (errno.EACCES, "check its permissions"),
])
def test_a_failed_write_is_one_line_and_keeps_the_old_file(tmp_path, code, hint):
    """Issue 10: a full disk in fp16, calibrate and bundle gave "unexpected OSError ... this is a bug"."""
    out = tmp_path / "m.onnx"
    out.write_bytes(b"old")
    with pytest.raises(InputError, match=f"^cannot write {out}: .*{re.escape(hint)}"):
        with atomic_output(out, overwrite=True) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(code, os.strerror(code))  # as a write() with no file name raises it
    assert out.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_a_failed_read_inside_a_write_is_not_reported_as_a_write(tmp_path):
    other = tmp_path / "input.onnx"
    with pytest.raises(FileNotFoundError):
        with atomic_output(tmp_path / "out.onnx") as tmp:
            tmp.write_bytes(b"half")
            other.read_bytes()
    with pytest.raises(PermissionError):  # permission denied on an input: not this output's fault
        with atomic_output(tmp_path / "out.onnx"):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(other))
    with pytest.raises(InputError, match=r"No space left on device \(/elsewhere/staging\)"):  # a full disk is
        with atomic_output(tmp_path / "out.onnx"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/elsewhere/staging")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_directory_write_keeps_the_old_directory(tmp_path, monkeypatch):
    import rexport.files as files

    out = tmp_path / "bundle"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(InputError, match="cannot write .*bundle: No space left on device"):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("half")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp / "new.txt"))
    assert [p.name for p in out.iterdir()] == ["old.txt"]

    real, calls = os.replace, []

    def second_rename_fails(src, dst):  # the old directory is moved aside, then the new one cannot move in
        calls.append(dst)
        if len(calls) == 2:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src))
        real(src, dst)

    monkeypatch.setattr(files.os, "replace", second_rename_fails)
    with pytest.raises(InputError, match="read-only"):
        with atomic_directory(out, overwrite=True) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert [p.name for p in out.iterdir()] == ["old.txt"]  # put back
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


def test_an_unwritable_directory_is_one_line(tmp_path, monkeypatch):
    """The probe check_output makes (and the temporary file) fail in the output's directory: that is
    this output's failure, whatever the temporary file is called."""
    def denied(*args, dir=None, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.path.join(dir, ".m.onnx.x.probe"))

    monkeypatch.setattr(tempfile, "mkstemp", denied)
    monkeypatch.setattr(tempfile, "mkdtemp", denied)
    with pytest.raises(InputError, match="cannot write .*m.onnx: Permission denied; check its permissions"):
        check_output(tmp_path / "m.onnx")
    with pytest.raises(InputError, match="cannot write .*bundle: Permission denied"):
        with atomic_directory(tmp_path / "bundle"):
            pass
