"""INT8 on a model with real trained weights and natural-image inputs, where INT8 errors show.

The fixture (tests/fixtures/photos_resnet20.*, made by `python benchmarks/realistic.py --fixture`)
is a ResNet-20 trained to tell 16 photos apart from 32x32 patches; about a quarter of its held-out
patches have a top-1 logit margin below 1, so small logit errors flip answers, as they do on real
deployed models. The digits demo scores 100% in every form and cannot show this.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from rexport.calibration import QuantizeConfig, quantize
from rexport.calibration.rules import check_trt_rules

FIXTURES = Path(__file__).parent.parent / "fixtures"
AGREEMENT = 0.985  # the goal is 99% (benchmarks/accuracy.py); this one model sits just at it on trt


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """(FP32 ONNX, calibration .npz, held-out .npz) for the photos ResNet-20."""
    from rexport.exporter import ExportConfig, ParityConfig, export_onnx, load_model
    from rexport.runtime.preprocess import Preprocess, normalize

    card = json.loads((FIXTURES / "photos_resnet20.json").read_text())
    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in card["preprocess"].items()})
    root = tmp_path_factory.mktemp("photos")
    onnx_path = root / "photos.onnx"
    export_onnx(load_model(FIXTURES / "photos_resnet20.safetensors", card["arch"], **card["arch_options"]),
                onnx_path, ExportConfig(arch=card["arch"], labels=tuple(card["labels"]), preprocess=pre,
                                        parity=ParityConfig(enabled=False)))
    with np.load(FIXTURES / "photos_resnet20.npz") as z:
        for split in ("calib", "eval"):
            x = np.stack([normalize(p, pre) for p in z[split]])
            np.savez(root / f"{split}.npz", input=x, labels=z[f"{split}_labels"])
    return onnx_path, root / "calib.npz", root / "eval.npz"


@pytest.mark.parametrize("target", ["trt", "cpu"])
def test_refined_int8_keeps_the_fp32_answers_on_natural_images(photos, tmp_path, target):
    """Every conv and the classifier in INT8; the default refinements (ranges, GPTQ, bias) win back
    at least half a point of agreement over the calibrator alone. Measured on this fixture: trt
    98.05% -> 98.96%, cpu 97.53% -> 99.22% (benchmarks/accuracy.py has the full models)."""
    model, calib, held_out = photos
    config = QuantizeConfig(calib_data=str(calib), val_data=str(held_out), target=target)
    plain = quantize(model, tmp_path / "plain.onnx", replace(config, calib_refine=()))
    result = quantize(model, tmp_path / "photos.int8.onnx", config)
    assert result.census.int8_share == 1.0
    assert result.score.agreement >= AGREEMENT, result.format()
    assert result.score.agreement >= plain.score.agreement + 0.005, (plain.format(), result.format())
    if target == "trt":
        import onnx

        check_trt_rules(onnx.load(str(result.path)))
