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
is loaded (runtime/manifest.py). An archive is checked whole before anything is written
(runtime/archive.py). `write_bundle` / `make_bundle` write one, `add_to_bundle` adds an engine to
one; the self-test that replays the references on the device is runtime/selftest.py.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rexport import __version__
from rexport.errors import InputError
from rexport.files import atomic_directory, atomic_output, check_output, check_output_dir, sha256_file
from rexport.runtime.archive import ARCHIVE_SUFFIXES, extract_bundle, is_archive
from rexport.runtime.manifest import (FORMAT, FORMAT_VERSION, MANIFEST, model_info, read_manifest, save_manifest,
                                      verify_files)
from rexport.runtime.metadata import ModelInfo, Precision


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


def open_bundle(path: str | os.PathLike) -> Bundle:
    """Read and verify a bundle directory or archive: the manifest's digest and shape, every name it
    gives, every file's sha256."""
    path = Path(path)
    tmp = None
    try:
        if is_archive(path):
            tmp = tempfile.TemporaryDirectory(prefix="rexport-bundle-")
            root, manifest = extract_bundle(path, Path(tmp.name))  # verified as it was extracted
            where = f"{MANIFEST} in {path}"
        else:
            root, where = path, str(path / MANIFEST)
            manifest = read_manifest(root)
            verify_files(root, manifest)
        info = model_info(manifest, where)
    except BaseException:
        if tmp is not None:
            tmp.cleanup()
        raise
    return Bundle(root, manifest, info, tmp)


# -- writing -----------------------------------------------------------------------------------


def _entry(path: Path, kind: str, precision: str) -> dict:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size, "kind": kind, "precision": precision}


def _describe_model(path: Path) -> tuple[str, str, ModelInfo | None]:
    """(kind, precision, ModelInfo) of an ONNX or engine file, read torch- and onnx-free."""
    if path.suffix.lower() == ".onnx":
        from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

        backend = OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"])
        info = ModelInfo.from_onnx(backend.metadata, backend.graph_io(), str(path))
        if info is None:
            raise InputError(f"{path} has no rexport metadata; bundle models exported with `rexport onnx`")
        return "onnx", info.precision, info
    if path.suffix.lower() == ".engine":
        from rexport.runtime.engine_sidecar import EngineSidecar, sidecar_path

        if not sidecar_path(path).is_file():
            raise InputError(f"{path} has no sidecar ({sidecar_path(path).name}); build it with `rexport trt`")
        sidecar = EngineSidecar.read(sidecar_path(path))
        return "engine", sidecar.precision, sidecar.model
    raise InputError(f"cannot bundle {path}: expected .onnx or .engine files")


def open_if_bundle(path: str | os.PathLike) -> tuple[Path, Bundle | None]:
    """`path`, checked to exist, and the Bundle when it is one (the caller cleans it up)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path} does not exist")
    return path, open_bundle(path) if is_bundle(path) else None


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
    for want in Precision:  # in order: fp32 first
        for e in entries:
            if e["precision"] == want and e["kind"] == "onnx":
                return e["file"]
    return entries[0]["file"]


def add_to_bundle(bundle_dir: str | os.PathLike, files: list[Path], kind: str, precision: str,
                  make_default: bool = False) -> None:
    """Add already written files (e.g. an engine and its sidecar) to a bundle directory and
    rewrite its manifest atomically. The first file is the model; the others belong to it."""
    root = Path(bundle_dir)
    manifest = read_manifest(root)
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



def make_bundle(models: list[str | os.PathLike], output: str | os.PathLike, *, data: str | None = None,
                checkpoint: str | os.PathLike | None = None, samples: int = 8, validate: bool = True,
                validation=None, default: str | None = None, archive: bool = False,
                overwrite: bool = False) -> Path:
    """`rexport bundle`: reference inputs (from `data`, else random), the PyTorch reference when a
    checkpoint is given (else the FP32 ONNX), a few of the data's images for the preprocessing
    check, and (with data) the validation report of every model: `validation` when the caller
    has one already (a ValidationReport on the same data), else made here."""
    from rexport.runtime.preprocess import is_image_file

    paths = [Path(m) for m in models]
    for p in paths:
        if not p.is_file():
            raise InputError(f"model {p} does not exist")
    out = Path(output)
    if not archive:
        check_output_dir(out, overwrite=overwrite)
    infos = [_describe_model(p)[2] for p in paths]
    base = next((i for i in infos if i is not None and i.precision == Precision.fp32), infos[0])
    inputs, images = None, None
    validation = None if validation is None else validation.to_dict()
    if data is not None:
        from rexport.runtime.data import load_dataset

        inputs = load_dataset(data, base, samples=samples).inputs
        if Path(data).is_dir():
            images = sorted(p for p in Path(data).rglob("*") if p.is_file() and is_image_file(p))[:4]
        if validate and validation is None and any(p.suffix == ".onnx" for p in paths):
            from rexport.runtime.validate import validate as run_validation

            validation = run_validation([p for p in paths if p.suffix == ".onnx"], data,
                                        checkpoint=checkpoint).to_dict()
    reference, source = None, "ONNX FP32"
    if checkpoint is not None:
        from rexport.runtime.backends.pytorch import PyTorchBackend

        if inputs is None:
            inputs = np.random.default_rng(0).standard_normal((samples, *base.input_shape), dtype=np.float32)
        torch_model = PyTorchBackend.from_checkpoint(checkpoint, base)
        reference, source = torch_model.run_batched(inputs, 64), torch_model.name
    return write_bundle(paths, out, inputs=inputs, reference_logits=reference, reference_source=source,
                        images=images, validation=validation, default=default, archive=archive, overwrite=overwrite)

