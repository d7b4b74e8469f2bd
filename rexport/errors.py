"""One error hierarchy. Every message is one line for the user: what was wrong and what to do.

The CLI prints `error: <message>` and exits with `exit_code`; it never shows a traceback for these.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class RexportError(Exception):
    """Base class of every error rexport raises on purpose."""

    exit_code = 1


class InputError(RexportError):
    """Something the user gave us is wrong: a file, an argument, data."""


class MissingDependency(RexportError):
    """An optional package is needed for this step; the message names the extra to install."""


class CompatibilityError(RexportError):
    """The artefact or feature does not fit this machine (TensorRT version, GPU, runtime)."""


class CheckFailed(RexportError):
    """A quality gate failed (parity, accuracy budget, self-test). `report` holds the numbers."""

    exit_code = 3

    def __init__(self, message: str, report: object = None):
        super().__init__(message)
        self.report = report


def require(module: str, extra: str, purpose: str = "") -> ModuleType:
    """Import an optional dependency, or fail with the pip command that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name != top and not e.name.startswith(top + "."):
            raise  # the package is there but one of *its* dependencies is broken: show that
        what = f" to {purpose}" if purpose else ""
        raise MissingDependency(
            f"{top} is needed{what} but is not installed; run: pip install 'rexport[{extra}]'") from None
