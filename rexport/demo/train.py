"""Train the embedded default model: ResNet-20 (option-A shortcuts) on the digits dataset.

    python -m rexport.demo.train                    # retrain; writes the weights and model card
    python -m rexport.demo.train --regenerate-data  # first rebuild digits.npz from scikit-learn

About a minute on two CPU cores. Needs torch (and scikit-learn for --regenerate-data).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from rexport.demo import data
from rexport.exporter.checkpoint import save_state_dict
from rexport.exporter.zoo import build_model
from rexport.runtime.compare import topk_accuracy
from rexport.runtime.preprocess import Preprocess


def regenerate_data() -> None:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    labels = digits.target.astype(np.uint8)
    train_idx, test_idx = train_test_split(np.arange(len(labels)), test_size=0.2, random_state=0, stratify=labels)
    np.savez_compressed(data.DATA_FILE, images=images, labels=labels,
                        train_index=np.sort(train_idx), test_index=np.sort(test_idx))
    print(f"wrote {data.DATA_FILE} ({len(train_idx)} train / {len(test_idx)} test)")


def sgd_step(model, opt, sched, x, y) -> float:
    """One optimiser step on a batch, with its learning-rate schedule; the batch's summed loss."""
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item() * len(y)


def train(epochs: int = 30, seed: int = 0, batch_size: int = 64, lr: float = 0.1) -> dict:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_split, test_split = data.split("train"), data.split("test")
    raw = Preprocess(size=(32, 32), resize=32, mean=(0.0,) * 3, std=(1.0,) * 3)
    x_train = data.to_batch(train_split.images, raw)
    mean, std = float(x_train.mean()), float(x_train.std())
    pre = Preprocess(size=(32, 32), resize=32, mean=(mean,) * 3, std=(std,) * 3)
    x_train = torch.from_numpy(data.to_batch(train_split.images, pre))
    y_train = torch.from_numpy(train_split.labels)
    x_test = torch.from_numpy(data.to_batch(test_split.images, pre))

    model = build_model(data.ARCH, num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps = epochs * ((len(x_train) + batch_size - 1) // batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    start = time.monotonic()
    for epoch in range(epochs):
        model.train()
        order = torch.from_numpy(rng.permutation(len(x_train)))
        total = 0.0
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            xb = x_train[idx]
            # augmentation: random shifts of up to 2 pixels (pad + crop), as CIFAR training does
            xb = F.pad(xb, (2, 2, 2, 2), value=float(xb.min()))
            dx, dy = rng.integers(0, 5, size=2)
            xb = xb[:, :, dy:dy + 32, dx:dx + 32]
            total += sgd_step(model, opt, sched, xb, y_train[idx])
        model.eval()
        with torch.no_grad():
            acc = topk_accuracy(model(x_test).numpy(), test_split.labels)
        print(f"epoch {epoch + 1:2d}/{epochs}  loss {total / len(x_train):.4f}  held-out top-1 {100 * acc:.2f}%"
              f"  ({time.monotonic() - start:.0f}s)", flush=True)
    save_state_dict(model, data.WEIGHTS_FILE)
    card = {"arch": data.ARCH, "shortcut": "A", "dataset": "sklearn.datasets.load_digits (8x8 -> 32x32)",
            "train_images": len(x_train), "test_images": len(x_test), "epochs": epochs, "seed": seed,
            "batch_size": batch_size, "lr": lr, "mean": mean, "std": std,
            "test_top1": acc, "train_seconds": round(time.monotonic() - start, 1),
            "torch": torch.__version__}
    data.CARD_FILE.write_text(json.dumps(card, indent=2) + "\n")
    print(f"wrote {data.WEIGHTS_FILE.name} and {data.CARD_FILE.name}: held-out top-1 {100 * acc:.2f}%")
    return card


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regenerate-data", action="store_true", help="rebuild digits.npz from scikit-learn")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.regenerate_data or not data.DATA_FILE.exists():
        regenerate_data()
    train(epochs=args.epochs, seed=args.seed)


if __name__ == "__main__":
    main()
