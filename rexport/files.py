"""Writing outputs safely and hashing inputs.

Every file rexport writes goes to a temporary name beside its destination and is renamed into
place only when complete, so an interrupted or failed run leaves no half-written model. An
existing output is replaced only when the caller says so (`overwrite=True`, the CLI's --force:
messages name the `overwrite` field, which the CLI says as its flag),
and never when it is one of the command's inputs (or, through a link, the same file as one); a
directory output is never one that holds an input. Reports go through the same rule; they are
strict JSON (`json_text`).

The CLI names each command's inputs once (`protect`): while the command runs, no output written
anywhere below it may replace one of them, whoever writes it. A write that fails for want of
space, quota or permission is an `InputError` naming the output ("cannot write X: No space left
on device; ..."), and the old file (or directory) is kept.
"""

from __future__ import annotations

import errno
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

PathLike = str | os.PathLike
OVERWRITE = ("overwrite",)  # the field refusals name: every writer's `overwrite` (the CLI's --force)

# errno -> what the user can do about it, for writes that fail because of where they go
WRITE_FAILURES = {
    errno.ENOSPC: "free space or choose another output",
    errno.EDQUOT: "free space (disk quota exceeded) or choose another output",
    errno.EFBIG: "the file system (or a file size limit) does not allow a file this large; choose another output",
    errno.EROFS: "the file system is read-only; choose another output",
    errno.EACCES: "check its permissions or choose another output",
    errno.EPERM: "check its permissions or choose another output",
}
FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}  # about the disk, whichever file was being written

_protected: list[PathLike] = []  # the running command's inputs (see `protect`)


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def same_file(a: PathLike, b: PathLike) -> bool:
    """Whether two paths name one file: equal once resolved (links followed), or hard links."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except (OSError, RuntimeError):  # a link loop or an unreadable path: compare as written
        return os.path.abspath(a) == os.path.abspath(b)


def inside(path: PathLike, directory: PathLike) -> bool:
    """Whether `path` is `directory` or lies below it (links followed)."""
    path, directory = os.fsdecode(path), os.fsdecode(directory)
    try:
        p, d = Path(path).resolve(), Path(directory).resolve()
    except (OSError, RuntimeError):
        p, d = Path(os.path.abspath(path)), Path(os.path.abspath(directory))
    return p == d or d in p.parents


@contextmanager
def protect(paths: Iterable[PathLike | None]) -> Iterator[None]:
    """While the block runs, no output (file or directory) rexport writes may replace one of
    `paths` or a directory that holds one, not even with overwrite: the CLI protects each
    command's inputs this way, so a library call deep inside it cannot write onto them either."""
    before = len(_protected)
    _protected.extend(p for p in paths if p is not None)
    try:
        yield
    finally:
        del _protected[before:]


def _refuse_inputs(path: Path, inputs: Iterable[PathLike | None], directory: bool = False) -> None:
    given = [p for p in inputs if p is not None]  # the other outputs among them may not exist yet
    for other in [*given, *(p for p in _protected if os.path.lexists(p))]:
        if same_file(path, other):
            what = f"replace the directory {path}" if directory else f"write {path}"
            raise InputError(f"refusing to {what}: it is {other}, which this command also reads or writes "
                             "(not even overwrite=True replaces it); choose another output", fields=OVERWRITE)
        if directory and path.is_dir() and inside(other, path):
            raise InputError(f"refusing to replace the directory {path}: it holds {other}, which this command "
                             "also reads or writes (not even overwrite=True replaces it); choose another output",
                             fields=OVERWRITE)


def check_output(path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Fail early, before any long work, if `path` cannot or must not be written. `inputs`: the
    files the command reads (and its other outputs), which no output may replace, even with --force."""
    path = Path(path)
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise InputError(f"{path} is a directory; give a file name for the output")
    _refuse_inputs(path, inputs)
    if path.exists() and not overwrite:
        raise InputError(f"{path} already exists; pass overwrite=True to replace it or choose another output",
                         fields=OVERWRITE)
    if not parent.exists():
        raise InputError(f"cannot write {path}: directory {parent} does not exist")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: {parent} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=parent)
    except OSError as e:
        raise write_error(path, e, parent) from None
    os.close(fd)
    os.unlink(probe)
    return path


def write_error(path: PathLike, e: OSError, temporary: PathLike | None = None) -> BaseException:
    """The one-line InputError for a write to `path` that failed for want of space, quota or
    permission; `e` itself for anything else (reading an input, a bug). `temporary`: the
    temporary file or directory the write went to."""
    hint = WRITE_FAILURES.get(e.errno)
    if hint is None:
        return e
    named = [f for f in (e.filename, e.filename2) if f is not None]  # copies name (source, destination)
    mine = not named or any(inside(f, p) for f in named for p in (path, temporary) if p is not None)
    if not mine and e.errno not in FULL:
        return e  # e.g. permission denied reading an input: not a failure to write the output
    where = "" if mine else f" ({named[-1]})"
    return InputError(f"cannot write {path}: {e.strerror or e}{where}; {hint}")


@contextmanager
def _write_errors(path: Path, tmp: Path) -> Iterator[None]:
    """A write that fails for want of space or permission becomes an InputError (write_error)."""
    try:
        yield
    except OSError as e:
        error = write_error(path, e, tmp)
        if error is e:
            raise
        raise error from None


@contextmanager
def atomic_output(path: PathLike, *, overwrite: bool = False,
                  inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary path to write; it replaces `path` only if the block completes. Nothing
    is left behind otherwise (an exception, Ctrl-C, or SIGTERM in the CLI), and a write that
    fails for want of space or permission is an InputError, with the old file kept."""
    path = check_output(path, overwrite=overwrite, inputs=inputs)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise write_error(path, e, path.parent) from None
    os.close(fd)
    tmp = Path(tmp)
    try:
        with _write_errors(path, tmp):
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


def write_json(path: PathLike, payload, *, overwrite: bool = False,
               inputs: Iterable[PathLike | None] = ()) -> Path:
    """A JSON report, written by the same rule as every other output."""
    text = json_text(payload)
    with atomic_output(path, overwrite=overwrite, inputs=inputs) as tmp:
        tmp.write_text(text)
    return Path(path)


def check_output_dir(path: PathLike, *, overwrite: bool = False, inputs: Iterable[PathLike | None] = ()) -> Path:
    """Fail early, before any long work, if the directory `path` cannot or must not be written:
    it is (or holds) one of `inputs` or of the protected inputs, or holds files and `overwrite`
    is not given."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise InputError(f"{path} exists and is not a directory; choose another output")
    _refuse_inputs(path, inputs, directory=True)
    if path.exists() and not overwrite and any(path.iterdir()):
        raise InputError(f"{path} already exists and is not empty; pass overwrite=True to replace it "
                         "or choose another output", fields=OVERWRITE)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise InputError(f"cannot write {path}: directory {parent} does not exist")
    return path


@contextmanager
def atomic_directory(path: PathLike, *, overwrite: bool = False,
                     inputs: Iterable[PathLike | None] = ()) -> Iterator[Path]:
    """Yield a temporary directory; it replaces the directory `path` only if the block completes
    (the old one is kept until the new one is in place, and kept if that fails)."""
    path = check_output_dir(path, overwrite=overwrite, inputs=inputs)
    parent = path.parent if str(path.parent) else Path(".")
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as e:
        raise write_error(path, e, parent) from None
    old = None
    try:
        with _write_errors(path, tmp):
            yield tmp
            os.chmod(tmp, 0o755)
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=parent))
                os.replace(path, old / "d")
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old / "d", path)  # put the old directory back
                    raise
            else:
                os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
