"""The README's Python examples run, in order, as written."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def write_digits(root: Path, split: str, count: int) -> None:
    from PIL import Image

    from rexport.demo import data

    part = data.split(split)
    for i in range(count):
        folder = root / str(part.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(part.images[i], "L").save(folder / f"{i}.png")


def test_readme_python_examples_run(tmp_path, monkeypatch, capsys):
    """The setup the README describes: the demo's checkpoint and folders of labelled digits."""
    from PIL import Image

    from rexport.demo import data

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(data.WEIGHTS_FILE, "checkpoint.pth")
    write_digits(tmp_path / "calib_images", "train", 200)
    write_digits(tmp_path / "val_images", "test", 120)
    Image.fromarray(data.split("test").images[200], "L").save("digit.png")
    blocks = python_blocks()
    assert len(blocks) >= 4
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    out = capsys.readouterr().out
    assert "25557032" in out and "parity" in out and "validation on" in out
    assert namespace["prediction"].label == str(data.split("test").labels[200])


def test_readme_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (Path(__file__).parents[1] / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text  # CI runs the README's test command, verbatim
