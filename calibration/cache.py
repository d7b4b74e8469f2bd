"""TensorRT's legacy (10.x implicit-quantization) calibration cache, as text.

    TRT-100300-EntropyCalibration2
    input: 3c010a14
    /layer1/layer1.0/relu1/Relu_output_0: 3d8a3b5c

First line: `TRT-<version as an integer>-<calibrator>`; then one line per tensor: the scale as a
big-endian IEEE-754 float32 in hex, where dynamic range = scale * 127. TensorRT ignores a cache
whose header names another version, so the version is written for the TensorRT that will read
it (rexport trt rewrites it for the installed one).
"""

from __future__ import annotations

import math
import os
import re
import struct
from pathlib import Path

from rexport.errors import InputError
from rexport.files import atomic_output

CALIBRATOR_NAMES = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration",
                    "percentile": "EntropyCalibration2", "mse": "EntropyCalibration2"}
DEFAULT_TRT_VERSION = "10.3.0"  # JetPack 6.1 / 6.2


def version_int(version: str) -> int:
    """TensorRT's NV_TENSORRT_VERSION: major*10000 + minor*100 + patch from 10.0 (8.x: *1000/*100)."""
    try:
        major, minor, patch = (list(map(int, version.split(".")[:3])) + [0, 0])[:3]
    except ValueError:
        raise InputError(f"TensorRT version must look like 10.3.0, not {version!r}") from None
    return major * 10000 + minor * 100 + patch if major >= 10 else major * 1000 + minor * 100 + patch


def scale_to_hex(scale: float) -> str:
    return struct.pack(">f", scale).hex()


def hex_to_scale(text: str) -> float:
    return struct.unpack(">f", bytes.fromhex(text))[0]


def write_calibration_cache(path: str | os.PathLike, scales: dict[str, float], *, method: str = "entropy",
                            trt_version: str = DEFAULT_TRT_VERSION, overwrite: bool = False) -> Path:
    """Write tensor name -> scale (dynamic range / 127)."""
    header = f"TRT-{version_int(trt_version)}-{CALIBRATOR_NAMES.get(method, 'EntropyCalibration2')}"
    lines = [header] + [f"{name}: {scale_to_hex(scale)}" for name, scale in scales.items()]
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    return Path(path)


def read_calibration_cache(path: str | os.PathLike) -> tuple[str, dict[str, float]]:
    """Returns (header, tensor name -> scale)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"calibration cache {path} does not exist")
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    if not lines or not re.fullmatch(r"TRT-\d+-\w+", lines[0].strip()):
        raise InputError(f"{path} is not a TensorRT calibration cache (first line should be like "
                         "TRT-100300-EntropyCalibration2)")
    scales = {}
    for n, line in enumerate(lines[1:], 2):
        name, sep, value = line.rpartition(":")
        try:
            if not sep or not name.strip():
                raise ValueError(line)
            scale = hex_to_scale(value.strip())
        except (ValueError, struct.error):
            raise InputError(f"{path}, line {n}: expected `tensor: <8 hex digits>`, got {line!r}") from None
        if not (math.isfinite(scale) and scale >= 0):
            raise InputError(f"{path}, line {n}: the scale of {name.strip()!r} is {scale}, not a finite, non-negative "
                             "number; the cache is damaged: calibrate again")
        scales[name.strip()] = scale
    return lines[0].strip(), scales


def retarget_header(header: str, trt_version: str) -> str:
    """The same cache for another TensorRT version (TensorRT ignores mismatched headers)."""
    _, _, name = header.split("-", 2)
    return f"TRT-{version_int(trt_version)}-{name}"
