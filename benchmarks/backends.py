"""Backends side by side: ONNX Runtime and OpenVINO through rexport's runtime, OpenVINO called
directly, on the same FP32, FP16 and INT8 (cpu and trt target) files, measured interleaved in one
run; and which backend `load(..., backend="auto")` picks for each.

    python benchmarks/backends.py                        # resnet50, 224x224, batch 1 and 8
    python benchmarks/backends.py --arch resnet18 --iterations 20

Targets (issue 12): rexport's OpenVINO backend within 1.05x the latency of OpenVINO called
directly on the same file (compiled for the batch's static shape, as a user writing it by hand
would), at batch 1 and 8; and `auto` picks the fastest installed backend for each precision
(within 5%: closer than that is a tie on a shared machine) among those that stay exact here (on an
x86 CPU without VNNI, int8 kernels saturate on full-range INT8 weights: docs/runtime.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from precision import (environment, format_environment, interleaved, prepare, timing_arguments,  # noqa: E402
                       torch_model, workdir)

from rexport.console import table  # noqa: E402
from rexport.runtime import load  # noqa: E402
from rexport.runtime.backends.choice import saturating  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8-cpu", "int8-trt")
DIRECT_TARGET = 1.05  # rexport's OpenVINO backend / OpenVINO called directly
AUTO_TIE = 1.05  # auto's pick may be this much slower than the fastest backend (a tie)


def direct_openvino(path: Path, x: np.ndarray, threads: int):
    """OpenVINO by hand: the file reshaped to x's static shape, the same hints as the backend."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(str(path))
    model.reshape({model.input(0): list(x.shape)})
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    request = core.compile_model(model, "CPU", config).create_infer_request()
    return lambda: request.infer({0: x})


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", help="any zoo arch (default resnet50)")
    timing_arguments(p, iterations=30, warmup=3, rounds=6)
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = workdir(args.work)
    paths = prepare(args.arch, work, torch_model(args.arch), None, args.rebuild)
    predictors = {(p, b): load(paths[p], backend=b, threads=args.threads)
                  for p in PRECISIONS for b in ("onnxruntime", "openvino")}
    auto = {p: load(paths[p]).backend.name.split()[0] for p in PRECISIONS}
    drifts = {(p, b): bool(saturating(pr.info.calibration, pr.backend.name)) for (p, b), pr in predictors.items()}
    shape = predictors[("fp32", "onnxruntime")].info.input_shape
    env = environment(args.threads)
    print(f"\n{args.arch}, input {'x'.join(map(str, shape))}, {args.iterations} timed calls per row "
          f"in {args.rounds} interleaved rounds, {args.threads} threads")
    print(format_environment(env))
    rows, checks = [], []
    for batch in (int(b) for b in args.batch.split(",")):
        x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
        calls = {}
        for p in PRECISIONS:
            calls[(p, "onnxruntime")] = lambda pr=predictors[(p, "onnxruntime")]: pr.run(x)
            calls[(p, "openvino")] = lambda pr=predictors[(p, "openvino")]: pr.run(x)
            calls[(p, "openvino direct")] = direct_openvino(paths[p], x, args.threads)
        print(f"measuring batch {batch} ({len(calls)} rows) ...", flush=True)
        times = interleaved(calls, iterations=args.iterations, warmup=args.warmup, rounds=args.rounds)
        p50 = {k: float(np.median(v)) for k, v in times.items()}
        for (p, b), ms in p50.items():
            rows.append({"precision": p, "backend": b, "batch": batch, "p50_ms": ms,
                         "images_per_s": 1000 * batch / ms, "auto": b == auto[p]})
        for p in PRECISIONS:
            ratio = p50[(p, "openvino")] / p50[(p, "openvino direct")]
            checks.append(f"{'PASS' if ratio <= DIRECT_TARGET else 'MISS'}  batch {batch} {p}: rexport's OpenVINO "
                          f"backend is {ratio:.3f}x OpenVINO called directly (target <= {DIRECT_TARGET:.2f}x)")
            exact = [b for b in ("onnxruntime", "openvino") if not drifts[(p, b)]] or ["onnxruntime", "openvino"]
            fastest = min(exact, key=lambda b: p50[(p, b)])
            behind = p50[(p, auto[p])] / p50[(p, fastest)]  # a tie within AUTO_TIE is noise on a shared machine
            checks.append(f"{'PASS' if behind <= AUTO_TIE else 'MISS'}  batch {batch} {p}: auto picks {auto[p]}, "
                          f"{behind:.2f}x the fastest here ({fastest}; ONNX Runtime / OpenVINO latency "
                          f"{p50[(p, 'onnxruntime')] / p50[(p, 'openvino')]:.2f}x; target <= {AUTO_TIE:.2f}x)")
    print()
    print(table(("precision", "backend", "batch", "p50 ms", "img/s", "auto's pick"),
                [(r["precision"], r["backend"], r["batch"], f"{r['p50_ms']:.2f}", f"{r['images_per_s']:.1f}",
                  "<-" if r["auto"] else "") for r in rows]))
    print()
    print("\n".join(checks))
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "environment": env, "rows": rows, "targets": checks},
                                        indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
