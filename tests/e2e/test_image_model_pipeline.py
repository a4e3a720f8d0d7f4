"""tools/image_model/train.sh with a tiny budget: every stage of the default image model's recipe
(pictures and captions from Debian packages, the cut CLIP tokenizer, `tessera train-image`, the
adherence classifier, the f16 export, the evaluation and the model card) runs, the training and
held-out losses fall, and the exported pipeline draws through `tessera image`."""
import json
import os
import pathlib
import struct
import subprocess

import pytest

from conftest import ROOT

NEEDED = [pathlib.Path("/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"), pathlib.Path("/usr/bin/rsvg-convert")]
pytestmark = pytest.mark.skipif(not all(p.exists() for p in NEEDED),
                                reason="the image data packages are not installed (scripts/setup installs them)")


def dtypes(path: pathlib.Path) -> set:
    with open(path, "rb") as f:
        header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_the_recipe_runs_end_to_end_on_a_small_budget(tessera_bin, tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "BUDGET": "short", "WORK": str(work), "TESSERA_BIN": str(tessera_bin)}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "image_model" / "train.sh")], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    model = work / "model"

    training = json.loads((model / "training.json").read_text())
    assert training["last_logged_loss"] < 0.8 * training["first_logged_loss"], training
    history = training["heldout_history"]
    assert history[0]["step"] == 0 and history[-1]["step"] == 40
    assert history[-1]["heldout_loss"] < history[0]["heldout_loss"], history
    assert training["heldout"] >= 5

    # The shipped layout: diffusers folders, f16 weights, no VAE.
    index = json.loads((model / "model_index.json").read_text())
    assert index["vae"] == [None, None] and not (model / "vae").exists()
    assert dtypes(model / "unet" / "diffusion_pytorch_model.safetensors") == {"F16"}
    assert dtypes(model / "text_encoder" / "model.safetensors") == {"F16"}
    vocab = json.loads((model / "tokenizer" / "vocab.json").read_text())
    assert len(vocab) == 512 + 500 + 2

    report = json.loads((model / "eval.json").read_text())
    assert report["prompts"] == report["categories"] >= 5  # one held-out caption per category
    assert 0 <= report["adherence"] <= 1 and 0 <= report["unconditional"] <= 1
    assert report["chance"] == pytest.approx(1 / report["categories"])
    paired = report["paired"]  # the classifier learnt from the model's own drawings of training captions
    assert paired["training_drawings"] == 2 * report["categories"]
    assert 0 <= paired["adherence"] <= 1 and 0 <= paired["unconditional"] <= 1
    card = (model / "README.md").read_text()
    assert "## Prompt adherence" in card and f"{report['adherence']:.1%}" in card

    out = tmp_path / "drawn.png"
    done = subprocess.run([str(tessera_bin), "image", "-m", str(model), "-p", "flag: Norway", "--size", "768x1280",
                           "--steps", "3", "-s", "3", "-o", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "upscaled" in done.stderr
    with open(out, "rb") as f:
        head = f.read(24)
    assert struct.unpack(">II", head[16:24]) == (768, 1280)


def test_bad_input_is_one_line_and_exit_2(tessera_bin, tmp_path):
    from PIL import Image
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    Image.new("RGB", (64, 64), "red").save(data / "images" / "0.png")
    Image.new("RGB", (32, 32), "blue").save(data / "images" / "1.png")
    (data / "captions.jsonl").write_text('{"file": "images/0.png", "caption": "red", "category": "A"}\n'
                                         '{"file": "images/1.png", "caption": "blue", "category": "B"}\n')
    tokenizer = ROOT / "tests" / "fixtures" / "diffusion" / "pixel" / "tokenizer"
    base = [str(tessera_bin), "train-image", "--tokenizer", str(tokenizer), "-o", str(tmp_path / "out")]
    cases = [
        (["--data", str(tmp_path / "missing")], "captions.jsonl: cannot read"),
        (["--data", str(data)], "1.png: 32x32 pixels; this training run takes 64x64"),
        (["--data", str(data), "--channels", "8,x"], "--channels '8,x': expected comma-separated integers"),
        (["--data", str(data), "--channels", "8,16", "--attention", "1"], "one entry per UNet level"),
        (["--data", str(data), "--attention", "0,2,1"], "each entry is 1 or 0"),
        (["--data", str(data), "--steps", "10", "--warmup", "10"], "--warmup must be between 0 and --steps - 1"),
    ]
    for extra, message in cases:
        done = subprocess.run(base + extra, capture_output=True, text=True)
        assert done.returncode == 2, (extra, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], (extra, done.stderr)
    (data / "captions.jsonl").write_text('{"file": "images/0.png"}\n')
    done = subprocess.run(base + ["--data", str(data)], capture_output=True, text=True)
    assert done.returncode == 2 and 'expected a JSON object with "file" and "caption" strings' in done.stderr
