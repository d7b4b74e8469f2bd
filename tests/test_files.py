"""rexport/files.py: the one rule for every output, and strict JSON reports."""

from __future__ import annotations

import json
import os

import pytest

from rexport.errors import InputError
from rexport.files import check_output, json_text, write_json


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
    with pytest.raises(InputError, match="not even --force"):
        write_json(out, {"x": 1}, overwrite=True, inputs=[None, "demo:test", model])
    assert model.read_bytes() == b"model"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_an_existing_report_needs_force(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(InputError, match="already exists; pass --force"):
        write_json(out, {"x": 1})
    assert out.read_text() == "old"
    write_json(out, {"x": float("nan")}, overwrite=True)
    assert json.loads(out.read_text()) == {"x": None}
    assert check_output(tmp_path / "new.json", inputs=[out]) == tmp_path / "new.json"
