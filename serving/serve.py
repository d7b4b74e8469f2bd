"""`rexport serve`: a bundle's model on a real Triton, for one box, through PyTriton.

PyTriton starts the tritonserver it ships and binds two models to this process's `Predictor`:
- NAME: encoded image bytes (input "image", [N, 1] BYTES) -> logits, preprocessed here by
  rexport's contract;
- NAME_classifier: the model's NCHW float32 input -> logits.
The same names and tensors as a `rexport triton` repository, so one client serves both. Triton
gives KServe v2 over HTTP and gRPC, Prometheus metrics and dynamic batching: requests that arrive
together reach the Predictor as one batch. PyTriton answers per batch, so a request batched with
an undecodable image fails with it; a repository's Python backend answers each request alone.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from rexport.console import log
from rexport.errors import require
from rexport.serving.server import Endpoints
from rexport.serving.triton_repo import IMAGE_INPUT, RepositoryConfig, preferred_sizes


@dataclass(frozen=True)
class ServeConfig:
    """`rexport serve`'s settings. name, model, instances, max_batch and queue_delay_us mean what
    they mean in `RepositoryConfig`; backend, providers and threads what they mean in `load`."""

    name: str | None = None
    model: str | None = None
    backend: str = "auto"
    providers: str = "auto"
    threads: int | None = None
    host: str = "0.0.0.0"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    max_batch: int | None = None
    instances: int = 1
    queue_delay_us: int = 500

    def __post_init__(self) -> None:  # the fields they share, checked by the same rule
        RepositoryConfig(name=self.name, instances=self.instances, max_batch=self.max_batch,
                         queue_delay_us=self.queue_delay_us)


class Serving(Endpoints):
    """A running `rexport serve`: stop it with `stop()` or `with`."""

    def __init__(self, triton, predictor, name: str, config: ServeConfig):
        self.triton, self.predictor, self.name, self.config = triton, predictor, name, config
        self.host = "127.0.0.1" if config.host == "0.0.0.0" else config.host  # where a client here connects
        self.ports = {"http": config.http_port, "grpc": config.grpc_port, "metrics": config.metrics_port}

    def serve_forever(self) -> None:
        """Block until SIGINT (or SIGTERM, which the CLI turns into one); then stop."""
        try:
            self.triton.serve()
        finally:
            self.stop()

    def stop(self) -> None:
        if self.predictor is not None:
            self.triton.stop()
            self.predictor, predictor = None, self.predictor
            predictor.close()
            log.info("stopped serving %s", self.name)

    def __enter__(self) -> "Serving":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


@contextmanager
def _python_backend_environment():
    """This process's environment, while PyTriton starts tritonserver, as its Python backend needs."""
    from rexport.serving.server import bundled_libs, python_backend_env, python_stub, triton_distribution

    wanted = python_backend_env(python_stub(triton_distribution()), bundled_libs())
    saved = {k: os.environ.get(k) for k in ("LD_LIBRARY_PATH", "REXPORT_SITE_DIRS")}
    os.environ.update({k: wanted[k] for k in saved})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _bind(triton, predictor, name: str, config: ServeConfig) -> None:
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    info = predictor.info
    max_batch = config.max_batch or predictor.batch.max

    @batch
    def classify(**inputs):
        return {info.output_name: predictor.run(inputs[info.input_name]).astype(np.float32, copy=False)}

    @batch
    def classify_images(**inputs):
        x = predictor.preprocess([bytes(b) for b in inputs[IMAGE_INPUT].reshape(-1)])
        return {info.output_name: predictor.run(x).astype(np.float32, copy=False)}

    batcher = DynamicBatcher(max_queue_delay_microseconds=config.queue_delay_us,
                             preferred_batch_size=list(preferred_sizes(predictor.batch, max_batch)) or None)
    logits = [Tensor(name=info.output_name, dtype=np.float32, shape=(info.num_classes,))]
    for model, function, inputs in (
            (f"{name}_classifier", classify, [Tensor(name=info.input_name, dtype=np.float32, shape=info.input_shape)]),
            (name, classify_images, [Tensor(name=IMAGE_INPUT, dtype=bytes, shape=(1,))])):
        triton.bind(model_name=model, infer_func=[function] * config.instances, inputs=inputs, outputs=logits,
                    config=ModelConfig(max_batch_size=max_batch, batcher=batcher), strict=True)


def start_serving(bundle, config: ServeConfig | None = None) -> Serving:
    """Load `bundle`'s model and start Triton on it (returns once it is ready)."""
    import re

    from rexport.runtime import load

    config = config or ServeConfig()
    require("pytriton", "serve", "serve models with Triton")
    from pytriton.triton import Triton, TritonConfig

    predictor = load(bundle, model=config.model, backend=config.backend, providers=config.providers,
                     threads=config.threads)
    try:
        name = config.name or re.sub(r"[^A-Za-z0-9_.-]", "_", predictor.info.arch or "model")
        triton = Triton(config=TritonConfig(
            http_address=config.host, http_port=config.http_port, grpc_address=config.host,
            grpc_port=config.grpc_port, metrics_address=config.host, metrics_port=config.metrics_port,
            allow_metrics=True, allow_gpu_metrics=False))
        _bind(triton, predictor, name, config)
        with _python_backend_environment():
            triton.run()
    except BaseException:
        predictor.close()
        raise
    log.info("serving %s as %s and %s_classifier: HTTP %s:%d, gRPC %s:%d, metrics %s:%d/metrics", predictor.source,
             name, name, config.host, config.http_port, config.host, config.grpc_port, config.host,
             config.metrics_port)
    return Serving(triton, predictor, name, config)


def serve(bundle, config: ServeConfig | None = None) -> None:
    """`rexport serve`: start, serve until SIGINT/SIGTERM, stop cleanly."""
    start_serving(bundle, config).serve_forever()
