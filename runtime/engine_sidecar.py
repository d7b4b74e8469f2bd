"""The sidecar of a TensorRT engine: `model.engine` -> `model.engine.json`.

A serialized engine loads only on the TensorRT version that built it and (unless built for
hardware compatibility) on GPUs of the same compute capability; TensorRT itself says so with
a cryptic log line and a None. The sidecar records what the engine was built with and for,
so the runtime can check it *before* deserializing and say, in one sentence, what to rebuild.

It holds: the model's ModelInfo, TensorRT version, GPU name and compute capability,
optimization profile shapes, precision, the source ONNX's sha256 (and of the ONNX actually
parsed, when that was made on the fly), the build options and the command that rebuilds it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from rexport import __version__
from rexport.errors import CompatibilityError, InputError
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.trt_compat import TrtVersion

FORMAT = "rexport-engine-sidecar/1"


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine)}.json")


def parse_compute_capability(text: str | tuple[int, int]) -> tuple[int, int]:
    if isinstance(text, tuple):
        return int(text[0]), int(text[1])
    major, _, minor = str(text).partition(".")
    try:
        return int(major), int(minor or 0)
    except ValueError:
        raise InputError(f"compute capability must look like 8.7, not {text!r}") from None


@dataclass(frozen=True)
class EngineSidecar:
    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7"
    precision: str  # fp32 / fp16 / int8 / mixed: what the engine computes in
    profile: dict[str, dict[str, list[int]]]  # input name -> {"min", "opt", "max"} shapes
    source_onnx: dict  # {"path": ..., "sha256": ..., "precision": ...}: the file the user gave
    built_from: dict  # {"sha256": ..., "precision": ..., "how": ...}: the ONNX TensorRT parsed
    build_options: dict = field(default_factory=dict)
    model: ModelInfo | None = None
    rebuild_command: str = ""
    rexport_version: str = __version__

    # -- what the runtime needs -------------------------------------------------------------
    @property
    def version_compatible(self) -> bool:
        return bool(self.build_options.get("version_compatible"))

    @property
    def hardware_compatibility(self) -> str:
        return str(self.build_options.get("hardware_compatibility") or "none")

    def check_compatible(self, engine: str | os.PathLike, trt_version: str | TrtVersion,
                         compute_capability: tuple[int, int], gpu_name: str = "") -> None:
        """Raise CompatibilityError, in one sentence, if this machine cannot load the engine."""
        built = TrtVersion.parse(self.tensorrt_version)
        here = trt_version if isinstance(trt_version, TrtVersion) else TrtVersion.parse(trt_version)
        built_cc, here_cc = parse_compute_capability(self.compute_capability), tuple(compute_capability)
        if self.version_compatible:  # a version-compatible plan also runs on later TensorRT releases
            version_ok = here.plan_key >= built.plan_key
        else:
            version_ok = here.plan_key == built.plan_key
        if self.hardware_compatibility == "ampere_plus":
            gpu_ok = here_cc >= (8, 0)
        else:
            gpu_ok = here_cc == built_cc
        if version_ok and gpu_ok:
            return
        same_short = built.short == here.short
        built_v, here_v = (str(built), str(here)) if same_short else (built.short, here.short)
        here_cc_text = f"{here_cc[0]}.{here_cc[1]}"
        article = "an" if here_cc_text.startswith(("8", "11", "18")) else "a"
        gpu = f"{article} {here_cc_text} GPU" + (f" ({gpu_name})" if gpu_name else "")
        command = self.rebuild_command or "rexport trt MODEL.onnx"
        raise CompatibilityError(
            f"{Path(engine).name} was built with TensorRT {built_v} for compute capability "
            f"{self.compute_capability}" + (f" ({self.gpu_name})" if self.gpu_name else "")
            + f"; this machine has TensorRT {here_v} and {gpu}: rebuild with `{command}` here")

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "rexport_version": self.rexport_version,
                "tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "precision": self.precision,
                "profile": self.profile, "source_onnx": self.source_onnx, "built_from": self.built_from,
                "build_options": self.build_options, "rebuild_command": self.rebuild_command,
                "model": self.model.to_dict() if self.model else None}

    @classmethod
    def from_dict(cls, d: dict) -> "EngineSidecar":
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise InputError(f"not a rexport engine sidecar (format {d.get('format') if isinstance(d, dict) else None!r},"
                             f" expected {FORMAT!r}); rebuild the engine with `rexport trt`")
        try:
            return cls(tensorrt_version=str(d["tensorrt_version"]), gpu_name=str(d.get("gpu_name", "")),
                       compute_capability=str(d["compute_capability"]), precision=str(d["precision"]),
                       profile={k: {s: [int(x) for x in v[s]] for s in ("min", "opt", "max")}
                                for k, v in d["profile"].items()},
                       source_onnx=dict(d.get("source_onnx") or {}), built_from=dict(d.get("built_from") or {}),
                       build_options=dict(d.get("build_options") or {}),
                       model=ModelInfo.from_dict(d["model"]) if d.get("model") else None,
                       rebuild_command=str(d.get("rebuild_command", "")),
                       rexport_version=str(d.get("rexport_version", "unknown")))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise InputError(f"engine sidecar is incomplete or invalid ({type(e).__name__}: {e}); "
                             "rebuild the engine with `rexport trt`") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"

    def write(self, path: str | os.PathLike) -> None:
        """Write to `path` as it is (callers wrap this in rexport.files.atomic_output)."""
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def read(cls, path: str | os.PathLike) -> "EngineSidecar":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"{path} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(f"{path} is not valid JSON ({e}); rebuild the engine with `rexport trt`") from None
        return cls.from_dict(data)

    @classmethod
    def for_engine(cls, engine: str | os.PathLike) -> "EngineSidecar":
        """The sidecar beside `engine`, with a message that says how to get one when it is missing."""
        path = sidecar_path(engine)
        if not path.is_file():
            raise InputError(f"{Path(engine).name} has no sidecar {path.name}, so rexport cannot check that it fits "
                             "this machine; build engines with `rexport trt MODEL.onnx` (it writes both)")
        return cls.read(path)
