"""Bundles: a directory (or a .tar.gz of one) that holds a model in its forms and everything
needed to run it and to prove, on the device, that it still behaves:

    rexport.json          description (ModelInfo), files with sha256, reference, validation report
    model.onnx            FP32        model.fp16.onnx / model.int8.onnx / model.engine(.json)  optional
    labels.txt
    reference.npz         reference inputs, the FP32 reference logits, each model's own logits
    reference/*.png       a few images with their preprocessed tensors (in reference.npz)

`open_bundle` verifies the manifest's own digest (`manifest_sha256`, over its content), then
that every file the manifest names (models, sidecars, reference data, images) is a relative,
normalised path inside the bundle, listed in its `files`, whose sha256 matches, before anything
is loaded. An archive is checked whole before anything is written (`safe_extract`): its manifest is
read first, and only the files it lists, at the sizes it records, are streamed into a private
directory, within caps on the manifest, the total and the expansion, and never outside it.
`selftest` replays the references: the preprocessing of the reference images on this machine,
then each model against the FP32 reference (top-1 agreement) and against its own logits
recorded when the bundle was made.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import lzma
import os
import posixpath
import shutil
import stat
import tarfile
import tempfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport import __version__
from rexport.console import fmt_err, fmt_pct, log, table
from rexport.errors import CheckFailed, InputError
from rexport.files import atomic_directory, atomic_output, check_output, check_output_dir, json_text, sha256_file
from rexport.runtime.compare import compare
from rexport.runtime.gates import PREPROCESS_TOLERANCE, SAME_FILE_TOLERANCE, SELFTEST_AGREEMENT
from rexport.runtime.metadata import PRECISIONS, ModelInfo

MANIFEST = "rexport.json"
FORMAT = "rexport-bundle"
# 2: the manifest carries manifest_sha256. Bundles of format 1 are refused rather than read without it:
# their manifest (labels, preprocessing, which files to load) could have been edited unnoticed, and
# re-bundling is one command on the machine that made them.
FORMAT_VERSION = 2
DIGEST = "manifest_sha256"
REBUNDLE = "re-create the bundle with `rexport bundle`"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
# The top-1 agreement with the FP32 reference each precision must keep in a self-test.


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(ARCHIVE_SUFFIXES)


def is_bundle(path: Path) -> bool:
    return (path.is_dir() and (path / MANIFEST).is_file()) or is_archive(path)


@dataclass
class Bundle:
    root: Path
    manifest: dict
    info: ModelInfo
    _tmp: tempfile.TemporaryDirectory | None = field(default=None, repr=False)

    @property
    def models(self) -> list[dict]:
        return self.manifest["models"]

    def model_file(self, which: str | None = None) -> Path:
        """A model by file name or precision ("fp32", "fp16", "int8", "engine"); default: the bundle's."""
        which = which or self.manifest["default"]
        for m in self.models:
            if which in (m["file"], m["precision"]) or (which == "engine" and m["kind"] == "engine"):
                return self.root / m["file"]
        have = ", ".join(f"{m['file']} ({m['precision']})" for m in self.models)
        raise InputError(f"the bundle has no model {which!r}; it has {have}")

    def reference(self) -> dict[str, np.ndarray]:
        ref = self.manifest.get("reference")
        if not ref:
            raise InputError("this bundle carries no reference data; rebuild it with `rexport bundle`")
        with np.load(self.root / ref["file"], allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# -- reading -----------------------------------------------------------------------------------

# Caps on what reading a bundle may cost: it never fills the disk or the memory, whatever it holds.
MAX_MANIFEST_BYTES = 16 << 20    # a manifest with 21k ImageNet labels and a validation report is < 1 MB
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


def _mb(n: int) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n} bytes"


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


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
        raise InputError(f"{archive} is not a readable archive (truncated or corrupt: {_one_line(e)}); "
                         "download or copy it again") from None


@contextlib.contextmanager
def _writing(archive: Path, target: Path):
    try:
        yield
    except OSError as e:  # a full disk, a read-only temp directory
        raise InputError(f"cannot extract {archive} into {target} ({_one_line(e)}); free some space there or "
                         "point TMPDIR at another disk") from None


def _open_archive(archive: Path) -> tarfile.TarFile:
    """Open a tar archive, choosing the decompressor by its first bytes rather than trying each in turn
    (tarfile's way, whose failure is a five-line message)."""
    try:
        with open(archive, "rb") as f:
            head = f.read(6)
    except OSError as e:
        raise InputError(f"cannot read {archive} ({_one_line(e)})") from None
    if not head:
        raise InputError(f"{archive} is empty (0 bytes), not a bundle archive; download or copy it again")
    mode = ("r:gz" if head.startswith(b"\x1f\x8b") else "r:bz2" if head.startswith(b"BZh")
            else "r:xz" if head.startswith(b"\xfd7zXZ\x00") else "r:")
    try:
        return tarfile.open(archive, mode)
    except _READ_ERRORS as e:
        kind = {"r:gz": "gzip", "r:bz2": "bzip2", "r:xz": "xz", "r:": "tar"}[mode]
        what = "truncated or corrupt" if mode != "r:" else "not a tar, tar.gz, tar.bz2 or tar.xz file"
        raise InputError(f"{archive} is not a readable archive ({what}: {kind}: {_one_line(e)}); "
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
        raise InputError(f"refusing to extract {archive}: it would write more than {_mb(cap)}, the most a bundle may "
                         f"hold; set {MAX_BUNDLE_BYTES_ENV} (bytes) to allow more")
    if total > EXPANSION_FLOOR and total > MAX_EXPANSION * archive_size:
        raise InputError(f"refusing to extract {archive}: its {_mb(archive_size)} would expand to {_mb(total)}, "
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
    if member.size > MAX_MANIFEST_BYTES:
        raise InputError(f"{where} is {_mb(member.size)}, more than the {_mb(MAX_MANIFEST_BYTES)} a manifest may "
                         f"be; {REBUNDLE}")
    with _reading(archive):
        raw = tar.extractfile(member).read(MAX_MANIFEST_BYTES + 1)
    if len(raw) != member.size:
        raise InputError(f"{archive} is not a readable archive (truncated or corrupt: {where} is short); "
                         "download or copy it again")
    manifest = _parse_manifest(raw, where)
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
        raise InputError(f"extracting {archive} needs {_mb(total)} in {target.parent}, which has {_mb(free)} free; "
                         "free some space or point TMPDIR at a larger disk")
    return _Plan(prefix, manifest, raw, files)


def _is_parent(directory: str, listed: dict) -> bool:
    return any(n.startswith(directory + "/") for n in listed)


def _extract(archive: Path, target: Path) -> tuple[Path, dict]:
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
    return _extract(Path(archive), Path(target))[0]


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle directory or archive: the manifest's digest and shape, every name it
    gives, every file's sha256."""
    path = Path(path)
    tmp = None
    try:
        if is_archive(path):
            tmp = tempfile.TemporaryDirectory(prefix="rexport-bundle-")
            root, manifest = _extract(path, Path(tmp.name))  # verified as it was extracted
            where = f"{MANIFEST} in {path}"
        else:
            root, where = path, str(path / MANIFEST)
            manifest = _read_manifest(root)
            verify_files(root, manifest)
        info = _model_info(manifest, where)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root, manifest, info, tmp)


def _digest(manifest: dict) -> str:
    """sha256 of the manifest's content (without the digest itself), in a canonical JSON form."""
    content = {k: v for k, v in manifest.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"),
                                     allow_nan=False).encode()).hexdigest()


def save_manifest(root: Path, manifest: dict) -> None:
    """Write (atomically) the manifest of the bundle directory `root`, with its digest."""
    manifest = json.loads(json_text(manifest))  # the strict-JSON form is what is read back and hashed
    manifest[DIGEST] = _digest(manifest)
    with atomic_output(root / MANIFEST, overwrite=True) as tmp:
        tmp.write_text(json_text(manifest))


def _read_manifest(root: Path) -> dict:
    file = root / MANIFEST
    try:
        st = file.stat()
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{file} is not a regular file; a bundle's manifest is one")
        if not file.resolve().is_relative_to(root.resolve()):
            raise InputError(f"{file} leads outside the bundle; refusing to read it; {REBUNDLE}")
        if st.st_size > MAX_MANIFEST_BYTES:
            raise InputError(f"{file} is {_mb(st.st_size)}, more than the {_mb(MAX_MANIFEST_BYTES)} a manifest may "
                             f"be; {REBUNDLE}")
        with open(file, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise InputError(f"{file} is unreadable ({_one_line(e)})") from None
    return _parse_manifest(raw, str(file))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _parse_manifest(raw: bytes, where: str) -> dict:
    """The manifest from its bytes: capped, UTF-8, strict JSON, a rexport bundle of a known format whose
    digest matches, then the shape of every field a reader uses (`_check_shape`)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InputError(f"{where} is more than the {_mb(MAX_MANIFEST_BYTES)} a manifest may be; {REBUNDLE}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{where} is not UTF-8 text (byte {e.start}: {e.reason}); it is not a rexport "
                         "manifest, or it was damaged; " + REBUNDLE) from None
    try:
        manifest = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise InputError(f"{where} is not JSON a manifest can be (nested too deeply); {REBUNDLE}") from None
    except ValueError as e:
        raise InputError(f"{where} is unreadable or not JSON ({_one_line(e)})") from None
    if not isinstance(manifest, dict):
        raise InputError(f"{where} is not a rexport bundle manifest ({_kind(manifest)}, not a JSON object)")
    if manifest.get("format") != FORMAT:
        raise InputError(f"{where} is not a rexport bundle manifest (its format is not {FORMAT!r})")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or isinstance(version, bool) or version < 0:
        raise InputError(f"{where}: format_version must be a whole number, not {_kind(version)}; {REBUNDLE}")
    if version > FORMAT_VERSION:
        raise InputError(f"{where} was written by a newer rexport (bundle format {version}); upgrade rexport to "
                         "read it")
    if DIGEST not in manifest:
        raise InputError(f"{where} carries no {DIGEST} (bundle format {version}, from an older rexport), "
                         f"so its content cannot be verified; {REBUNDLE}")
    try:
        digest = _digest(manifest)
    except (ValueError, RecursionError):
        raise InputError(f"{where} is not JSON a manifest can be (nested too deeply); {REBUNDLE}") from None
    if manifest[DIGEST] != digest:
        raise InputError(f"{where} was modified after bundling (its content does not match its {DIGEST}); "
                         f"{REBUNDLE}")
    _check_shape(manifest, where)
    _model_info(manifest, where)
    return manifest


def _kind(value: object) -> str:
    """A JSON value's type, in words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list", str: "a string", int: "a number", float: "a number"}.get(
        type(value), type(value).__name__)


def _check_shape(manifest: dict, where: str) -> None:
    """Every field a reader of the manifest uses has the type it expects: one line naming the field if not."""
    def need(ok: bool, field: str, want: str, value: object) -> None:
        if not ok:
            raise InputError(f"{where}: {field} must be {want}, not {_kind(value)}; {REBUNDLE}")

    def text(value: object, field: str) -> None:
        need(isinstance(value, str), field, "a string", value)

    need(isinstance(manifest.get("model"), dict), "'model'", "an object (the model description)",
         manifest.get("model"))
    models = manifest.get("models")
    need(isinstance(models, list) and bool(models), "'models'", "a non-empty list of {file, kind, precision}",
         models)
    for k, m in enumerate(models):
        need(isinstance(m, dict), f"models[{k}]", "an object with file, kind and precision", m)
        for key in ("file", "kind", "precision"):
            text(m.get(key), f"models[{k}].{key}")
    text(manifest.get("default"), "'default'")
    files = manifest.get("files")
    need(isinstance(files, dict), "'files'", "an object mapping each file name to its sha256 and bytes", files)
    for name, entry in files.items():
        need(isinstance(entry, dict), f"files[{name!r}]", "an object with sha256 and bytes", entry)
        sha, size = entry.get("sha256"), entry.get("bytes")
        need(isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha),
             f"files[{name!r}].sha256", "64 lowercase hex digits", sha)
        need(isinstance(size, int) and not isinstance(size, bool) and size >= 0, f"files[{name!r}].bytes",
             "a whole number of bytes", size)
    ref = manifest.get("reference")
    if ref is not None:
        need(isinstance(ref, dict), "'reference'", "an object (or null)", ref)
        text(ref.get("file"), "reference.file")
        text(ref.get("source"), "reference.source")
        images = ref.get("images")
        need(images is None or isinstance(images, list), "reference.images", "a list of file names", images)
        for k, image in enumerate(images or []):
            text(image, f"reference.images[{k}]")
    for key in ("created", "rexport_version"):
        if manifest.get(key) is not None:
            text(manifest[key], repr(key))
    validation = manifest.get("validation")
    if validation is not None:
        need(isinstance(validation, dict), "'validation'", "an object (or null)", validation)
        rows = validation.get("rows", [])
        need(isinstance(rows, list), "validation.rows", "a list", rows)
        for k, row in enumerate(rows):
            need(isinstance(row, dict), f"validation.rows[{k}]", "an object", row)
            text(row.get("name"), f"validation.rows[{k}].name")
            for key in ("top1", "agreement"):
                value = row.get(key)
                need(value is None or isinstance(value, (int, float)) and not isinstance(value, bool),
                     f"validation.rows[{k}].{key}", "a number or null", value)


def _model_info(manifest: dict, where: str) -> ModelInfo:
    try:
        return ModelInfo.from_dict(manifest["model"])
    except InputError as e:
        raise InputError(f"{where}: 'model': {_one_line(e)}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: 'model' is not a valid model description ({type(e).__name__}: {_one_line(e)}); "
                         f"{REBUNDLE}") from None


def _named_files(manifest: dict) -> list[tuple[str, str]]:
    """(what, name) for every file the manifest tells a reader to load (its shape already checked)."""
    from rexport.runtime.engine_sidecar import sidecar_path

    named: list[tuple[str, str]] = [("the default model", manifest["default"])]
    for m in manifest["models"]:
        named.append(("a model", m["file"]))
        if m["kind"] == "engine":
            named.append(("an engine sidecar", str(sidecar_path(m["file"]))))
    ref = manifest.get("reference") or {}
    if ref:
        named += [("the reference data", ref["file"])] + [("a reference image", n) for n in ref.get("images") or []]
    return named


def _plain_name(name: object, what: str) -> str:
    """The rule for every path a manifest gives: a relative, normalised path, inside the bundle."""
    if (not isinstance(name, str) or not name or "\\" in name or "\0" in name or name.startswith("/")
            or posixpath.isabs(name) or posixpath.normpath(name) != name or ".." in name.split("/")):
        raise InputError(f"{MANIFEST} names {what} {name!r}, not a plain relative path inside the bundle; "
                         f"refusing to read it; {REBUNDLE}")
    return name


def _check_name(root: Path, name: object, what: str) -> Path:
    file = root / _plain_name(name, what)
    if not file.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{MANIFEST} names {what} {name!r}, which leads outside the bundle; refusing to read it; "
                         f"{REBUNDLE}")
    return file


def check_names(manifest: dict) -> None:
    """Every name in the manifest (its files, and every file it tells a reader to load) is plain, and
    every file it tells a reader to load is one of its files."""
    for name in manifest["files"]:
        _plain_name(name, "the file")
        if name == MANIFEST:
            raise InputError(f"{MANIFEST} lists itself among its files (its sha256 cannot cover itself); {REBUNDLE}")
        if any(other.startswith(name + "/") for other in manifest["files"]):
            raise InputError(f"{MANIFEST} lists {name!r} both as a file and as a directory of files; {REBUNDLE}")
    for what, name in _named_files(manifest):
        if name not in manifest["files"]:
            _plain_name(name, what)  # the clearer message first, when the name itself is wrong
            raise InputError(f"{MANIFEST} names {what} {name!r} that is not among its files (no sha256 covers it); "
                             f"refusing to read it; {REBUNDLE}")
    if manifest["default"] not in {m["file"] for m in manifest["models"]}:
        raise InputError(f"{MANIFEST}'s default {manifest['default']!r} is not one of its models; {REBUNDLE}")


def verify_files(root: Path, manifest: dict, hashed: dict[str, str] | None = None) -> None:
    """`check_names`, then every file is inside the bundle and matches its size and sha256 (`hashed`: the
    sha256 of files just extracted, computed as they were written)."""
    hashed = hashed or {}
    check_names(manifest)
    for name, entry in manifest["files"].items():
        file = _check_name(root, name, "the file")
        if not file.is_file():
            raise InputError(f"bundle file {name} is missing from {root}; copy the whole bundle")
        size = file.stat().st_size
        if size != entry["bytes"] or (hashed.get(name) or sha256_file(file)) != entry["sha256"]:
            how = f"truncated ({size} of {entry['bytes']} bytes)" if size < entry["bytes"] else "modified"
            raise InputError(f"bundle file {name} does not match its sha256 in {MANIFEST}: it was {how}; "
                             "copy the bundle again")


# -- writing -----------------------------------------------------------------------------------


def _entry(path: Path, kind: str, precision: str) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "kind": kind, "precision": precision}


def _describe_model(path: Path) -> tuple[str, str, ModelInfo | None]:
    """(kind, precision, ModelInfo) of an ONNX or engine file, read torch- and onnx-free."""
    if path.suffix.lower() == ".onnx":
        from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"])
        props = backend.metadata
        if "num_classes" not in props:
            raise InputError(f"{path} has no rexport metadata; bundle models exported with `rexport onnx`")
        info = ModelInfo.from_props(props)
        info.check_graph(*backend.graph_io(), where=str(path))
        return "onnx", info.precision, info
    if path.suffix.lower() == ".engine":
        from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path

        if not sidecar_path(path).is_file():
            raise InputError(f"{path} has no sidecar ({sidecar_path(path).name}); build it with `rexport trt`")
        sidecar = EngineSidecar.read(sidecar_path(path))
        return "engine", sidecar.precision, sidecar.model
    raise InputError(f"cannot bundle {path}: expected .onnx or .engine files")


def write_bundle(models: list[str | os.PathLike], output: str | os.PathLike, *, inputs: np.ndarray | None = None,
                 reference_logits: np.ndarray | None = None, reference_source: str = "ONNX FP32",
                 images: list[Path] | None = None, validation: dict | None = None, default: str | None = None,
                 archive: bool = False, overwrite: bool = False) -> Path:
    """Write a bundle of `models` (ONNX files, engines with sidecars) to `output`.

    inputs:            preprocessed reference inputs (default: 8 seeded random ones)
    reference_logits:  the truth for those inputs (e.g. PyTorch's); default: the FP32 ONNX's
    images:            a few image files whose preprocessing the self-test re-checks
    """
    paths = [Path(m) for m in models]
    if not paths:
        raise InputError("give at least one model to bundle")
    described = [(p, *_describe_model(p)) for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        raise InputError(f"two models share a file name ({', '.join(names)}); rename one")
    base = next((info for _, _, prec, info in described if prec == "fp32" and info), described[0][3])
    if base is None:
        raise InputError("none of the models carries a description (rexport metadata)")
    for p, _, _, info in described:
        if info is not None and (info.input_shape != base.input_shape or info.num_classes != base.num_classes):
            raise InputError(f"{p.name} takes other inputs or has other classes than the rest; bundle one model's forms")
    if inputs is None:
        inputs = np.random.default_rng(0).standard_normal((8, *base.input_shape), dtype=np.float32)
    if tuple(inputs.shape[1:]) != base.input_shape:
        raise InputError(f"reference inputs have shape {inputs.shape[1:]}, the model takes {base.input_shape}")

    out = Path(output)
    if archive:
        final = out if out.name.endswith(ARCHIVE_SUFFIXES) else out.with_name(out.name + ".tar.gz")
        check_output(final, overwrite=overwrite)
        stem = final.name[: -len(next(s for s in ARCHIVE_SUFFIXES if final.name.endswith(s)))]
        with tempfile.TemporaryDirectory(prefix="rexport-bundle-") as staging:
            stage = Path(staging) / stem
            stage.mkdir()
            _fill(stage, described, base, inputs, reference_logits, reference_source, images, validation, default)
            with atomic_output(final, overwrite=overwrite) as tar_tmp:
                with tarfile.open(tar_tmp, "w:gz") as tar:
                    tar.add(stage, arcname=stem)
        return final
    with atomic_directory(out, overwrite=overwrite) as tmp:
        _fill(tmp, described, base, inputs, reference_logits, reference_source, images, validation, default)
    return out


def _fill(tmp: Path, described: list, base: ModelInfo, inputs: np.ndarray, reference_logits: np.ndarray | None,
          reference_source: str, images: list[Path] | None, validation: dict | None, default: str | None) -> None:
    """Copy the models in, record every model's logits on the reference inputs, write the manifest."""
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from rexport.runtime.engine_sidecar import sidecar_path

    files: dict[str, dict] = {}
    entries = []
    outputs = {}
    for path, kind, precision, _info in described:
        shutil.copyfile(path, tmp / path.name)
        files[path.name] = _entry(tmp / path.name, kind, precision)
        if kind == "engine":  # runs only on its GPU: its logits are checked on the device by selftest
            side = sidecar_path(path)
            shutil.copyfile(side, tmp / side.name)
            files[side.name] = _entry(tmp / side.name, "sidecar", precision)
        else:
            outputs[path.name] = OnnxRuntimeBackend(tmp / path.name, providers=["CPUExecutionProvider"]) \
                .run_batched(inputs, base.batch.max)
        entries.append({"file": path.name, "kind": kind, "precision": precision})
    if reference_logits is None:
        fp32 = next((e["file"] for e in entries if e["precision"] == "fp32" and e["file"] in outputs), None)
        if fp32 is None:
            raise InputError("no reference: include the FP32 ONNX or pass reference logits (e.g. PyTorch's)")
        reference_logits = outputs[fp32]
    arrays = {"inputs": inputs.astype(np.float32), "reference": np.asarray(reference_logits, np.float32)}
    arrays.update({f"outputs/{name}": v for name, v in outputs.items()})
    image_names = []
    if images:
        from rexport.runtime.preprocess import preprocess

        (tmp / "reference").mkdir()
        for k, image in enumerate(images[:4]):
            name = f"reference/{k}{Path(image).suffix.lower()}"
            shutil.copyfile(image, tmp / name)
            files[name] = _entry(tmp / name, "image", "-")
            image_names.append(name)
        arrays["image_tensors"] = preprocess([tmp / n for n in image_names], base.preprocess)
    with open(tmp / "reference.npz", "wb") as f:
        np.savez_compressed(f, **arrays)
    files["reference.npz"] = _entry(tmp / "reference.npz", "reference", "-")
    if base.labels:
        (tmp / "labels.txt").write_text("\n".join(base.labels) + "\n")
        files["labels.txt"] = _entry(tmp / "labels.txt", "labels", "-")
    manifest = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rexport_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model": base.to_dict(), "models": entries,
        "default": default or _default_model(entries), "files": files,
        "reference": {"file": "reference.npz", "samples": len(inputs), "source": reference_source,
                      "images": image_names},
        "validation": validation,
    }
    if manifest["default"] not in {e["file"] for e in entries}:
        raise InputError(f"default model {manifest['default']!r} is not among the bundled files")
    save_manifest(tmp, manifest)


def _default_model(entries: list[dict]) -> str:
    """The FP32 ONNX: it runs anywhere; precision variants are picked with load(model=...)."""
    for want in PRECISIONS:  # in order: fp32 first
        for e in entries:
            if e["precision"] == want and e["kind"] == "onnx":
                return e["file"]
    return entries[0]["file"]


def add_to_bundle(bundle_dir: str | os.PathLike, files: list[Path], kind: str, precision: str,
                  make_default: bool = False) -> None:
    """Add already written files (e.g. an engine and its sidecar) to a bundle directory and
    rewrite its manifest atomically. The first file is the model; the others belong to it."""
    root = Path(bundle_dir)
    manifest = _read_manifest(root)
    verify_files(root, manifest)
    model = files[0]
    for f in files:
        if f.parent.resolve() != root.resolve():
            raise InputError(f"{f} must be inside the bundle {root} to be added to it")
        manifest["files"][f.name] = _entry(f, kind if f == model else "sidecar", precision)
    manifest["models"] = [m for m in manifest["models"] if m["file"] != model.name]
    manifest["models"].append({"file": model.name, "kind": kind, "precision": precision})
    if make_default:
        manifest["default"] = model.name
    save_manifest(root, manifest)


# -- self-test ---------------------------------------------------------------------------------


@dataclass
class SelfTestReport:
    model: str
    backend: str
    checks: list[tuple[str, str, bool]]  # (what, measured, passed)

    @property
    def passed(self) -> bool:
        return all(ok for _, _, ok in self.checks)

    def to_dict(self) -> dict:
        return {"model": self.model, "backend": self.backend, "passed": self.passed,
                "checks": [{"check": w, "result": r, "passed": ok} for w, r, ok in self.checks]}

    def format(self) -> str:
        rows = [(what, result, "ok" if ok else "FAIL") for what, result, ok in self.checks]
        return f"self-test of {self.model} on {self.backend}:\n" + table(("check", "result", ""), rows) + \
            f"\n{'PASS' if self.passed else 'FAIL'}"


def selftest(predictor) -> SelfTestReport:
    """Replay a bundle's references through a loaded Predictor; see the module docstring."""
    bundle: Bundle = predictor.bundle
    ref = bundle.reference()
    model_file = predictor.model_file.name
    checks: list[tuple[str, str, bool]] = []
    images = bundle.manifest["reference"].get("images") or []
    if images:
        got = predictor.preprocess([bundle.root / n for n in images])
        err = float(np.abs(got - ref["image_tensors"]).max())
        checks.append((f"preprocessing of {len(images)} reference image(s)", f"max abs {fmt_err(err)}", err <= PREPROCESS_TOLERANCE))
    logits = predictor.run(ref["inputs"])
    c = compare(logits, ref["reference"])
    floor = SELFTEST_AGREEMENT.get(predictor.info.precision, 0.75)
    checks.append((f"top-1 agreement with {bundle.manifest['reference']['source']} ({len(logits)} inputs)",
                   f"{fmt_pct(c.top1_agreement)} (needs {fmt_pct(floor)}), max abs {fmt_err(c.max_abs)}",
                   c.top1_agreement >= floor and c.nonfinite == 0))
    own = ref.get(f"outputs/{model_file}")
    if own is not None:  # the same file, recorded by ONNX Runtime on the CPU when bundled
        same = compare(logits, own, SAME_FILE_TOLERANCE)
        if predictor.info.precision == "fp32":
            checks.append((f"same logits as when bundled (atol {SAME_FILE_TOLERANCE.atol:g}, "
                           f"rtol {SAME_FILE_TOLERANCE.rtol:g})", f"max abs {fmt_err(same.max_abs)}", same.passed))
        else:  # reduced precision: kernels differ between CPUs in rounding; the classes must not
            checks.append(("same top-1 as when bundled", f"{fmt_pct(same.top1_agreement)}, max abs "
                           f"{fmt_err(same.max_abs)}", same.top1_agreement == 1.0))
    report = SelfTestReport(model_file or str(predictor.source), predictor.backend.name, checks)
    if not report.passed:
        log.warning("warning: self-test failed: %s", "; ".join(w for w, _, ok in checks if not ok))
    return report


def require_pass(report: SelfTestReport) -> SelfTestReport:
    if not report.passed:
        raise CheckFailed(f"the self-test of {report.model} failed", report)
    return report


def make_bundle(models: list[str | os.PathLike], output: str | os.PathLike, *, data: str | None = None,
                checkpoint: str | os.PathLike | None = None, samples: int = 8, validate: bool = True,
                default: str | None = None, archive: bool = False, overwrite: bool = False) -> Path:
    """`rexport bundle`: reference inputs (from `data`, else random), the PyTorch reference when a
    checkpoint is given (else the FP32 ONNX), a few of the data's images for the preprocessing
    check, and (with data) the validation report of every model."""
    from rexport.runtime.preprocess import is_image_file

    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise InputError(f"model {p} does not exist")
    out = Path(output)
    if not archive:
        check_output_dir(out, overwrite=overwrite)
    infos = [_describe_model(p)[2] for p in paths]
    base = next((i for i in infos if i is not None and i.precision == "fp32"), infos[0])
    inputs, images, validation = None, None, None
    if data is not None:
        from rexport.runtime.data import load_dataset

        inputs = load_dataset(data, base, samples=samples).inputs
        if Path(data).is_dir():
            images = sorted(p for p in Path(data).rglob("*") if p.is_file() and is_image_file(p))[:4]
        if validate and any(p.suffix == ".onnx" for p in paths):
            from rexport.runtime.validate import validate as run_validation

            validation = run_validation([p for p in paths if p.suffix == ".onnx"], data,
                                        checkpoint=checkpoint).to_dict()
    reference, source = None, "ONNX FP32"
    if checkpoint is not None:
        from rexport.runtime.validate import torch_logits

        if inputs is None:
            inputs = np.random.default_rng(0).standard_normal((samples, *base.input_shape), dtype=np.float32)
        reference, source = torch_logits(checkpoint, base, inputs), f"PyTorch FP32 ({Path(checkpoint).name})"
    return write_bundle(paths, out, inputs=inputs, reference_logits=reference, reference_source=source,
                        images=images, validation=validation, default=default, archive=archive, overwrite=overwrite)

