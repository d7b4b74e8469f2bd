"""What `rexport doctor` reports: rexport's own packages (from one tree, or which from where),
TensorRT and TensorRT for RTX, cuda-python, CUDA and the GPU, onnxruntime, onnx and DLA: what is
here and what is missing. Every TensorRT question it asks goes through runtime/trt_compat.py.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from rexport.errors import CompatibilityError, MissingDependency
from rexport.runtime.trt_compat import TensorRT, load_tensorrt


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class EnvironmentReport:
    checks: list[Check]

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {c.name: {"ok": c.ok, "detail": c.detail} for c in self.checks}

    def format(self) -> str:
        from rexport.console import table

        return table(("", "component", "status"), [("ok" if c.ok else "--", c.name, c.detail) for c in self.checks],
                     indent="")


def _version_of(module: str) -> str | None:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return str(getattr(mod, "__version__", "installed"))


def inspect_environment() -> EnvironmentReport:
    """TensorRT, TensorRT for RTX, CUDA, cuda-python, onnxruntime, the GPU and DLA: what is here and
    what is missing."""
    from rexport.runtime import cuda

    checks: list[Check] = [_source_check()]
    compat: TensorRT | None = None
    rtx: TensorRT | None = None
    try:
        compat = load_tensorrt(flavour="tensorrt")
        checks.append(Check("TensorRT", True, str(compat.version)))
    except (MissingDependency, CompatibilityError) as e:
        checks.append(Check("TensorRT", False, str(e)))
    try:
        rtx = load_tensorrt(flavour="rtx")
        checks.append(Check("TensorRT for RTX", True, f"{rtx.version}; builds for compute capability "
                                                      f"{', '.join(rtx.compute_capabilities())}, with or without a GPU"))
    except (MissingDependency, CompatibilityError) as e:
        checks.append(Check("TensorRT for RTX", False, str(e)))

    gpu = None
    try:
        versions = cuda.cuda_versions()
        checks.append(Check("cuda-python", True, versions.pop("cuda-python")))
        driver = versions["driver"] not in ("none", "unavailable")
        checks.append(Check("CUDA", driver, ", ".join(f"{k} {v}" for k, v in versions.items())
                            + ("" if driver else " (no NVIDIA driver: install it, or use a machine that has one)")))
        gpu = cuda.gpu_info()
        checks.append(Check("GPU", True, f"{gpu.name}, compute capability {gpu.compute_capability_str}, "
                                         f"{gpu.total_memory / 2**30:.1f} GiB"))
        if rtx is not None:
            here = gpu.compute_capability_str in rtx.compute_capabilities()
            checks.append(Check("RTX target", here, f"this GPU ({gpu.compute_capability_str}) "
                                                    + ("runs" if here else "cannot run") + f" {rtx.name} engines"))
    except MissingDependency as e:
        checks.append(Check("cuda-python", False, str(e)))
        checks.append(Check("CUDA", False, "unknown: needs cuda-python"))
        checks.append(Check("GPU", False, "unknown: needs cuda-python"))
    except CompatibilityError as e:
        if not any(c.name == "CUDA" for c in checks):
            checks.append(Check("CUDA", False, str(e)))
        checks.append(Check("GPU", False, str(e)))

    ort_version = _version_of("onnxruntime")
    if ort_version is None:
        checks.append(Check("onnxruntime", False, "not installed; run: pip install 'rexport[ort]' "
                                                  "(or 'rexport[gpu]' for CUDA/TensorRT providers)"))
    else:
        import onnxruntime

        checks.append(Check("onnxruntime", True, f"{ort_version}; providers: "
                                                 f"{', '.join(onnxruntime.get_available_providers())}"))
    onnx_version = _version_of("onnx")
    checks.append(Check("onnx", onnx_version is not None,
                        onnx_version or "not installed (reads ONNX precision for `rexport trt`); "
                                        "run: pip install 'rexport[trt]'"))
    checks.append(_dla_check(compat, gpu))
    return EnvironmentReport(checks)


def _source_check() -> Check:
    """rexport's packages all from one tree, or which comes from where."""
    from rexport import __version__, package_sources

    sources = package_sources()
    if len(set(sources.values())) == 1:
        return Check("rexport", True, f"{__version__} from {next(iter(sources.values()))}")
    return Check("rexport", False, "packages from different trees (an editable install of another checkout?): "
                 + "; ".join(f"{k} from {v}" for k, v in sources.items())
                 + "; run: pip install -e . in the checkout you want")


def _dla_check(compat: TensorRT | None, gpu: Any) -> Check:
    if compat is None:
        return Check("DLA", False, "unknown: needs TensorRT")
    try:
        compat.check_dla(None, 0)
    except CompatibilityError as e:
        return Check("DLA", False, str(e))
    if gpu is None:
        return Check("DLA", False, "unknown: needs a visible GPU")
    logger = compat.make_logger()
    try:
        cores = int(compat.trt.Builder(logger).num_DLA_cores)
    except Exception as e:  # a Builder needs a working CUDA context; report what TensorRT said
        return Check("DLA", False, f"cannot ask TensorRT: {e}")
    if cores == 0:
        return Check("DLA", False, "no DLA cores on this device (DLA exists on Jetson AGX Orin and Xavier)")
    return Check("DLA", True, f"{cores} DLA core(s)")
