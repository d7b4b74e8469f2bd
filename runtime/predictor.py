"""`load()` and the `Predictor`: what an edge app uses.

    from rexport.runtime import load
    model = load("bundle/")              # or a .tar.gz bundle, a bare .onnx, a .engine (+ sidecar)
    print(model.predict("cat.jpg"))      # top-k labels, indices, probabilities
    logits = model.run(batch)            # raw NCHW float32 in, logits out

Only numpy, Pillow and one backend (onnxruntime or tensorrt) are needed. A Predictor is safe
to share between threads; batches larger than the model's maximum are split, and a model
with a fixed batch size is padded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rexport.console import log
from rexport.errors import InputError, RexportError
from rexport.onnx_file import check_model_path
from rexport.runtime.backends.base import Backend
from rexport.runtime.backends.choice import CHOICE_FILE, ENGINE_SUFFIXES, choose_backend, saturating, saved_choice
from rexport.runtime.metadata import BatchRange, ModelInfo
from rexport.runtime.preprocess import ImageLike, Preprocess, preprocess


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, best first."""

    indices: tuple[int, ...]
    labels: tuple[str, ...]
    probabilities: tuple[float, ...]

    @property
    def index(self) -> int:
        return self.indices[0]

    @property
    def label(self) -> str:
        return self.labels[0]

    @property
    def probability(self) -> float:
        return self.probabilities[0]

    def to_dict(self) -> dict:
        return {"top": [{"index": i, "label": lb, "probability": round(p, 6)}
                        for i, lb, p in zip(self.indices, self.labels, self.probabilities)]}

    def __str__(self) -> str:
        return ", ".join(f"{lb} {100 * p:.1f}%" for lb, p in zip(self.labels, self.probabilities))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


PIPELINE_WORKERS = 2  # predict(): threads decoding and preprocessing ahead of inference


class Predictor:
    """A loaded model: preprocessing + backend + labels. Create it with `load()`."""

    def __init__(self, backend: Backend, info: ModelInfo, source: Path, bundle=None, model_file: Path | None = None):
        self.backend = backend
        self.info = info
        self.source = source  # what load() was given
        self.bundle = bundle
        self.model_file = model_file or source  # the model file the backend runs
        fixed = backend.input_shape[0]
        if fixed not in (-1, None):  # a static batch: run() pads to it
            self.batch = BatchRange(fixed, fixed, fixed)
        else:  # an engine's profile limits it; otherwise the range recorded at export
            lo = getattr(backend, "min_batch", None) or info.batch.min
            hi = getattr(backend, "max_batch", None) or info.batch.max
            self.batch = BatchRange(lo, min(max(info.batch.opt, lo), hi), hi)

    def __repr__(self) -> str:
        return (f"Predictor({self.info.arch or 'model'}, {self.info.precision}, {self.backend.name}, "
                f"batch {self.batch}, from {self.source})")

    # -- raw inference ------------------------------------------------------------------------
    def run(self, x: np.ndarray) -> np.ndarray:
        """NCHW float32 -> logits; any batch size (split into the model's range, padded if needed)."""
        x = np.asarray(x)
        if x.ndim == 3:
            raise InputError(f"run() takes a batch (N x {' x '.join(map(str, self.info.input_shape))}); "
                             "add a leading axis with x[None]")
        outputs = []
        for start in range(0, len(x), self.batch.max):
            chunk = x[start:start + self.batch.max]
            n = len(chunk)
            if n < self.batch.min:  # a fixed-size (or minimum) batch: pad with copies, drop their outputs
                chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch.min - n, axis=0)])
            outputs.append(self.backend.run(chunk)[:n])
        if not outputs:
            raise InputError("input batch is empty")
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs)

    # -- images --------------------------------------------------------------------------------
    @property
    def preprocessing(self) -> Preprocess:
        return self.info.preprocess

    def preprocess(self, images: ImageLike | Sequence[ImageLike], *, max_pixels: int | None = None,
                   draft: bool = False) -> np.ndarray:
        """Images -> the model's NCHW input; files above max_pixels (default 64 MP) are refused;
        `draft`: decode large JPEGs at reduced scale (faster, not exact; docs/runtime.md: its cost)."""
        return preprocess(images, self.info.preprocess, max_pixels=max_pixels, draft=draft)

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5, *, max_pixels: int | None = None,
                workers: int | None = None, draft: bool = False) -> Prediction | list[Prediction]:
        """One image -> a Prediction; a list (or N x H x W x C array) -> a list of them, in order.

        Many images are pipelined: batches of the model's preferred size are decoded and
        preprocessed by `workers` threads (default 2; 0: none, in turn with inference) a few
        batches ahead of inference, which runs meanwhile. The answers are the same. `draft`:
        see `preprocess`."""
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, np.ndarray) and images.ndim == 4)
        if single:
            return self.classify(self.run(self.preprocess(images, max_pixels=max_pixels, draft=draft)), top_k)[0]
        size = max(self.batch.opt, 1)
        chunks = [images[i:i + size] for i in range(0, len(images), size)]
        workers = PIPELINE_WORKERS if workers is None else workers
        if workers < 0:
            raise InputError(f"workers must be 0 or more, not {workers}")
        if workers == 0 or len(chunks) == 1:
            return [p for chunk in chunks
                    for p in self.classify(self.run(self.preprocess(chunk, max_pixels=max_pixels, draft=draft)), top_k)]
        return self._pipelined(chunks, top_k, workers, max_pixels=max_pixels, draft=draft)

    def _pipelined(self, chunks: list, top_k: int, workers: int, **preprocessing) -> list[Prediction]:
        """Preprocess up to `workers` + 1 batches ahead (bounded memory) while inference runs."""
        from collections import deque
        from concurrent.futures import ThreadPoolExecutor

        out: list[Prediction] = []
        pool = ThreadPoolExecutor(workers, thread_name_prefix="rexport-preprocess")
        try:
            todo = iter(chunks)
            ahead = deque(pool.submit(self.preprocess, c, **preprocessing)
                          for c in (next(todo) for _ in range(min(workers + 1, len(chunks)))))
            while ahead:
                x = ahead.popleft().result()
                following = next(todo, None)
                if following is not None:
                    ahead.append(pool.submit(self.preprocess, following, **preprocessing))
                out.extend(self.classify(self.run(x), top_k))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return out

    def classify(self, logits: np.ndarray, top_k: int = 5) -> list[Prediction]:
        if top_k < 1:
            raise InputError(f"top_k must be at least 1, not {top_k}")
        broken = ~np.isfinite(logits).all(axis=1)
        if broken.any():
            raise InputError(f"{self.model_file.name} produced NaN/Inf outputs for {int(broken.sum())} of "
                             f"{len(logits)} input(s), so it cannot classify them; the model is broken (find where "
                             "with `rexport validate`; re-export or re-calibrate it)")
        k = min(top_k, logits.shape[1])
        probs = softmax(logits)
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        return [Prediction(tuple(int(i) for i in row), tuple(self.info.label(int(i)) for i in row),
                           tuple(float(p[i]) for i in row)) for row, p in zip(order, probs)]

    # -- checks --------------------------------------------------------------------------------
    def selftest(self):
        """Replay the bundle's reference inputs (and images) and compare; see runtime/selftest.py."""
        if self.bundle is None:
            raise InputError(f"{self.source} is not a bundle, so it carries no reference data to test against; "
                             "make one with `rexport bundle`")
        from rexport.runtime.selftest import selftest

        return selftest(self)

    def close(self) -> None:
        self.backend.close()
        if self.bundle is not None:
            self.bundle.cleanup()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _info_from_graph(backend: Backend, path: Path) -> ModelInfo:
    """A model without rexport metadata: its input shape, ImageNet preprocessing, said aloud."""
    shape = backend.input_shape
    if len(shape) != 4 or any(d in (-1, None) for d in shape[1:]):
        raise InputError(f"{path} has no rexport metadata and its input ({shape}) is not a fixed NCHW image; "
                         "export it with `rexport onnx`")
    log.warning("warning: %s has no rexport metadata: assuming ImageNet preprocessing and numeric labels", path.name)
    c, h, w = shape[1:]
    out = backend.run(np.zeros((1 if shape[0] in (-1, None) else shape[0], c, h, w), np.float32))
    return ModelInfo(num_classes=int(out.shape[1]), input_shape=(c, h, w),
                     preprocess=Preprocess.imagenet((h, w), "L" if c == 1 else "RGB"),
                     input_name=backend.input_name, output_name=backend.output_name)


def onnx_model_info(backend, path: Path) -> ModelInfo:
    """The description an ONNX file carries, checked against its graph (names, input channels and
    size, number of classes, fixed batch); the graph's own, said aloud, when it carries none."""
    return ModelInfo.from_onnx(backend.metadata, backend.graph_io(), str(path)) or _info_from_graph(backend, path)


def open_model_file(path: Path, *, backend: str = "auto", providers="auto", threads: int | None = None,
                    device: int = 0) -> tuple[Backend, ModelInfo]:
    """A backend for one model file, and its description."""
    if path.suffix.lower() not in (".onnx", *ENGINE_SUFFIXES):
        raise InputError(f"cannot load {path}: expected a bundle directory or archive, a .onnx or a .engine file")
    chosen = choose_backend(path, backend, providers)
    if chosen == "tensorrt":
        check_model_path(path, "engine")  # a FIFO or device would hang the read
        from rexport.runtime.backends.tensorrt import TensorRTBackend

        runner = TensorRTBackend(path, device=device)
        if runner.info is None:
            raise InputError(f"the sidecar of {path} carries no model description (preprocessing, labels); "
                             "build the engine from a rexport ONNX")
        return runner, runner.info
    runner = None
    if chosen == "openvino":
        from rexport.runtime.backends.openvino import OpenVinoBackend

        try:
            runner = OpenVinoBackend(path, threads=threads)
        except InputError:  # the file's fault: ONNX Runtime would refuse it too
            raise
        except RexportError as e:  # OpenVINO's own limits: auto falls back, a backend asked for does not
            if backend != "auto":
                raise
            log.warning("warning: %s; running it on ONNX Runtime instead", e)
    if runner is None:
        runner = _onnxruntime(path, providers, threads, device)
    try:
        info = onnx_model_info(runner, path)
        why = saturating(info.calibration, runner.name)
        exact_on_ort = why and not saturating(info.calibration, "onnxruntime CPU")
        if exact_on_ort and backend == "auto":
            log.warning("warning: %s: %s; running it on ONNX Runtime instead (exact, slower)", path.name, why)
            runner.close()
            runner = _onnxruntime(path, "cpu", threads, device)
        elif why:
            cure = "run it on onnxruntime" if exact_on_ort else "calibrate with the cpu target and reduce_range on"
            log.warning("warning: %s: %s, and its answers can drift from PyTorch's; on this CPU, %s", path.name, why,
                        cure)
        return runner, info
    except BaseException:
        runner.close()
        raise


def _onnxruntime(path: Path, providers, threads: int | None, device: int) -> Backend:
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(path, providers=providers, threads=threads, device=device)


def load(path: str | os.PathLike, *, model: str | None = None, backend: str = "auto",
         providers: str | list[str] = "auto", threads: int | None = None, device: int = 0) -> Predictor:
    """Load a bundle (directory or archive), a bare .onnx, or a TensorRT .engine (with its sidecar).

    model:     which of a bundle's models to run: a file name or a precision ("fp32", "fp16",
               "int8", "engine"); default: the bundle's default model
    backend:   "auto" (see `choose_backend`), "onnxruntime", "openvino" or "tensorrt"
    providers: onnxruntime execution providers: "auto" (TensorRT, CUDA, then CPU, as available),
               "cpu", "cuda", "tensorrt", or a list
    threads:   inference threads (onnxruntime intra-op, OpenVINO INFERENCE_NUM_THREADS; default: theirs)
    """
    from rexport.runtime.bundle import open_if_bundle

    path, bundle = open_if_bundle(path)
    if bundle is not None:
        try:
            file = bundle.model_file(model)
            if backend == "auto" and providers == "auto" and path.is_dir():
                backend = saved_choice(path, file.name) or backend
                if backend != "auto":
                    log.info("backend %s: measured fastest here by `rexport bench --save-choice` (%s)", backend,
                             CHOICE_FILE)
            runner, info = open_model_file(file, backend=backend, providers=providers, threads=threads, device=device)
        except BaseException:
            bundle.cleanup()
            raise
        return Predictor(runner, info, path, bundle, file)
    if model is not None:
        raise InputError(f"model={model!r} picks one model of a bundle, but {path} is a single model file")
    if path.is_dir():
        raise InputError(f"{path} is a directory without rexport.json, so it is not a bundle; "
                         "make one with `rexport bundle`")
    runner, info = open_model_file(path, backend=backend, providers=providers, threads=threads, device=device)
    return Predictor(runner, info, path)
