"""One error hierarchy. Every message is one line for the user: what was wrong and what to do.

The CLI prints `error: <message>` and exits with `exit_code`; it never shows a traceback for these.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class RexportError(Exception):
    """Base class of every error rexport raises on purpose.

    `fields`: the API fields the message names, in the Python API's words (`calib_method must be one
    of ...`); each is "Owner.field" (the config class or function it belongs to) or a bare field
    name. The CLI prints their flags instead (`--calib-method must be one of ...`, rexport/options.py)."""

    exit_code = 1

    def __init__(self, message: str = "", *, fields: tuple[str, ...] = ()):
        super().__init__(message)
        self.fields = tuple(fields)


class InputError(RexportError):
    """Something the user gave us is wrong: a file, an argument, data."""


class MissingDependency(RexportError):
    """An optional package is needed for this step; the message names the extra to install."""


class CompatibilityError(RexportError):
    """The artefact or feature does not fit this machine (TensorRT version, GPU, runtime)."""


class CheckFailed(RexportError):
    """A quality gate failed (parity, accuracy budget, self-test). `report` holds the numbers."""

    exit_code = 3

    def __init__(self, message: str, report: object = None, *, fields: tuple[str, ...] = ()):
        super().__init__(message, fields=fields)
        self.report = report


def one_line(e: BaseException) -> str:
    """An exception's message on one line (its type's name when it has none)."""
    return " ".join(str(e).split()) or type(e).__name__


def field_error(owner: object, message: str, *names: str) -> InputError:
    """An InputError about fields of `owner` (a config dataclass, its class, or a function's name):
    `message` names them as the Python API does ("fp16_flag goes with precision='fp16'"); the CLI
    says their flags instead ("--fp16-flag goes with --fp16")."""
    return InputError(message, fields=qualified(owner, *names))


def qualified(owner: object, *names: str) -> tuple[str, ...]:
    """("calib_method",) of a QuantizeConfig -> ("QuantizeConfig.calib_method",)."""
    if not isinstance(owner, str):
        owner = (owner if isinstance(owner, type) else type(owner)).__name__
    return tuple(f"{owner}.{name}" for name in names)


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
