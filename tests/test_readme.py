"""The documentation's Python examples run, in order, as written: every ```python block of
README.md and of each docs/*.md page, one page at a time, in a folder with the demo's checkpoint
and folders of labelled digits. (A block fenced as ```python norun is shown, not run.)"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def write_digits(root: Path, split: str, count: int) -> None:
    from PIL import Image

    from rexport.demo import data

    part = data.split(split)
    for i in range(count):
        folder = root / str(part.labels[i])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(part.images[i], "L").save(folder / f"{i}.png")


def check_python_api(namespace: dict, out: str) -> None:
    from rexport.demo import data

    assert "25557032" in out and "parity" in out and "validation on" in out
    assert namespace["prediction"].label == str(data.split("test").labels[200])


CHECKS = {"python-api.md": check_python_api}  # what a page's examples must print, beyond running


def test_the_python_api_page_shows_every_stage():
    assert len(python_blocks(ROOT / "docs" / "python-api.md")) >= 4


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: p.name)
def test_python_examples_run(page, tmp_path, monkeypatch, capsys):
    """The setup the Python API page describes: the demo's checkpoint and folders of labelled digits."""
    from PIL import Image

    from rexport.demo import data

    monkeypatch.chdir(tmp_path)
    shutil.copyfile(data.WEIGHTS_FILE, "checkpoint.pth")
    write_digits(tmp_path / "calib_images", "train", 200)
    write_digits(tmp_path / "val_images", "test", 120)
    Image.fromarray(data.split("test").images[200], "L").save("digit.png")
    namespace: dict = {}
    for block in python_blocks(page):
        exec(compile(block, str(page), "exec"), namespace)
    CHECKS.get(page.name, lambda namespace, out: None)(namespace, capsys.readouterr().out)


def test_readme_names_the_commands_ci_runs():
    text = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci in text  # CI runs the README's test command, verbatim
