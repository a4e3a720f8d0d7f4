#!/usr/bin/env python3
"""Prompt adherence of tessera-imageai-tiny, measured by a small picture classifier.

  train   fits a small CNN on make_data.py's pictures to tell their categories apart (the emoji
          groups, "Icons", ...) on a seeded 90/10 split and reports its held-out accuracy, plain
          and balanced (the mean of the per-category recalls). Categories are weighted by the
          inverse of their size, so the classifier does not favour the large ones. It sees the
          pictures at 32x32 and, half the time, blurred (drawn at 12-24 pixels and scaled back),
          and half the time roughened (colour noise, overshot contrast and saturation): a tiny
          generator's pictures are soft and speckled, and the category is in the colours and
          shapes. Without that a classifier of clean pictures files nearly every generated
          picture under "other".
  score   classifies pictures listed in a JSONL file of {"file", "category"} (relative paths
          from the file's folder) and reports the share classified as the category asked for.

The classifier is an evaluation tool only (torch on the CPU); the image model itself is trained
and run by tessera. tools/image_model/evaluate.py uses both commands.

  .venv/bin/python tools/image_model/adherence.py train --data DATA --out classifier.pt
  .venv/bin/python tools/image_model/adherence.py score --classifier classifier.pt --pictures list.jsonl
"""
import argparse
import json
import pathlib
import random
import sys

import numpy as np
import torch
from PIL import Image
from torch import nn

SIZE = 32  # what the classifier sees


def load_picture(path: pathlib.Path) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        return np.asarray(im.resize((SIZE, SIZE), Image.BILINEAR), dtype=np.uint8)


def to_tensor(pictures: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(pictures).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


class Classifier(nn.Module):
    def __init__(self, categories: int):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),
                                 nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2))

        self.features = nn.Sequential(block(3, 32), block(32, 64), block(64, 128))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(128, categories))

    def forward(self, x):
        return self.head(self.features(x))


def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])


def blur(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    side = int(torch.randint(12, 25, (1,), generator=generator))
    small = nn.functional.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return nn.functional.interpolate(small, size=(SIZE, SIZE), mode="bilinear", align_corners=False)


def roughen(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Half the pictures get a small generator's faults: per-pixel colour noise of a random
    strength, and stronger contrast and saturation (guidance overshoots)."""
    n = len(x)
    pick = (torch.rand(n, generator=generator) < 0.5).float().view(n, 1, 1, 1)
    strength = torch.rand(n, 1, 1, 1, generator=generator) * 0.6
    noise = torch.randn(x.shape, generator=generator) * strength
    gain = 1 + torch.rand(n, 1, 1, 1, generator=generator) * 0.8
    grey = x.mean(1, keepdim=True)
    rough = ((grey + (x - grey) * gain) * gain + noise).clamp(-1, 1)
    return pick * rough + (1 - pick) * x


def read_rows(path: pathlib.Path) -> list:
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        sys.exit(f"error: {path}: {e}")
    if not rows:
        sys.exit(f"error: {path}: no pictures listed")
    return rows


def train(args):
    rows = read_rows(args.data / "captions.jsonl")
    categories = sorted({r["category"] for r in rows})
    index = {c: i for i, c in enumerate(categories)}
    random.Random(args.seed).shuffle(rows)
    held = max(1, len(rows) // 10)
    x = to_tensor(np.stack([load_picture(args.data / r["file"]) for r in rows]))
    y = torch.tensor([index[r["category"]] for r in rows])
    x_test, y_test, x_train, y_train = x[:held], y[:held], x[held:], y[held:]
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(args.seed)
    counts = torch.bincount(y_train, minlength=len(categories)).float()
    weights = counts.sum() / (len(categories) * counts.clamp(min=1))
    model = Classifier(len(categories))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = args.epochs * ((len(x_train) + args.batch - 1) // args.batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)

    def report_accuracy():
        predicted = predict(model, x_test)
        recalls = [float((predicted[y_test == c] == c).float().mean()) for c in range(len(categories))
                   if (y_test == c).any()]
        return float((predicted == y_test).float().mean()), sum(recalls) / len(recalls)

    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x_train), generator=g)
        total = 0.0
        for i in range(0, len(order), args.batch):
            batch = order[i:i + args.batch]
            xb = x_train[batch].clone()
            flip = torch.rand(len(xb), generator=g) < 0.5  # a category does not depend on left and right
            xb[flip] = xb[flip].flip(3)
            soft = torch.rand(len(xb), generator=g) < 0.5
            if soft.any():
                xb[soft] = blur(xb[soft], g)
            if args.noisy:
                xb = roughen(xb, g)
            loss = nn.functional.cross_entropy(model(xb), y_train[batch], weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        plain, balanced = report_accuracy()
        print(f"epoch {epoch + 1}/{args.epochs}: loss {total / len(x_train):.3f}, held-out accuracy {plain:.1%} "
              f"(balanced {balanced:.1%})", flush=True)
    plain, balanced = report_accuracy()
    report = {"categories": categories, "train_pictures": len(x_train), "heldout_pictures": held,
              "heldout_accuracy": plain, "heldout_balanced_accuracy": balanced, "seed": args.seed,
              "epochs": args.epochs, "input_size": SIZE, "noisy": args.noisy}
    torch.save({"state": model.state_dict(), "report": report}, args.out)
    print(json.dumps(report))


def classify(classifier: pathlib.Path, rows: list, base: pathlib.Path) -> tuple[list, dict]:
    saved = torch.load(classifier, weights_only=False)
    categories = saved["report"]["categories"]
    model = Classifier(len(categories))
    model.load_state_dict(saved["state"])
    torch.set_num_threads(2)
    x = to_tensor(np.stack([load_picture(base / r["file"]) for r in rows]))
    return [categories[i] for i in predict(model, x).tolist()], saved["report"]


def score(args):
    rows = read_rows(args.pictures)
    predicted, report = classify(args.classifier, rows, args.pictures.parent)
    unknown = sorted({r["category"] for r in rows} - set(report["categories"]))
    if unknown:
        sys.exit(f"error: {args.pictures}: categories the classifier does not know: {', '.join(unknown)}")
    hits = sum(p == r["category"] for p, r in zip(predicted, rows))
    result = {"pictures": len(rows), "adherence": hits / len(rows),
              "chance": 1.0 / len({r["category"] for r in rows}),
              "classifier_heldout_accuracy": report["heldout_accuracy"]}
    print(json.dumps(result))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="fit the classifier on make_data.py's output")
    t.add_argument("--data", required=True, type=pathlib.Path)
    t.add_argument("--out", required=True, type=pathlib.Path)
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch", type=int, default=64)
    t.add_argument("--threads", type=int, default=2)
    t.add_argument("--seed", type=int, default=5)
    t.add_argument("--noisy", action=argparse.BooleanOptionalAction, default=True,
                   help="also train on pictures with colour noise and overshot contrast (roughen)")
    s = sub.add_parser("score", help="classify generated pictures")
    s.add_argument("--classifier", required=True, type=pathlib.Path)
    s.add_argument("--pictures", required=True, type=pathlib.Path)
    args = ap.parse_args()
    train(args) if args.command == "train" else score(args)


if __name__ == "__main__":
    main()
