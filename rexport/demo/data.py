"""The demo dataset: scikit-learn's handwritten digits (UCI ML hand-written digits, 1,797
8x8 grayscale images, 10 classes), shipped here as `digits.npz` so the demo and calibration
need neither scikit-learn nor a network. `python -m rexport.demo.train --regenerate-data`
rebuilds the file from `sklearn.datasets.load_digits`.

Images are stored as uint8 0..255 (the original 0..16 levels scaled). They go through the
runtime's preprocessing like any photo: grayscale -> RGB, bilinear resize 8 -> 32, normalize.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from rexport.runtime.preprocess import Preprocess, preprocess

HERE = Path(__file__).parent
DATA_FILE = HERE / "digits.npz"
WEIGHTS_FILE = HERE / "resnet20_digits.safetensors"
CARD_FILE = HERE / "model_card.json"
ARCH = "resnet20"
LABELS = tuple(str(d) for d in range(10))


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # N x 8 x 8 uint8
    labels: np.ndarray  # N int64


@lru_cache(maxsize=1)
def _load() -> dict:
    with np.load(DATA_FILE) as z:
        return {k: z[k] for k in z.files}


def split(name: str) -> Split:
    """"train" (1,437 images) or "test" (360, held out from training)."""
    data = _load()
    if name not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', not {name!r}")
    idx = data[f"{name}_index"]
    return Split(data["images"][idx], data["labels"][idx].astype(np.int64))


def card() -> dict:
    """Training facts written by the training script: normalisation, accuracy, settings."""
    return json.loads(CARD_FILE.read_text())


def demo_preprocess() -> Preprocess:
    c = card()
    return Preprocess(size=(32, 32), resize=32, mean=(c["mean"],) * 3, std=(c["std"],) * 3, channels="RGB")


def to_batch(images: np.ndarray, pre: Preprocess | None = None) -> np.ndarray:
    """uint8 N x 8 x 8 digits -> float32 N x 3 x 32 x 32 model input, via the runtime's preprocessing."""
    return preprocess(images[..., None], pre or demo_preprocess())
