"""Checkpoints in, fitted models out, safely.

`load_checkpoint` reads any common PyTorch checkpoint format into a flat state dict without
running code from the file: `torch.load(weights_only=True)` always; a full pickle only when the
caller passes `unsafe_pickle=True` (the CLI's --unsafe-pickle).

`load_model` fits that state dict to an architecture from the zoo: strips wrapper prefixes,
applies the user's key maps, renames an unambiguous classifier head, infers the number of
classes and input channels, and when keys still do not fit, says which arch does.
"""

from __future__ import annotations

import functools
import os
import pickle
import struct
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rexport.errors import InputError, field_error, require
from rexport.exporter import zoo
from rexport.files import sha256_file

NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "model_ema", "state_dict_ema")
WRAPPER_PREFIXES = ("module.", "_orig_mod.", "model.")  # DataParallel/DDP, torch.compile, Lightning
IGNORED_SUFFIXES = ("total_ops", "total_params")  # buffers left behind by the `thop` profiler
_ISFINITE_TYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass
class Checkpoint:
    """A checkpoint file read into a flat name -> tensor dict."""

    path: Path
    state_dict: dict[str, torch.Tensor]
    sha256: str
    format: str  # state_dict | nested:<key> | lightning | safetensors | torchscript | pickled-module
    notes: list[str] = field(default_factory=list)


@dataclass
class LoadedModel:
    """A zoo model in eval mode with the checkpoint's weights, and how they were fitted."""

    model: nn.Module
    arch: str
    num_classes: int
    in_channels: int
    arch_options: dict
    checkpoint: Checkpoint | None
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading


def load_checkpoint(path: str | os.PathLike, *, unsafe_pickle: bool = False) -> Checkpoint:
    """Read a checkpoint: bare or nested state dict (.pt/.pth/.bin), Lightning .ckpt,
    .safetensors, a TorchScript archive, or (only with unsafe_pickle) a pickled nn.Module."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise InputError(f"checkpoint {path} is not a file")
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"checkpoint {path} is empty")
    with open(path, "rb") as f:
        head = f.read(16)

    if _is_safetensors(head, size):
        st = require("safetensors.torch", "export", "read .safetensors checkpoints")
        try:
            state = st.load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises SafetensorError / OSError
            raise InputError(f"checkpoint {path} is a corrupt or truncated safetensors file ({e})") from None
        if not state:
            raise InputError(f"checkpoint {path} is a safetensors file that holds no tensors")
        check_finite(state, f"checkpoint {path}")
        return Checkpoint(path, dict(state), sha256_file(path), "safetensors")

    if head.startswith(b"PK") and _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as e:  # torch raises RuntimeError with long C++ traces
            raise InputError(f"checkpoint {path} is a corrupt TorchScript archive ({_first_line(e)})") from None
        state = dict(module.state_dict())
        check_finite(state, f"checkpoint {path}")
        return Checkpoint(path, state, sha256_file(path), "torchscript")

    if not (head.startswith(b"PK") or head[:1] == b"\x80"):
        raise InputError(f"{path} is not a PyTorch checkpoint (expected a torch.save file, "
                         ".ckpt, .safetensors or TorchScript archive)")
    obj = _torch_load(path, unsafe_pickle)
    state, where = _find_state_dict(obj, path)
    check_finite(state, f"checkpoint {path}")
    fmt = "lightning" if isinstance(obj, dict) and "pytorch-lightning_version" in obj else where
    notes = [f"read the state dict from the checkpoint's {where.split(':', 1)[1]!r} entry"] \
        if where.startswith("nested:") and fmt != "lightning" else []
    return Checkpoint(path, state, sha256_file(path), fmt, notes)


def check_finite(state: dict, what: str) -> None:
    """Refuse weights holding NaN or Inf: no export, tolerance or calibration can repair them."""
    def finite(v: torch.Tensor) -> bool:  # isfinite has no float8 kernels: those are checked as float32
        return bool(torch.isfinite(v if v.dtype in _ISFINITE_TYPES or v.is_complex() else v.float()).all())

    bad = [k for k, v in state.items() if isinstance(v, torch.Tensor) and (v.is_floating_point() or v.is_complex())
           and v.numel() and not finite(v)]
    if bad:
        shown = ", ".join(bad[:4]) + (", ..." if len(bad) > 4 else "")
        raise InputError(f"{what}: {len(bad)} tensor{'s hold' if len(bad) > 1 else ' holds'} NaN or Inf ({shown}); "
                         "the weights are corrupt or training diverged")


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except Exception:  # BadZipFile, OSError, UnicodeDecodeError (a name flagged UTF-8 that is not), ...
        return False  # let torch.load report the corruption
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _pickle_protocol(path: Path) -> int | None:
    """The protocol of the checkpoint's pickle (zip: data.pkl; legacy: the first pickle), if readable."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as z:
                name = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
                head = z.open(name).read(2) if name else b""
        else:
            with open(path, "rb") as f:
                head = f.read(2)
    except Exception:  # OSError, BadZipFile, KeyError, UnicodeDecodeError, ...: a damaged file has no protocol
        return None
    return head[1] if len(head) == 2 and head[0] == 0x80 else None


def _torch_load(path: Path, unsafe_pickle: bool):
    try:
        # torch warns (two lines, with a source line) about pickle protocols other than 2; the
        # outcome is what matters: loaded, or refused below with one line
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)
    except pickle.UnpicklingError as e:
        if unsafe_pickle:
            raise InputError(f"checkpoint {path} cannot be unpickled ({_first_line(e)})") from None
        protocol = _pickle_protocol(path)
        if "Unsupported operand" in str(e) and protocol is not None and protocol > 3:
            raise field_error(
                "load_checkpoint", f"refusing to unpickle {path}: it was saved with pickle protocol {protocol}, which "
                "torch's safe loader (weights_only) cannot read; re-save it with torch.save(model.state_dict(), ...) "
                "and the default protocol or as .safetensors, or, only if you trust the file, pass unsafe_pickle=True",
                "unsafe_pickle") from None
        unsafe = _unsafe_globals(path)
        needs = f" ({', '.join(unsafe[:4])}{', ...' if len(unsafe) > 4 else ''})" if unsafe else ""
        raise field_error(
            "load_checkpoint", f"refusing to unpickle {path}: it contains Python objects{needs} whose loading can "
            "run arbitrary code; re-save it with torch.save(model.state_dict(), ...) or, only if you trust the file, "
            "pass unsafe_pickle=True", "unsafe_pickle") from None
    except (ModuleNotFoundError, AttributeError) as e:  # unsafe load of a class that is not importable
        raise InputError(f"checkpoint {path} needs {_first_line(e)!r} to unpickle; install the code that "
                         "defined the model or re-save its state_dict") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, struct.error... for damaged files
        raise InputError(f"checkpoint {path} is truncated or corrupt ({type(e).__name__}: {_first_line(e)})") from None


def _unsafe_globals(path: Path) -> list[str]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # legacy (non-zip) files are not supported by that helper
        return []


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_state_dict(obj, path: Path, where: str = "state_dict", depth: int = 0) -> tuple[dict, str]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), "pickled-module"
    if _is_state_dict(obj):
        return dict(obj), where
    if isinstance(obj, dict) and depth < 3:
        for key in NESTED_KEYS:
            if key in obj:
                try:
                    return _find_state_dict(obj[key], path, f"nested:{key}", depth + 1)
                except InputError:
                    continue
    if depth:
        raise InputError("no state dict here")
    keys = ", ".join(map(repr, list(obj)[:8])) if isinstance(obj, dict) else type(obj).__name__
    raise InputError(f"no state dict found in {path} (it holds {keys}); expected name -> tensor entries, "
                     f"possibly under one of {', '.join(NESTED_KEYS)}")


# ---------------------------------------------------------------------------------------------
# Fitting to an architecture


@functools.lru_cache(maxsize=256)
def _shapes(arch: str, num_classes: int, in_channels: int, shortcut: str | None) -> dict:
    return zoo.state_dict_shapes(arch, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut)


@dataclass
class _Mismatch:
    missing: list[str]
    unexpected: list[str]
    misshaped: list[tuple[str, tuple, tuple]]

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.misshaped)

    @property
    def size(self) -> int:
        return len(self.missing) + len(self.unexpected) + len(self.misshaped)


def _diff(state: dict, expected: dict) -> _Mismatch:
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    misshaped = [(k, tuple(state[k].shape), expected[k]) for k in expected
                 if k in state and tuple(state[k].shape) != expected[k]]
    return _Mismatch(missing, unexpected, misshaped)


def _apply_key_map(state: dict, key_map) -> dict:
    for old, new in key_map:
        if not any(k.startswith(old) for k in state):
            sample = ", ".join(sorted({k.split(".")[0] + "." for k in state})[:6])
            raise field_error("load_model", f"key_map {old}={new} matches no key (keys start with {sample})",
                              "key_map")
        state = {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}
    return state


def _strip_wrappers(state: dict, notes: list[str]) -> dict:
    changed = True
    while changed and state:  # an empty state has every prefix: stripping it would never end
        changed = False
        for prefix in WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                notes.append(f"stripped the {prefix!r} prefix from every key")
                changed = True
    return state


def _fit_head(state: dict, expected: dict, notes: list[str]) -> dict:
    """Rename a classifier stored under another name (linear.*, classifier.*, head.*) to fc.*
    when exactly one unexpected 2-D weight has the right number of input features."""
    if "fc.weight" in state or "fc.weight" not in expected:
        return state
    in_features = expected["fc.weight"][1]
    candidates = {k[: -len(".weight")] for k, v in state.items()
                  if k.endswith(".weight") and k not in expected and v.ndim == 2 and v.shape[1] == in_features}
    if len(candidates) != 1:
        return state
    (head,) = candidates
    if f"{head}.bias" in state and state[f"{head}.bias"].shape[0] != state[f"{head}.weight"].shape[0]:
        return state
    notes.append(f"renamed the classifier {head}.* to fc.* (the only {in_features}-input linear layer)")
    return {("fc" + k[len(head):] if k == f"{head}.weight" or k == f"{head}.bias" else k): v
            for k, v in state.items()}


def _strip_common_component(state: dict, arch_fits, notes: list[str]) -> dict:
    """Strip an arbitrary shared first component (e.g. Lightning's `net.`) when that makes it fit."""
    first = {k.split(".", 1)[0] for k in state}
    if len(first) == 1 and all("." in k for k in state):
        prefix = first.pop() + "."
        stripped = {k[len(prefix):]: v for k, v in state.items()}
        if arch_fits(stripped):
            notes.append(f"stripped the {prefix!r} prefix from every key")
            return stripped
    return state


def _describe(m: _Mismatch, limit: int = 3) -> str:
    parts = []
    if m.missing:
        parts.append(f"{len(m.missing)} missing (e.g. {', '.join(m.missing[:limit])})")
    if m.unexpected:
        parts.append(f"{len(m.unexpected)} unexpected (e.g. {', '.join(m.unexpected[:limit])})")
    if m.misshaped:
        shown = ", ".join(f"{k} {list(a)} vs {list(b)}" for k, a, b in m.misshaped[:limit])
        parts.append(f"{len(m.misshaped)} mis-shaped (checkpoint vs model: {shown})")
    return "; ".join(parts)


def _stage_depths(state: dict) -> tuple[int, ...]:
    """Blocks per stage, read from `layer{s}.{i}.` keys: a cheap filter before building archs."""
    blocks: dict[int, set[str]] = {}
    for key in state:
        parts = key.split(".")
        if len(parts) > 2 and parts[0].startswith("layer") and parts[0][5:].isdigit():
            blocks.setdefault(int(parts[0][5:]), set()).add(parts[1])
    return tuple(len(blocks[s]) for s in sorted(blocks))


def _fitting_archs(state: dict, num_classes: int, in_channels: int) -> list[str]:
    """Every zoo arch (any shortcut option) whose state dict the checkpoint matches exactly."""
    depths = _stage_depths(state)
    return [arch.name for arch in zoo.ARCHS.values() if arch.layers == depths
            and any(_diff(state, _shapes(arch.name, num_classes, in_channels, shortcut)).ok
                    for shortcut in arch.shortcuts or (None,))]


def _normalized_state(ckpt: Checkpoint, key_map, notes: list[str]) -> dict:
    """The user's key maps, then profiler buffers dropped and wrapper prefixes stripped."""
    state = _apply_key_map(ckpt.state_dict, key_map)
    dropped = [k for k in state if k.endswith(IGNORED_SUFFIXES)]
    if dropped:
        state = {k: v for k, v in state.items() if k not in dropped}
        notes.append(f"ignored {len(dropped)} profiler buffers (total_ops/total_params)")
    return _strip_wrappers(state, notes)


def _in_channels(state: dict) -> int:
    conv1 = state.get("conv1.weight")
    return int(conv1.shape[1]) if conv1 is not None and conv1.ndim == 4 else 3


def detect_arch(checkpoint: Checkpoint, *, key_map: tuple[tuple[str, str], ...] = ()) -> str:
    """The one zoo arch whose state dict the checkpoint matches; an error if none or several do."""
    state = _normalized_state(checkpoint, key_map, [])
    head = state.get("fc.weight")
    if head is None or head.ndim != 2:
        raise field_error("detect_arch", f"cannot detect the architecture of {checkpoint.path.name} (no fc.weight "
                          "classifier); give arch", "arch")
    fits = _fitting_archs(state, int(head.shape[0]), _in_channels(state))
    if len(fits) == 1:
        return fits[0]
    if fits:
        raise field_error("detect_arch", f"{checkpoint.path.name} fits several archs with identical weights "
                          f"({', '.join(fits)}); give arch to choose", "arch")
    raise field_error("detect_arch", f"no architecture in the zoo fits {checkpoint.path.name} as it is; give arch to "
                      "see what differs", "arch")


def load_model(checkpoint: str | os.PathLike | Checkpoint, arch: str, *, num_classes: int | None = None,
               key_map: tuple[tuple[str, str], ...] = (), shortcut: str | None = None,
               unsafe_pickle: bool = False) -> LoadedModel:
    """Build `arch` and load the checkpoint into it; returns the model in eval mode.

    num_classes and input channels come from the checkpoint unless given; a CIFAR ResNet's
    shortcut option (A or B) is read from whether the checkpoint has projection weights.
    """
    spec = zoo.get_arch(arch)
    if isinstance(checkpoint, Checkpoint):  # built by the caller: load_checkpoint's checks did not run
        check_finite(checkpoint.state_dict, f"checkpoint {checkpoint.path}")
        ckpt = checkpoint
    else:
        ckpt = load_checkpoint(checkpoint, unsafe_pickle=unsafe_pickle)
    notes = list(ckpt.notes)
    state = _normalized_state(ckpt, key_map, notes)
    in_channels = _in_channels(state)
    if shortcut is None and spec.shortcuts:
        shortcut = "B" if any(".downsample." in k for k in state) else "A"

    def expected_for(classes: int) -> dict:
        return _shapes(spec.name, classes, in_channels, shortcut)

    probe = expected_for(num_classes or spec.num_classes)
    state = _strip_common_component(state, lambda s: not _diff(s, probe).missing, notes)
    state = _fit_head(state, probe, notes)

    head = state.get("fc.weight")
    ckpt_classes = int(head.shape[0]) if head is not None and head.ndim == 2 else None
    if num_classes is not None and ckpt_classes is not None and num_classes != ckpt_classes:
        raise field_error("load_model", f"the checkpoint's classifier has {ckpt_classes} outputs but "
                          f"num_classes={num_classes} was asked; leave num_classes out to use {ckpt_classes}",
                          "num_classes")
    classes = num_classes or ckpt_classes or spec.num_classes
    mismatch = _diff(state, expected_for(classes))
    if not mismatch.ok:
        fits = _fitting_archs(state, classes, in_channels)
        where = f"it fits {', '.join(fits)}; pass arch={fits[0]!r}" if fits else \
            "no architecture in the zoo fits it; rename key prefixes with key_map (OLD=NEW)"
        raise field_error("load_model", f"checkpoint {ckpt.path.name} does not fit {spec.name}: "
                          f"{_describe(mismatch)}; {where}", "arch", "key_map")

    dtypes = {v.dtype for v in state.values() if v.is_floating_point()}
    if dtypes - {torch.float32}:
        notes.append(f"weights stored as {', '.join(sorted(str(d).replace('torch.', '') for d in dtypes))}; "
                     "loaded as float32")
    model = spec.build(num_classes=classes, in_channels=in_channels, shortcut=shortcut)
    model.load_state_dict(state, strict=False)  # strictness was checked above, with better messages
    model.eval()
    options = {"shortcut": shortcut} if spec.shortcuts else {}
    return LoadedModel(model, spec.name, classes, in_channels, options, ckpt, notes)


def save_state_dict(model: nn.Module, path: str | os.PathLike) -> None:
    """Save weights as safetensors (no pickle) or, for .pt/.pth, a plain torch state dict."""
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    if str(path).endswith(".safetensors"):
        st = require("safetensors.torch", "export", "write .safetensors files")
        st.save_file(state, str(path), metadata={"format": "pt"})
    else:
        torch.save(state, path)

