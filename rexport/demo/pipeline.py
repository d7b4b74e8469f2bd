"""`rexport demo`: the whole pipeline on the embedded default model, no arguments, no network.

ResNet-20 trained on scikit-learn's digits (weights in this package), through the steps of
`rexport.pipeline.run_pipeline` (those of `rexport onnx --fp16 --int8 --bundle`):
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
        raise InputError(f"{out} exists and is not a directory; choose another output")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise InputError(f"{out} exists and was not written by `rexport demo`; choose another output")
    if (out / MARKER).exists():
        log.info("replacing the previous demo output in %s", out)


def run_demo(output: str | Path = "rexport-demo") -> DemoResult:
    from rexport.calibration import QuantizeConfig
    from rexport.calibration.qdq import TARGETS
    from rexport.exporter import ExportConfig, ParityConfig
    from rexport.pipeline import PipelineConfig, run_pipeline
    from rexport.runtime import load
    from rexport.runtime.gates import Gates

    start = time.monotonic()
    out = Path(output)
    _check_output_dir(out)
    with atomic_directory(out, overwrite=True) as tmp:
        (tmp / MARKER).write_text("written by rexport demo; the next run replaces this directory\n")
        _write_images(data.split("test"), tmp / "images")
        held_out = str(tmp / "images")  # the 360 images the model never trained on
        config = PipelineConfig(
            ExportConfig(arch=data.ARCH, labels=data.LABELS, preprocess=data.demo_preprocess(),
                         parity=ParityConfig(images=held_out)),
            fp16=True, fp16_data="demo:train",
            int8=tuple(QuantizeConfig(calib_data="demo:train", val_data="demo:test", target=target)
                       for target in sorted(TARGETS)),  # cpu first: a bundle's "int8" is its first, for CPUs
            bundle=str(tmp / "bundle"), val_data=held_out, gates=Gates(max_top1_drop=0.5))
        result = run_pipeline(data.WEIGHTS_FILE, tmp / "resnet20_digits.onnx", config)
        sections = result.sections()[:-1]  # the bundle, with what it does on the device:
        with load(result.bundle, model="int8") as predictor:  # the edge side: numpy + Pillow + onnxruntime
            sample = sorted((tmp / "images").rglob("*.png"))[7]
            prediction = predictor.predict(sample, top_k=3)
            check = predictor.selftest()
        sections.append(("bundle for the device, and a prediction from it", "\n".join([
            f"bundle -> {result.bundle} ({len(result.models)} models, reference inputs and images, the report above)",
            f"load(bundle, model=\"int8\").predict(\"{sample.relative_to(tmp)}\") -> {prediction}",
            check.format()])))
        passed = result.passed and check.passed
        text = [(title, body.replace(str(tmp), str(out))) for title, body in sections]
    return DemoResult(out, text, result.validation.to_dict(), passed, time.monotonic() - start)
