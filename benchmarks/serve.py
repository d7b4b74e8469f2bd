"""Serving on Triton against the in-process Predictor: requests/s and p50/p99 latency with 1, 4
and 16 concurrent clients, each request one encoded image -> logits, measured in one run.

    python benchmarks/serve.py                      # the demo's ResNet-20 (32x32 digits, PNG)
    python benchmarks/serve.py --arch resnet50      # ResNet-50 FP32, 224x224 from 640x480 JPEGs

Rows, for each number of clients (threads, one request in flight each):
- predictor: `Predictor.run(Predictor.preprocess(image))` called in this process (no server);
- triton:    a `rexport triton --classifier runtime` repository on PyTriton's tritonserver
             (preprocessing model + runtime classifier + ensemble), over HTTP (tritonclient);
- serve:     `rexport serve` (PyTriton binding this process's Predictor), over HTTP.
Ratios are each row's requests/s and p50 against the predictor's at the same concurrency.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from precision import environment, format_environment, workdir  # noqa: E402

from rexport.console import table  # noqa: E402

CLIENTS = (1, 4, 16)


def demo_inputs(work: Path) -> tuple[Path, list[bytes]]:
    """The demo bundle (built once) and its held-out digits as PNG bytes."""
    from PIL import Image

    from rexport.demo import data
    from rexport.demo.pipeline import run_demo

    if not (work / "demo" / "bundle" / "rexport.json").exists():
        run_demo(work / "demo")
    images = []
    for img in data.split("test").images[:64]:
        buffer = io.BytesIO()
        Image.fromarray(img, "L").save(buffer, "PNG")
        images.append(buffer.getvalue())
    return work / "demo" / "bundle", images


def arch_inputs(arch: str, work: Path) -> tuple[Path, list[bytes]]:
    """A bundle of `arch` (FP32, cached) and 64 640x480 JPEGs."""
    from end_to_end import jpegs
    from precision import export_fp32, torch_model

    from rexport.runtime.bundle import write_bundle

    bundle = work / f"{arch}-bundle"
    if not (bundle / "rexport.json").exists():
        write_bundle([export_fp32(arch, work, torch_model(arch))], bundle, overwrite=True)
    return bundle, jpegs(64, (640, 480))


def closed_loop(call, clients: int, images: list[bytes], seconds: float) -> dict:
    """`clients` threads, each sending one request at a time for `seconds`: requests/s, p50, p99."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop_at = [float("inf")]  # until the clock starts

    def worker(k: int) -> None:
        send = call()  # a per-thread client
        send(images[k % len(images)])  # warm-up, untimed
        start.wait()
        i = k
        while time.perf_counter() < stop_at[0]:
            t = time.perf_counter()
            send(images[i % len(images)])
            latencies[k].append(time.perf_counter() - t)
            i += clients

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - began
    all_ms = np.array([x for lat in latencies for x in lat]) * 1e3
    return {"requests_s": len(all_ms) / elapsed, "p50_ms": float(np.percentile(all_ms, 50)),
            "p99_ms": float(np.percentile(all_ms, 99)), "requests": len(all_ms)}


def http_sender(url: str, model: str):
    """A factory of per-thread senders: image bytes -> logits over HTTP."""
    import tritonclient.http as http

    def make():
        client = http.InferenceServerClient(url)

        def send(image: bytes) -> np.ndarray:
            tensor = http.InferInput("image", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[image]], dtype=object))
            return client.infer(model, [tensor]).as_numpy("logits")

        return send

    return make


def measure(bundle: Path, images: list[bytes], seconds: float, work: Path, threads: int | None) -> list[dict]:
    from rexport.runtime import load
    from rexport.serving import RepositoryConfig, TritonServer, export_triton
    from rexport.serving.serve import ServeConfig, start_serving
    from rexport.serving.server import free_port

    rows = []
    with load(bundle, backend="onnxruntime", providers="cpu", threads=threads) as predictor:
        for n in CLIENTS:
            rows.append({"path": "predictor", "clients": n, **closed_loop(
                lambda: lambda img: predictor.run(predictor.preprocess(img)), n, images, seconds)})
    repo = export_triton(bundle, work / "serve-repository", RepositoryConfig(classifier="runtime"), overwrite=True)
    with TritonServer(repo.path) as server:
        for n in CLIENTS:
            rows.append({"path": "triton", "clients": n,
                         **closed_loop(http_sender(server.http_url, repo.name), n, images, seconds)})
    config = ServeConfig(host="127.0.0.1", http_port=free_port(), grpc_port=free_port(), metrics_port=free_port(),
                         backend="onnxruntime", providers="cpu", threads=threads)
    with start_serving(bundle, config) as serving:
        for n in CLIENTS:
            rows.append({"path": "serve", "clients": n,
                         **closed_loop(http_sender(serving.http_url, serving.name), n, images, seconds)})
    base = {r["clients"]: r for r in rows if r["path"] == "predictor"}
    for r in rows:
        r["requests_ratio"] = r["requests_s"] / base[r["clients"]]["requests_s"]
        r["p50_ratio"] = r["p50_ms"] / base[r["clients"]]["p50_ms"]
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", help="a zoo arch to serve at 224x224 from JPEGs (default: the demo's ResNet-20)")
    p.add_argument("--seconds", type=float, default=4.0, help="seconds per measurement (default 4)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("--work", type=Path, default=Path(__file__).resolve().parent / ".work")
    p.add_argument("--json", type=Path, help="write the rows and the environment as JSON")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = workdir(args.work)
    bundle, images = arch_inputs(args.arch, work) if args.arch else demo_inputs(work)
    rows = measure(bundle, images, args.seconds, work, args.threads)
    env = environment(args.threads or 0)
    print(f"\n{args.arch or 'demo resnet20'}: one image per request, {args.seconds:g} s per row "
          f"({format_environment(env)})")
    print(table(["clients", "path", "req/s", "p50 ms", "p99 ms", "req/s vs predictor", "p50 vs predictor"],
                [[r["clients"], r["path"], f"{r['requests_s']:.1f}", f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
                  f"{r['requests_ratio']:.2f}x", f"{r['p50_ratio']:.2f}x"]
                 for r in sorted(rows, key=lambda r: (r["clients"], r["path"] != "predictor"))]))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
