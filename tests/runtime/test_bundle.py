"""Bundles: round trip, self-test, tamper and truncation detection, safe archives."""

from __future__ import annotations

import io
import json
import shutil
import tarfile

import numpy as np
import pytest

from rexport.errors import InputError
from rexport.runtime import load
from rexport.runtime.archive import safe_extract
from rexport.runtime.bundle import open_bundle, write_bundle
from rexport.runtime.manifest import MANIFEST, save_manifest


def test_round_trip(demo_bundle, demo_fp32):
    bundle = open_bundle(demo_bundle)
    m = bundle.manifest
    assert {e["file"] for e in bundle.models} == {"demo.onnx", "demo.int8.onnx"}
    assert m["default"] == "demo.onnx" and m["reference"]["samples"] == 6
    assert len(m["reference"]["images"]) == 4
    assert set(m["files"]) >= {"demo.onnx", "demo.int8.onnx", "reference.npz", "labels.txt", MANIFEST} - {MANIFEST}
    assert bundle.info.labels == tuple(str(d) for d in range(10))
    assert m["validation"]["passed"] and len(m["validation"]["rows"]) == 2
    with load(demo_bundle) as fp32, load(demo_fp32) as bare:
        x = bundle.reference()["inputs"]
        np.testing.assert_array_equal(fp32.run(x), bare.run(x))
    with load(demo_bundle, model="int8") as int8:
        assert int8.info.precision == "int8" and int8.model_file.name == "demo.int8.onnx"
    with pytest.raises(InputError, match="has no model 'fp16'"):
        load(demo_bundle, model="fp16")


@pytest.mark.parametrize("variant", ["fp32", "int8"])
def test_selftest_passes_on_this_machine(demo_bundle, variant):
    with load(demo_bundle, model=variant) as model:
        report = model.selftest()
    assert report.passed, report.format()
    assert [c[0].split(" ")[0] for c in report.checks] == ["preprocessing", "top-1", "same"]


def test_selftest_catches_a_preprocessing_change(demo_bundle):
    """If the device's preprocessing differs from the one recorded (e.g. another Pillow, other
    normalisation), the image check fails even though the model file is intact."""
    from dataclasses import replace

    with load(demo_bundle) as model:
        model.info = model.info.replace(preprocess=replace(model.info.preprocess, interpolation="nearest"))
        report = model.selftest()
    assert not report.passed
    assert not report.checks[0][2] and report.checks[1][2]


def copy_bundle(src, tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def test_tampered_file_is_refused(demo_bundle, tmp_path):
    b = copy_bundle(demo_bundle, tmp_path)
    data = bytearray((b / "demo.int8.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (b / "demo.int8.onnx").write_bytes(bytes(data))
    with pytest.raises(InputError, match="demo.int8.onnx does not match its sha256 .* it was modified"):
        load(b)


def test_truncated_and_missing_files_are_refused(demo_bundle, tmp_path):
    b = copy_bundle(demo_bundle, tmp_path)
    (b / "demo.onnx").write_bytes((b / "demo.onnx").read_bytes()[:1000])
    with pytest.raises(InputError, match="truncated"):
        load(b)
    b2 = copy_bundle(demo_bundle, tmp_path / "2")
    (b2 / "reference.npz").unlink()
    with pytest.raises(InputError, match="reference.npz is missing"):
        load(b2)
    b3 = copy_bundle(demo_bundle, tmp_path / "3")
    (b3 / MANIFEST).write_text("{not json")
    with pytest.raises(InputError, match="not JSON"):
        load(b3)


def test_archive_round_trip(demo_bundle, demo_fp32, tmp_path):
    archive = write_bundle([demo_fp32], tmp_path / "demo", archive=True)
    assert archive.name == "demo.tar.gz" and archive.is_file()
    with load(archive) as model:
        assert model.selftest().passed
        root = model.bundle.root
        assert root.exists()
    assert not root.exists()  # the private extraction is removed on close


def _archive_with(tmp_path, name: str, member: tarfile.TarInfo, payload: bytes = b"x"):
    path = tmp_path / name
    with tarfile.open(path, "w:gz") as tar:
        if member.isfile():
            member.size = len(payload)
            tar.addfile(member, io.BytesIO(payload))
        else:
            tar.addfile(member)
    return path


@pytest.mark.parametrize("member, message", [
    (tarfile.TarInfo("../escape.txt"), "outside the bundle directory"),
    (tarfile.TarInfo("bundle/../../escape.txt"), "outside the bundle directory"),
    (tarfile.TarInfo("/tmp/absolute-escape.txt"), "outside the bundle directory"),
])
def test_archive_path_traversal_is_refused(tmp_path, member, message):
    archive = _archive_with(tmp_path, "evil.tar.gz", member)
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(InputError, match=message):
        safe_extract(archive, target)
    assert not (tmp_path / "escape.txt").exists() and not list(target.iterdir())
    with pytest.raises(InputError):
        load(archive)


def test_archive_links_are_refused(tmp_path):
    link = tarfile.TarInfo("bundle/rexport.json")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    archive = _archive_with(tmp_path, "link.tar.gz", link)
    with pytest.raises(InputError, match="link or special file"):
        load(archive)


def test_existing_bundle_is_not_replaced_without_force(demo_fp32, tmp_path):
    out = tmp_path / "b"
    write_bundle([demo_fp32], out)
    manifest = (out / MANIFEST).read_text()
    with pytest.raises(InputError, match="pass overwrite=True"):
        write_bundle([demo_fp32], out)
    write_bundle([demo_fp32], out, overwrite=True)
    assert json.loads((out / MANIFEST).read_text())["created"] >= json.loads(manifest)["created"]


def test_bundles_one_model_s_forms_only(demo_fp32, exported, tmp_path):
    with pytest.raises(InputError, match="other inputs or has other classes"):
        write_bundle([demo_fp32, exported("resnet18")], tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()


# -- issue 10: everything a bundle names stays inside it and is covered by a hash ---------------


def _edit_manifest(bundle, edit, sign: bool = True):
    """Change a bundle's manifest; `sign` re-computes its digest, as a forger would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    if sign:
        save_manifest(bundle, manifest)
    else:
        (bundle / MANIFEST).write_text(json.dumps(manifest, indent=2))


def _as_archive(bundle, tmp_path):
    archive = tmp_path / f"{bundle.name}.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(bundle, arcname="bundle")
    return archive


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(manifest):
        target = manifest
        for k in keys[:-1]:
            target = target[k]
        target[keys[-1]] = value
    return edit


@pytest.mark.parametrize("edit, message", [
    (_set("models", 0, "file", "{outside}"), "not a plain relative path"),
    (_set("models", 0, "file", "../../x.onnx"), "not a plain relative path"),
    (_set("models", 0, "file", "./demo.onnx"), "not a plain relative path"),
    (_set("default", "{outside}"), "not a plain relative path"),
    (_set("reference", "file", "../outside.npz"), "not a plain relative path"),
    (_set("reference", "images", ["/etc/passwd"]), "not a plain relative path"),
    (_set("models", 0, "file", "unlisted.onnx"), "not among its files"),
])
@pytest.mark.parametrize("archived", [False, True])
def test_a_manifest_cannot_name_a_file_outside_the_bundle(demo_bundle, demo_fp32, tmp_path, edit, message, archived):
    """A manifest (even one re-signed by a forger) used to load `models[].file` from anywhere."""
    from rexport.runtime.inspect import inspect_model

    outside = tmp_path / "outside.onnx"
    shutil.copyfile(demo_fp32, outside)
    b = copy_bundle(demo_bundle, tmp_path)
    shutil.copyfile(demo_fp32, b / "unlisted.onnx")  # inside, but covered by no sha256
    shutil.copyfile(demo_fp32, tmp_path / "x.onnx")
    (tmp_path / "outside.npz").write_bytes((b / "reference.npz").read_bytes())

    def resolve(m):  # "{outside}": the absolute path of a model outside the bundle
        return json.loads(json.dumps(m).replace("{outside}", str(outside)))

    manifest = resolve(json.loads((b / MANIFEST).read_text()))
    edit(manifest)
    save_manifest(b, resolve(manifest))
    target = _as_archive(b, tmp_path) if archived else b
    for opening in (lambda: load(target), lambda: inspect_model(target), lambda: load(target, model="int8")):
        with pytest.raises(InputError, match=f"{message}.*re-create the bundle"):
            opening()


def test_an_edited_manifest_is_refused(demo_bundle, tmp_path):
    """The labels in rexport.json could be edited silently: the manifest itself had no hash."""
    b = copy_bundle(demo_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["model"].update(labels=["cat"] * 10), sign=False)
    with pytest.raises(InputError, match=r"rexport.json was modified after bundling .* re-create the bundle"):
        load(b)
    with pytest.raises(InputError, match="modified after bundling"):
        load(_as_archive(b, tmp_path))


def test_a_bundle_without_a_manifest_digest_is_refused(demo_bundle, tmp_path):
    b = copy_bundle(demo_bundle, tmp_path)
    _edit_manifest(b, lambda m: (m.pop("manifest_sha256"), m.update(format_version=1)), sign=False)
    with pytest.raises(InputError, match="carries no manifest_sha256 .* re-create the bundle with `rexport bundle`"):
        open_bundle(b)


def test_a_signed_manifest_round_trips(demo_bundle, tmp_path):
    b = copy_bundle(demo_bundle, tmp_path)
    _edit_manifest(b, lambda m: m["model"].update(labels=[f"digit {d}" for d in range(10)]))
    bundle = open_bundle(b)  # a change made through save_manifest (as add_to_bundle does) is accepted
    assert bundle.info.labels[3] == "digit 3" and bundle.manifest["manifest_sha256"]
