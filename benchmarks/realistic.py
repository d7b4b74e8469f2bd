"""Realistic trained models and natural-image data for measuring INT8 accuracy.

    python benchmarks/realistic.py                        # build (or reuse) every task, print FP32 scores
    python benchmarks/realistic.py --task photos_resnet20 # one task
    python benchmarks/realistic.py --rebuild              # retrain and rewrite
    python benchmarks/realistic.py --fixture              # write tests/fixtures/photos_resnet20.*

The digits demo scores 100% in every form, so it shows no INT8 errors. These tasks have real
trained weights, natural-image inputs and a realistic share of uncertain inputs (small top-1
margins), where quantization error flips answers.

Tasks (each in WORK/<name>/, default benchmarks/.work/realistic/):

- photos_resnet20, photos_resnet56 (32x32), photos_resnet18_64 (the ImageNet-style resnet18 at
  64x64): which of 16 photos a square patch comes from. The photos are scikit-learn's two
  sample images (china, flower) and 14 of scikit-image's bundled images (the colour photos
  astronaut, chelsea, coffee, rocket, hubble_deep_field, immunohistochemistry, retina, and the
  grayscale camera, coins, clock, grass, gravel, brick, cell, as RGB); all CC0, public domain or
  CC BY 2.0, none needs a download. Each photo is resized so its shorter side is 300 px; the
  last 30% of its longer side is held out. Patches are squares of 12..64 px at a random place,
  resized to the input size by the runtime's own resize (so the model's recorded preprocessing,
  resize to the input size + normalize with the training mean/std, is exactly what made them).
  Training patches come from the other 70%, fresh each epoch, with random flips and brightness /
  contrast / saturation jitter; calibration patches (512) come from the same 70% without jitter
  (a user calibrates on training images); evaluation patches (2,000, 125 per photo) come only
  from the held-out 30%, so no evaluation pixel was seen in training. Flat regions (sky, the
  black border of the retina, out-of-focus background) are kept: they are the uncertain inputs.
- digits_shifted: the embedded demo model (resnet20 on scikit-learn digits, rexport/demo/)
  scored on the 360 held-out digits under six shifts (scale, blur, noise, inversion, rotation,
  translation: 2,160 inputs), calibrated on 512 unshifted training digits as a user would.

Files per task: model.onnx (FP32, exported by rexport with its preprocessing and labels; dynamic
batch), model.safetensors (the weights), calib.npz and eval.npz (preprocessed NCHW float32 under
the model's input name `input`, plus `labels`; what `rexport calibrate --calib-data/--val-data` reads)
and card.json (arch, labels, accuracies, margins, training settings and time, data). The photos
tasks also keep pixels.npz (the uint8 patches). A task whose card.json exists is reused.

Needs torch, scikit-learn and scikit-image (`pip install scikit-image`; a benchmark-only
dependency: the test fixture written by --fixture does not need it).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = ROOT / "benchmarks" / ".work" / "realistic"
FIXTURES = ROOT / "tests" / "fixtures"

# (name, source): the photos of the photos tasks, in label order
PHOTOS = (("china", "sklearn"), ("flower", "sklearn"), ("astronaut", "skimage"), ("chelsea", "skimage"),
          ("coffee", "skimage"), ("rocket", "skimage"), ("hubble_deep_field", "skimage"),
          ("immunohistochemistry", "skimage"), ("retina", "skimage"), ("camera", "skimage"),
          ("coins", "skimage"), ("clock", "skimage"), ("grass", "skimage"), ("gravel", "skimage"),
          ("brick", "skimage"), ("cell", "skimage"))
LABELS = tuple(name for name, _ in PHOTOS)
SHORTER_SIDE = 300  # every photo is resized to this shorter side first
HELD_OUT = 0.3  # share of the longer side held out for evaluation
PATCH_SIDES = (12, 64)  # patch side range in pixels of the resized photo
CALIB_SAMPLES, EVAL_PER_CLASS = 512, 125
SEEDS = {"train": 0, "calib": 1, "eval": 2, "train_acc": 3}
SHIFTS = ("scale", "blur", "noise", "invert", "rotate", "translate")


@dataclass(frozen=True)
class Task:
    """One benchmark task: an FP32 model and its calibration and evaluation data."""

    name: str
    onnx: Path
    calib: Path
    eval: Path
    card: Path
    checkpoint: Path

    @classmethod
    def at(cls, name: str, work: Path) -> Task:
        d = work / name
        return cls(name, d / "model.onnx", d / "calib.npz", d / "eval.npz", d / "card.json",
                   d / "model.safetensors")

    def read_card(self) -> dict:
        return json.loads(self.card.read_text())


@dataclass(frozen=True)
class PhotoModel:
    """How one photos model is trained."""

    name: str
    arch: str
    size: int  # input side
    epochs: int
    per_class: int  # training patches per class and epoch (fresh each epoch)
    batch: int = 128
    lr: float = 0.1


PHOTO_MODELS = {m.name: m for m in (
    PhotoModel("photos_resnet20", "resnet20", 32, epochs=8, per_class=300),
    PhotoModel("photos_resnet56", "resnet56", 32, epochs=8, per_class=200, lr=0.05),
    PhotoModel("photos_resnet18_64", "resnet18", 64, epochs=8, per_class=200, lr=0.05),
)}
TASK_NAMES = (*PHOTO_MODELS, "digits_shifted")


# -- the photos -------------------------------------------------------------------------------
def load_photos() -> list[np.ndarray]:
    """The 16 photos as uint8 RGB arrays, shorter side SHORTER_SIDE, in label order."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    try:
        import skimage.data
    except ImportError:
        sys.exit("the photos tasks need scikit-image: pip install scikit-image")
    sample = load_sample_images()
    sklearn_photos = {Path(f).stem: img for f, img in zip(sample.filenames, sample.images)}
    photos = []
    for name, source in PHOTOS:
        a = sklearn_photos[name] if source == "sklearn" else getattr(skimage.data, name)()
        img = Image.fromarray(a).convert("RGB")
        scale = SHORTER_SIDE / min(img.size)
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.Resampling.LANCZOS)
        photos.append(np.asarray(img))
    return photos


def patch_boxes(photos: list[np.ndarray], part: str, per_class: int, seed: int | list[int]) -> np.ndarray:
    """Random square patches (label, top, left, side) from the training ("train": the first 70%
    of each photo's longer side) or held-out ("eval": the last 30%) part of every photo."""
    rng = np.random.default_rng(seed)
    boxes = []
    for label, photo in enumerate(photos):
        h, w = photo.shape[:2]
        long_axis = 0 if h > w else 1
        split = round((h, w)[long_axis] * (1 - HELD_OUT))
        # the part's extent as (y0, y1, x0, x1)
        y0, y1, x0, x1 = 0, h, 0, w
        if part == "train":
            y1, x1 = (split, w) if long_axis == 0 else (h, split)
        else:
            y0, x0 = (split, 0) if long_axis == 0 else (0, split)
        sides = rng.integers(PATCH_SIDES[0], PATCH_SIDES[1] + 1, per_class)
        tops = y0 + (rng.random(per_class) * (y1 - y0 - sides + 1)).astype(int)
        lefts = x0 + (rng.random(per_class) * (x1 - x0 - sides + 1)).astype(int)
        boxes += [(label, t, left, s) for t, left, s in zip(tops, lefts, sides)]
    return np.array(boxes, dtype=np.int64)


def render(photos: list[np.ndarray], boxes: np.ndarray, size: int) -> np.ndarray:
    """Patches -> uint8 N x size x size x 3, through the runtime's resize (PIL bilinear)."""
    from PIL import Image
    from rexport.runtime.preprocess import Preprocess, resize_and_crop

    spec = Preprocess(size=(size, size), resize=size, mean=(0.0,) * 3, std=(1.0,) * 3)
    out = np.empty((len(boxes), size, size, 3), np.uint8)
    for i, (label, top, left, side) in enumerate(boxes):
        patch = Image.fromarray(photos[label][top:top + side, left:left + side])
        out[i] = np.asarray(resize_and_crop(patch, spec))
    return out


def normalize(pixels: np.ndarray, pre) -> np.ndarray:
    """uint8 NHWC (already at the input size) -> float32 NCHW, the runtime's arithmetic."""
    from rexport.runtime.preprocess import normalize as normalize_one

    return np.stack([normalize_one(p, pre) for p in pixels])


# -- training ---------------------------------------------------------------------------------
def _jitter(x, gen):
    """Random flips and brightness / contrast / saturation changes of +-25% on 0..1 NCHW."""
    import torch

    n = len(x)

    def factor():
        return (0.75 + 0.5 * torch.rand(n, 1, 1, 1, generator=gen))

    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = x * factor()
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * factor()  # saturation
    mean = x.mean((1, 2, 3), keepdim=True)
    x = mean + (x - mean) * factor()  # contrast
    return x.clamp(0, 1)


def logits_of(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    import torch

    model.eval()
    with torch.inference_mode():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy() for i in range(0, len(x), batch)])


def train_photos(spec: PhotoModel, photos: list[np.ndarray], eval_x: np.ndarray, eval_y: np.ndarray,
                 pre) -> tuple[object, dict]:
    """Train spec.arch on fresh training patches each epoch; returns the model and its history."""
    import torch
    from rexport.demo.train import sgd_step
    from rexport.exporter.zoo import build_model
    from rexport.runtime.compare import topk_accuracy

    torch.manual_seed(SEEDS["train"])
    gen = torch.Generator().manual_seed(SEEDS["train"])
    model = build_model(spec.arch, num_classes=len(LABELS))
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1)
    std = torch.tensor(pre.std).view(1, 3, 1, 1)
    steps_per_epoch = -(-spec.per_class * len(LABELS) // spec.batch)
    opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=spec.lr, total_steps=spec.epochs * steps_per_epoch)
    start, history = time.monotonic(), []
    for epoch in range(spec.epochs):
        boxes = patch_boxes(photos, "train", spec.per_class, seed=[SEEDS["train"], epoch])
        pixels = torch.from_numpy(render(photos, boxes, spec.size)).permute(0, 3, 1, 2)
        labels = torch.from_numpy(boxes[:, 0])
        order = torch.randperm(len(labels), generator=gen)
        model.train()
        total = 0.0
        for i in range(0, len(order), spec.batch):
            idx = order[i:i + spec.batch]
            xb = (_jitter(pixels[idx].float() / 255.0, gen) - mean) / std
            total += sgd_step(model, opt, sched, xb, labels[idx])
        acc = topk_accuracy(logits_of(model, eval_x[::4]), eval_y[::4])  # a quarter of the eval set
        history.append({"epoch": epoch + 1, "loss": round(total / len(labels), 4), "heldout_top1_quarter": round(acc, 4)})
        print(f"  {spec.name} epoch {epoch + 1:2d}/{spec.epochs}  loss {total / len(labels):.4f}  "
              f"held-out top-1 {100 * acc:.2f}% (every 4th)  ({time.monotonic() - start:.0f}s)", flush=True)
    return model.eval(), {"history": history, "seconds": round(time.monotonic() - start, 1)}


# -- tasks ------------------------------------------------------------------------------------
def margins(logits: np.ndarray) -> np.ndarray:
    """Top-1 logit minus the runner-up, per sample."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def uncertainty(logits: np.ndarray) -> dict:
    m = margins(logits)
    return {"margin_below_1": round(float((m < 1.0).mean()), 4), "margin_below_0.25": round(float((m < 0.25).mean()), 4)}


def _save_npz(path: Path, **arrays) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _export(checkpoint: Path, out: Path, arch: str, size: int, labels, pre):
    from rexport.exporter import ExportConfig, export_onnx

    result = export_onnx(checkpoint, out, ExportConfig(arch=arch, input_size=(size, size), labels=tuple(labels),
                                                       preprocess=pre, overwrite=True))
    if not result.parity.passed:
        raise RuntimeError(f"parity failed for {out}")
    return result


def build_photos(spec: PhotoModel, d: Path) -> None:
    import torch
    from rexport.exporter.checkpoint import save_state_dict
    from rexport.runtime.compare import topk_accuracy
    from rexport.runtime.preprocess import Preprocess

    print(f"{spec.name}: rendering patches ...", flush=True)
    photos = load_photos()
    sample = render(photos, patch_boxes(photos, "train", 100, seed=SEEDS["train"]), spec.size) / 255.0
    pre = Preprocess(size=(spec.size, spec.size), resize=spec.size, mean=tuple(sample.mean((0, 1, 2))),
                     std=tuple(sample.std((0, 1, 2))))
    calib_boxes = patch_boxes(photos, "train", CALIB_SAMPLES // len(LABELS), seed=SEEDS["calib"])
    eval_boxes = patch_boxes(photos, "eval", EVAL_PER_CLASS, seed=SEEDS["eval"])
    acc_boxes = patch_boxes(photos, "train", EVAL_PER_CLASS, seed=SEEDS["train_acc"])
    calib_px, eval_px = render(photos, calib_boxes, spec.size), render(photos, eval_boxes, spec.size)
    eval_x, eval_y = normalize(eval_px, pre), eval_boxes[:, 0]

    print(f"{spec.name}: training {spec.arch} at {spec.size}x{spec.size} ...", flush=True)
    model, trained = train_photos(spec, photos, eval_x, eval_y, pre)
    eval_logits = logits_of(model, eval_x)
    train_acc = topk_accuracy(logits_of(model, normalize(render(photos, acc_boxes, spec.size), pre)), acc_boxes[:, 0])

    save_state_dict(model, d / "model.safetensors")
    exported = _export(d / "model.safetensors", d / "model.onnx", spec.arch, spec.size, LABELS, pre)
    _save_npz(d / "calib.npz", input=normalize(calib_px, pre), labels=calib_boxes[:, 0])
    _save_npz(d / "eval.npz", input=eval_x, labels=eval_y)
    np.savez_compressed(d / "pixels.npz", calib=calib_px, calib_labels=calib_boxes[:, 0], eval=eval_px,
                        eval_labels=eval_y, mean=np.array(pre.mean), std=np.array(pre.std))
    card = {"task": spec.name, "arch": spec.arch, "arch_options": exported.info.arch_options,
            "num_classes": len(LABELS), "labels": list(LABELS), "input_size": spec.size,
            "preprocess": pre.to_dict(), "train_top1": round(train_acc, 4),
            "heldout_top1": round(topk_accuracy(eval_logits, eval_y), 4), **uncertainty(eval_logits),
            "epochs": spec.epochs, "train_patches_per_epoch": spec.per_class * len(LABELS),
            "batch": spec.batch, "lr": spec.lr, "train_seconds": trained["seconds"], "seed": SEEDS["train"],
            "history": trained["history"], "calib_samples": len(calib_boxes), "eval_samples": len(eval_boxes),
            "data": {"photos": [f"{source}:{name}" for name, source in PHOTOS], "shorter_side": SHORTER_SIDE,
                     "held_out": f"the last {HELD_OUT:.0%} of each photo's longer side (eval only)",
                     "patch_sides": list(PATCH_SIDES), "seeds": SEEDS,
                     "train": "fresh random patches each epoch from the first 70%, flips and colour jitter",
                     "calib": "random patches from the first 70%, no augmentation",
                     "eval": "random patches from the held-out 30%, no augmentation"},
            "torch": torch.__version__}
    (d / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def shift_digits(pixels: np.ndarray, shift: str, rng: np.random.Generator) -> np.ndarray:
    """One shift applied to uint8 N x 32 x 32 grayscale digits (white on black)."""
    from PIL import Image, ImageFilter

    out = []
    for p in pixels:
        img = Image.fromarray(p)
        if shift == "scale":  # zoom out to 60-80% or in to 120-140%
            k = round(32 * (rng.uniform(0.6, 0.8) if rng.random() < 0.5 else rng.uniform(1.2, 1.4)))
            small = img.resize((k, k), Image.Resampling.BILINEAR)
            img = Image.new("L", (32, 32), 0)
            img.paste(small, ((32 - k) // 2, (32 - k) // 2))
        elif shift == "blur":
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.0)))
        elif shift == "rotate":
            img = img.rotate(rng.choice([-1, 1]) * rng.uniform(10, 25), Image.Resampling.BILINEAR, fillcolor=0)
        elif shift == "translate":
            dy, dx = rng.choice([-1, 1], 2) * rng.integers(3, 6, 2)
            img = img.rotate(0, translate=(int(dx), int(dy)), fillcolor=0)
        a = np.asarray(img)
        if shift == "noise":
            a = np.clip(a + rng.normal(0, rng.uniform(25, 50), a.shape), 0, 255).astype(np.uint8)
        elif shift == "invert":
            a = 255 - a
        out.append(a)
    return np.stack(out)


def build_digits(d: Path) -> None:
    from rexport.runtime.data import load_dataset
    from rexport.runtime.compare import topk_accuracy
    from rexport.runtime.preprocess import Preprocess

    from rexport.demo import data as demo

    print("digits_shifted: exporting the demo model and shifting the held-out digits ...", flush=True)
    pre = demo.demo_preprocess()
    exported = _export(demo.WEIGHTS_FILE, d / "model.onnx", demo.ARCH, 32, demo.LABELS, pre)
    shutil.copyfile(demo.WEIGHTS_FILE, d / "model.safetensors")
    calib = load_dataset("demo:train", exported.info, samples=CALIB_SAMPLES, seed=0)
    _save_npz(d / "calib.npz", input=calib.inputs, labels=calib.labels)

    test = demo.split("test")
    raw = Preprocess(size=(32, 32), resize=32, mean=(0.0,), std=(1.0,), channels="L", max_pixel_value=1.0)
    gray = demo.to_batch(test.images, raw)[:, 0].round().astype(np.uint8)  # the demo's 8 -> 32 resize
    rng = np.random.default_rng(SEEDS["eval"])
    shifted = np.concatenate([shift_digits(gray, s, rng) for s in SHIFTS])
    x = normalize(np.repeat(shifted[..., None], 3, axis=3), pre)
    y = np.tile(test.labels, len(SHIFTS))
    shift_index = np.repeat(np.arange(len(SHIFTS)), len(test.labels))
    _save_npz(d / "eval.npz", input=x, labels=y, shift=shift_index)

    from rexport.runtime import load

    predictor = load(d / "model.onnx", providers="cpu")
    logits = predictor.run(x)
    train = demo.split("train")
    demo_card = demo.card()
    card = {"task": "digits_shifted", "arch": demo.ARCH, "arch_options": exported.info.arch_options, "num_classes": 10,
            "labels": list(demo.LABELS), "input_size": 32, "preprocess": pre.to_dict(),
            "train_top1": round(topk_accuracy(predictor.run(demo.to_batch(train.images, pre)), train.labels), 4),
            "clean_test_top1": round(demo_card["test_top1"], 4),
            "heldout_top1": round(topk_accuracy(logits, y), 4), **uncertainty(logits),
            "heldout_top1_by_shift": {s: round(topk_accuracy(logits[shift_index == i], test.labels), 4)
                                      for i, s in enumerate(SHIFTS)},
            "epochs": demo_card["epochs"], "train_seconds": demo_card["train_seconds"], "seed": demo_card["seed"],
            "calib_samples": len(calib), "eval_samples": len(x),
            "data": {"calib": "512 unshifted training digits (demo:train)",
                     "eval": "the 360 held-out digits (demo:test) under each shift in turn; eval.npz `shift` "
                             "indexes `shifts`",
                     "shifts": {"scale": "zoom to 60-80% or 120-140%", "blur": "Gaussian, radius 1-2 px",
                                "noise": "Gaussian, sigma 25-50 of 255", "invert": "255 - x",
                                "rotate": "10-25 degrees either way", "translate": "3-5 px in x and y"},
                     "shift_order": list(SHIFTS), "seed": SEEDS["eval"]}}
    (d / "card.json").write_text(json.dumps(card, indent=2) + "\n")


def workdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    if path.parent.name == ".work":
        (path.parent / ".gitignore").write_text("# benchmark models, rebuilt by benchmarks/*.py\n*\n")
    return path


def tasks(work: Path = DEFAULT_WORK, names=None, rebuild: bool = False) -> list[Task]:
    """The tasks named (default: all), built into work/<name>/ unless already there."""
    from rexport.files import atomic_directory

    names = [n.replace("-", "_") for n in (names or TASK_NAMES)]
    unknown = [n for n in names if n not in TASK_NAMES]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(unknown)}; choose from {', '.join(TASK_NAMES)}")
    work = workdir(Path(work))
    out = []
    for name in names:
        task = Task.at(name, work)
        if rebuild or not task.card.exists():
            with atomic_directory(work / name, overwrite=True) as tmp:
                if name == "digits_shifted":
                    build_digits(tmp)
                else:
                    build_photos(PHOTO_MODELS[name], tmp)
            if name == "photos_resnet20":
                (work / "READY_photos_resnet20").write_text("photos_resnet20 is built\n")
        out.append(task)
    return out


def score(task: Task) -> dict:
    """FP32 (ONNX Runtime) held-out top-1 and uncertainty shares of a built task."""
    from rexport.runtime import load
    from rexport.runtime.compare import topk_accuracy

    with np.load(task.eval) as z:
        x, y = z["input"], z["labels"]
    logits = load(task.onnx, providers="cpu").run(x)
    return {"top1": topk_accuracy(logits, y), **uncertainty(logits), "samples": len(y)}


# -- the test fixture -------------------------------------------------------------------------
def _balanced(labels: np.ndarray, per_class: int) -> np.ndarray:
    return np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in np.unique(labels)])


def write_fixture(work: Path, calib_per_class: int = 16, eval_per_class: int = 48) -> None:
    """tests/fixtures/photos_resnet20.{safetensors,npz,json}: the trained model and uint8 patches
    (a balanced subset of the task's calibration and evaluation patches) with the mean/std."""
    from rexport.exporter.checkpoint import load_model
    from rexport.runtime.compare import topk_accuracy
    from rexport.runtime.preprocess import Preprocess

    task = tasks(work, ["photos_resnet20"])[0]
    card = task.read_card()
    pre = Preprocess.from_dict(card["preprocess"])
    with np.load(task.onnx.parent / "pixels.npz") as z:
        px = {k: z[k] for k in z.files}
    ci, ei = _balanced(px["calib_labels"], calib_per_class), _balanced(px["eval_labels"], eval_per_class)
    stem = FIXTURES / "photos_resnet20"
    shutil.copyfile(task.checkpoint, stem.with_suffix(".safetensors"))
    np.savez_compressed(stem.with_suffix(".npz"), calib=px["calib"][ci], calib_labels=px["calib_labels"][ci],
                        eval=px["eval"][ei], eval_labels=px["eval_labels"][ei],
                        mean=np.array(pre.mean, np.float32), std=np.array(pre.std, np.float32))

    # check: the committed files alone give the task's model and its accuracy
    with np.load(stem.with_suffix(".npz")) as z:
        x, y = normalize(z["eval"], pre), z["eval_labels"]
    model = load_model(stem.with_suffix(".safetensors"), card["arch"]).model
    logits = logits_of(model, x)
    with np.load(task.eval) as z:
        full = topk_accuracy(logits_of(model, z["input"]), z["labels"])
    if abs(full - card["heldout_top1"]) > 1e-3:
        raise RuntimeError(f"fixture weights give {full:.4f} on the task's eval set, card says {card['heldout_top1']}")
    meta = {"arch": card["arch"], "arch_options": card["arch_options"], "num_classes": card["num_classes"],
            "labels": card["labels"], "input_size": card["input_size"], "preprocess": card["preprocess"],
            "mean": list(pre.mean), "std": list(pre.std),
            "npz": {"calib": f"uint8 N x 32 x 32 x 3 RGB patches, {calib_per_class} per class, from the training "
                             "part of each photo (no augmentation)",
                    "eval": f"uint8 N x 32 x 32 x 3 RGB patches, {eval_per_class} per class, from the held-out part",
                    "model input": "(pixels / 255 - mean) / std, NCHW float32 (rexport.runtime.preprocess.normalize)"},
            "fixture_eval_top1": round(topk_accuracy(logits, y), 4), **uncertainty(logits),
            "task_heldout_top1": card["heldout_top1"], "task_train_top1": card["train_top1"],
            "epochs": card["epochs"], "train_seconds": card["train_seconds"], "seed": card["seed"],
            "made_by": "python benchmarks/realistic.py --fixture (task photos_resnet20; see its docstring)",
            "data": card["data"]}
    stem.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.2f} MB" for p in sorted(FIXTURES.glob("photos_resnet20.*")))
    print(f"wrote {sizes}; fixture eval top-1 {100 * meta['fixture_eval_top1']:.2f}% "
          f"(task held-out {100 * full:.2f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", action="append", choices=TASK_NAMES, help="task to build (repeatable; default all)")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK)
    parser.add_argument("--rebuild", action="store_true", help="retrain and rewrite even when cached")
    parser.add_argument("--fixture", action="store_true", help="write tests/fixtures/photos_resnet20.*")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for training (default 2)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.fixture:
        write_fixture(args.work)
        return
    from rexport.console import table

    rows = []
    for task in tasks(args.work, args.task, args.rebuild):
        s, card = score(task), task.read_card()
        rows.append((task.name, card["arch"], s["samples"], f"{100 * s['top1']:.2f}%",
                     f"{100 * s['margin_below_1']:.1f}%", f"{100 * s['margin_below_0.25']:.1f}%",
                     f"{card['train_seconds']:.0f}s"))
    print(table(("task", "arch", "eval", "FP32 top-1", "margin < 1", "margin < 0.25", "training"), rows))


if __name__ == "__main__":
    main()
