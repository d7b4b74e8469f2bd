"""Writing outputs safely and hashing inputs.

Every file rexport writes goes to a temporary name beside its destination and is renamed into
place only when complete, so an interrupted or failed run leaves no half-written model. An
existing output is replaced only when the caller says so (`overwrite=True`, the CLI's --force).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rexport.errors import InputError


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_output(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Fail early, before any long work, if `path` cannot or must not be written."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name for the output")
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
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block completes."""
    path = check_output(path, overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
