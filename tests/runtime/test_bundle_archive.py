"""Bundle archives and manifests under hostile or damaged input (issue 10): an archive is checked whole
before anything is written, only the files its manifest lists are extracted, within caps; damaged
archives and malformed manifests give one line that says what was wrong and what to do."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest
from helpers import assert_clean_error

from rexport.errors import InputError
from rexport.runtime import load
from rexport.runtime import archive as archive_module
from rexport.runtime import manifest as manifest_module
from rexport.runtime.archive import safe_extract
from rexport.runtime.bundle import open_bundle, write_bundle
from rexport.runtime.manifest import MANIFEST, save_manifest

READ_AGAIN = r"is not a readable archive \(truncated or corrupt: .+\); download or copy it again"


@pytest.fixture(scope="module")
def small_bundle(demo_fp32, tmp_path_factory):
    """A bundle directory of the demo model (about 1.2 MB) with two reference images (in reference/)."""
    from PIL import Image

    from rexport.demo import data

    root = tmp_path_factory.mktemp("small")
    test = data.split("test")
    images = []
    for i in range(2):
        images.append(root / f"{i}.png")
        Image.fromarray(test.images[i], "L").save(images[-1])
    return write_bundle([demo_fp32], root / "bundle", images=images)


@pytest.fixture
def bundle_copy(small_bundle, tmp_path):
    dst = tmp_path / "bundle"
    shutil.copytree(small_bundle, dst)
    return dst


class Zeros(io.RawIOBase):
    """`n` zero bytes, produced as they are read (a bomb's payload without holding it in memory)."""

    def __init__(self, n: int):
        self.n = n

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        k = min(len(b), self.n)
        b[:k] = bytes(k)
        self.n -= k
        return k


def member(name: str, data: bytes | int | None = None, type=tarfile.REGTYPE, linkname: str = ""):
    """(TarInfo, payload): data as bytes, or an int for that many zero bytes; None for no payload."""
    info = tarfile.TarInfo(name)
    info.type, info.linkname = type, linkname
    if isinstance(data, int):
        info.size = data
        return info, io.BufferedReader(Zeros(data))
    if data is not None:
        info.size = len(data)
        return info, io.BytesIO(data)
    return info, None


def make_archive(path, bundle=None, *, arcname: str = "bundle", extra=(), first=(), mode: str = "w:gz"):
    """A tar of `bundle` (a directory) under `arcname`, with members `first` before it and `extra` after."""
    with tarfile.open(path, mode, **({"compresslevel": 1} if mode == "w:gz" else {})) as tar:
        for info, payload in first:
            tar.addfile(info, payload)
        if bundle is not None:
            tar.add(bundle, arcname=arcname)
        for info, payload in extra:
            tar.addfile(info, payload)
    return path


def one_line(e: pytest.ExceptionInfo) -> str:
    message = str(e.value)
    assert "\n" not in message and message.strip() == message, message
    return message


def nothing_in(directory) -> bool:
    return not any(directory.iterdir())


def refused(path, match: str, tmp_path) -> str:
    """`path` is refused by safe_extract (writing nothing) and by load, with one line matching `match`."""
    target = tmp_path / "target"
    target.mkdir(exist_ok=True)
    with pytest.raises(InputError, match=match) as e:
        safe_extract(path, target)
    assert nothing_in(target), list(target.rglob("*"))
    with pytest.raises(InputError, match=match):
        load(path)
    return one_line(e)


# -- item: an archive was fully extracted before anything was checked ---------------------------


def test_an_archive_round_trips_and_extracts_only_what_it_lists(small_bundle, tmp_path):
    archive = make_archive(tmp_path / "b.tar.gz", small_bundle)
    target = tmp_path / "target"
    target.mkdir()
    root = safe_extract(archive, target)
    assert root == target.resolve() / "bundle"
    listed = json.loads((small_bundle / MANIFEST).read_text())["files"]
    assert "reference/0.png" in listed
    assert sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) == sorted([MANIFEST, *listed])
    with load(archive) as model:
        assert model.selftest().passed


@pytest.mark.parametrize("arcname", [".", "", "./bundle"])
def test_archives_made_by_tar_in_the_bundle_directory_load(small_bundle, tmp_path, arcname):
    """`cd bundle && tar czf ../b.tar.gz .` gives ./demo.onnx etc.: the bundle at the archive's top."""
    archive = make_archive(tmp_path / "b.tar.gz", small_bundle, arcname=arcname)
    with load(archive) as model:
        assert model.model_file.name == "demo.onnx"


@pytest.mark.parametrize("where", ["first", "extra"])
def test_a_member_the_manifest_does_not_list_is_refused_before_writing(small_bundle, tmp_path, where):
    """The issue's case: an unlisted zero file in the archive was extracted, then predict succeeded."""
    zero = [member("bundle/zero.bin", 1 << 20)]
    archive = make_archive(tmp_path / "b.tar.gz", small_bundle, **{where: zero})
    message = refused(archive, r"holds 'bundle/zero.bin', which its rexport.json does not list; .*re-create", tmp_path)
    assert message.startswith("refusing to extract")


@pytest.mark.parametrize("extra, match", [
    ([member("other/x.txt", b"x")], "holds 'other/x.txt', which its rexport.json does not list"),
    ([member("bundle/extra_dir", type=tarfile.DIRTYPE)], "holds 'bundle/extra_dir', which its rexport.json does"),
    ([member("bundle/labels.txt", b"again")], "holds 'bundle/labels.txt' twice"),
    ([member("bundle/hard", type=tarfile.LNKTYPE, linkname="bundle/demo.onnx")], "link or special file"),
    ([member("bundle/fifo", type=tarfile.FIFOTYPE)], "link or special file"),
    ([member("bundle/dev", type=tarfile.CHRTYPE)], "link or special file"),
    ([member("bundle/a//b", b"x")], "not a plain relative path"),
])
def test_other_members_are_refused(small_bundle, tmp_path, extra, match):
    archive = make_archive(tmp_path / "b.tar.gz", small_bundle, extra=extra)
    refused(archive, match, tmp_path)


def test_a_member_whose_size_differs_from_the_manifest_is_refused_before_writing(small_bundle, tmp_path):
    staged = tmp_path / "staged"
    shutil.copytree(small_bundle, staged)
    (staged / "labels.txt").write_bytes(bytes(1 << 20))  # 1 MB where the manifest records 20 bytes
    archive = make_archive(tmp_path / "b.tar.gz", staged)
    refused(archive, r"holds 'bundle/labels.txt' as 1048576 bytes, but rexport.json records 20", tmp_path)


def test_a_listed_file_that_was_modified_is_refused_and_nothing_is_left(small_bundle, tmp_path):
    """Same size, other bytes: found while streaming; what was written is removed."""
    staged = tmp_path / "staged"
    shutil.copytree(small_bundle, staged)
    labels = bytearray((staged / "labels.txt").read_bytes())
    labels[0] ^= 1
    (staged / "labels.txt").write_bytes(bytes(labels))
    archive = make_archive(tmp_path / "b.tar.gz", staged)
    refused(archive, r"labels.txt does not match its sha256 .* modified", tmp_path)


def test_a_file_the_manifest_lists_but_the_archive_lacks_is_refused(small_bundle, tmp_path):
    staged = tmp_path / "staged"
    shutil.copytree(small_bundle, staged)
    (staged / "labels.txt").unlink()
    archive = make_archive(tmp_path / "b.tar.gz", staged)
    refused(archive, r"lacks labels.txt, listed in its rexport.json; copy the whole bundle", tmp_path)


def test_a_decompression_bomb_is_refused_at_its_header(tmp_path):
    """96 MB of zeros in 0.4 MB: refused from the declared size, before a byte of it is decompressed."""
    archive = make_archive(tmp_path / "bomb.tar.gz", first=[member("bundle/zero.bin", 96 << 20)])
    assert archive.stat().st_size < 1 << 20
    refused(archive, r"its 0.4 MB would expand to 100.7 MB, more than 100x, .*\(a decompression bomb\?\)", tmp_path)


def test_a_2_gib_member_is_refused_from_its_header_alone(tmp_path):
    """The issue's 2 GiB zero file: its header is refused before the reader moves past its data (the data
    is not even there: reading past it would report a truncated archive instead)."""
    info = tarfile.TarInfo("bundle/zero.bin")
    info.size = 2 << 30
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip.compress(info.tobuf(format=tarfile.PAX_FORMAT) + bytes(1 << 16)))
    refused(archive, r"would expand to 2.1 GB, more than 100x", tmp_path)


def _forged_with_zeros(bundle, size: int):
    """A manifest re-signed by a forger to list a file of `size` zero bytes, which the bundle holds."""
    (bundle / "zero.bin").write_bytes(bytes(size))
    manifest = json.loads((bundle / MANIFEST).read_text())
    manifest["files"]["zero.bin"] = {"sha256": hashlib.sha256(bytes(size)).hexdigest(), "bytes": size,
                                     "kind": "data", "precision": "-"}
    save_manifest(bundle, manifest)


def test_a_listed_bomb_is_refused_by_the_expansion_cap(bundle_copy, tmp_path, monkeypatch):
    _forged_with_zeros(bundle_copy, 8 << 20)
    archive = make_archive(tmp_path / "b.tar.gz", bundle_copy)
    with load(archive):  # 8 MB is under the floor below which any expansion is fine
        pass
    # scaled down: a bundle of ~1 MB of weights and 8 MB of zeros, with a floor of 4 MB and at most 4x
    monkeypatch.setattr(archive_module, "EXPANSION_FLOOR", 4 << 20)
    monkeypatch.setattr(archive_module, "MAX_EXPANSION", 4)
    refused(archive, r"would expand to .* more than 4x", tmp_path)


def test_the_total_cap_and_the_free_space_are_checked_before_writing(bundle_copy, tmp_path, monkeypatch):
    _forged_with_zeros(bundle_copy, 4 << 20)
    archive = make_archive(tmp_path / "b.tar.gz", bundle_copy)
    monkeypatch.setenv("REXPORT_MAX_BUNDLE_BYTES", str(3 << 20))
    refused(archive, r"more than 3.1 MB, the most a bundle may hold; set REXPORT_MAX_BUNDLE_BYTES", tmp_path)
    monkeypatch.setenv("REXPORT_MAX_BUNDLE_BYTES", "lots")
    refused(archive, r"REXPORT_MAX_BUNDLE_BYTES must be a number of bytes, not 'lots'", tmp_path)
    monkeypatch.delenv("REXPORT_MAX_BUNDLE_BYTES")
    monkeypatch.setattr(archive_module.shutil, "disk_usage",
                        lambda p: shutil._ntuple_diskusage(1 << 40, 1 << 40, 10 << 20))
    refused(archive, r"needs \d+\.\d MB in .*, which has 10.5 MB free; free some space or point TMPDIR", tmp_path)


def test_too_many_members_are_refused(small_bundle, tmp_path, monkeypatch):
    monkeypatch.setattr(archive_module, "MAX_ARCHIVE_MEMBERS", 3)
    archive = make_archive(tmp_path / "b.tar.gz", small_bundle)
    refused(archive, "holds more than 3 entries", tmp_path)


def test_a_full_disk_while_extracting_is_one_line_and_leaves_nothing(small_bundle, tmp_path, monkeypatch):
    archive = make_archive(tmp_path / "b.tar.gz", small_bundle)

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    import builtins

    def fake_open(path, mode="r", *args, **kwargs):
        return Full(path, "x") if "x" in mode else builtins.open(path, mode, *args, **kwargs)

    monkeypatch.setattr(archive_module, "open", fake_open, raising=False)
    refused(archive, r"cannot extract .* \(\[Errno 28\] No space left on device\); free some space", tmp_path)


# -- items: truncated, empty and garbage archives -----------------------------------------------


@pytest.fixture(scope="module")
def archive_bytes(small_bundle, tmp_path_factory):
    return {mode: make_archive(tmp_path_factory.mktemp(mode[2:] or "tar") / "b.tar", small_bundle, mode=mode)
            .read_bytes() for mode in ("w:gz", "w:", "w:bz2", "w:xz")}


@pytest.mark.parametrize("mode", ["w:gz", "w:", "w:bz2", "w:xz"])
@pytest.mark.parametrize("keep", [0.01, 0.3, 0.6, 0.95, -600])
def test_a_truncated_archive_says_so_in_one_line(archive_bytes, tmp_path, mode, keep):
    """A download cut short used to give "unexpected EOFError ... this is a bug"."""
    data = archive_bytes[mode]
    if mode == "w:" and keep < 0:  # a plain tar ends with zero blocks padded to 10 KB: cut into the data
        keep -= 10240 + 1024
    cut = int(len(data) * keep) if keep > 0 else len(data) + keep
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(data[:cut])
    message = refused(path, r"is not a readable archive \((truncated|not a tar).*\); download or copy it again",
                      tmp_path)
    assert str(path) in message


GARBAGE_IDS = ["empty", "random", "zero-blocks", "gzip-of-random", "gzip-of-nothing", "gzip-magic", "bz2-magic",
               "xz-magic"]


@pytest.mark.parametrize("content, match", [
    (b"", r"is empty \(0 bytes\), not a bundle archive; download or copy it again"),
    (os.urandom(5000), r"is not a readable archive \(not a tar, tar.gz, tar.bz2 or tar.xz file: .*\); download"),
    (bytes(10240), r"is an empty archive \(it holds no files\), not a rexport bundle; download or copy it again"),
    (gzip.compress(os.urandom(5000)), READ_AGAIN),
    (gzip.compress(b""), READ_AGAIN),
    (b"\x1f\x8b" + os.urandom(100), READ_AGAIN),
    (b"BZh9" + os.urandom(100), READ_AGAIN),
    (b"\xfd7zXZ\x00" + os.urandom(100), READ_AGAIN),
], ids=GARBAGE_IDS)
def test_an_empty_or_garbage_archive_is_one_line(tmp_path, content, match):
    """tarfile's own message for these was five lines (one per decompressor it tried)."""
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(content)
    refused(path, match, tmp_path)


@pytest.mark.parametrize("verbose", [[], ["-v"]])
def test_the_cli_prints_one_line_for_a_truncated_archive(archive_bytes, tmp_path, run_cli, verbose):
    """`rexport -v predict truncated.tar.gz` printed only `Aborted!`: the EOFError was re-raised for the
    traceback, and click turns an EOFError into a bare abort."""
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(archive_bytes["w:gz"][: len(archive_bytes["w:gz"]) // 2])
    image = tmp_path / "x.png"
    from PIL import Image

    Image.new("L", (28, 28)).save(image)
    result = run_cli(*verbose, "predict", path, image)
    assert_clean_error(result, "is not a readable archive (truncated or corrupt:", "download or copy it again",
                       code=1)
    assert "Aborted!" not in result.stderr
    if not verbose:
        assert result.stderr.strip() == result.error_lines[0], result


# -- item: an archive holding two bundles, or none where a reader looks -------------------------


def test_an_archive_with_two_bundles_names_them(small_bundle, tmp_path):
    path = tmp_path / "two.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(small_bundle, arcname="first")
        tar.add(small_bundle, arcname="second")
    message = refused(path, r"holds 2 bundles \(first/, second/\), not one; extract it and give one bundle "
                            "directory, or archive each bundle on its own", tmp_path)
    assert "holds no" not in message


def test_a_bundle_at_the_top_and_one_in_a_directory_are_two(small_bundle, tmp_path):
    path = tmp_path / "two.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        tar.add(small_bundle, arcname=".")
        tar.add(small_bundle, arcname="inner")
    refused(path, r"holds 2 bundles \(\(top level\), inner/\)", tmp_path)


def test_a_bundle_nested_too_deep_is_named(small_bundle, tmp_path):
    path = make_archive(tmp_path / "deep.tar.gz", small_bundle, arcname="a/b")
    refused(path, r"holds no rexport.json \(it has one at a/b/rexport.json, too deep", tmp_path)
    plain = make_archive(tmp_path / "none.tar.gz", None, extra=[member("notes.txt", b"hello")])
    refused(plain, r"holds no rexport.json; it is not a rexport bundle", tmp_path)


# -- item: manifests of the wrong shape ---------------------------------------------------------


def _set(path: str, value):
    """An edit of the manifest at a dotted path ("models.0.file"); a value of ... deletes the key."""
    def edit(manifest):
        *keys, last = [int(k) if k.isdigit() else k for k in path.split(".")]
        target = manifest
        for k in keys:
            target = target[k]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return edit


SHAPES = [
    ("files", ["demo.onnx"], r"'files' must be an object mapping each file name .*, not a list"),
    ("files", "demo.onnx", r"'files' must be an object .*, not a string"),
    ("models", "demo.onnx", r"'models' must be a non-empty list of \{file, kind, precision\}, not a string"),
    ("models", [], r"'models' must be a non-empty list"),
    ("models", {"file": "demo.onnx"}, r"'models' must be a non-empty list .*, not an object"),
    ("models.0", "demo.onnx", r"models\[0\] must be an object with file, kind and precision, not a string"),
    ("models.0.file", 3, r"models\[0\].file must be a string, not a number"),
    ("models.0.kind", ..., r"models\[0\].kind must be a string, not null"),
    ("models.0.precision", ["fp32"], r"models\[0\].precision must be a string, not a list"),
    ("default", 5, r"'default' must be a string, not a number"),
    ("default", "labels.txt", r"default 'labels.txt' is not one of its models"),
    ("default", "../demo.onnx", r"names the default model '../demo.onnx', not a plain relative path"),
    ("files.demo.onnx", "abc", r"files\['demo.onnx'\] must be an object with sha256 and bytes, not a string"),
    ("files.demo.onnx.bytes", "20", r"files\['demo.onnx'\].bytes must be a whole number of bytes, not a string"),
    ("files.demo.onnx.bytes", True, r"files\['demo.onnx'\].bytes must be a whole number .*, not a boolean"),
    ("files.demo.onnx.bytes", -1, r"files\['demo.onnx'\].bytes must be a whole number"),
    ("files.demo.onnx.bytes", 1.5, r"files\['demo.onnx'\].bytes must be a whole number"),
    ("files.demo.onnx.sha256", 5, r"files\['demo.onnx'\].sha256 must be 64 lowercase hex digits, not a number"),
    ("files.demo.onnx.sha256", "abc", r"files\['demo.onnx'\].sha256 must be 64 lowercase hex digits"),
    ("reference", "reference.npz", r"'reference' must be an object \(or null\), not a string"),
    ("reference.file", None, r"reference.file must be a string, not null"),
    ("reference.source", 1, r"reference.source must be a string, not a number"),
    ("reference.images", "a.png", r"reference.images must be a list of file names, not a string"),
    ("reference.images", [1], r"reference.images\[0\] must be a string, not a number"),
    ("model", [], r"'model' must be an object \(the model description\), not a list"),
    ("model", {}, r"'model': model description is incomplete or invalid"),
    ("model.input", [], r"'model'.* \(.*Error"),
    ("model.num_classes", "ten", r"'model'.* \(ValueError"),
    ("validation", [], r"'validation' must be an object \(or null\), not a list"),
    ("validation", {"rows": {}}, r"validation.rows must be a list, not an object"),
    ("validation", {"rows": [1]}, r"validation.rows\[0\] must be an object, not a number"),
    ("validation", {"rows": [{"name": "m", "top1": "99%"}]}, r"validation.rows\[0\].top1 must be a number or null"),
    ("created", 5, r"'created' must be a string, not a number"),
    ("format_version", "2", r"format_version must be a whole number, not a string"),
    ("format_version", True, r"format_version must be a whole number, not a boolean"),
    ("format_version", 3, r"written by a newer rexport \(bundle format 3\); upgrade rexport"),
    ("format", "something-else", r"is not a rexport bundle manifest \(its format is not 'rexport-bundle'\)"),
    ("files.rexport.json", {"sha256": "0" * 64, "bytes": 1}, r"lists itself among its files"),
    ("files.reference.npz/x", {"sha256": "0" * 64, "bytes": 1}, r"lists 'reference.npz' both as a file and as a dir"),
]


def _forge(bundle, edit):
    """Edit a bundle's manifest and re-sign it, as a forger (or a buggy writer) would."""
    manifest = json.loads((bundle / MANIFEST).read_text())
    edit(manifest)
    save_manifest(bundle, manifest)


@pytest.mark.parametrize("archived", [False, True], ids=["directory", "archive"])
@pytest.mark.parametrize("field, value, match", SHAPES, ids=[f"{f}={v!r}"[:40] for f, v, _ in SHAPES])
def test_a_manifest_of_the_wrong_shape_is_one_line_naming_the_field(bundle_copy, tmp_path, field, value, match,
                                                                      archived):
    """`files` as a list or `models` as a string used to give "unexpected ... this is a bug"."""
    from rexport.runtime.inspect import inspect_model

    key, _, rest = field.partition(".")
    if key == "files" and rest and not rest.startswith("demo.onnx"):  # a new entry, named by the rest
        def edit(m):
            m["files"][rest] = value
    elif key == "files" and rest:  # "files.demo.onnx.bytes": the file name has a dot
        name, _, sub = rest.partition(".onnx")

        def edit(m):
            if sub:
                m["files"][name + ".onnx"][sub[1:]] = value
            else:
                m["files"][name + ".onnx"] = value
    else:
        edit = _set(field, value)
    _forge(bundle_copy, edit)
    target = make_archive(tmp_path / "b.tar.gz", bundle_copy) if archived else bundle_copy
    for opening in (lambda: open_bundle(target), lambda: load(target), lambda: inspect_model(target)):
        with pytest.raises(InputError, match=match) as e:
            opening()
        message = one_line(e)
        assert MANIFEST in message and "unexpected" not in message


RAW = [
    (b"[1, 2]", r"is not a rexport bundle manifest \(a list, not a JSON object\)"),
    (b"null", r"is not a rexport bundle manifest \(null, not a JSON object\)"),
    (b'"text"', r"is not a rexport bundle manifest \(a string, not a JSON object\)"),
    (b"{}", r"is not a rexport bundle manifest \(its format is not"),
    (b"\xff\xfe{\x00}\x00", r"is not UTF-8 text \(byte 0: invalid start byte\)"),
    ('{"format": "rexport-bundle", "é": 1}'.encode("latin-1"),
     r"is not UTF-8 text \(byte \d+: invalid continuation byte\)"),
    (b'{"format": "rexport-bundle", "format_version": 2, "manifest_sha256": "x", "n": NaN}',
     r"is unreadable or not JSON \(NaN is not a number JSON allows"),
    (b"[" * 100_000 + b"]" * 100_000, r"nested too deeply"),
    (b"{not json", r"is unreadable or not JSON \(Expecting property name"),
    (b"1" * 5000, r"is unreadable or not JSON \(Exceeds the limit"),
]


@pytest.mark.parametrize("archived", [False, True], ids=["directory", "archive"])
@pytest.mark.parametrize("content, match", RAW, ids=["list", "null", "string", "empty-object", "utf16", "latin1",
                                                     "nan", "deep", "not-json", "huge-int"])
def test_a_manifest_that_is_not_a_json_object_is_one_line(bundle_copy, tmp_path, content, match, archived):
    (bundle_copy / MANIFEST).write_bytes(content)
    target = make_archive(tmp_path / "b.tar.gz", bundle_copy) if archived else bundle_copy
    with pytest.raises(InputError, match=match) as e:
        open_bundle(target)
    assert MANIFEST in one_line(e)


@pytest.mark.parametrize("archived", [False, True], ids=["directory", "archive"])
def test_a_huge_manifest_is_refused_before_it_is_read(bundle_copy, tmp_path, monkeypatch, archived):
    monkeypatch.setattr(manifest_module, "MAX_MANIFEST_BYTES", 1000)
    target = make_archive(tmp_path / "b.tar.gz", bundle_copy) if archived else bundle_copy
    with pytest.raises(InputError, match=r"rexport.json.* is \d.*, more than the 1000 bytes a manifest may be"):
        open_bundle(target)
    monkeypatch.undo()
    with open(bundle_copy / MANIFEST, "r+b") as f:  # 17 MB, sparse: above the real cap
        f.truncate(17 << 20)
    with pytest.raises(InputError, match=r"is 17.8 MB, more than the 16.8 MB a manifest may be"):
        open_bundle(bundle_copy)


def test_a_manifest_that_is_not_a_regular_file_is_refused(bundle_copy, tmp_path):
    outside = tmp_path / "outside.json"
    shutil.move(bundle_copy / MANIFEST, outside)
    (bundle_copy / MANIFEST).symlink_to(outside)
    with pytest.raises(InputError, match="leads outside the bundle"):
        open_bundle(bundle_copy)
