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
is loaded; archives are extracted to a private directory and never write outside it.
`selftest` replays the references: the preprocessing of the reference images on this machine,
then each model against the FP32 reference (top-1 agreement) and against its own logits
recorded when the bundle was made.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport import __version__
from rexport.console import fmt_err, fmt_pct, log, table
from rexport.errors import CheckFailed, InputError
from rexport.files import atomic_directory, atomic_output, check_output, check_output_dir, json_text, sha256_file
from rexport.runtime.compare import Tolerance, compare
from rexport.runtime.metadata import ModelInfo

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
SELFTEST_AGREEMENT = {"fp32": 1.0, "fp16": 0.95, "int8": 0.75, "mixed": 0.75}
SAME_FILE_TOLERANCE = Tolerance(atol=1e-3, rtol=1e-3)  # the same model file on another machine


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


def safe_extract(archive: Path, target: Path) -> Path:
    """Extract a bundle archive into `target`, refusing anything that would land outside it
    (absolute paths, `..`, links, devices). Returns the bundle directory inside `target`."""
    target = target.resolve()
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for m in members:
                dest = (target / m.name).resolve()
                if m.name.startswith(("/", "\\")) or os.path.isabs(m.name) or not dest.is_relative_to(target):
                    raise InputError(f"refusing to extract {archive.name}: {m.name!r} would be written outside "
                                     "the bundle directory")
                if not (m.isfile() or m.isdir()):
                    raise InputError(f"refusing to extract {archive.name}: {m.name!r} is a link or special file; "
                                     "bundle archives hold only regular files and directories")
            tar.extractall(target, members=members, filter="data")
    except tarfile.TarError as e:
        raise InputError(f"{archive} is not a readable bundle archive ({e})") from None
    if (target / MANIFEST).is_file():
        return target
    inner = [p for p in target.iterdir() if (p / MANIFEST).is_file()]
    if len(inner) != 1:
        raise InputError(f"{archive} holds no {MANIFEST}; it is not a rexport bundle")
    return inner[0]


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle directory or archive: the manifest's digest, every name it gives,
    every file's sha256."""
    path = Path(path)
    tmp = None
    if is_archive(path):
        tmp = tempfile.TemporaryDirectory(prefix="rexport-bundle-")
        try:
            root = safe_extract(path, Path(tmp.name))
        except BaseException:
            tmp.cleanup()
            raise
    else:
        root = path
    try:
        manifest = _read_manifest(root)
        verify_files(root, manifest)
        info = ModelInfo.from_dict(manifest["model"])
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
    try:
        manifest = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{root / MANIFEST} is unreadable or not JSON ({e})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputError(f"{root / MANIFEST} is not a rexport bundle manifest")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InputError(f"{root} was written by a newer rexport (bundle format {version}); upgrade rexport to read it")
    if DIGEST not in manifest:
        raise InputError(f"{root / MANIFEST} carries no {DIGEST} (bundle format {version}, from an older rexport), "
                         f"so its content cannot be verified; {REBUNDLE}")
    if manifest[DIGEST] != _digest(manifest):
        raise InputError(f"{root / MANIFEST} was modified after bundling (its content does not match its {DIGEST}); "
                         f"{REBUNDLE}")
    for key, kind in (("model", dict), ("files", dict), ("models", list), ("default", str)):
        if not isinstance(manifest.get(key), kind):
            raise InputError(f"{root / MANIFEST} lacks {key!r} (a {kind.__name__}); the bundle is incomplete; "
                             f"{REBUNDLE}")
    return manifest


def _named_files(manifest: dict) -> list[tuple[str, object]]:
    """(what, name) for every file the manifest tells a reader to load."""
    from rexport.runtime.engine_sidecar import sidecar_path

    named: list[tuple[str, object]] = [("the default model", manifest["default"])]
    for m in manifest["models"]:
        name = m.get("file") if isinstance(m, dict) else None
        named.append(("a model", name))
        if isinstance(m, dict) and m.get("kind") == "engine" and isinstance(name, str):
            named.append(("an engine sidecar", str(sidecar_path(name))))
    ref = manifest.get("reference") or {}
    if isinstance(ref, dict):
        named += [("the reference data", ref.get("file"))] + [("a reference image", n) for n in ref.get("images") or []]
    else:
        named.append(("the reference", ref))
    return named


def _check_name(root: Path, name: object, what: str) -> Path:
    """The rule for every path a manifest gives: relative, normalised, inside the bundle."""
    if (not isinstance(name, str) or not name or "\\" in name or name.startswith("/") or posixpath.isabs(name)
            or posixpath.normpath(name) != name or ".." in name.split("/")):
        raise InputError(f"{MANIFEST} names {what} {name!r}, not a plain relative path inside the bundle; "
                         f"refusing to read it; {REBUNDLE}")
    file = root / name
    if not file.resolve().is_relative_to(root.resolve()):
        raise InputError(f"{MANIFEST} names {what} {name!r}, which leads outside the bundle; refusing to read it; "
                         f"{REBUNDLE}")
    return file


def verify_files(root: Path, manifest: dict) -> None:
    """Every file the manifest names is one of its `files`, each of which passes `_check_name` and
    matches its size and sha256."""
    for what, name in _named_files(manifest):
        if name not in manifest["files"]:
            _check_name(root, name, what)  # the clearer message first, when the name itself is wrong
            raise InputError(f"{MANIFEST} names {what} {name!r} that is not among its files (no sha256 covers it); "
                             f"refusing to read it; {REBUNDLE}")
    for name, entry in manifest["files"].items():
        file = _check_name(root, name, "the file")
        if not isinstance(entry, dict) or not isinstance(entry.get("bytes"), int):
            raise InputError(f"{MANIFEST} gives no size and sha256 for {name!r}; {REBUNDLE}")
        if not file.is_file():
            raise InputError(f"bundle file {name} is missing from {root}; copy the whole bundle")
        size = file.stat().st_size
        if size != entry["bytes"] or sha256_file(file) != entry["sha256"]:
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

        props = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"]).metadata
        if "num_classes" not in props:
            raise InputError(f"{path} has no rexport metadata; bundle models exported with `rexport onnx`")
        info = ModelInfo.from_props(props)
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
    for want in ("fp32", "fp16", "int8", "mixed"):
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
        checks.append((f"preprocessing of {len(images)} reference image(s)", f"max abs {fmt_err(err)}", err <= 1e-5))
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
        from rexport.calibration.data import load_calibration_data

        inputs = load_calibration_data(data, base, samples=samples).inputs
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

