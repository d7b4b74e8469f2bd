"""`rexport demo`: the whole pipeline on the embedded default model, no arguments, no network.

ResNet-20 trained on scikit-learn's digits (weights in this package):
  1. export to ONNX with the parity check against PyTorch;
  2. FP16 ONNX, and INT8 ONNX calibrated on training images for both targets (TensorRT: int8
     symmetric Q/DQ; CPU: uint8 activations for ONNX Runtime);
  3. every form scored side by side on the 360 held-out images the model never trained on;
  4. a bundle for the device (models, references, report), loaded the way an edge app does,
     with a prediction and a self-test.
Everything goes to one output directory, written under a temporary name and renamed into
place at the end; a previous demo's directory is replaced, anything else is left alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rexport.console import log
from rexport.demo import data
from rexport.errors import InputError
from rexport.files import atomic_directory

MARKER = ".rexport-demo"


@dataclass
class DemoResult:
    output: Path
    sections: list[tuple[str, str]]  # (title, text)
    validation: dict  # the held-out ValidationReport, as a dict
    passed: bool
    seconds: float

    def to_dict(self) -> dict:
        return {"output": str(self.output), "passed": self.passed, "seconds": round(self.seconds, 2),
                "validation": self.validation}

    def format(self) -> str:
        card = data.card()
        lines = [f"rexport demo: {data.ARCH} trained on scikit-learn digits ({card['train_images']:,} train / "
                 f"{card['test_images']} held-out images, embedded weights)"]
        for i, (title, text) in enumerate(self.sections, 1):
            lines += ["", f"{i}. {title}", *("   " + line for line in text.splitlines())]
        lines += ["", f"wrote {self.output}/ in {self.seconds:.1f}s: the ONNX models (FP32, FP16, INT8 for TensorRT "
                      "and for CPUs), bundle/, and the held-out images (images/<label>/*.png) to try them on:",
                  f"  rexport predict {self.output}/bundle {self.output}/images/3/*.png -k 1"]
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
    from rexport.calibration import QuantizeConfig, quantize, to_fp16
    from rexport.runtime.data import load_dataset
    from rexport.calibration.qdq import TARGETS
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_model
    from rexport.runtime import load
    from rexport.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from rexport.runtime.bundle import write_bundle
    from rexport.runtime.gates import Gates
    from rexport.runtime.validate import model_label, torch_logits, validate_outputs

    start = time.monotonic()
    out = Path(output)
    _check_output_dir(out)
    sections = []
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / MARKER).write_text("written by rexport demo; the next run replaces this directory\n")
        _write_images(data.split("test"), tmp / "images")
        loaded = load_model(data.WEIGHTS_FILE, data.ARCH)
        fp32 = tmp / "resnet20_digits.onnx"
        exported = export_onnx(loaded, fp32, ExportConfig(
            arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(),
            parity=ParityConfig(images=str(tmp / "images"))))
        sections.append(("export to ONNX", exported.format()))

        train = load_dataset("demo:train", exported.info, samples=512)
        fp16 = to_fp16(fp32, tmp / "resnet20_digits.fp16.onnx", inputs=train.inputs[:64])
        int8 = [quantize(fp32, tmp / f"resnet20_digits.int8-{target}.onnx",
                         QuantizeConfig(data="demo:train", val_data="demo:test", method="entropy", target=target))
                for target in TARGETS]
        sections.append(("FP16 and calibrated INT8", "\n".join([fp16.format(), *(q.format() for q in int8)])))

        log.info("scoring every form on the held-out images...")
        test = load_dataset("demo:test", exported.info, samples=None)
        reference = torch_logits(data.WEIGHTS_FILE, exported.info, test.inputs)
        outputs = {}
        for path, precision in [(fp32, "fp32"), (fp16.path, "fp16"), (int8[0].path, "int8"), (int8[1].path, "int8")]:
            outputs[model_label(path, precision, "onnxruntime")] = \
                OnnxRuntimeBackend(path, providers=["CPUExecutionProvider"]).run_batched(test.inputs, 32)
        report = validate_outputs(reference, outputs, test.labels, Gates(max_top1_drop=0.5), "PyTorch FP32",
                                  data=test.describe())
        sections.append(("held-out accuracy, every form side by side", report.format()))

        bundle_dir = tmp / "bundle"
        images = sorted((tmp / "images").rglob("*.png"))
        write_bundle([fp32, fp16.path, int8[1].path, int8[0].path], bundle_dir, inputs=test.inputs[:8],
                     reference_logits=reference[:8], reference_source="PyTorch FP32", images=images[::90],
                     validation=report.to_dict())
        with load(bundle_dir, model="int8") as predictor:  # the edge side: numpy + Pillow + onnxruntime
            sample = images[7]
            prediction = predictor.predict(sample, top_k=3)
            check = predictor.selftest()
        sections.append(("bundle for the device, and a prediction from it", "\n".join([
            f"bundle -> {bundle_dir} (4 models, reference inputs and images, the report above)",
            f"load(bundle, model=\"int8\").predict(\"{sample.relative_to(tmp)}\") -> {prediction}",
            check.format()])))
        passed = report.passed and check.passed
        text = [(title, body.replace(str(tmp), str(out))) for title, body in sections]
    return DemoResult(out, text, report.to_dict(), passed, time.monotonic() - start)
