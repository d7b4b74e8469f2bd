"""Which backend runs a model file: `backend="auto"`'s rule, the backends installed here, and the
choice `rexport bench --backend all --save-choice` records in a bundle for this machine."""

from __future__ import annotations

import os
from pathlib import Path

from rexport.errors import InputError

ENGINE_SUFFIXES = (".engine", ".plan", ".trt")

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
BENCH_BACKENDS = (*BACKENDS, "all")  # bench --backend all: every backend installed here that runs the file
X86 = ("x86_64", "amd64", "i386", "i686")


def choose_backend(path: Path, backend: str = "auto", providers="auto") -> str:
    """The backend for one model file. "auto": TensorRT for engines; for ONNX, ONNX Runtime when
    ONNX Runtime providers are named or it has a GPU provider, else OpenVINO on x86 CPUs where it
    is installed (faster than ONNX Runtime there: benchmarks/README.md), else ONNX Runtime."""
    if backend not in BACKENDS:
        raise InputError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    engine = path.suffix.lower() in ENGINE_SUFFIXES
    if backend != "auto":
        if engine != (backend == "tensorrt"):
            raise InputError(f"the {backend} backend cannot run {path.name}: "
                             + ("engines run on tensorrt" if engine else "tensorrt runs engines; this is an ONNX file"))
        return backend
    if engine:
        return "tensorrt"
    import importlib.util
    import platform

    if providers != "auto":  # ONNX Runtime's execution providers were named
        return "onnxruntime"
    if importlib.util.find_spec("onnxruntime") is not None:
        from rexport.runtime.backends.onnxruntime import GPU_PROVIDERS, resolve_providers

        if any(p in GPU_PROVIDERS for p in resolve_providers("auto")):
            return "onnxruntime"
    if importlib.util.find_spec("openvino") is not None and platform.machine().lower() in X86:
        return "openvino"
    return "onnxruntime"


VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # x86 int8 dot products that add in int32


def cpuinfo(field: str) -> str | None:
    """The value of the first `field` line of Linux's /proc/cpuinfo; None where there is none."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.split(":", 1)[0].strip() == field), None)
    except OSError:
        return None


def cpu_flags() -> set[str] | None:
    """This CPU's feature flags; None where they cannot be read."""
    flags = cpuinfo("flags")
    return set(flags.split()) if flags is not None else None


def int8_saturates_here() -> bool:
    """Whether this CPU's int8 kernels saturate on full-range weights: an x86 CPU without VNNI or
    AMX multiplies uint8 x int8 pairs and adds them in int16 (`vpmaddubsw`), which overflows for
    weights beyond [-64, 64] (the range the cpu target's `reduce_range` keeps). False where the
    flags cannot be read or the CPU is not x86 (ARM's dot products add in int32)."""
    import platform

    flags = cpu_flags()
    return platform.machine().lower() in X86 and flags is not None and "avx2" in flags and not flags & VNNI_FLAGS


def full_range_int8(calibration: dict | None) -> str | None:
    """What makes an INT8 model's weights full range ([-127, 127]), or None: the trt target, or
    the cpu target calibrated with `reduce_range` off (files from before `reduce_range` too)."""
    if not calibration:
        return None
    if calibration.get("target") == "trt":
        return "trt target"
    return None if calibration.get("reduce_range", False) else "cpu target without reduce_range"


def saturating(calibration: dict | None, backend_name: str) -> str | None:
    """Why `backend_name` would saturate on this INT8 model here, or None. OpenVINO runs every
    INT8 file with int8 kernels; ONNX Runtime's CPU provider fuses the cpu target's Q/DQ into
    int8 kernels and computes the trt target's in float."""
    weights = full_range_int8(calibration)
    if not weights:
        return None
    float_on_ort = calibration.get("target") == "trt"  # ONNX Runtime's CPU provider leaves its Q/DQ unfused
    int8_kernels = backend_name == "openvino CPU" or (backend_name == "onnxruntime CPU" and not float_on_ort)
    if int8_kernels and int8_saturates_here():
        return (f"its INT8 weights are full range ({weights}) and this CPU has no VNNI: {backend_name.split()[0]}'s "
                "int8 kernels saturate on them")
    return None


CHOICE_FILE = "backend-choice.json"  # in a bundle directory: what `bench --save-choice` measured fastest, per machine


def machine() -> str:
    """This machine's CPU, as the key of a saved backend choice (a choice holds where it was measured)."""
    import platform

    return f"{platform.machine()} {cpuinfo('model name') or platform.processor()} {os.cpu_count()} cores".strip()


def saved_choice(bundle_root: Path, model_file: str) -> str | None:
    """The backend `bench --save-choice` recorded for this model on this machine, if any, valid and
    still installed here."""
    import json

    try:
        saved = json.loads((bundle_root / CHOICE_FILE).read_text(encoding="utf-8"))
        choice = saved["machines"][machine()][model_file]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return choice if choice in installed_backends(bundle_root / model_file) else None


def save_choice(bundle_dir: Path, choices: dict[str, str]) -> Path:
    """Record model file -> fastest backend for this machine in the bundle directory (other
    machines' choices are kept). Not part of the manifest: a device's measurement, not the bundle's."""
    import json

    from rexport.files import write_json

    path = bundle_dir / CHOICE_FILE
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        machines = saved["machines"] if isinstance(saved.get("machines"), dict) else {}
    except (OSError, ValueError, AttributeError):
        machines = {}
    machines[machine()] = {**machines.get(machine(), {}), **choices}
    write_json(path, {"machines": machines}, overwrite=True)
    return path


def installed_backends(path: Path) -> list[str]:
    """The backends installed here that can run this model file (for `bench --backend all`)."""
    import importlib.util

    if path.suffix.lower() in ENGINE_SUFFIXES:
        return ["tensorrt"]
    return [b for b in ("onnxruntime", "openvino") if importlib.util.find_spec(b) is not None]
