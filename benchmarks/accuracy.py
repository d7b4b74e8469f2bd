"""INT8 accuracy: rexport's calibration (every method, both targets, and an accuracy budget) side by
side with ONNX Runtime's quantize_static, NNCF and NVIDIA ModelOpt, on the same models and data,
all in one run.

    python benchmarks/accuracy.py                          # every task of benchmarks/realistic.py
    python benchmarks/accuracy.py --task photos_resnet20 --json accuracy.json
    python benchmarks/accuracy.py --task demo --skip-peers # the embedded digits model, rexport only

Every tool calibrates on the same samples (the first --samples of a seeded shuffle of the task's
calib.npz) and every file it writes is scored the same way: ONNX Runtime's CPU provider on the
task's eval.npz, against the FP32 model's logits. Per row: top-1 agreement with FP32, the top-1
accuracy drop (where labels exist), where the flips fall in the FP32 logit-margin distribution,
the census (rexport's calibration/census.py, on every file: which Conv/Gemm run in INT8 and
their share of MACs), the worst per-layer relative error of a Conv output against FP32 (matched
by tensor name) and the seconds the tool took. The peers are optional: a missing one is a row
that says how to install it. Targets (printed PASS/MISS, never failing): rexport >= 99%
agreement with every conv in INT8 on both targets; rexport ahead of NNCF and ONNX Runtime; the
99.5% agreement budget keeps >= 90% of the MACs in INT8.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
import time
from collections import namedtuple
from importlib import metadata
from pathlib import Path

import numpy as np
from precision import DEFAULT_WORK, environment, format_environment, workdir
from rexport.runtime.compare import compare, topk_accuracy

from rexport.console import fmt_pct, table
from rexport.onnx_graph import consumers, producers

ROOT = Path(__file__).resolve().parents[1]
AGREEMENT_TARGET = 0.99  # rexport, every conv in INT8, both targets
BUDGET = 0.995  # --min-agreement of the budget rows
BUDGET_MAC_TARGET = 0.90  # share of MACs the budget keeps in INT8
LOW_MARGIN = 10  # percentile: "low-margin" inputs are the FP32 logits' lowest 10% top-1 margins
MODELOPT_VENV = DEFAULT_WORK / "modelopt-venv"
MODELOPT_INSTALL = (f"python -m venv --system-site-packages {MODELOPT_VENV} && {MODELOPT_VENV}/bin/pip install "
                    "torch==2.13.0 'nvidia-modelopt[onnx]'")
PEERS = ("ORT", "NNCF", "ModelOpt")

# benchmarks/realistic.py's Task, for the demo task when realistic.py is not there
Task = namedtuple("Task", "name onnx calib eval card")


# -- tasks and data --------------------------------------------------------------------------
def demo_task(work: Path) -> Task:
    """The embedded digits ResNet-20: FP32 export, demo:train as calib.npz, demo:test as eval.npz."""
    from rexport.runtime.data import load_dataset
    from rexport.exporter import ExportConfig, export_onnx, load_model

    from rexport.demo import data

    root = work / "demo_resnet20"
    root.mkdir(parents=True, exist_ok=True)
    onnx_path, calib, evaluation = root / "model.onnx", root / "calib.npz", root / "eval.npz"
    if not (onnx_path.exists() and calib.exists() and evaluation.exists()):
        print(f"exporting the demo model -> {onnx_path} ...", flush=True)
        info = export_onnx(load_model(data.WEIGHTS_FILE, data.ARCH), onnx_path, ExportConfig(
            arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(), overwrite=True)).info
        for path, split in ((calib, "demo:train"), (evaluation, "demo:test")):
            d = load_dataset(split, info, samples=None)
            np.savez(path, **{info.input_name: d.inputs, "labels": d.labels})
    return Task("demo_resnet20", onnx_path, calib, evaluation, data.card())


def find_tasks(args) -> list:
    if args.task == ["demo"]:
        return [demo_task(args.work / "accuracy")]
    try:
        from realistic import tasks
    except ImportError as e:
        if args.task:
            raise SystemExit(f"error: benchmarks/realistic.py cannot be imported ({e}); use --task demo") from None
        print(f"note: benchmarks/realistic.py cannot be imported ({e}): running the demo task", flush=True)
        return [demo_task(args.work / "accuracy")]
    return tasks(args.work / "realistic", names=args.task or None)


@dataclasses.dataclass
class Data:
    """One task's arrays: the calibration subset every tool gets, the budget's validation half of
    eval.npz and the scored half."""

    input_name: str
    calib: np.ndarray
    x: np.ndarray  # scored
    labels: np.ndarray | None
    eval_samples: int  # in eval.npz, both halves
    calib_path: Path  # the calibration subset and the budget half, as .npz files for rexport
    budget_path: Path


def read_npz(path: Path, input_name: str) -> tuple[np.ndarray, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as z:
        keys = [k for k in z.files if k != "labels"]
        x = z[input_name] if input_name in z.files else z[keys[0]]
        return x.astype(np.float32, copy=False), (z["labels"].astype(np.int64) if "labels" in z.files else None)


def prepare_data(task, input_name: str, out: Path, samples: int) -> Data:
    """Calibration subset: the first `samples` of a seeded shuffle of calib.npz. eval.npz is split
    in two seeded halves: the budget rows fit their budget on one, every row is scored on the
    other, so no row is scored on data a budget was fitted on."""
    x, labels = read_npz(Path(task.calib), input_name)
    pick = np.sort(np.random.default_rng(0).permutation(len(x))[:samples])
    calib_path, budget_path = out / "calib-subset.npz", out / "budget-val.npz"
    np.savez(calib_path, **{input_name: x[pick]}, **({} if labels is None else {"labels": labels[pick]}))
    ex, el = read_npz(Path(task.eval), input_name)
    order = np.random.default_rng(1).permutation(len(ex))
    fit, scored = np.sort(order[::2]), np.sort(order[1::2])
    np.savez(budget_path, **{input_name: ex[fit]}, **({} if el is None else {"labels": el[fit]}))
    return Data(input_name, x[pick], ex[scored], None if el is None else el[scored], len(ex), calib_path,
                budget_path)


# -- the tools -------------------------------------------------------------------------------
def rexport_rows(data: Data, out: Path, methods: list[str], ablation: bool = False, budget: bool = True):
    """(name, config kwargs) of rexport's rows: each method x target, then the budget per target;
    with `ablation`, the default method with each refinement alone and each one left out."""
    from rexport.calibration import QuantizeConfig
    from rexport.runtime.gates import Gates

    defaults = {f.name: f.default for f in dataclasses.fields(QuantizeConfig)}
    default = defaults["calib_method"]
    common = {"calib_data": str(data.calib_path), "calib_samples": len(data.calib), "overwrite": True,
              "use_stats_cache": False}
    rows = []
    for target in ("trt", "cpu"):
        for method in methods:
            rows.append((f"rexport {method} {target}" + (" (default)" if method == default else ""),
                         {**common, "calib_method": method, "target": target, "val_data": str(data.budget_path),
                          "val_samples": 64}, out / f"rexport-{method}-{target}.onnx"))
    if defaults.get("calib_refine"):  # the PTQ refinements (calibration/refine.py) off, to show what they buy
        for target in ("trt", "cpu"):
            rows.append((f"rexport {default} {target}, refine none",
                         {**common, "calib_method": default, "target": target, "calib_refine": (),
                          "val_data": str(data.budget_path), "val_samples": 64},
                         out / f"rexport-{default}-{target}-norefine.onnx"))
    if ablation:
        from itertools import combinations

        every = defaults["calib_refine"]
        for target in ("trt", "cpu"):
            for subset in [*combinations(every, 1), *combinations(every, len(every) - 1)]:
                rows.append((f"rexport {default} {target}, refine {','.join(subset)}",
                             {**common, "calib_method": default, "target": target, "calib_refine": subset,
                              "val_data": str(data.budget_path), "val_samples": 64},
                             out / f"rexport-{default}-{target}-{'-'.join(subset)}.onnx"))
    for target in ("trt", "cpu") if budget else ():
        rows.append((f"rexport budget {100 * BUDGET:g}% {target}",
                     {**common, "calib_method": default, "target": target, "val_data": str(data.budget_path),
                      "budget": Gates(min_agreement=BUDGET)}, out / f"rexport-budget-{target}.onnx"))
    return rows


def run_rexport(fp32: Path, output: Path, kwargs: dict) -> str:
    from rexport.calibration import QuantizeConfig, quantize

    result = quantize(fp32, output, QuantizeConfig(**kwargs))
    if result.budget.kept:
        return f"budget fitted on {result.validation.describe()}: {len(result.budget.kept)} layer(s) kept in float"
    return ""


def ort_rows(data: Data, out: Path):
    """ONNX Runtime quantize_static after its documented pre-processing (quant_pre_process):
    QDQ, per-channel int8 weights; MinMax, Entropy and Percentile calibration; int8 symmetric
    and uint8 activations."""
    rows = []
    for method in ("MinMax", "Entropy", "Percentile"):
        for act in ("s8", "u8"):
            rows.append((f"ORT {method} {act}" + (" (default)" if (method, act) == ("MinMax", "u8") else ""),
                         {"method": method, "act": act}, out / f"ort-{method.lower()}-{act}.onnx"))
    return rows


def run_ort(fp32: Path, output: Path, kw: dict, data: Data) -> str:
    from onnxruntime.quantization import (
        DatasetReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = output.parent / "ort-preprocessed.onnx"
    start = time.monotonic()
    quant_pre_process(str(fp32), str(pre))
    pre_seconds = time.monotonic() - start

    class Reader(DatasetReader):  # the calibration subset, 16 samples at a time
        def __init__(self):
            self.batches = iter([{data.input_name: data.calib[i:i + 16]} for i in range(0, len(data.calib), 16)])

        def get_next(self):
            return next(self.batches, None)

    reader = Reader()
    quantize_static(str(pre), str(output), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QInt8 if kw["act"] == "s8" else QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, kw["method"]),
                    extra_options={"ActivationSymmetric": kw["act"] == "s8"})
    return f"includes quant_pre_process ({pre_seconds:.1f}s)"


def nncf_rows(data: Data, out: Path):
    """Defaults (preset PERFORMANCE for a CNN: symmetric int8, fast bias correction), full bias
    correction, and activation ranges from the min/max over all samples instead of NNCF's default
    mean of each sample's min/max."""
    return [("NNCF (default)", {}, out / "nncf-default.onnx"),
            ("NNCF fast_bias_correction=False", {"fast_bias_correction": False}, out / "nncf-bias-correction.onnx"),
            ("NNCF MINMAX activation ranges", {"ranges": "MINMAX"}, out / "nncf-minmax.onnx")]


def run_nncf(fp32: Path, output: Path, kw: dict, data: Data) -> str:
    import nncf
    import onnx
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet

    kw = dict(kw)
    if "ranges" in kw:
        kw["advanced_parameters"] = AdvancedQuantizationParameters(
            activations_range_estimator_params=getattr(RangeEstimatorParametersSet, kw.pop("ranges")))
    dataset = nncf.Dataset(list(data.calib), lambda x: {data.input_name: x[None]})  # one sample per item
    model = nncf.quantize(onnx.load(str(fp32)), dataset, subset_size=len(data.calib), **kw)
    onnx.save(model, str(output))
    return ""


def modelopt_rows(data: Data, out: Path):
    return [(f"ModelOpt {m}" + (" (default)" if m == "max" else ""), {"method": m}, out / f"modelopt-{m}.onnx")
            for m in ("max", "entropy")]


MODELOPT_SCRIPT = """
import json, sys, time
import numpy as np
a = json.loads(sys.argv[1])
try:
    import modelopt
    from modelopt.onnx.quantization import quantize
except ImportError as e:
    print(json.dumps({"missing": str(e)}))
    sys.exit(0)
with np.load(a["calib"]) as z:
    data = {a["input"]: z[a["input"]]}
start = time.monotonic()
quantize(a["onnx"], quantize_mode="int8", calibration_data=data, calibration_method=a["method"],
         calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=a["output"], log_level="WARNING")
print(json.dumps({"seconds": time.monotonic() - start, "version": modelopt.__version__}))
"""


def run_modelopt(fp32: Path, output: Path, kw: dict, data: Data, python: str) -> tuple[str, float]:
    """ModelOpt in its own interpreter (its onnx and onnxruntime-gpu pins would replace the dev
    environment's): INT8 Q/DQ calibrated on the CPU, the float part kept in FP32."""
    args = {"onnx": str(fp32), "calib": str(data.calib_path), "input": data.input_name, "method": kw["method"],
            "output": str(output)}
    proc = subprocess.run([python, "-c", MODELOPT_SCRIPT, json.dumps(args)], check=False, capture_output=True,
                          text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        raise RuntimeError(err[-1] if err else f"exit code {proc.returncode}")
    result = json.loads(lines[-1])
    if "missing" in result:
        raise ModuleNotFoundError(result["missing"])
    return f"modelopt {result['version']}, calibration_eps=['cpu'], high_precision_dtype fp32", result["seconds"]


# -- scoring ---------------------------------------------------------------------------------
def logits(model: Path | bytes, x: np.ndarray) -> np.ndarray:
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend(model, providers=["CPUExecutionProvider"])
    fixed = backend.input_shape[0]
    if fixed not in (-1, None):  # a file made with a fixed batch: run it that many at a time
        return np.concatenate([backend.run(x[i:i + fixed]) for i in range(0, len(x), fixed)])
    return backend.run_batched(x, 64)


def margins(reference: np.ndarray) -> np.ndarray:
    """The FP32 top-1 logit minus the top-2 logit, per sample."""
    top2 = np.sort(reference, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def layer_tensors(model) -> dict[str, str]:
    """The tensor that carries each Conv's result (the Relu's output where a lone Relu follows
    it, as rexport's cpu target folds it) -> the Conv's name."""
    read_by = consumers(model.graph)
    out = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            t = node.output[0]
            users = read_by.get(t, [])
            if len(users) == 1 and users[0].op_type == "Relu":
                t = users[0].output[0]
            out[t] = node.name
    return out


def quantized_view(model, tensor: str) -> str | None:
    """Where `model` has `tensor`, the name to read it by: the DequantizeLinear output when the
    tensor is quantized (what the next INT8 layer reads), else the tensor itself."""
    if tensor not in producers(model.graph):
        return None
    read_by = consumers(model.graph)
    for q in read_by.get(tensor, []):
        if q.op_type == "QuantizeLinear":
            for dq in read_by.get(q.output[0], []):
                if dq.op_type == "DequantizeLinear":
                    return dq.output[0]
    return tensor


def layer_errors(fp32_model, qmodel, x: np.ndarray) -> dict[str, float]:
    """Relative L2 error ||int8 - fp32|| / ||fp32|| of each Conv output both models name alike."""
    from rexport.calibration.stats import run_intermediates

    names = {t: quantized_view(qmodel, t) for t in layer_tensors(fp32_model)}
    names = {t: v for t, v in names.items() if v is not None}
    if not names:
        return {}
    err = dict.fromkeys(names, 0.0)
    ref = dict.fromkeys(names, 0.0)
    for f, q in zip(run_intermediates(fp32_model, list(names), x, 8), run_intermediates(qmodel, list(set(names.values())), x, 8)):
        for t, v in names.items():
            err[t] += float(np.sum((q[v].astype(np.float64) - f[t]) ** 2))
            ref[t] += float(np.sum(f[t].astype(np.float64) ** 2))
    conv = layer_tensors(fp32_model)
    return {conv[t]: (err[t] / ref[t]) ** 0.5 if ref[t] > 0 else 0.0 for t in names}


def mac_share(counts, fp32_macs: dict[str, int]) -> float:
    """The census's INT8 share of MACs, each layer's MACs taken from the FP32 model where the
    INT8 file's census counts none (weights quantized at run time, a float initializer through
    QuantizeLinear, as ModelOpt writes them: the census finds no weight shape there)."""
    macs = {n: counts.macs.get(n) or fp32_macs.get(n, 0) for n in counts.macs}
    total = sum(macs.values())
    return sum(macs[n] for n in counts.int8) / total if total else 0.0


def score(path: Path, fp32_model, fp32_macs: dict[str, int], reference: np.ndarray, margin: np.ndarray, data: Data,
          layer_samples: int) -> dict:
    import onnx
    from rexport.calibration.census import census

    out = logits(path, data.x)
    c = compare(out, reference)
    flipped = out.argmax(1) != reference.argmax(1)
    low = margin <= np.percentile(margin, LOW_MARGIN)
    qmodel = onnx.load(str(path))
    counts = census(qmodel)
    errors = layer_errors(fp32_model, qmodel, data.x[:layer_samples])
    worst = max(errors, key=errors.get) if errors else None
    row = {"agreement": c.top1_agreement, "cosine": c.cosine, "max_abs": c.max_abs, "flips": int(flipped.sum()),
           "flip_rate_low_margin": float(flipped[low].mean()), "flip_rate_rest": float(flipped[~low].mean()),
           # where the most confident flip sits in the FP32 margin distribution (percentile rank)
           "max_flip_margin_rank": float(100 * (margin <= margin[flipped].max()).mean()) if flipped.any() else None,
           "int8_layers": len(counts.int8), "layers": counts.total, "int8_mac_share": mac_share(counts, fp32_macs),
           "census_int8_mac_share": counts.int8_mac_share,
           "float_layers": counts.float, "layer_errors": errors, "worst_layer": worst,
           "worst_layer_error": errors[worst] if worst else None, "layers_compared": len(errors)}
    if data.labels is not None:
        row["top1"] = topk_accuracy(out, data.labels)
        row["top1_drop_points"] = 100 * (topk_accuracy(reference, data.labels) - row["top1"])
    return row


# -- one task --------------------------------------------------------------------------------
def run_task(task, args) -> dict:
    import onnx
    from rexport.calibration.census import census
    from rexport.calibration.observers import METHODS
    from rexport.runtime.metadata import ModelInfo

    out = args.work / "accuracy" / task.name
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "fp32.onnx"  # a snapshot: every row reads the same model, even if the task is rebuilt meanwhile
    shutil.copyfile(task.onnx, fp32)
    sources = {k: hashlib.sha256(Path(getattr(task, k)).read_bytes()).hexdigest()[:16] for k in ("onnx", "calib", "eval")}
    fp32_model = onnx.load(str(fp32))
    info = ModelInfo.from_props({p.key: p.value for p in fp32_model.metadata_props})
    data = prepare_data(task, info.input_name, out, args.samples)
    reference = logits(fp32, data.x)
    margin = margins(reference)
    fp32_macs = census(fp32_model).macs
    card = task.card
    if isinstance(card, Path) and card.exists():
        card = json.loads(card.read_text())
    result = {"task": task.name, "onnx": str(task.onnx), "sha256": sources, "card": card, "calibration_samples": len(data.calib),
              "scored_samples": len(data.x), "eval_samples": data.eval_samples, "labelled": data.labels is not None,
              "fp32_margin_percentiles": {p: float(np.percentile(margin, p)) for p in (1, 5, 10, 25, 50)},
              "rows": []}
    if data.labels is not None:
        result["fp32_top1"] = topk_accuracy(reference, data.labels)
    print(f"\n[{task.name}] {fp32.name}, input {'x'.join(map(str, info.input_shape))}: calibrating on "
          f"{len(data.calib)} samples, scoring on {len(data.x)} ...", flush=True)

    methods = [m for m in (args.methods.split(",") if args.methods else METHODS)]
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise SystemExit(f"error: --methods: unknown {', '.join(sorted(unknown))} (have {', '.join(METHODS)})")
    groups = [("rexport", rexport_rows(data, out, methods, args.ablation, not args.skip_budget),
               lambda o, kw: run_rexport(fp32, o, kw))]
    if not args.skip_peers:
        groups += [("ORT", ort_rows(data, out), lambda o, kw: run_ort(fp32, o, kw, data)),
                   ("NNCF", nncf_rows(data, out), lambda o, kw: run_nncf(fp32, o, kw, data)),
                   ("ModelOpt", modelopt_rows(data, out),
                    lambda o, kw: run_modelopt(fp32, o, kw, data, args.modelopt_python))]
    for tool, rows, run in groups:
        missing = None
        for name, kw, output in rows:
            row = {"tool": tool, "name": name, "output": str(output),
                   "config": {k: (v.describe() if hasattr(v, "describe") else v) for k, v in kw.items()}}
            result["rows"].append(row)
            if missing:
                row["status"] = missing
                continue
            print(f"[{task.name}] {name} ...", flush=True)
            output.unlink(missing_ok=True)
            start = time.monotonic()
            try:
                note = run(output, kw)
            except ModuleNotFoundError as e:
                missing = row["status"] = f"not installed: {install_hint(tool)} ({e})"
                print(f"  {missing}", flush=True)
                continue
            except Exception as e:  # noqa: BLE001 - a tool that fails is a result, not the end of the run
                row["status"] = f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                print(f"  {row['status']}", flush=True)
                continue
            row["seconds"] = time.monotonic() - start
            if isinstance(note, tuple):  # ModelOpt measured its own quantize() call
                note, row["seconds"] = note
            row["status"], row["note"] = "ok", note
            row.update(score(output, fp32_model, fp32_macs, reference, margin, data, args.layer_samples))
            print(f"  agreement {fmt_pct(row['agreement'])}, {row['int8_layers']}/{row['layers']} convs/gemms in "
                  f"INT8, {row['seconds']:.1f}s", flush=True)
    return result


def install_hint(tool: str) -> str:
    return {"NNCF": "pip install nncf", "ModelOpt": MODELOPT_INSTALL,
            "ORT": "pip install onnxruntime"}.get(tool, "")


# -- report ----------------------------------------------------------------------------------
def short(layer: str | None) -> str:
    return "-" if not layer else layer.strip("/").removesuffix("/Conv").replace("/", ".")


def format_task(result: dict) -> str:
    p = result["fp32_margin_percentiles"]
    lines = [f"{result['task']}: every tool calibrated on the same {result['calibration_samples']} samples; scored "
             f"on {result['scored_samples']} of the {result['eval_samples']} eval samples" +
             (f" (FP32 top-1 {fmt_pct(result['fp32_top1'])})" if "fp32_top1" in result else " (unlabelled)") +
             "; the budget rows fitted their budget on the other half",
             "  FP32 logit margin (top-1 minus top-2) percentiles: " +
             ", ".join(f"p{k} {v:.3g}" for k, v in p.items()) +
             f"; low margin = at most p{LOW_MARGIN}", ""]
    rows, notes = [], []
    for r in result["rows"]:
        if r["status"] != "ok":
            rows.append((r["name"], r["status"].split(":")[0], *["-"] * 6))
            notes.append(f"  {r['name']}: {r['status']}")
            continue
        drop = r.get("top1_drop_points")
        rows.append((r["name"], fmt_pct(r["agreement"]), "-" if drop is None else f"{drop:.2f}",
                     f"{r['flips']} ({fmt_pct(r['flip_rate_low_margin'], 1)} / {fmt_pct(r['flip_rate_rest'], 1)})",
                     "-" if r["max_flip_margin_rank"] is None else f"p{r['max_flip_margin_rank']:.0f}",
                     f"{r['int8_layers']}/{r['layers']} {fmt_pct(r['int8_mac_share'], 1)}",
                     "-" if r["worst_layer"] is None else
                     f"{r['worst_layer_error']:.3f} {short(r['worst_layer'])} ({r['layers_compared']})",
                     f"{r['seconds']:.1f}"))
    lines.append(table(("row", "agreement", "drop pts", "flips (low margin / rest)", "top flip",
                        "INT8 convs, MACs", "worst layer rel err (layers compared)", "s"), rows))
    return "\n".join(lines + notes)


def targets(result: dict) -> list[str]:
    ok_rows = [r for r in result["rows"] if r["status"] == "ok"]
    lines = []
    name = result["task"]
    for target in ("trt", "cpu"):
        default = [r for r in ok_rows if r["tool"] == "rexport" and r["name"].endswith(f" {target} (default)")]
        if not default:
            lines.append(f"SKIP  {name}: no rexport default-method row for the {target} target")
            continue
        r = default[0]
        ok = r["agreement"] >= AGREEMENT_TARGET and not r["float_layers"]
        lines.append(f"{'PASS' if ok else 'MISS'}  {name}: {r['name']}: {fmt_pct(r['agreement'])} agreement, "
                     f"{r['int8_layers']}/{r['layers']} convs/gemms in INT8 (target >= {100 * AGREEMENT_TARGET:g}% "
                     "with every conv in INT8)")
    full = [r for r in ok_rows if r["tool"] == "rexport" and "budget" not in r["name"] and not r["float_layers"]]
    best = max(full, key=rank) if full else None
    for peer in PEERS:
        theirs = [r for r in ok_rows if r["tool"] == peer]
        if not theirs or best is None:
            status = next((r["status"] for r in result["rows"] if r["tool"] == peer), "no rows")
            lines.append(f"SKIP  {name}: rexport vs {peer}: {status if not theirs else 'no rexport row'}")
            continue
        top = max(theirs, key=rank)
        ahead, tie = rank(best) > rank(top), rank(best) == rank(top)
        verdict = "PASS" if ahead or tie else "MISS"
        if peer == "ModelOpt":
            verdict = "INFO"  # the target names NNCF and ONNX Runtime
        lines.append(f"{verdict}  {name}: best rexport row ({best['name']}, {describe(best)}) "
                     f"{'ahead of' if ahead else 'level with' if tie else 'behind'} best {peer} row "
                     f"({top['name']}, {describe(top)})")
    for r in ok_rows:
        if "budget" in r["name"]:
            ok = r["int8_mac_share"] >= BUDGET_MAC_TARGET
            lines.append(f"{'PASS' if ok else 'MISS'}  {name}: {r['name']} keeps {fmt_pct(r['int8_mac_share'], 1)} "
                         f"of MACs in INT8 (target >= {100 * BUDGET_MAC_TARGET:g}%); {fmt_pct(r['agreement'])} "
                         "agreement on the scored data")
    for r in result["rows"]:
        if "budget" in r["name"] and r["status"] != "ok":
            lines.append(f"MISS  {name}: {r['name']}: {r['status']}")
    return lines


def rank(row: dict) -> tuple:
    """Higher is better: agreement, then a smaller accuracy drop."""
    return (round(row["agreement"], 6), -round(row.get("top1_drop_points") or 0.0, 6))


def describe(row: dict) -> str:
    drop = row.get("top1_drop_points")
    return fmt_pct(row["agreement"]) + ("" if drop is None else f", drop {drop:.2f} pts")


# -- main ------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", action="append",
                   help="a task of benchmarks/realistic.py (repeatable; default: all), or demo")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"work directory (default {DEFAULT_WORK})")
    p.add_argument("--methods", help="rexport calibration methods, comma-separated (default: all of METHODS)")
    p.add_argument("--samples", type=int, default=512, help="calibration samples, the same for every tool (512)")
    p.add_argument("--layer-samples", type=int, default=32, help="eval samples for the per-layer errors (32)")
    p.add_argument("--skip-peers", action="store_true", help="rexport rows only")
    p.add_argument("--skip-budget", action="store_true", help="no budget rows")
    p.add_argument("--ablation", action="store_true",
                   help="also the default method with each refinement alone and each one left out")
    p.add_argument("--modelopt-python", default=str(MODELOPT_VENV / "bin" / "python")
                   if (MODELOPT_VENV / "bin" / "python").exists() else sys.executable,
                   help="the interpreter that has nvidia-modelopt[onnx] (default: the venv in the work "
                        "directory if there is one, else this one)")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    return p.parse_args(argv)


def versions(modelopt_python: str) -> dict:
    """Peer versions, and the rexport commit (with the files changed since, which the rexport rows ran)."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run([*git, "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True)
    changed = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], check=False,
                             capture_output=True, text=True).stdout.split("\n")
    found = {"commit": head.stdout.strip() + (" + changes to " + ", ".join(c[3:] for c in changed if c) if any(changed)
                                              else "")}
    for package in ("nncf",):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    if shutil.which(modelopt_python) or Path(modelopt_python).exists():
        code = "from importlib import metadata as m; print(m.version('nvidia-modelopt'))"
        proc = subprocess.run([modelopt_python, "-c", code], check=False, capture_output=True, text=True)
        if proc.returncode == 0:
            found["nvidia-modelopt"] = proc.stdout.strip()
    return found


def main(argv=None) -> None:
    args = parse_args(argv)
    args.work = workdir(args.work)
    env = {**environment(0), **versions(args.modelopt_python)}
    env.pop("threads")
    print(format_environment(env), flush=True)
    results, checks = [], []
    for task in find_tasks(args):
        result = run_task(task, args)
        results.append(result)
        print("\n" + format_task(result) + "\n", flush=True)
        checks += targets(result)
        print("\n".join(targets(result)), flush=True)
    if len(results) > 1:
        print("\n" + "\n".join(checks))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "tasks": results, "targets": checks}, indent=2,
                                        default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
