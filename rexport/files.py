"""Writing outputs safely and hashing inputs.

Every file rexport writes goes to a temporary name beside its destination and is renamed into
place only when complete, so an interrupted or failed run leaves no half-written model. An
existing output is replaced only when the caller says so (`overwrite=True`, the CLI's --force),
and never when it is one of the command's inputs (or, through a link, the same file as one).
Reports go through the same rule; they are strict JSON (`json_text`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rexport.errors import InputError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (links followed), or hard links."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # a link loop or an unreadable path: compare as written
        return os.path.abspath(a) == os.path.abspath(b)


def check_output(path: str | os.PathLike, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """Fail early, before any long work, if `path` cannot or must not be written. `inputs`: the
    files the command reads (and its other outputs), which no output may replace, even with --force."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name for the output")
    for other in inputs:
        if other is not None and same_file(path, other):
            raise InputError(f"refusing to write {path}: it is {other}, which this command also reads or writes "
                             "(not even --force replaces it); choose another output")
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass --force to replace it or choose another output")
    if not parent.exists():
        raise InputError(f"cannot write {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; choose another output") from None
    os.close(fd)
    os.unlink(probe)
    return path


@contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False,
                  inputs: Iterable[str | os.PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block completes."""
    path = check_output(path, overwrite=overwrite, inputs=inputs)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def json_text(payload) -> str:
    """Strict JSON (RFC 8259): NaN and infinities, which it cannot represent, are written as null."""
    def finite(x):
        if isinstance(x, float):
            return x if math.isfinite(x) else None
        if isinstance(x, dict):
            return {k: finite(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [finite(v) for v in x]
        return x

    return json.dumps(finite(payload), indent=2, allow_nan=False) + "\n"


def write_json(path: str | os.PathLike, payload, *, overwrite: bool = False,
               inputs: Iterable[str | os.PathLike | None] = ()) -> Path:
    """A JSON report, written by the same rule as every other output."""
    text = json_text(payload)
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_output_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early, before any long work, if the directory `path` cannot or must not be written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a directory; choose another output")
    if path.exists() and not overwrite and any(path.iterdir()):
        raise InputError(f"{path} already exists and is not empty; pass --force to replace it "
                         "or choose another output")
    if not path.parent.is_dir():
        raise InputError(f"cannot write {path}: directory {path.parent} does not exist")
    return path


@contextmanager
def atomic_directory(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory; it replaces the directory `path` only if the block completes."""
    path = check_output_dir(path, overwrite=overwrite)
    parent = path.parent
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}; choose another output") from None
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
            os.replace(path, old / "d")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
