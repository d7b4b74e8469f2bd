"""Fuzz the checkpoint loader (rexport.exporter.checkpoint): torch zip and legacy files, nested
dicts, safetensors (bytes and generated headers), arbitrary torch.save'd objects, and load_model's
fitting of a mutated real ResNet-20 checkpoint. Property and settings: fuzz_support, conftest."""

from __future__ import annotations

import json
import math
import struct

import pytest
from fuzz_support import Seeds, fuzz_settings, json_values, mutated, mutations
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("safetensors")

from rexport.exporter.checkpoint import (Checkpoint, LoadedModel, detect_arch, load_checkpoint,  # noqa: E402
                                         load_model)

SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")


def _small_state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"conv1.weight": torch.randn(4, 3, 3, 3, generator=g), "bn1.running_mean": torch.zeros(4),
            "bn1.num_batches_tracked": torch.tensor(5), "fc.weight": torch.randn(5, 4, generator=g),
            "fc.bias": torch.randn(5, generator=g).half()}


@pytest.fixture(scope="module")
def seeds(ws) -> dict[str, bytes]:
    from safetensors.torch import load_file, save_file

    from rexport.demo import data

    state, out = _small_state(), Seeds()
    torch.save(state, ws.seeds / "zip.pt")
    torch.save({"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1, "betas": (0.9, 0.99)}},
               ws.seeds / "nested.pt")
    torch.save(state, ws.seeds / "legacy.pt", _use_new_zipfile_serialization=False)
    save_file({k: v.contiguous() for k, v in state.items()}, str(ws.seeds / "small.safetensors"),
              metadata={"format": "pt"})
    resnet20 = load_file(str(data.WEIGHTS_FILE))
    torch.save(resnet20, ws.seeds / "resnet20.pt")
    for name in ("zip.pt", "nested.pt", "legacy.pt", "small.safetensors", "resnet20.pt"):
        out[name] = (ws.seeds / name).read_bytes()
    out["resnet20.safetensors"] = data.WEIGHTS_FILE.read_bytes()
    return out


def check_checkpoint(ckpt) -> None:
    assert isinstance(ckpt, Checkpoint)
    assert isinstance(ckpt.state_dict, dict) and ckpt.state_dict
    for k, v in ckpt.state_dict.items():
        assert isinstance(k, str) and isinstance(v, torch.Tensor), (k, type(v))
        if v.is_floating_point() or v.is_complex():
            wide = v if v.is_complex() or v.dtype == torch.float64 else v.float()  # no isfinite for float8
            assert bool(torch.isfinite(wide).all()), f"{k} holds NaN/Inf but was accepted"
    assert len(ckpt.sha256) == 64


def check_arch(arch) -> None:
    from rexport.exporter.zoo import ARCHS

    assert arch in ARCHS, arch


def load_and_fit(ws, path) -> None:
    """load_checkpoint, then (when it loads) fitting to a zoo arch and arch detection: the state
    dicts a damaged file yields are what load_model and detect_arch see."""
    outcome = ws.attempt(lambda: load_checkpoint(path), close=check_checkpoint)
    if outcome.ok:
        ws.attempt(lambda: load_model(outcome.value, "resnet20"), close=check_model)
        ws.attempt(lambda: detect_arch(outcome.value), close=check_arch)


def test_seeds_load(ws, seeds):
    """The unmutated seeds load, to the same tensors (so the fuzz starts from valid files)."""
    for name in ("zip.pt", "nested.pt", "legacy.pt", "small.safetensors"):
        ckpt = load_checkpoint(ws.seeds / name)
        check_checkpoint(ckpt)
        assert set(ckpt.state_dict) == set(_small_state()), name
    assert load_model(ws.seeds / "resnet20.pt", "resnet20").num_classes == 10


@fuzz_settings(120)
@given(data=st.data(), kind=st.sampled_from(("zip.pt", "nested.pt", "legacy.pt", "small.safetensors")),
       suffix=st.sampled_from(SUFFIXES))
def test_mutated_checkpoint(ws, seeds, data, kind, suffix):
    blob = data.draw(mutations(len(seeds[kind]), hot=1024), label="mutation").apply(seeds[kind])
    with ws.case() as d:
        path = d / f"model{suffix}"
        path.write_bytes(blob)
        load_and_fit(ws, path)


SAFETENSORS_DTYPES = ("F32", "F16", "BF16", "F64", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2",
                      "C64", "X", "", "f32")


@st.composite
def safetensors_file(draw) -> bytes:
    """A safetensors file whose header is generated: any dtype, shape and offsets, fields of any type,
    a length prefix that may lie, data of any length."""
    tensors = {}
    offset = 0
    for i in range(draw(st.integers(0, 4))):
        dtype = draw(st.sampled_from(SAFETENSORS_DTYPES))
        shape = draw(st.lists(st.integers(-1, 6) | st.sampled_from((2**31, 2**62)), max_size=4))
        width = {"F64": 8, "I64": 8, "C64": 8, "F32": 4, "I32": 4, "F16": 2, "BF16": 2, "I16": 2}.get(dtype, 1)
        size = max(0, math.prod(shape)) * width if all(s >= 0 for s in shape) and math.prod(shape) < 1024 else 8
        start = draw(st.just(offset) | st.integers(-4, 64))
        end = draw(st.just(start + size) | st.integers(-4, 4096))
        entry = {"dtype": dtype, "shape": shape, "data_offsets": [start, end]}
        if draw(st.integers(0, 4)) == 0:  # a field of another type, or missing
            key = draw(st.sampled_from(("dtype", "shape", "data_offsets")))
            if draw(st.booleans()):
                del entry[key]
            else:
                entry[key] = draw(json_values(4))
        tensors[draw(st.sampled_from(("fc.weight", "fc.bias", "conv1.weight", "", "__metadata__", "a" * 300))) +
                (str(i) if i else "")] = entry
        offset = max(offset, end if isinstance(end, int) else 0)
    if draw(st.booleans()):
        tensors["__metadata__"] = draw(st.dictionaries(st.text(max_size=6), st.text(max_size=6), max_size=3)
                                       | json_values(4))
    header = json.dumps(tensors).encode()
    if draw(st.integers(0, 5)) == 0:
        header = draw(mutated(header, max_ops=2))
    header += b" " * draw(st.integers(0, 8))
    n = draw(st.just(len(header)) | st.integers(0, len(header) + 64) | st.sampled_from((2**63, 2**64 - 1)))
    body = draw(st.binary(max_size=64)) if draw(st.booleans()) else b"\x01" * max(0, min(offset, 1 << 16))
    return struct.pack("<Q", n % 2**64) + header + body


@fuzz_settings(120)
@given(blob=safetensors_file())
def test_generated_safetensors(ws, blob):
    with ws.case() as d:
        path = d / "model.safetensors"
        path.write_bytes(blob)
        load_and_fit(ws, path)


TENSOR_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.uint8,
                 torch.bool, torch.complex64)


@st.composite
def tensors(draw):
    dtype = draw(st.sampled_from(TENSOR_DTYPES))
    shape = draw(st.lists(st.integers(0, 3), max_size=3))
    values = draw(st.lists(st.sampled_from((0.0, 1.0, -2.5, float("nan"), float("inf"), 3e38)),
                           min_size=math.prod(shape), max_size=math.prod(shape)))
    with torch.no_grad():
        t = torch.tensor(values, dtype=torch.float64).reshape(shape)
        return t.to(dtype) if dtype not in (torch.bool,) else t.ne(0)


def torch_objects():
    """What a torch.save'd checkpoint can hold and weights_only can read: tensors, containers, scalars."""
    leaves = tensors() | st.none() | st.booleans() | st.integers(-5, 5) | st.floats(allow_nan=True) | st.text(max_size=5)
    keys = st.sampled_from(("state_dict", "model", "module", "net", "model_ema", "fc.weight", "conv1.weight",
                            "module.fc.bias", "epoch")) | st.text(max_size=5) | st.integers(0, 3)
    return st.recursive(leaves, lambda inner: st.dictionaries(keys, inner, max_size=4) | st.lists(inner, max_size=3)
                        | st.tuples(inner, inner), max_leaves=10)


@fuzz_settings(60)
@given(obj=torch_objects(), legacy=st.booleans())
def test_generated_torch_objects(ws, obj, legacy):
    with ws.case() as d:
        path = d / "model.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        load_and_fit(ws, path)


def check_model(loaded) -> None:
    assert isinstance(loaded, LoadedModel)
    assert loaded.arch == "resnet20" and loaded.num_classes >= 1 and not loaded.model.training
    assert isinstance(loaded.checkpoint, Checkpoint)
    for name, p in loaded.model.state_dict().items():
        if p.is_floating_point():
            assert bool(torch.isfinite(p.float()).all()), name


@fuzz_settings(30)
@given(data=st.data(), kind=st.sampled_from(("resnet20.pt", "resnet20.safetensors")))
def test_mutated_model_checkpoint(ws, seeds, data, kind):
    """A real ResNet-20 checkpoint, mutated mostly where its structure is (pickle / header, zip directory)."""
    blob = data.draw(mutations(len(seeds[kind]), max_ops=2, hot=4096), label="mutation").apply(seeds[kind])
    with ws.case() as d:
        path = d / kind
        path.write_bytes(blob)
        ws.attempt(lambda: load_model(path, "resnet20"), close=check_model)
