"""The `rexport` command. Thin: each command takes its options from the one table of them
(rexport/options.py), parses them into a config and calls one public function.

app.py      the group: errors as one line and an exit code, signals, `main`
common.py   parsing, the rule for every output (`Outputs`, `--json FILE`), shared configs
export.py   models, onnx, fp16, calibrate, trt, demo      (the workstation)
check.py    validate, bundle                              (prove and pack)
device.py   predict, inspect, selftest, bench, doctor     (the device)
serve.py    triton, serve                                 (past one box: Triton)
"""

from rexport.cli import check, device, export, serve  # noqa: F401  (each module adds its commands to `cli`)
from rexport.cli.app import cli, main

__all__ = ["cli", "main"]
