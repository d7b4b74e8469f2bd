"""End to end: images/s from encoded JPEGs to labels, next to inference alone; and what JPEG
draft decoding costs in agreement and buys in time.

    python benchmarks/end_to_end.py                       # resnet50 INT8 (cpu target), batch 8
    python benchmarks/end_to_end.py --arch resnet18 --images 32

Part 1: `Predictor.predict` on 640x480 JPEGs (bytes in memory, crops of the photos
`realistic.py` uses, upscaled) with the default backend (`auto`), pipelined (2 preprocessing
threads) and in turn (`workers=0`), against `Predictor.run` on the same images already
preprocessed, at the preferred batch (8). Target (issue 12): end to end >= 0.8x the
inference-only images/s.

Part 2 (needs `python benchmarks/realistic.py --task photos_resnet20`): the trained photos
ResNet-20 on its held-out patches, each saved as a 1024x1024 JPEG, decoded exactly and with
`draft=True`: top-1 agreement between the two, and the time of each.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from precision import DEFAULT_WORK, environment, format_environment, prepare, torch_model, workdir  # noqa: E402

from rexport.runtime import load  # noqa: E402

TARGET = 0.8  # end-to-end images/s / inference-only images/s


def jpegs(count: int, size: tuple[int, int], seed: int = 0) -> list[bytes]:
    """`count` JPEG files (quality 90) of `size` (w, h): random crops of the 16 photos, upscaled."""
    from PIL import Image
    from realistic import load_photos

    photos, rng, out = load_photos(), np.random.default_rng(seed), []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = h * 3 // 4, min(w, h * 3 // 4 * size[0] // size[1])
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        buf = io.BytesIO()
        Image.fromarray(photo[top:top + ch, left:left + cw]).resize(size, Image.BILINEAR).save(buf, "JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def best_of(call, repeats: int) -> float:
    """The fastest of `repeats` timed calls, in seconds (after one untimed call)."""
    call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return min(times)


def end_to_end(model, images: list[bytes], repeats: int) -> dict:
    batch = model.batch.opt
    x = model.preprocess(images)
    runs = -(-len(images) // batch)
    infer = best_of(lambda: [model.run(x[i:i + batch]) for i in range(0, len(x), batch)], repeats)
    pre = best_of(lambda: model.preprocess(images), repeats)
    piped = best_of(lambda: model.predict(images), repeats)
    in_turn = best_of(lambda: model.predict(images, workers=0), repeats)
    n = len(images)
    return {"backend": model.backend.name, "batch": batch, "images": n, "batches": runs,
            "inference_only_img_s": n / infer, "preprocess_ms_per_image": 1000 * pre / n,
            "pipelined_img_s": n / piped, "in_turn_img_s": n / in_turn,
            "pipelined_vs_inference": infer / piped, "in_turn_vs_inference": infer / in_turn}


def draft_cost(work: Path, samples: int) -> dict | None:
    """Exact vs draft decoding of held-out patches saved as 1024x1024 JPEGs, on the trained model."""
    from PIL import Image
    from realistic import load_photos, patch_boxes

    task = work / "realistic" / "photos_resnet20"
    if not (task / "model.onnx").exists():
        return None
    model = load(task / "model.onnx")
    photos = load_photos()
    boxes = patch_boxes(photos, "eval", max(1, samples // len(photos)), seed=7)
    files = []
    for label, top, left, side in boxes:
        buf = io.BytesIO()
        Image.fromarray(photos[label][top:top + side, left:left + side]).resize((1024, 1024), Image.BILINEAR).save(
            buf, "JPEG", quality=90)
        files.append(buf.getvalue())
    exact_s = best_of(lambda: model.preprocess(files), 1)
    draft_s = best_of(lambda: model.preprocess(files, draft=True), 1)
    exact, drafted = model.run(model.preprocess(files)), model.run(model.preprocess(files, draft=True))
    labels = boxes[:, 0]
    return {"samples": len(files), "agreement": float((exact.argmax(1) == drafted.argmax(1)).mean()),
            "exact_top1": float((exact.argmax(1) == labels).mean()),
            "draft_top1": float((drafted.argmax(1) == labels).mean()),
            "exact_ms_per_image": 1000 * exact_s / len(files), "draft_ms_per_image": 1000 * draft_s / len(files)}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", default="resnet50", help="any zoo arch (default resnet50)")
    p.add_argument("--precision", default="int8-cpu", choices=("fp32", "fp16", "int8-cpu", "int8-trt"))
    p.add_argument("--images", type=int, default=64, help="JPEGs per end-to-end run (default 64)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs; the fastest counts (default 3)")
    p.add_argument("--draft-samples", type=int, default=480, help="held-out patches for part 2 (default 480)")
    p.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"model cache (default {DEFAULT_WORK})")
    p.add_argument("--json", type=Path, help="also write the results as JSON")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    work = workdir(args.work)
    paths = prepare(args.arch, work, torch_model(args.arch), None, False)
    env = environment(os.cpu_count())
    print(format_environment(env))
    with load(paths[args.precision]) as model:
        e2e = end_to_end(model, jpegs(args.images, (640, 480)), args.repeats)
    print(f"\n{args.arch} {args.precision} on {e2e['backend']}, batch {e2e['batch']}, {e2e['images']} 640x480 JPEGs:")
    print(f"  inference only          {e2e['inference_only_img_s']:8.1f} img/s")
    print(f"  JPEG -> labels, piped   {e2e['pipelined_img_s']:8.1f} img/s  ({e2e['pipelined_vs_inference']:.2f}x)")
    print(f"  JPEG -> labels, in turn {e2e['in_turn_img_s']:8.1f} img/s  ({e2e['in_turn_vs_inference']:.2f}x)")
    print(f"  decode + preprocess     {e2e['preprocess_ms_per_image']:8.2f} ms per image (one thread)")
    ratio = e2e["pipelined_vs_inference"]
    checks = [f"{'PASS' if ratio >= TARGET else 'MISS'}  end to end {ratio:.2f}x inference-only images/s "
              f"(target >= {TARGET:.1f}x)"]
    draft = draft_cost(work, args.draft_samples)
    if draft is None:
        checks.append("SKIP  draft decoding: run python benchmarks/realistic.py --task photos_resnet20 first")
    else:
        print(f"\nJPEG draft decoding, photos ResNet-20 on {draft['samples']} held-out patches as 1024x1024 JPEGs:")
        print(f"  top-1 agreement, draft vs exact {100 * draft['agreement']:.2f}%; top-1 accuracy exact "
              f"{100 * draft['exact_top1']:.2f}%, draft {100 * draft['draft_top1']:.2f}%")
        print(f"  decode + preprocess: exact {draft['exact_ms_per_image']:.2f} ms, draft {draft['draft_ms_per_image']:.2f}"
              f" ms per image ({draft['exact_ms_per_image'] / draft['draft_ms_per_image']:.1f}x faster)")
    print("\n" + "\n".join(checks))
    if args.json:
        args.json.write_text(json.dumps({"environment": env, "end_to_end": e2e, "draft": draft, "targets": checks},
                                        indent=2))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
