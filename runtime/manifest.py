"""A bundle's manifest, `rexport.json`: reading it (capped, strict JSON, a known format), its digest
(`manifest_sha256`, over its content), the shape of every field a reader uses, the names it gives
(relative, normalised paths inside the bundle, each one of its listed files) and the check of
every file against its size and sha256. Writing it atomically with its digest (`save_manifest`).
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import stat
from pathlib import Path

from rexport.console import fmt_bytes
from rexport.errors import InputError, one_line
from rexport.files import atomic_output, json_text, sha256_file
from rexport.runtime.metadata import ModelInfo

MANIFEST = "rexport.json"
FORMAT = "rexport-bundle"
# 2: the manifest carries manifest_sha256. Bundles of format 1 are refused rather than read without it:
# their manifest (labels, preprocessing, which files to load) could have been edited unnoticed, and
# re-bundling is one command on the machine that made them.
FORMAT_VERSION = 2
DIGEST = "manifest_sha256"
REBUNDLE = "re-create the bundle with `rexport bundle`"
MAX_MANIFEST_BYTES = 16 << 20    # a manifest with 21k ImageNet labels and a validation report is < 1 MB


def check_manifest_size(size: int, where: str) -> None:
    if size > MAX_MANIFEST_BYTES:
        raise InputError(f"{where} is {fmt_bytes(size)}, more than the {fmt_bytes(MAX_MANIFEST_BYTES)} a manifest "
                         f"may be; {REBUNDLE}")


def manifest_digest(manifest: dict) -> str:
    """sha256 of the manifest's content (without the digest itself), in a canonical JSON form."""
    content = {k: v for k, v in manifest.items() if k != DIGEST}
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":"),
                                     allow_nan=False).encode()).hexdigest()


def save_manifest(root: Path, manifest: dict) -> None:
    """Write (atomically) the manifest of the bundle directory `root`, with its digest."""
    manifest = json.loads(json_text(manifest))  # the strict-JSON form is what is read back and hashed
    manifest[DIGEST] = manifest_digest(manifest)
    with atomic_output(root / MANIFEST, overwrite=True) as tmp:
        tmp.write_text(json_text(manifest))


def read_manifest(root: Path) -> dict:
    file = root / MANIFEST
    try:
        st = file.stat()
        if not stat.S_ISREG(st.st_mode):
            raise InputError(f"{file} is not a regular file; a bundle's manifest is one")
        if not file.resolve().is_relative_to(root.resolve()):
            raise InputError(f"{file} leads outside the bundle; refusing to read it; {REBUNDLE}")
        check_manifest_size(st.st_size, str(file))
        with open(file, "rb") as f:
            raw = f.read(MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise InputError(f"{file} is unreadable ({one_line(e)})") from None
    return parse_manifest(raw, str(file))


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def parse_manifest(raw: bytes, where: str) -> dict:
    """The manifest from its bytes: capped, UTF-8, strict JSON, a rexport bundle of a known format whose
    digest matches, then the shape of every field a reader uses (`_check_shape`)."""
    if len(raw) > MAX_MANIFEST_BYTES:
        raise InputError(f"{where} is more than the {fmt_bytes(MAX_MANIFEST_BYTES)} a manifest may be; {REBUNDLE}")
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
        raise InputError(f"{where} is unreadable or not JSON ({one_line(e)})") from None
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
        digest = manifest_digest(manifest)
    except (ValueError, RecursionError):
        raise InputError(f"{where} is not JSON a manifest can be (nested too deeply); {REBUNDLE}") from None
    if manifest[DIGEST] != digest:
        raise InputError(f"{where} was modified after bundling (its content does not match its {DIGEST}); "
                         f"{REBUNDLE}")
    _check_shape(manifest, where)
    model_info(manifest, where)
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


def model_info(manifest: dict, where: str) -> ModelInfo:
    try:
        return ModelInfo.from_dict(manifest["model"])
    except InputError as e:
        raise InputError(f"{where}: 'model': {one_line(e)}") from None
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise InputError(f"{where}: 'model' is not a valid model description ({type(e).__name__}: {one_line(e)}); "
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

