"""The README's Python examples run, in order, as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    from rexport.exporter import build_model

    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(build_model("resnet18", num_classes=5).state_dict(), "checkpoint.pth")
    blocks = python_blocks()
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "25557032" in out and "parity" in out


def test_readme_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text  # CI runs the README's test command, verbatim
