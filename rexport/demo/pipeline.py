"""`rexport demo`: the whole pipeline on the embedded default model, no arguments, no network.

ResNet-20 trained on scikit-learn's digits (weights in this package) is exported to ONNX with
the parity check, then scored on the 360 held-out images it never saw in training.
Everything goes to one output directory, written under a temporary name and renamed into
place at the end; a previous demo's directory is replaced, anything else is left alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rexport.console import fmt_pct, log, table
from rexport.demo import data
from rexport.errors import InputError
from rexport.files import atomic_directory
from rexport.runtime.compare import compare, topk_accuracy

MARKER = ".rexport-demo"


@dataclass
class Row:
    name: str
    top1: float
    top5: float
    agreement: float | None  # top-1 agreement with PyTorch FP32
    max_abs: float | None


@dataclass
class DemoResult:
    output: Path
    export_text: str
    rows: list[Row] = field(default_factory=list)
    test_images: int = 0
    seconds: float = 0.0

    def format(self) -> str:
        card = data.card()
        lines = [
            f"rexport demo: {data.ARCH} trained on scikit-learn digits "
            f"({card['train_images']:,} train / {card['test_images']} held-out images, embedded weights)",
            "",
            "1. export",
            *("   " + line for line in self.export_text.splitlines()),
            "",
            f"2. held-out accuracy ({self.test_images} images the model never trained on)",
            table(("model", "top-1", "top-5", "agrees with PyTorch", "max abs err"),
                  [(r.name, fmt_pct(r.top1), fmt_pct(r.top5), fmt_pct(r.agreement),
                    "-" if r.max_abs is None else f"{r.max_abs:.2e}") for r in self.rows], indent="   "),
            "",
            f"wrote {self.output}/ in {self.seconds:.1f}s: the ONNX model and the held-out images "
            "(images/<label>/*.png) to try it on.",
        ]
        return "\n".join(lines)


def _write_images(split: data.Split, root: Path) -> None:
    from PIL import Image

    for i, (img, label) in enumerate(zip(split.images, split.labels)):
        folder = root / data.LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, "L").save(folder / f"{i:04d}.png")


def _check_output_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise InputError(f"{out} exists and is not a directory; choose another --output")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(f"{out} exists and was not written by `rexport demo`; choose another --output")
    if (out / MARKER).exists():
        log.info("replacing the previous demo output in %s", out)


def run_demo(output: str | Path = "rexport-demo") -> DemoResult:
    import torch

    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_model
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend

    start = time.monotonic()
    out = Path(output)
    _check_output_dir(out)
    test = data.split("test")
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / MARKER).write_text("written by rexport demo; the next run replaces this directory\n")
        _write_images(test, tmp / "images")
        loaded = load_model(data.WEIGHTS_FILE, data.ARCH)
        onnx_path = tmp / "resnet20_digits.onnx"
        config = ExportConfig(arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(),
                              parity=ParityConfig(images=str(tmp / "images")))
        exported = export_onnx(loaded, onnx_path, config)

        log.info("scoring the held-out images...")
        x = data.to_batch(test.images)
        with torch.inference_mode():
            reference = loaded.model(torch.from_numpy(x)).numpy()
        onnx_fp32 = OnnxRuntimeBackend(onnx_path).run(x)
        rows = [Row("PyTorch FP32", topk_accuracy(reference, test.labels), topk_accuracy(reference, test.labels, 5),
                    None, None)]
        c = compare(onnx_fp32, reference)
        rows.append(Row("ONNX FP32 (onnxruntime)", topk_accuracy(onnx_fp32, test.labels),
                        topk_accuracy(onnx_fp32, test.labels, 5), c.top1_agreement, c.max_abs))
        export_text = exported.format().replace(str(tmp), str(out))
    return DemoResult(out, export_text, rows, len(test.labels), time.monotonic() - start)

