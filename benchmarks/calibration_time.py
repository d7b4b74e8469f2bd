"""How long INT8 calibration takes: ResNet-50 at 224x224 on 512 natural-image samples.

    python benchmarks/calibration_time.py                    # trt and cpu targets, refinements on and off
    python benchmarks/calibration_time.py --target trt --refine all

Target (issue 9): calibrating ResNet-50 with 512 images stays within about 5 minutes on 2 cores,
with the defaults (entropy, every refinement, 256 more samples held out for the score). The
weights are tests/helpers.py's deterministic ones (timing does not depend on training); the samples are
patches of the photos benchmarks/realistic.py uses, resized to 224x224 and normalised with
ImageNet's mean/std. Each run starts cold (no statistics cache). Printed: seconds per run and the
ratio to the 5-minute target.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from precision import environment, export_fp32, format_environment, workdir  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 300.0
SIZE = 224
SAMPLES = 512
HELD_OUT = 256


def samples(work: Path) -> Path:
    """768 photo patches at 224x224, normalised NCHW float32 (cached)."""
    path = work / "photos224.npy"
    if not path.exists():
        from realistic import load_photos, normalize, patch_boxes, render

        from rexport.runtime.preprocess import Preprocess

        photos = load_photos()
        per_class = -(-(SAMPLES + HELD_OUT) // len(photos))
        pixels = render(photos, patch_boxes(photos, "train", per_class, seed=0), SIZE)[:SAMPLES + HELD_OUT]
        np.save(path, normalize(pixels, Preprocess.imagenet(SIZE)))
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--target", action="append", choices=["trt", "cpu"], help="repeatable (default: both)")
    p.add_argument("--refine", action="append", choices=["all", "none"], help="repeatable (default: both)")
    p.add_argument("--work", default=str(ROOT / "benchmarks" / ".work"), help="work directory")
    args = p.parse_args(argv)
    from rexport.calibration import QuantizeConfig, quantize
    from rexport.calibration.refine import parse_refinements

    work = workdir(Path(args.work))
    fp32 = export_fp32("resnet50", work)
    data = samples(work)
    print(format_environment(environment(0)), flush=True)
    rows = []
    for target in args.target or ["trt", "cpu"]:
        for refine in args.refine or ["all", "none"]:
            start = time.monotonic()
            result = quantize(fp32, work / f"calib-time-{target}-{refine}.onnx",
                              QuantizeConfig(calib_data=str(data), target=target, calib_samples=SAMPLES,
                                             overwrite=True, calib_refine=parse_refinements(refine),
                                             use_stats_cache=False))
            seconds = time.monotonic() - start
            rows.append((target, refine, seconds, result.census.int8_share))
            print(f"  {target} target, refine {refine}: {seconds:.0f} s ({seconds / TARGET_SECONDS:.2f}x the "
                  f"5-minute target; {len(result.calibration)} calibration + {len(result.validation)} held-out samples, "
                  f"{100 * result.census.int8_share:.0f}% of layers INT8)", flush=True)
    worst = max(r[2] for r in rows if r[1] == "all") if any(r[1] == "all" for r in rows) else None
    if worst is not None:
        print(f"slowest default run: {worst:.0f} s = {worst / TARGET_SECONDS:.2f}x the target "
              f"({'met' if worst <= TARGET_SECONDS else 'MISSED'})")


if __name__ == "__main__":
    main()
