"""Latency by precision: PyTorch eager FP32, ONNX Runtime FP32 / FP16 / INT8 (cpu target, cpu
target with full-range weights, trt target) and OpenVINO, one architecture, several batch sizes,
all measured in one run.

    python benchmarks/precision.py                                  # resnet50 at 224, batch 1 and 8
    python benchmarks/precision.py --arch resnet18 --iterations 20  # a quick run
    python benchmarks/precision.py --json precision.json

The models are built with rexport's own API (deterministic, realistically scaled weights from
tests/helpers.py: untrained, which does not matter for speed), exported, converted to FP16 and
calibrated to INT8 once, and cached in the work directory (default benchmarks/.work/; --rebuild
redoes it). Every row runs the same random batch; the rows are measured in interleaved blocks
(each row in turn, several rounds) so that drift on a shared machine hits them all alike.
Reported: p50 latency per call and the speed-up over ONNX Runtime FP32 at the same batch.
Targets (printed PASS/MISS, never failing): INT8 cpu-target >= 2.5x ONNX Runtime FP32, and
<= 1.10x the latency of OpenVINO on the same INT8 file.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np

from rexport.console import table
from rexport.runtime import load
from rexport.runtime.bench import measure

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = ROOT / "benchmarks" / ".work"
CALIB_SAMPLES = 64
INT8_SPEEDUP_TARGET = 2.5  # INT8 cpu-target vs ONNX Runtime FP32
OPENVINO_TARGET = 1.10  # INT8 cpu-target latency / OpenVINO INT8 latency
ORT_ROWS = {"fp32": "ORT FP32", "fp16": "ORT FP16", "int8-cpu": "ORT INT8 cpu-target",
            "int8-cpu-full": "ORT INT8 cpu, full range", "int8-trt": "ORT INT8 trt-target"}


# -- models ---------------------------------------------------------------------------------
def torch_model(arch: str):
    """A zoo model in eval mode with tests/helpers.py's deterministic weights."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import deterministic_state_dict

    from rexport.exporter import build_model

    model = build_model(arch)
    model.load_state_dict(deterministic_state_dict({k: tuple(v.shape) for k, v in model.state_dict().items()}))
    return model.eval()


def workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / ".gitignore").write_text("# benchmark models, rebuilt by benchmarks/*.py\n*\n")
    return path


def export_fp32(arch: str, work: Path, model=None, rebuild: bool = False) -> Path:
    """The arch's FP32 ONNX in `work` (exported with parity checked, unless cached)."""
    from rexport.exporter import ExportConfig, export_onnx
    from rexport.exporter.checkpoint import LoadedModel

    path = work / f"{arch}.fp32.onnx"
    if path.exists() and not rebuild:
        return path
    model = model if model is not None else torch_model(arch)
    print(f"exporting {arch} -> {path} ...", flush=True)
    loaded = LoadedModel(model, arch, model.fc.out_features, model.conv1.in_channels, {}, None, [])
    result = export_onnx(loaded, path, ExportConfig(arch=arch, overwrite=True))
    print(result.format(), flush=True)
    return path


def prepare(arch: str, work: Path, model, data: str | None, rebuild: bool) -> dict[str, Path]:
    """FP32, FP16 and INT8 (cpu and trt target) ONNX files of `arch`, cached in `work`."""
    from rexport.calibration import QuantizeConfig, quantize, to_fp16
    from rexport.calibration.qdq import uses_reduce_range

    fp32 = export_fp32(arch, work, model, rebuild)
    paths = {"fp32": fp32, "fp16": work / f"{arch}.fp16.onnx",
             "int8-cpu": work / f"{arch}.int8-cpu.onnx", "int8-cpu-full": work / f"{arch}.int8-cpu-full.onnx",
             "int8-trt": work / f"{arch}.int8-trt.onnx"}
    if data is None:  # seeded random normal samples: enough to calibrate for a speed test
        data = str(work / f"calib-{arch}.npy")
        if rebuild or not Path(data).exists():
            shape = load(fp32, providers="cpu").info.input_shape
            np.save(data, np.random.default_rng(0).standard_normal((CALIB_SAMPLES, *shape), dtype=np.float32))
    if rebuild or not paths["fp16"].exists():
        print(f"converting to FP16 -> {paths['fp16']} ...", flush=True)
        print(to_fp16(fp32, paths["fp16"], overwrite=True).format(), flush=True)
    for key, target, reduce_range in (("int8-cpu", "cpu", None), ("int8-cpu-full", "cpu", False),
                                      ("int8-trt", "trt", None)):
        out = paths[key]
        if rebuild or not out.exists() or _reduce_range(out) != uses_reduce_range(target, reduce_range):
            print(f"calibrating INT8 ({target} target) on {data} -> {out} ...", flush=True)
            config = QuantizeConfig(calib_data=data, target=target, reduce_range=reduce_range,
                                    calib_samples=CALIB_SAMPLES, overwrite=True)
            print(quantize(fp32, out, config).format(), flush=True)
    return paths


def _reduce_range(path: Path) -> bool:
    """The weight range a cached INT8 file was made with (files from before reduce_range: False)."""
    import onnx
    from rexport.runtime.metadata import ModelInfo

    info = ModelInfo.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    return bool((info.calibration or {}).get("reduce_range", False))


# -- measuring ------------------------------------------------------------------------------
def interleaved(calls: dict[str, Callable[[], object]], *, iterations: int, warmup: int,
                rounds: int = 5) -> dict[str, np.ndarray]:
    """Latencies (ms) of each call: `warmup` untimed calls each, then `rounds` rounds in which
    every call is timed for its share of `iterations` (one untimed call first, so threads another
    library left spinning do not land on the first timed call)."""
    for call in calls.values():
        measure(call, iterations=1, warmup=max(warmup - 1, 0), duration=None)
    rounds = max(1, min(rounds, iterations))
    blocks = [len(b) for b in np.array_split(np.arange(iterations), rounds)]
    times: dict[str, list[np.ndarray]] = {name: [] for name in calls}
    for block in blocks:
        for name, call in calls.items():
            times[name].append(measure(call, iterations=block, warmup=1, duration=None)[0] * 1000)
    return {name: np.concatenate(t) for name, t in times.items()}


def environment(threads: int) -> dict:
    """What the numbers were measured on: date, CPU, cores, library versions."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        cpu = platform.processor() or "unknown"
    versions = {}
    for package in ("rexport", "numpy", "torch", "onnx", "onnxruntime", "openvino"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "cpu": cpu,
            "cores": os.cpu_count(), "threads": threads, "python": platform.python_version(), **versions}


def format_environment(env: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in env.items())


def ort_optimized_ops(path: Path, threads: int, out: Path) -> collections.Counter:
    """Op types in the graph ONNX Runtime actually runs (after its optimizations), saved to `out`."""
    import onnx
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.optimized_model_filepath = str(out)
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(out)).graph
    return collections.Counter(n.op_type for n in graph.node)


def openvino_calls(paths: dict[str, Path], x: np.ndarray, threads: int) -> dict[str, Callable[[], object]]:
    """OpenVINO on the FP32 and the INT8 cpu-target file, reshaped to the static shape of `x`,
    with FP32 inference precision (its default on CPUs with bf16 is bf16) and `threads` threads."""
    import openvino as ov

    core = ov.Core()
    config = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    calls = {}
    for label, key in (("OpenVINO FP32", "fp32"), ("OpenVINO INT8 cpu-target", "int8-cpu")):
        model = core.read_model(str(paths[key]))
        model.reshape({model.input(0): list(x.shape)})
        request = core.compile_model(model, "CPU", config).create_infer_request()
        calls[label] = lambda request=request: request.infer({0: x})
    return calls


# -- report ---------------------------------------------------------------------------------
def targets(rows: list[dict]) -> list[str]:
    lines = []
    for batch in sorted({r["batch"] for r in rows}):
        at = {r["name"]: r for r in rows if r["batch"] == batch}
        int8 = at["ORT INT8 cpu-target"]
        ok = int8["speedup"] >= INT8_SPEEDUP_TARGET
        lines.append(f"{'PASS' if ok else 'MISS'}  batch {batch}: ORT INT8 cpu-target is {int8['speedup']:.2f}x "
                     f"ORT FP32 (target >= {INT8_SPEEDUP_TARGET}x)")
        ov = at.get("OpenVINO INT8 cpu-target")
        if ov is None:
            lines.append(f"SKIP  batch {batch}: no OpenVINO INT8 row (pip install openvino)")
            continue
        ratio = int8["p50_ms"] / ov["p50_ms"]
        lines.append(f"{'PASS' if ratio <= OPENVINO_TARGET else 'MISS'}  batch {batch}: ORT INT8 cpu-target latency "
                     f"is {ratio:.2f}x OpenVINO INT8 on the same file (target <= {OPENVINO_TARGET:.2f}x)")
    return lines


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", help="any zoo arch (default resnet50; resnet18 for quick runs)")
    timing_arguments(p, iterations=50, warmup=5, rounds=10)
    p.add_argument("--data", help="calibration data (image folder, .npy, .npz); default 64 seeded random samples")
    return p.parse_args(argv)


def timing_arguments(p: argparse.ArgumentParser, *, iterations: int, warmup: int, rounds: int) -> None:
    """The options every interleaved latency benchmark takes (precision.py, backends.py)."""
    p.add_argument("--batch", default="1,8", help="comma-separated batch sizes (default 1,8)")
    p.add_argument("--iterations", type=int, default=iterations,
                   help=f"timed calls per row and batch (default {iterations})")
    p.add_argument("--warmup", type=int, default=warmup, help=f"untimed calls per row first (default {warmup})")
    p.add_argument("--rounds", type=int, default=rounds, help=f"interleaved blocks per row (default {rounds})")
    p.add_argument("--threads", type=int, default=os.cpu_count(),
                   help="threads for every runtime (default: all cores)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"model cache (default {DEFAULT_WORK})")
    p.add_argument("--rebuild", action="store_true", help="export and calibrate again even if cached")
    p.add_argument("--json", type=Path, help="also write the results as JSON")


def main(argv=None) -> None:
    import torch

    args = parse_args(argv)
    batches = [int(b) for b in args.batch.split(",")]
    work = workdir(args.work)
    model = torch_model(args.arch)
    paths = prepare(args.arch, work, model, args.data, args.rebuild)
    torch.set_num_threads(args.threads)
    predictors = {name: load(paths[key], providers="cpu", threads=args.threads) for key, name in ORT_ROWS.items()}
    shape = predictors["ORT FP32"].info.input_shape
    try:
        import openvino  # noqa: F401
        have_openvino = True
    except ImportError:
        have_openvino = False
        print("note: openvino is not installed (pip install openvino): skipping the OpenVINO rows")

    env = environment(args.threads)
    print(f"\n{args.arch}, input {'x'.join(map(str, shape))}, "
          f"{args.iterations} timed calls per row in {args.rounds} interleaved rounds")
    print(format_environment(env))
    rows = []
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, *shape), dtype=np.float32)
        xt = torch.from_numpy(x)

        def torch_call(xt=xt):
            with torch.inference_mode():
                return model(xt)

        calls = {"PyTorch eager FP32": torch_call}
        calls.update({name: (lambda p=p, x=x: p.run(x)) for name, p in predictors.items()})
        if have_openvino:
            calls.update(openvino_calls(paths, x, args.threads))
        print(f"measuring batch {batch} ({len(calls)} rows) ...", flush=True)
        times = interleaved(calls, iterations=args.iterations, warmup=args.warmup, rounds=args.rounds)
        base = float(np.median(times["ORT FP32"]))
        for name, ms in times.items():
            p50 = float(np.median(ms))
            rows.append({"name": name, "batch": batch, "p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)),
                         "mean_ms": float(ms.mean()), "images_per_s": 1000 * batch / p50, "speedup": base / p50})
    print()
    print(table(("runtime", "batch", "p50 ms", "p90 ms", "img/s", "vs ORT FP32"),
                [(r["name"], r["batch"], f"{r['p50_ms']:.2f}", f"{r['p90_ms']:.2f}", f"{r['images_per_s']:.1f}",
                  f"{r['speedup']:.2f}x") for r in rows]))
    print()
    checks = targets(rows)
    print("\n".join(checks))
    ops = {key: ort_optimized_ops(paths[key], args.threads, work / f"{paths[key].stem}.ort-optimized.onnx")
           for key in ("int8-cpu", "int8-cpu-full", "int8-trt")}
    print("\nONNX Runtime's optimized graph (what it runs; saved beside the models):")
    for key, counts in ops.items():
        print(f"  {key}: " + ", ".join(f"{op} {n}" for op, n in counts.most_common()))
    if args.json:
        args.json.write_text(json.dumps({"arch": args.arch, "environment": env, "iterations": args.iterations,
                                         "rounds": args.rounds, "rows": rows, "targets": checks,
                                         "ort_optimized_ops": {k: dict(v) for k, v in ops.items()}}, indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
