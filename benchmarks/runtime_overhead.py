"""What rexport's runtime costs on top of ONNX Runtime: `Predictor.run` against a raw
`onnxruntime.InferenceSession.run` on an identically configured session, measured interleaved
in one run; plus `predict()` end to end and preprocessing on their own.

    python benchmarks/runtime_overhead.py                        # resnet18 at 224, batch 1
    python benchmarks/runtime_overhead.py --onnx model.onnx --image cat.jpg --json overhead.json

The raw session is created from the Predictor's own session's options and providers (same
threads, same execution providers); the Predictor's session called directly is a control row
(it shows how far two identical sessions differ). The calls alternate in blocks (--rounds) to
cancel drift on a shared machine. Target (printed PASS/MISS, never failing): Predictor.run at
most 3% slower than the raw session at p50.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np

from precision import DEFAULT_WORK, environment, export_fp32, format_environment, interleaved, workdir
from rexport.console import table
from rexport.runtime import load
from rexport.runtime.bench import synthetic_jpeg

OVERHEAD_TARGET = 0.03


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet18", help="zoo arch to export when --onnx is not given (default resnet18)")
    p.add_argument("--onnx", type=Path, help="an existing rexport ONNX instead (no torch needed)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--iterations", type=int, default=400, help="timed calls per row (default 400)")
    p.add_argument("--warmup", type=int, default=20, help="untimed calls per row first (default 20)")
    p.add_argument("--rounds", type=int, default=20, help="interleaved blocks per row (default 20)")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--image", type=Path,
                   help="image for predict() and preprocessing (default: a synthetic 640x480 JPEG)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"model cache (default {DEFAULT_WORK})")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> None:
    import onnxruntime as ort

    args = parse_args(argv)
    path = args.onnx or export_fp32(args.arch, workdir(args.work))
    predictor = load(path, providers="cpu", threads=args.threads)
    own = predictor.backend.session
    options = own.get_provider_options()
    raw = ort.InferenceSession(str(path), own.get_session_options(), providers=own.get_providers(),
                               provider_options=[options[p] for p in own.get_providers()])
    feed, fetch = own.get_inputs()[0].name, [own.get_outputs()[0].name]
    x = np.random.default_rng(0).standard_normal((args.batch, *predictor.info.input_shape), dtype=np.float32)
    image = args.image.read_bytes() if args.image else synthetic_jpeg()
    images = [image] * args.batch
    calls = {
        "Predictor.run": lambda: predictor.run(x),
        "InferenceSession.run": lambda: raw.run(fetch, {feed: x}),
        "InferenceSession.run (Predictor's session)": lambda: own.run(fetch, {feed: x}),
        "Predictor.predict (image -> top-5)": lambda: predictor.predict(images),
        "Predictor.preprocess (image -> array)": lambda: predictor.preprocess(images),
    }
    env = environment(args.threads)
    print(f"{predictor.info.arch or path.name}, input {args.batch}x{'x'.join(map(str, predictor.info.input_shape))}, "
          f"{predictor.backend.name}, {args.iterations} timed calls per row in {args.rounds} interleaved rounds; "
          f"image: {args.image or 'synthetic 640x480 JPEG'}")
    print(format_environment(env))
    times = interleaved(calls, iterations=args.iterations, warmup=args.warmup, rounds=args.rounds)
    stats = {name: {"p50_ms": float(np.median(ms)), "mean_ms": float(ms.mean()), "p90_ms": float(np.percentile(ms, 90))}
             for name, ms in times.items()}
    base = stats["InferenceSession.run"]

    def versus(name: str, key: str) -> str:  # only the inference rows compare with the raw session
        return f"{100 * (stats[name][key] / base[key] - 1):+.1f}%" if ".run" in name else "-"

    print()
    print(table(("call", "p50 ms", "mean ms", "p90 ms", "p50 vs raw", "mean vs raw"),
                [(name, f"{s['p50_ms']:.3f}", f"{s['mean_ms']:.3f}", f"{s['p90_ms']:.3f}",
                  versus(name, "p50_ms"), versus(name, "mean_ms")) for name, s in stats.items()]))
    rest = stats["Predictor.predict (image -> top-5)"]["p50_ms"] - stats["Predictor.run"]["p50_ms"] \
        - stats["Predictor.preprocess (image -> array)"]["p50_ms"]
    print(f"  predict() p50 - preprocess p50 - run p50 = {rest:.3f} ms (softmax, top-k, labels)")
    overhead = stats["Predictor.run"]["p50_ms"] / base["p50_ms"] - 1
    check = (f"{'PASS' if overhead <= OVERHEAD_TARGET else 'MISS'}  Predictor.run overhead over a raw "
             f"InferenceSession.run: {100 * overhead:+.1f}% at p50 (target <= {100 * OVERHEAD_TARGET:.0f}%)")
    print()
    print(check)
    if args.json:
        args.json.write_text(json.dumps({"model": str(path), "batch": args.batch, "environment": env,
                                         "iterations": args.iterations, "rounds": args.rounds, "rows": stats,
                                         "overhead_p50": overhead, "target": check}, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
