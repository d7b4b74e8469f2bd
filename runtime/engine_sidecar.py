"""The sidecar of a TensorRT engine: `model.engine` -> `model.engine.json`.

A serialized engine loads only on the TensorRT flavour and version that built it and (unless
built for hardware compatibility, or for several targets with TensorRT for RTX) on GPUs of the
compute capability it was built for; TensorRT itself says so with a cryptic log line and a None.
The sidecar records what the engine was built with and for, so the runtime can check it *before*
deserializing and say, in one sentence, what to rebuild.

It holds: the model's ModelInfo, the TensorRT flavour ("tensorrt" or "rtx") and version, the GPU
it was built on (none for an RTX engine built ahead of time), the compute capabilities it runs
on, optimization profile shapes, precision, the source ONNX's sha256 (and of the ONNX actually
parsed, when that was made on the fly), the build options and the command that rebuilds it.
"""

from __future__ import annotations

import json
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from rexport import __version__
from rexport.errors import CompatibilityError, InputError
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.trt_compat import (FLAVOURS, TrtVersion, format_compute_capability, parse_compute_capability,
                                        product_name)

FORMAT = "rexport-engine-sidecar/2"
READABLE = ("rexport-engine-sidecar/1", FORMAT)  # /1: TensorRT only, built on its one GPU


def sidecar_path(engine: str | os.PathLike) -> Path:
    return Path(f"{os.fspath(engine)}.json")


@dataclass(frozen=True)
class EngineSidecar:
    tensorrt_version: str
    gpu_name: str  # the GPU it was built on; "" when built without one (RTX, ahead of time)
    compute_capability: str  # that GPU's, "8.7"; "" when built without one
    precision: str  # fp32 / fp16 / int8 / mixed: what the engine computes in
    profile: dict[str, dict[str, list[int]]]  # input name -> {"min", "opt", "max"} shapes
    source_onnx: dict  # {"path": ..., "sha256": ..., "precision": ...}: the file the user gave
    built_from: dict  # {"sha256": ..., "precision": ..., "how": ...}: the ONNX TensorRT parsed
    build_options: dict = field(default_factory=dict)
    model: ModelInfo | None = None
    rebuild_command: str = ""
    rexport_version: str = __version__
    flavour: str = "tensorrt"  # "tensorrt" or "rtx" (TensorRT for RTX)
    targets: tuple[str, ...] = ()  # compute capabilities it runs on; () = the build GPU's

    def __post_init__(self) -> None:
        if self.flavour not in FLAVOURS:
            raise InputError(f"engine sidecar names an unknown TensorRT flavour {self.flavour!r}; rebuild the engine "
                             "with `rexport trt`")
        targets = self.targets or ((self.compute_capability,) if self.compute_capability else ())
        if not targets:
            raise InputError("engine sidecar names neither the GPU it was built on nor its target compute "
                             "capabilities; rebuild the engine with `rexport trt`")
        object.__setattr__(self, "targets", tuple(format_compute_capability(parse_compute_capability(t))
                                                  for t in targets))

    # -- what the runtime needs -------------------------------------------------------------
    @property
    def product(self) -> str:
        """"TensorRT 10.3" or "TensorRT for RTX 1.7"."""
        return product_name(self.flavour, self.tensorrt_version)

    @property
    def built_without_gpu(self) -> bool:
        return not self.compute_capability

    @property
    def version_compatible(self) -> bool:
        return bool(self.build_options.get("version_compatible"))

    @property
    def hardware_compatibility(self) -> str:
        return str(self.build_options.get("hardware_compatibility") or "none")

    def describe_target(self) -> str:
        """"compute capability 8.7 (Orin)" or "compute capabilities 8.6, 8.9, 12.0"."""
        if len(self.targets) > 1:
            return f"compute capabilities {', '.join(self.targets)}"
        return f"compute capability {self.targets[0]}" + (f" ({self.gpu_name})" if self.gpu_name else "")

    def rebuild_here(self) -> str:
        """The rebuild command without what pins the engine elsewhere (--rtx, --compute-capability):
        run on the target machine, it builds for the TensorRT and the GPU there."""
        from rexport.options import flag

        words = shlex.split(self.rebuild_command or "rexport trt MODEL.onnx")
        if flag("compute_capabilities") in words:
            at = words.index(flag("compute_capabilities"))
            del words[at:at + 2]
        return shlex.join(w for w in words if w != flag("rtx"))

    def check_compatible(self, engine: str | os.PathLike, trt_version: str | TrtVersion,
                         compute_capability: tuple[int, int], gpu_name: str = "") -> None:
        """Raise CompatibilityError, in one sentence, if this machine (a TensorRT of the engine's
        flavour at `trt_version`, this GPU) cannot load the engine."""
        built = TrtVersion.parse(self.tensorrt_version)
        here = trt_version if isinstance(trt_version, TrtVersion) else TrtVersion.parse(trt_version)
        here_cc = format_compute_capability(tuple(compute_capability))
        if self.version_compatible:  # a version-compatible plan also runs on later TensorRT releases
            version_ok = here.plan_key >= built.plan_key
        else:
            version_ok = here.plan_key == built.plan_key
        if self.hardware_compatibility == "ampere_plus":
            gpu_ok = tuple(compute_capability) >= (8, 0)
        else:
            gpu_ok = here_cc in self.targets
        if version_ok and gpu_ok:
            return
        same_short = built.short == here.short
        title = FLAVOURS[self.flavour].title
        built_v, here_v = (str(built), str(here)) if same_short else (built.short, here.short)
        article = "an" if here_cc.startswith(("8", "11", "18")) else "a"
        gpu = f"{article} {here_cc} GPU" + (f" ({gpu_name})" if gpu_name else "")
        command = self.rebuild_here() if version_ok else (self.rebuild_command or "rexport trt MODEL.onnx")
        raise CompatibilityError(
            f"{Path(engine).name} was built with {title} {built_v} for {self.describe_target()}; this machine "
            f"has {title} {here_v} and {gpu}: rebuild with `{command}` here")

    # -- serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": FORMAT, "rexport_version": self.rexport_version, "flavour": self.flavour,
                "tensorrt_version": self.tensorrt_version, "gpu_name": self.gpu_name,
                "compute_capability": self.compute_capability, "targets": list(self.targets),
                "built_without_gpu": self.built_without_gpu, "precision": self.precision,
                "profile": self.profile, "source_onnx": self.source_onnx, "built_from": self.built_from,
                "build_options": self.build_options, "rebuild_command": self.rebuild_command,
                "model": self.model.to_dict() if self.model else None}

    @classmethod
    def from_dict(cls, d: dict) -> "EngineSidecar":
        if not isinstance(d, dict) or d.get("format") not in READABLE:
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
                       rexport_version=str(d.get("rexport_version", "unknown")),
                       flavour=str(d.get("flavour", "tensorrt")), targets=tuple(str(t) for t in d.get("targets", ())))
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
