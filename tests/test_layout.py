"""The packages come from one tree: `rexport`, `rexport.exporter`, `rexport.calibration` and
`rexport.runtime` map onto top-level folders, so an editable install of another checkout can
silently mix two trees (an edit to runtime/ then does not run while the tests still pass)."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

import rexport
from rexport.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_comes_from_this_checkout():
    sources = rexport.package_sources()
    assert set(sources) == {"rexport", "rexport.exporter", "rexport.calibration", "rexport.runtime", "rexport.serving"}
    assert set(sources.values()) == {str(ROOT)}, sources


def test_doctor_names_each_package_of_a_mixed_install(monkeypatch):
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 0 and f"rexport {rexport.__version__} from {ROOT}" in " ".join(result.output.split())
    mixed = {**rexport.package_sources(), "rexport.runtime": "/elsewhere/checkout"}
    monkeypatch.setattr(rexport, "package_sources", lambda: mixed)
    result = CliRunner().invoke(cli, ["doctor", "--json", "-"])
    import json

    check = json.loads(result.output)["rexport"]
    assert not check["ok"] and "rexport.runtime from /elsewhere/checkout" in check["detail"]
    assert f"rexport.calibration from {ROOT}" in check["detail"]
