"""Fuzz bundles (rexport.runtime.bundle.open_bundle and rexport.runtime.load): manifests whose
fields take any value (digest recomputed, so the shape checks are reached) or whose text is damaged,
bundle directories with links, pipes and directories where files were, archives mutated byte by
byte, and archives built member by member (hostile names, links and special files, sizes that lie,
members unlisted, missing, twice, nested too deep, two bundles, any compression). A bundle that
opens must name only files inside itself, and an archive must have extracted exactly the files its
manifest lists into a temporary directory that cleanup() removes. Property and settings:
fuzz_support, conftest."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_support import (EVIL_VALUES, Seeds, check_predictor_run, edited_json, fuzz_settings, json_values, mutated,
                          mutations)
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from doubles.tiny_onnx import write_tiny_classifier  # noqa: E402

from rexport.runtime import load  # noqa: E402
from rexport.runtime.bundle import Bundle, open_bundle, write_bundle  # noqa: E402
from rexport.runtime.manifest import DIGEST, MANIFEST, manifest_digest  # noqa: E402

DATA = Path(__file__).parent.parent / "data"


@pytest.fixture(scope="module")
def seeds(ws) -> Seeds:
    """A bundle of the tiny classifier with its reference data and a reference image: as a directory,
    its files, and as .tar.gz and .tar archives."""
    model = write_tiny_classifier(ws.seeds / "tiny.onnx")
    bundle = write_bundle([model], ws.seeds / "bundle", images=[DATA / "china_tiny_8x8.png"])
    out = Seeds()
    out["dir"] = bundle
    out["files"] = {str(p.relative_to(bundle)): p.read_bytes() for p in sorted(bundle.rglob("*")) if p.is_file()}
    out["manifest"] = json.loads((bundle / MANIFEST).read_text())
    archive = write_bundle([model], ws.seeds / "bundle.tar.gz", images=[DATA / "china_tiny_8x8.png"], archive=True)
    out["bundle.tar.gz"] = archive.read_bytes()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(bundle, arcname="bundle")
    out["bundle.tar"] = buf.getvalue()
    return out


def _inside(path: Path, root: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


def check_bundle(ws, bundle, source: Path, archive: bool) -> None:
    """A bundle that opened names only files inside itself; an archive's holds exactly its listed files,
    in a temporary directory. Its reference data loads or is refused in one line. Then cleanup()."""
    try:
        assert isinstance(bundle, Bundle)
        root = bundle.root
        if archive:
            assert _inside(root, Path(tempfile.gettempdir())), root
            held = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}
            assert held == set(bundle.manifest["files"]) | {MANIFEST}, held ^ (set(bundle.manifest["files"]) | {MANIFEST})
        else:
            assert root.resolve() == source.resolve()
        assert _inside(bundle.model_file(), root)
        for m in bundle.models:
            assert _inside(root / m["file"], root) and (root / m["file"]).is_file(), m
        ref = bundle.manifest.get("reference")
        if ref:
            assert _inside(root / ref["file"], root)
            ws.attempt(bundle.reference, close=check_reference)
    finally:
        bundle.cleanup()


def check_reference(arrays) -> None:
    assert isinstance(arrays, dict) and all(isinstance(v, np.ndarray) for v in arrays.values())


def open_and_load(ws, path: Path, archive: bool, run: bool = True) -> bool:
    outcome = ws.attempt(lambda: open_bundle(path), close=lambda b: check_bundle(ws, b, path, archive))
    if outcome.ok and run:
        ws.attempt(lambda: load(path, providers="cpu"), close=check_predictor_run)
    return outcome.ok


def test_seeds_open(ws, seeds):
    assert open_and_load(ws, seeds["dir"], archive=False)
    for name in ("bundle.tar.gz", "bundle.tar"):
        path = ws.seeds / name
        path.write_bytes(seeds[name])
        assert open_and_load(ws, path, archive=True)


# -- manifests ----------------------------------------------------------------------------------

PATHS = ("../tiny.onnx", "/etc/hostname", "tiny.onnx/", "./tiny.onnx", "a/../tiny.onnx", "reference", "", ".",
         "tiny.onnx\0", "tiny.onnx\\..\\x", "rexport.json", "reference/../reference.npz", "C:/x.onnx", "~/x")
MANIFEST_VALUES = st.sampled_from(PATHS) | st.sampled_from(EVIL_VALUES) | json_values(6)


@st.composite
def manifest_text(draw, manifest: dict) -> bytes:
    """The seed manifest with fields of any value (usually with its digest recomputed, so the checks
    after it are reached), or its text damaged."""
    doc = draw(edited_json(manifest, max_edits=3, values=MANIFEST_VALUES))
    if isinstance(doc, dict) and draw(st.integers(0, 4)):
        try:
            doc[DIGEST] = manifest_digest(doc)
        except (ValueError, RecursionError):
            pass
    text = json.dumps(doc).encode()
    if draw(st.integers(0, 5)) == 0:
        text = draw(mutated(text, max_ops=2, hot=4096))
    return text


@fuzz_settings(150)
@given(data=st.data())
def test_manifest(ws, seeds, data):
    text = data.draw(manifest_text(seeds["manifest"]), label="manifest")
    with ws.case() as d:
        root = d / "bundle"
        shutil.copytree(seeds["dir"], root)
        (root / MANIFEST).write_bytes(text)
        open_and_load(ws, root, archive=False, run=data.draw(st.integers(0, 3), label="run") == 0)


FS_EDITS = ("link_out", "link_in", "manifest_link", "fifo", "directory", "remove", "extra", "empty", "dir_link")


@fuzz_settings(40)
@given(edit=st.sampled_from(FS_EDITS), target=st.sampled_from(("tiny.onnx", "reference.npz", "reference/0.png",
                                                                MANIFEST, "reference")))
def test_bundle_directory(ws, seeds, edit, target):
    """A bundle directory whose files became links (to a copy outside the bundle: same bytes, so the
    sha256 matches), pipes (must never block), directories, or went missing."""
    with ws.case() as d:
        root = d / "bundle"
        shutil.copytree(seeds["dir"], root)
        path = root / target
        outside = d / ("outside-" + path.name)
        if path.is_dir():
            shutil.copytree(path, outside)
            shutil.rmtree(path)
        else:
            shutil.copyfile(path, outside)
            path.unlink()
        if edit in ("link_out", "manifest_link", "dir_link"):
            path.symlink_to(outside)
        elif edit == "link_in":
            os.symlink("tiny.onnx" if target != "tiny.onnx" else MANIFEST, path)
        elif edit == "fifo":
            os.mkfifo(path)
        elif edit == "directory":
            path.mkdir()
        elif edit == "extra":
            shutil.move(outside, path)
            (root / "extra.onnx").write_bytes(b"x")
        elif edit == "empty":
            path.write_bytes(b"")
        open_and_load(ws, root, archive=False)


# -- archives -----------------------------------------------------------------------------------

SUFFIXES = (".tar.gz", ".tgz", ".tar")


@fuzz_settings(100)
@given(data=st.data(), kind=st.sampled_from(("bundle.tar.gz", "bundle.tar")), suffix=st.sampled_from(SUFFIXES))
def test_mutated_archive(ws, seeds, data, kind, suffix):
    mutation = data.draw(mutations(len(seeds[kind]), hot=2048), label="mutation")
    with ws.case() as d:
        path = d / f"bundle{suffix}"
        path.write_bytes(mutation.apply(seeds[kind]))
        open_and_load(ws, path, archive=True, run=False)


TYPES = {"file": tarfile.REGTYPE, "symlink": tarfile.SYMTYPE, "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE,
         "chardev": tarfile.CHRTYPE, "dir": tarfile.DIRTYPE, "contiguous": tarfile.CONTTYPE, "gnu_sparse": b"S"}
NAMES = ("../x", "/x", "bundle/../../x", "bundle/./tiny.onnx", "bundle//tiny.onnx", "bundle\\tiny.onnx",
         "./bundle/tiny.onnx", "bundle/extra.bin", "other/rexport.json", "bundle/sub/rexport.json", "bundle/tiny.onnx",
         "bundle", ".", "", "bundle/reference/../tiny.onnx", "bundle/rexport.json")


class Member:
    def __init__(self, name: str, data: bytes = b"", type_: bytes = tarfile.REGTYPE, size: int | None = None,
                 linkname: str = ""):
        self.name, self.data, self.type, self.size, self.linkname = name, data, type_, size, linkname

    def __repr__(self) -> str:
        extra = "" if self.size is None else f", size={self.size}"
        return f"Member({self.name!r}, {len(self.data)} bytes, {self.type!r}{extra}, {self.linkname!r})"

    def block(self) -> bytes:
        info = tarfile.TarInfo(self.name)
        info.type, info.linkname, info.mode = self.type, self.linkname, 0o644
        info.size = len(self.data) if self.size is None else self.size
        try:
            head = info.tobuf(tarfile.GNU_FORMAT)
        except ValueError:  # a size tar cannot write
            info.size = len(self.data)
            head = info.tobuf(tarfile.GNU_FORMAT)
        return head + self.data + b"\0" * (-len(self.data) % tarfile.BLOCKSIZE)


@st.composite
def archive_members(draw, seeds) -> list:
    """The seed bundle's members, then 1..3 edits."""
    files = seeds["files"]
    prefix = draw(st.sampled_from(("bundle/", "bundle/", "", "a/b/")))
    members = [Member(prefix.rstrip("/"), type_=tarfile.DIRTYPE)] if prefix else []
    members += [Member(prefix + name, data) for name, data in files.items()]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(("rename", "type", "duplicate", "drop", "extra", "size", "content", "manifest",
                                   "second_bundle", "reorder")))
        if not members:
            break
        k = draw(st.integers(0, len(members) - 1))
        m = members[k]
        if op == "rename":
            m.name = draw(st.sampled_from(NAMES))
        elif op == "type":
            m.type = TYPES[draw(st.sampled_from(sorted(TYPES)))]
            m.linkname = draw(st.sampled_from(("tiny.onnx", "../../etc/hostname", "/etc/hostname", "bundle/tiny.onnx")))
            if m.type != tarfile.REGTYPE and m.type != tarfile.CONTTYPE:
                m.data = b""
        elif op == "duplicate":
            members.insert(draw(st.integers(0, len(members))), Member(m.name, m.data, m.type))
        elif op == "drop":
            del members[k]
        elif op == "extra":
            members.append(Member(draw(st.sampled_from(NAMES)), draw(st.binary(max_size=32))))
        elif op == "size":  # the header lies about the size
            m.size = draw(st.sampled_from((0, 1, len(m.data) - 1, len(m.data) + 1, len(m.data) + 4096, 2**33, 8**11 - 1)))
        elif op == "content":
            m.data = draw(mutated(m.data, max_ops=1)) if m.data else b"x"
        elif op == "manifest":
            for mm in members:
                if mm.name.endswith(MANIFEST):
                    mm.data = draw(manifest_text(seeds["manifest"]))
        elif op == "second_bundle":
            members += [Member("second/" + name, data) for name, data in files.items()]
        else:
            members.reverse()
    return members


@fuzz_settings(120)
@given(data=st.data(), compression=st.sampled_from(("gz", "gz", "", "bz2", "xz")), suffix=st.sampled_from(SUFFIXES),
       end=st.sampled_from(("zeros", "zeros", "none", "garbage")))
def test_generated_archive(ws, seeds, data, compression, suffix, end):
    members = data.draw(archive_members(seeds), label="members")
    raw = b"".join(m.block() for m in members)
    raw += {"zeros": b"\0" * 2 * tarfile.BLOCKSIZE, "none": b"", "garbage": b"\x01" * tarfile.BLOCKSIZE}[end]
    if compression:
        import bz2
        import gzip
        import lzma

        raw = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}[compression](raw)
    with ws.case() as d:
        path = d / f"bundle{suffix}"
        path.write_bytes(raw)
        open_and_load(ws, path, archive=True, run=data.draw(st.integers(0, 3), label="run") == 0)
