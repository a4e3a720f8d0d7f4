#!/usr/bin/env python3
"""Measure tessera-imageai-tiny: prompt adherence against an unconditional baseline, and a grid.

For every held-out picture (heldout.jsonl, which `tessera train-image` writes; the pictures were
never trained on) whose category is a real one (not "other"), the model draws its caption with
`tessera image` at one seed, and draws the empty prompt at the same seed. The classifier of
adherence.py then names a category for each drawing:

  adherence        share of the prompted drawings classified as the caption's category
  unconditional    the same for the empty-prompt drawings: what the category would score if the
                   prompt were ignored (the classifier's own leanings included)
  chance           1 / number of categories asked

and writes eval.json (with the per-category counts and the settings) and generated.jsonl. With
--grid it also draws the first held-out caption of each category at four seeds into one PNG.

  .venv/bin/python tools/image_model/evaluate.py --model MODEL --classifier classifier.pt --out DIR
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import adherence  # noqa: E402


REUSE = False  # --reuse: keep drawings already in --out (same settings assumed)


def draw(tessera: str, model: pathlib.Path, prompt: str, seed: int, steps: int, guidance, out: pathlib.Path) -> None:
    if REUSE and out.exists():
        return
    cmd = [tessera, "image", "-m", str(model), "-p", prompt, "-s", str(seed), "--steps", str(steps), "-o", str(out)]
    if guidance is not None:
        cmd += ["-g", str(guidance)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"error: tessera image failed for {prompt!r}: {done.stderr.strip()}")


def features(path: pathlib.Path):
    """A drawing as its colours on an 8x8 grid (box-averaged, which also removes the speckle)."""
    import numpy as np
    from PIL import Image
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((8, 8), Image.BOX), dtype=np.float32).ravel() / 255.0


def paired_adherence(args, rows: list, listed: list) -> dict:
    """The second measure: does a drawing carry the category its prompt asked for? A linear
    classifier (softmax regression on 8x8 colour grids) learns the categories from the model's own
    drawings of training captions (--paired per category, never the held-out ones), then names
    the category of each held-out drawing. A model that ignored its prompt would score chance."""
    import numpy as np
    import torch
    heldout = {r["caption"] for r in rows}
    pool = {}
    for r in adherence.read_rows(args.data / "captions.jsonl"):
        if r["category"] in {x["category"] for x in rows} and r["caption"] not in heldout:
            pool.setdefault(r["category"], []).append(r)
    rng = np.random.default_rng(args.seed)
    train_dir = args.out / "paired"
    train_dir.mkdir(exist_ok=True)
    x_train, y_train, categories = [], [], sorted(pool)
    total = len(categories) * args.paired
    for ci, category in enumerate(categories):
        chosen = rng.choice(len(pool[category]), size=min(args.paired, len(pool[category])), replace=False)
        for j, k in enumerate(chosen):
            file = train_dir / f"{ci:02d}-{j:03d}.png"
            draw(args.tessera, args.model, pool[category][k]["caption"], args.seed + 10000 + ci * 1000 + j, args.steps,
                 args.guidance, file)
            x_train.append(features(file))
            y_train.append(ci)
            print(f"\rdrawn {len(y_train)}/{total} training captions", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    x = torch.tensor(np.stack(x_train))
    mean, std = x.mean(0), x.std(0) + 1e-3
    y = torch.tensor(y_train)
    torch.manual_seed(args.seed)
    model = torch.nn.Linear(x.shape[1], len(categories))
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=1e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model((x - mean) / std), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    hits = {"prompted": 0, "empty": 0}
    counts = {"prompted": 0, "empty": 0}
    with torch.no_grad():
        for row in listed:
            f = (torch.tensor(features(args.out / row["file"])) - mean) / std
            guess = categories[int(model(f).argmax())]
            row["paired_classified_as"] = guess
            hits[row["kind"]] += guess == row["category"]
            counts[row["kind"]] += 1
    with open(args.out / "generated.jsonl", "w") as out:
        for row in listed:
            out.write(json.dumps(row) + "\n")
    return {"adherence": hits["prompted"] / counts["prompted"], "unconditional": hits["empty"] / counts["empty"],
            "training_drawings": len(y_train), "per_category_training_captions": args.paired,
            "features": "8x8 box-averaged RGB, softmax regression"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, type=pathlib.Path, help="pipeline folder from tessera train-image")
    ap.add_argument("--classifier", required=True, type=pathlib.Path, help="adherence.py train's output")
    ap.add_argument("--out", required=True, type=pathlib.Path)
    ap.add_argument("--tessera", default=os.environ.get("TESSERA_BIN", str(HERE.parents[1] / "build" / "tessera")))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--guidance", type=float, default=None, help="default: the pipeline's")
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--per-category", type=int, default=0, help="at most this many prompts per category (0: all)")
    ap.add_argument("--grid", type=pathlib.Path, help="PNG of held-out captions x 4 seeds")
    ap.add_argument("--paired", type=int, default=20,
                    help="training captions per category drawn for the generated-picture classifier (0: none)")
    ap.add_argument("--data", type=pathlib.Path, help="make_data.py's folder (for --paired)")
    ap.add_argument("--reuse", action="store_true", help="keep drawings already in --out")
    args = ap.parse_args()
    global REUSE
    REUSE = args.reuse

    heldout = adherence.read_rows(args.model / "heldout.jsonl")
    rows, taken = [], {}
    for r in heldout:
        if r["category"] == "other":
            continue
        if args.per_category and taken.get(r["category"], 0) >= args.per_category:
            continue
        taken[r["category"]] = taken.get(r["category"], 0) + 1
        rows.append(r)
    if not rows:
        sys.exit(f"error: {args.model / 'heldout.jsonl'}: no held-out pictures in a named category")
    (args.out / "prompted").mkdir(parents=True, exist_ok=True)
    (args.out / "empty").mkdir(parents=True, exist_ok=True)
    started = time.time()
    listed = []
    for i, r in enumerate(rows):
        seed = args.seed + i
        for kind, prompt in (("prompted", r["caption"]), ("empty", "")):
            file = f"{kind}/{i:04d}.png"
            draw(args.tessera, args.model, prompt, seed, args.steps, args.guidance, args.out / file)
            listed.append({"file": file, "kind": kind, "prompt": prompt, "caption": r["caption"],
                           "category": r["category"], "seed": seed})
        print(f"\rdrawn {i + 1}/{len(rows)} prompts (and their empty-prompt twins)", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    seconds = time.time() - started
    predicted, report = adherence.classify(args.classifier, listed, args.out)
    per_category = {}
    for row, guess in zip(listed, predicted):
        row["classified_as"] = guess
        entry = per_category.setdefault(row["category"], {"prompts": 0, "prompted_hits": 0, "empty_hits": 0})
        if row["kind"] == "prompted":
            entry["prompts"] += 1
        entry[row["kind"] + "_hits"] += guess == row["category"]
    with open(args.out / "generated.jsonl", "w") as f:
        for row in listed:
            f.write(json.dumps(row) + "\n")
    n = len(rows)
    result = {
        "prompts": n,
        "categories": len(per_category),
        "adherence": sum(e["prompted_hits"] for e in per_category.values()) / n,
        "unconditional": sum(e["empty_hits"] for e in per_category.values()) / n,
        "chance": 1.0 / len(per_category),
        "per_category": per_category,
        "classifier": {k: report[k] for k in ("heldout_accuracy", "heldout_balanced_accuracy", "train_pictures",
                                              "heldout_pictures", "input_size", "epochs")},
        "settings": {"steps": args.steps, "guidance": args.guidance, "first_seed": args.seed,
                     "sampler": "the pipeline's (DDIM)"},
        "seconds_drawing": None if REUSE else seconds,  # drawings kept from an earlier run are not timed
    }
    if args.paired and args.data:
        result["paired"] = paired_adherence(args, rows, listed)
    (args.out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"adherence {result['adherence']:.1%} over {n} held-out prompts in {len(per_category)} categories; "
          f"empty prompt {result['unconditional']:.1%}; chance {result['chance']:.1%}")
    if "paired" in result:
        p = result["paired"]
        print(f"generated-picture classifier: {p['adherence']:.1%} of held-out drawings placed in the asked category, "
              f"{p['unconditional']:.1%} of the empty-prompt ones, chance {result['chance']:.1%}")

    if args.grid:
        from PIL import Image, ImageDraw
        firsts = {}
        for r in rows:
            firsts.setdefault(r["category"], r)
        tile, label = 64, 230
        seeds = [11, 12, 13, 14]
        grid = Image.new("RGB", (label + tile * len(seeds), tile * len(firsts)), "white")
        pen = ImageDraw.Draw(grid)
        tmp = args.out / "grid"
        tmp.mkdir(exist_ok=True)
        for row, (category, r) in enumerate(sorted(firsts.items())):
            text = r["caption"] if len(r["caption"]) <= 34 else r["caption"][:33] + "…"
            pen.text((4, row * tile + 18), f"{category}:", fill="gray")
            pen.text((4, row * tile + 32), text, fill="black")
            for col, seed in enumerate(seeds):
                file = tmp / f"{row}-{col}.png"
                draw(args.tessera, args.model, r["caption"], seed, args.steps, args.guidance, file)
                with Image.open(file) as im:
                    grid.paste(im.convert("RGB").resize((tile, tile)), (label + col * tile, row * tile))
        grid.save(args.grid, optimize=True)
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
