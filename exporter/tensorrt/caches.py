"""What a build reuses and leaves behind: the timing cache, and TensorRT 10's implicit-quantization
calibrator with its calibration cache."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np

from rexport.console import log
from rexport.errors import InputError, field_error
from rexport.exporter.tensorrt.config import BuildConfig
from rexport.files import atomic_output
from rexport.runtime import cuda
from rexport.runtime.metadata import ModelInfo
from rexport.runtime.trt_compat import TensorRT


class TimingCache:
    """Load (and merge) timing caches before a build; save the updated one after it."""

    def __init__(self, compat: TensorRT, builder_config: Any, config: BuildConfig):
        self.path = Path(config.timing_cache) if config.timing_cache else None
        self.config = builder_config
        self.notes: list[str] = []
        for other in config.merge_timing_caches:
            if not Path(other).is_file():
                raise field_error(config, f"timing cache {other} (merge_timing_caches) does not exist",
                                  "merge_timing_caches")
        if self.path is None and not config.merge_timing_caches:
            self.cache = None
            return
        data = self.path.read_bytes() if self.path is not None and self.path.is_file() else b""
        cache = builder_config.create_timing_cache(data)
        if cache is None and data:
            self.notes.append(f"timing cache {self.path} is unreadable by TensorRT {compat.version.short}; "
                              "starting a new one")
            cache = builder_config.create_timing_cache(b"")
        if not builder_config.set_timing_cache(cache, False):
            self.notes.append(f"timing cache {self.path} was made by another TensorRT version or GPU; "
                              "starting a new one")
            cache = builder_config.create_timing_cache(b"")
            builder_config.set_timing_cache(cache, False)
        for other in config.merge_timing_caches:  # into the cache the config now uses
            extra = builder_config.create_timing_cache(Path(other).read_bytes())
            if extra is None or not cache.combine(extra, False):
                self.notes.append(f"timing cache {other} was made by another TensorRT version or GPU; not merged")
            else:
                self.notes.append(f"merged timing cache {other}")
        self.cache = cache

    def save(self, overwrite: bool = True) -> Path | None:
        if self.path is None:
            return None
        cache = self.config.get_timing_cache()
        with atomic_output(self.path, overwrite=overwrite) as tmp:
            tmp.write_bytes(bytes(memoryview(cache.serialize())))
        return self.path


def make_legacy_calibrator(compat: TensorRT, method: str, inputs: np.ndarray | None, batch_size: int,
                           cache: bytes | None) -> Any:
    """A TensorRT 10.x IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator fed with numpy batches.

    `read_calibration_cache` returns `cache` when one was given (TensorRT then skips calibrating);
    `write_calibration_cache` keeps what TensorRT wrote, for the caller to save once the build
    succeeded. Exceptions cannot cross back into TensorRT, so they are kept in `.error`."""
    base = compat.calibrator_base(method)

    class LegacyCalibrator(base):
        def __init__(self):
            base.__init__(self)  # pybind11 trampolines must have the base initialised explicitly
            self.inputs = inputs
            self.batch_size = int(batch_size)
            self.cache_in = cache
            self.cache_out: bytes | None = None
            self.batches_fed = 0
            self.error: BaseException | None = None
            self._buffer: cuda.DeviceBuffer | None = None

        def get_batch_size(self):
            return self.batch_size

        def get_batch(self, names):
            try:
                start = self.batches_fed * self.batch_size
                if self.inputs is None or start + self.batch_size > len(self.inputs):
                    return None  # TensorRT takes only full batches
                batch = np.ascontiguousarray(self.inputs[start:start + self.batch_size], dtype=np.float32)
                if self._buffer is None:
                    self._buffer = cuda.DeviceBuffer(batch.nbytes)
                self._buffer.copy_from(batch)
                self.batches_fed += 1
                return [self._buffer.ptr for _ in names]
            except BaseException as e:  # noqa: BLE001 - re-raised by build_engine after the build
                self.error = e
                return None

        def read_calibration_cache(self):
            return self.cache_in

        def write_calibration_cache(self, data):
            self.cache_out = bytes(memoryview(data))

        def free(self):
            if self._buffer is not None:
                self._buffer.free()
                self._buffer = None

    return LegacyCalibrator()


def legacy_calibrator(compat: TensorRT, builder: Any, builder_config: Any, config: BuildConfig,
                      info: ModelInfo | None, shapes: dict, declared: dict) -> Any:
    """Set up TensorRT 10's own INT8 calibrator (fed with rexport's preprocessed samples, or a cache)."""
    cache = None
    if config.calib_cache and Path(config.calib_cache).is_file():
        cache = cache_for_this_version(Path(config.calib_cache), str(compat.version))
        log.info("using calibration cache %s (delete it to calibrate again)", config.calib_cache)
    inputs = None
    if cache is None:
        if config.calib_data is None:
            raise field_error(config, f"calibration cache {config.calib_cache} does not exist; give calib_data to "
                              "make it", "calib_data")
        if info is None:
            raise InputError("the ONNX has no rexport metadata, so calibration images cannot be preprocessed; "
                             "export it with `rexport onnx`")
        from rexport.runtime.data import load_dataset

        inputs = load_dataset(config.calib_data, info, samples=config.calib_samples, seed=config.seed).inputs
    if len(shapes) != 1:
        raise InputError(f"the legacy calibrator handles models with one input, not {len(shapes)}")
    (name, (lo, opt, hi)), = shapes.items()
    available = len(inputs) if inputs is not None else hi[0]
    batch = min(hi[0], max(lo[0], min(opt[0], available)))
    if inputs is not None and len(inputs) < lo[0]:
        raise InputError(f"{len(inputs)} calibration samples are fewer than the profile's min batch {lo[0]}")
    calibrator = make_legacy_calibrator(compat, config.calib_method, inputs, batch, cache)
    profile = None
    if any(d < 0 for d in declared[name]):  # TensorRT needs a calibration profile for any runtime dimension
        profile = builder.create_optimization_profile()
        shape = (batch, *opt[1:])
        profile.set_shape(name, shape, shape, shape)
    compat.set_calibrator(builder_config, calibrator, profile)
    return calibrator


def cache_for_this_version(path: Path, version: str) -> bytes:
    """TensorRT silently ignores a calibration cache whose header names another version. The
    scales are dynamic ranges, valid across versions, so relabel the header, and say so."""
    from rexport.calibration.cache import read_calibration_cache, retarget_header, version_int

    header, _ = read_calibration_cache(path)  # also rejects a file that is not a cache, clearly
    data = path.read_bytes()
    wanted = f"TRT-{version_int(version)}-"
    if header.startswith(wanted):
        return data
    log.warning("warning: %s has the header %s, which TensorRT %s would ignore; it is used with the header "
                "relabelled for this version (the scales are unchanged)", path, header, version)
    return retarget_header(header, version).encode() + data[data.index(b"\n"):]


def save_calibration_cache(config: BuildConfig, calibrator: Any, quantized: Any) -> Path | None:
    if not config.calib_cache:
        return None
    path = Path(config.calib_cache)
    if calibrator is not None and calibrator.cache_out and calibrator.cache_out != calibrator.cache_in:
        with atomic_output(path, overwrite=True) as tmp:
            tmp.write_bytes(calibrator.cache_out)
        return path
    cache_path = getattr(quantized, "cache_path", None)
    if cache_path is not None and Path(cache_path).is_file():
        with atomic_output(path, overwrite=True) as tmp:
            shutil.copyfile(cache_path, tmp)
        return path
    return None
