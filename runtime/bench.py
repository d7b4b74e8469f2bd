"""`rexport bench`: latency percentiles and throughput of loaded models, and preprocessing time
on its own, several models in one table.

Each measurement: `warmup` untimed calls, then timed calls of `run()` on a random batch until
`iterations` calls are done or `duration` seconds have passed; with `bench_threads` > 1, that many
threads call concurrently (latency per call; throughput = images / wall time).
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rexport.console import log, table
from rexport.errors import InputError, field_error


@dataclass(frozen=True)
class BenchConfig:
    batch_sizes: tuple[int, ...] = (1,)
    iterations: int = 100
    duration: float | None = None  # seconds per measurement; stops earlier than `iterations` if set
    warmup: int = 10
    bench_threads: int = 1  # concurrent callers (`threads` is a backend's inference threads)

    def __post_init__(self) -> None:
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise field_error(self, f"batch_sizes must be >= 1, not {self.batch_sizes}", "batch_sizes")
        if self.iterations < 1 or self.warmup < 0 or self.bench_threads < 1:
            raise field_error(self, "iterations and bench_threads must be >= 1 and warmup >= 0", "iterations",
                              "bench_threads", "warmup")
        if self.duration is not None and self.duration <= 0:
            raise field_error(self, f"duration must be positive seconds, not {self.duration}", "duration")


@dataclass
class BenchRow:
    model: str
    backend: str
    batch: int
    threads: int
    calls: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    throughput: float  # images per second

    def to_dict(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}


@dataclass
class BenchReport:
    rows: list[BenchRow]
    preprocess_ms: float | None  # per image: decode + resize + crop + normalize
    preprocess_source: str

    def to_dict(self) -> dict:
        return {"rows": [r.to_dict() for r in self.rows], "preprocess_ms_per_image": self.preprocess_ms,
                "preprocess_source": self.preprocess_source}

    def format(self) -> str:
        rows = [(r.model, r.backend, r.batch, r.threads, r.calls, f"{r.p50_ms:.2f}", f"{r.p90_ms:.2f}",
                 f"{r.p99_ms:.2f}", f"{r.throughput:.1f}") for r in self.rows]
        text = table(("model", "backend", "batch", "threads", "calls", "p50 ms", "p90 ms", "p99 ms", "img/s"), rows)
        if self.preprocess_ms is not None:
            text += f"\n  preprocessing (separate): {self.preprocess_ms:.2f} ms/image ({self.preprocess_source})"
        return text


def measure(call: Callable[[], object], *, iterations: int, warmup: int, duration: float | None,
            threads: int = 1) -> tuple[np.ndarray, float]:
    """Latencies (seconds) of `call` and the wall time of the timed part."""
    for _ in range(warmup):
        call()
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = None if duration is None else time.perf_counter() + duration
    counter = iter(range(iterations))

    def worker() -> None:
        while True:
            with lock:
                if next(counter, None) is None or (deadline is not None and time.perf_counter() > deadline):
                    return
            start = time.perf_counter()
            call()
            elapsed = time.perf_counter() - start
            with lock:
                latencies.append(elapsed)

    wall = time.perf_counter()
    if threads == 1:
        worker()
    else:
        pool = [threading.Thread(target=worker) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    return np.array(latencies), time.perf_counter() - wall


def synthetic_jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def bench(models: dict[str, object], config: BenchConfig = BenchConfig(),
          images: Sequence[object] | None = None) -> BenchReport:
    """Benchmark Predictors (name -> Predictor); preprocessing is timed on `images` (or a
    synthetic 640x480 JPEG) with the first model's preprocessing."""
    if not models:
        raise InputError("give at least one model to benchmark")
    rows = []
    rng = np.random.default_rng(0)
    for name, predictor in models.items():
        for batch in config.batch_sizes:
            x = rng.standard_normal((batch, *predictor.info.input_shape), dtype=np.float32)
            log.info("benchmarking %s at batch %d...", name, batch)
            lat, wall = measure(lambda: predictor.run(x), iterations=config.iterations, warmup=config.warmup,
                                duration=config.duration, threads=config.bench_threads)
            ms = lat * 1000
            rows.append(BenchRow(name, predictor.backend.name, batch, config.bench_threads, len(lat),
                                 float(np.percentile(ms, 50)), float(np.percentile(ms, 90)),
                                 float(np.percentile(ms, 99)), float(ms.mean()), len(lat) * batch / wall))
    first = next(iter(models.values()))
    sources = list(images) if images else [synthetic_jpeg()]
    what = f"{len(sources)} image(s)" if images else "a synthetic 640x480 JPEG"
    lat, _ = measure(lambda: [first.preprocess(s) for s in sources], iterations=max(3, config.iterations // 10),
                     warmup=1, duration=config.duration)
    return BenchReport(rows, float(np.median(lat)) * 1000 / len(sources), what)
