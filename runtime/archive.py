"""Safe extraction of a bundle archive (.tar.gz, .tgz, .tar; gzip, bzip2 or xz by its first bytes).

An archive is checked whole before anything is written: every member's header as it is read (a safe
relative name, a regular file or directory, named once, sizes within the caps), then its one
manifest, read first and verified; only the files the manifest lists, at the sizes it records, are
then streamed into the target directory and hashed as they are written, never past their size and
never outside the target. Caps keep reading any archive from filling the disk or the memory.
"""

from __future__ import annotations

import contextlib
import hashlib
import lzma
import os
import posixpath
import shutil
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from rexport.console import fmt_bytes
from rexport.errors import InputError, one_line
from rexport.runtime.manifest import (MANIFEST, MAX_MANIFEST_BYTES, REBUNDLE, check_manifest_size, check_names,
                                      parse_manifest, verify_files)

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")

# Caps on what reading a bundle may cost: it never fills the disk or the memory, whatever it holds.
MAX_ARCHIVE_MEMBERS = 1000       # a bundle holds a few models and sidecars, a reference, up to 4 images
MAX_BUNDLE_BYTES = 16 << 30      # the largest ResNet bundles (Wide ResNet-101, every precision) are ~1.5 GB
MAX_BUNDLE_BYTES_ENV = "REXPORT_MAX_BUNDLE_BYTES"
MAX_EXPANSION = 100              # bytes extracted per archive byte: model weights compress ~1.1x, zeros ~1000x
EXPANSION_FLOOR = 64 << 20       # below this much, any ratio is fine (a manifest of labels compresses well)
DISK_MARGIN = 64 << 20           # left free on the disk an archive is extracted to
_CHUNK = 1 << 20
_FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)
# What reading a damaged archive raises: tarfile's own errors, a cut-short stream (EOFError), bad
# compressed data (zlib / lzma errors, OSError from gzip's and bz2's checks), headers nested without end.
_READ_ERRORS = (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError, RecursionError)


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def _max_bundle_bytes() -> int:
    value = os.environ.get(MAX_BUNDLE_BYTES_ENV)
    if value is None:
        return MAX_BUNDLE_BYTES
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{MAX_BUNDLE_BYTES_ENV} must be a number of bytes, not {value!r}") from None


@contextlib.contextmanager
def _reading(archive: Path):
    """Turn the errors of reading a damaged archive into one line that says what to do."""
    try:
        yield
    except InputError:
        raise
    except _READ_ERRORS as e:
        raise InputError(f"{archive} is not a readable archive (truncated or corrupt: {one_line(e)}); "
                         "download or copy it again") from None


@contextlib.contextmanager
def _writing(archive: Path, target: Path):
    try:
        yield
    except OSError as e:  # a full disk, a read-only temp directory
        raise InputError(f"cannot extract {archive} into {target} ({one_line(e)}); free some space there or "
                         "point TMPDIR at another disk") from None


def _open_archive(archive: Path) -> tarfile.TarFile:
    """Open a tar archive, choosing the decompressor by its first bytes rather than trying each in turn
    (tarfile's way, whose failure is a five-line message)."""
    try:
        with open(archive, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise InputError(f"cannot read {archive} ({one_line(e)})") from None
    if not head:
        raise InputError(f"{archive} is empty (0 bytes), not a bundle archive; download or copy it again")
    mode = ("r:gz" if head.startswith(b"\x1f\x8b") else "r:bz2" if head.startswith(b"BZh")
            else "r:xz" if head.startswith(b"\xfd7zXZ\x00") else "r:")
    try:
        return tarfile.open(archive, mode)
    except _READ_ERRORS as e:
        kind = {"r:gz": "gzip", "r:bz2": "bzip2", "r:xz": "xz", "r:": "tar"}[mode]
        what = "truncated or corrupt" if mode != "r:" else "not a tar, tar.gz, tar.bz2 or tar.xz file"
        raise InputError(f"{archive} is not a readable archive ({what}: {kind}: {one_line(e)}); "
                         "download or copy it again") from None


def _member_name(archive: Path, m: tarfile.TarInfo) -> str:
    """A member's path inside the archive ("./" prefixes dropped); refuses any that would land outside."""
    name = m.name
    while name.startswith("./"):
        name = name[2:]
    name = "" if name == "." else name
    parts = name.split("/")
    if name.startswith(("/", "\\")) or os.path.isabs(name) or ".." in parts:
        raise InputError(f"refusing to extract {archive}: {m.name!r} would be written outside the bundle "
                         "directory")
    if name and (posixpath.normpath(name) != name or "\\" in name or "\0" in name):
        raise InputError(f"refusing to extract {archive}: {m.name!r} is not a plain relative path; "
                         f"{REBUNDLE}")
    return name


@dataclass
class _Plan:
    """What an archive holds, checked before anything is written."""
    prefix: str                                # the bundle's directory inside the archive ("" or "name/")
    manifest: dict
    raw_manifest: bytes
    files: list[tuple[str, tarfile.TarInfo]]   # (name inside the bundle, member) to extract


def _scan(archive: Path, tar: tarfile.TarFile) -> list[tuple[str, tarfile.TarInfo]]:
    """Every member's header, checked as it is read (before the reader moves past its data): a safe
    name, a regular file or directory, no name twice, declared sizes within the caps."""
    cap, size = _max_bundle_bytes(), archive.stat().st_size
    members: list[tuple[str, tarfile.TarInfo]] = []
    seen: set[str] = set()
    declared = 0
    with _reading(archive):
        for m in tar:
            if len(members) >= MAX_ARCHIVE_MEMBERS:
                raise InputError(f"refusing to extract {archive}: it holds more than {MAX_ARCHIVE_MEMBERS} entries; "
                                 "a bundle holds a few files")
            name = _member_name(archive, m)
            if not (m.type in _FILE_TYPES or m.isdir()):
                raise InputError(f"refusing to extract {archive}: {m.name!r} is a link or special file; "
                                 "bundle archives hold only regular files and directories")
            if name in seen:
                raise InputError(f"refusing to extract {archive}: it holds {m.name!r} twice; {REBUNDLE}")
            seen.add(name)
            if m.type in _FILE_TYPES:
                if m.size < 0:
                    raise InputError(f"{archive} is not a readable archive (corrupt: {m.name!r} has a negative "
                                     "size); download or copy it again")
                declared += m.size
                _check_caps(archive, declared, size, cap)
            members.append((name, m))
        _check_end(archive, tar)
    if not members:
        raise InputError(f"{archive} is an empty archive (it holds no files), not a rexport bundle; download or copy "
                         "it again")
    return members


def _check_end(archive: Path, tar: tarfile.TarFile) -> None:
    """tarfile ends an archive quietly at a truncated or garbled header; a whole one ends with zero blocks."""
    tar.fileobj.seek(tar.offset)
    end = tar.fileobj.read(tarfile.BLOCKSIZE)
    if len(end) < tarfile.BLOCKSIZE or any(end):
        raise InputError(f"{archive} is not a readable archive (truncated or corrupt: no valid entry or end of "
                         f"archive at byte {tar.offset}); download or copy it again")


def _check_caps(archive: Path, total: int, archive_size: int, cap: int) -> None:
    if total > cap:
        raise InputError(f"refusing to extract {archive}: it would write more than {fmt_bytes(cap)}, the most a bundle may "
                         f"hold; set {MAX_BUNDLE_BYTES_ENV} (bytes) to allow more")
    if total > EXPANSION_FLOOR and total > MAX_EXPANSION * archive_size:
        raise InputError(f"refusing to extract {archive}: its {fmt_bytes(archive_size)} would expand to {fmt_bytes(total)}, "
                         f"more than {MAX_EXPANSION}x, which no model compresses to (a decompression bomb?); "
                         f"{REBUNDLE}")


def _bundle_prefix(archive: Path, members: list[tuple[str, tarfile.TarInfo]]) -> tuple[str, tarfile.TarInfo]:
    """The one bundle in the archive: its rexport.json at the top or in one top-level directory."""
    manifests = [(name, m) for name, m in members if m.type in _FILE_TYPES and posixpath.basename(name) == MANIFEST]
    bundles = [(name, m) for name, m in manifests if name.count("/") <= 1]
    if len(bundles) > 1:
        names = ", ".join(posixpath.dirname(n) + "/" if "/" in n else "(top level)" for n, _ in bundles)
        raise InputError(f"{archive} holds {len(bundles)} bundles ({names}), not one; extract it and give one "
                         "bundle directory, or archive each bundle on its own")
    if not bundles:
        deeper = f" (it has one at {manifests[0][0]}, too deep: a bundle is the archive's top level or its one " \
                 "top-level directory)" if manifests else ""
        raise InputError(f"{archive} holds no {MANIFEST}{deeper}; it is not a rexport bundle")
    name, member = bundles[0]
    return name[: -len(MANIFEST)], member


def _plan(archive: Path, tar: tarfile.TarFile, target: Path) -> _Plan:
    members = _scan(archive, tar)
    prefix, member = _bundle_prefix(archive, members)
    where = f"{prefix}{MANIFEST} in {archive}"
    check_manifest_size(member.size, where)
    with _reading(archive):
        raw = tar.extractfile(member).read(MAX_MANIFEST_BYTES + 1)
    if len(raw) != member.size:
        raise InputError(f"{archive} is not a readable archive (truncated or corrupt: {where} is short); "
                         "download or copy it again")
    manifest = parse_manifest(raw, where)
    listed = manifest["files"]
    check_names(manifest)
    files, held = [], set()
    for name, m in members:
        inner = name[len(prefix):] if name.startswith(prefix) else None
        if m.isdir():
            if name + "/" == prefix or name == "" or (inner is not None and _is_parent(inner, listed)):
                continue
        elif inner == MANIFEST:
            continue
        elif inner in listed:
            expected = listed[inner]["bytes"]
            if m.size != expected:
                raise InputError(f"refusing to extract {archive}: it holds {m.name!r} as {m.size} bytes, but "
                                 f"{MANIFEST} records {expected}; copy the bundle again")
            files.append((inner, m))
            held.add(inner)
            continue
        raise InputError(f"refusing to extract {archive}: it holds {m.name!r}, which its {MANIFEST} does not list; "
                         f"a bundle archive holds only its manifest and the files it lists; {REBUNDLE}")
    missing = sorted(set(listed) - held)
    if missing:
        raise InputError(f"{archive} lacks {', '.join(missing)}, listed in its {MANIFEST}; copy the whole bundle "
                         "again")
    total = sum(listed[n]["bytes"] for n in held) + len(raw)
    _check_caps(archive, total, archive.stat().st_size, _max_bundle_bytes())
    free = shutil.disk_usage(target).free
    if total + DISK_MARGIN > free:
        raise InputError(f"extracting {archive} needs {fmt_bytes(total)} in {target.parent}, which has {fmt_bytes(free)} free; "
                         "free some space or point TMPDIR at a larger disk")
    return _Plan(prefix, manifest, raw, files)


def _is_parent(directory: str, listed: dict) -> bool:
    return any(n.startswith(directory + "/") for n in listed)


def extract_bundle(archive: Path, target: Path) -> tuple[Path, dict]:
    """Check an archive (see `safe_extract`), stream its listed files into `target`, counting bytes and
    hashing as they are written, and verify the result. Returns (bundle directory, manifest)."""
    target = target.resolve()
    created: list[Path] = []
    try:
        with _open_archive(archive) as tar:
            plan = _plan(archive, tar, target)
            root = target / plan.prefix if plan.prefix else target
            with _writing(archive, target):
                if not root.is_dir():
                    root.mkdir(parents=True)
                    created.append(root)
                (root / MANIFEST).write_bytes(plan.raw_manifest)
                created.append(root / MANIFEST)
            hashed = {}
            for name, member in plan.files:
                hashed[name] = _stream(archive, tar, member, plan.manifest["files"][name], root, name, created)
        verify_files(root, plan.manifest, hashed)
    except BaseException:
        for p in reversed(created):
            with contextlib.suppress(OSError):
                p.rmdir() if p.is_dir() and not p.is_symlink() else p.unlink()
        raise
    return root, plan.manifest


def _stream(archive: Path, tar: tarfile.TarFile, member: tarfile.TarInfo, entry: dict, root: Path, name: str,
            created: list[Path]) -> str:
    """Copy one member to root/name, never past the size the manifest records; returns its sha256."""
    dest = root / name
    expected = entry["bytes"]
    with _writing(archive, root):
        for parent in reversed(Path(name).parents[:-1]):  # e.g. reference/ for reference/0.png
            if not (root / parent).is_dir():
                (root / parent).mkdir()
                created.append(root / parent)
        out = open(dest, "xb")
        created.append(dest)
    h, written = hashlib.sha256(), 0
    with out:
        with _reading(archive):
            src = tar.extractfile(member)
        while True:
            with _reading(archive):
                block = src.read(min(_CHUNK, expected - written + 1))
            if not block:
                break
            written += len(block)
            if written > expected:
                raise InputError(f"refusing to extract {archive}: {member.name!r} holds more than the {expected} "
                                 f"bytes {MANIFEST} records; copy the bundle again")
            h.update(block)
            with _writing(archive, root):
                out.write(block)
    if written < expected:
        raise InputError(f"{archive} is not a readable archive (truncated or corrupt: {member.name!r} ends after "
                         f"{written} of {expected} bytes); download or copy it again")
    if h.hexdigest() != entry["sha256"]:
        raise InputError(f"bundle file {name} does not match its sha256 in {MANIFEST}: it was modified; "
                         "copy the bundle again")
    return h.hexdigest()


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a bundle archive into `target` and return the bundle directory inside it.

    Nothing is written until the whole archive has been checked: every member a safe relative name, a
    regular file or directory, named once; one bundle (its rexport.json at the top or in one top-level
    directory), whose manifest is read first and verified; every file member listed in the manifest
    with the size it records, and nothing else; the total within the caps (MAX_BUNDLE_BYTES, an expansion
    of at most MAX_EXPANSION times, the free space). Files are then streamed, never past their recorded
    size, and hashed; anything written is removed if a check fails."""
    return extract_bundle(Path(archive), Path(target))[0]

