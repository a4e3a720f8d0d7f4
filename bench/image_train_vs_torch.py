#!/usr/bin/env python3
"""Text-to-image training images/s of tessera against PyTorch eager on the CPU, same model.

tessera runs `tessera train-image` on a picture folder (make_data.py's output) for --steps steps;
PyTorch trains diffusers' UNet2DConditionModel of the same config with a transformers
CLIPTextModel without layers, as the text encoder, on random pictures and captions of the same
shapes: forward, mean squared error, backward, gradient clipping, AdamW, and for tessera also the
weight average and data loading. Both use every core, one after the other on one machine. Prints
both throughputs and the ratio tessera / torch.

  .venv/bin/python bench/image_train_vs_torch.py --data /tmp/image-data [--steps 30] [--batch 8]
"""
import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "image_model"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, type=pathlib.Path)
    ap.add_argument("--tessera", default=str(ROOT / "build" / "tessera"))
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--channels", default="16,32,64,128")
    ap.add_argument("--attention", default="0,0,1,1")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        subprocess.run([sys.executable, str(ROOT / "tools" / "image_model" / "make_tokenizer.py"), "-o",
                        str(tmp / "tok")], check=True, capture_output=True)
        # The first steps (allocations, warmup) are not timed: the log's seconds at step 5 and at the end.
        subprocess.run([args.tessera, "train-image", "--data", str(args.data), "--tokenizer", str(tmp / "tok"), "-o",
                        str(tmp / "out"), "--channels", args.channels, "--attention", args.attention,
                        "--steps", str(args.steps + 5), "--batch", str(args.batch), "--warmup", "1",
                        "--eval-every", str(args.steps + 100), "--log-every", "5", "--heldout-per-category", "0"],
                       check=True, capture_output=True)
        log = [json.loads(line) for line in (tmp / "out" / "train_log.jsonl").read_text().splitlines()]
        timed = [r for r in log if "seconds" in r]
        tessera_rate = (timed[-1]["step"] - timed[0]["step"]) * args.batch / (timed[-1]["seconds"] - timed[0]["seconds"])
        unet_config = json.loads((tmp / "out" / "unet" / "config.json").read_text())
        text_config = json.loads((tmp / "out" / "text_encoder" / "config.json").read_text())

    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    torch.set_num_threads(os.cpu_count() or 1)  # tessera's thread pool uses every core too
    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(unet_config).train()
    te = CLIPTextModel(CLIPTextConfig(**{k: v for k, v in text_config.items() if k != "architectures"})).train()
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, betas=(0.9, 0.999), weight_decay=0.01)
    size = unet_config["sample_size"]

    def step():
        x = torch.randn(args.batch, 3, size, size)
        ids = torch.randint(0, text_config["vocab_size"], (args.batch, 77))
        t = torch.randint(0, 1000, (args.batch,))
        pred = unet(x, t, encoder_hidden_states=te(ids).last_hidden_state).sample
        loss = torch.nn.functional.mse_loss(pred, torch.randn_like(pred))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    for _ in range(3):
        step()
    start = time.time()
    for _ in range(args.steps):
        step()
    torch_rate = args.steps * args.batch / (time.time() - start)
    print(f"tessera train-image: {tessera_rate:.2f} images/s")
    print(f"PyTorch eager:       {torch_rate:.2f} images/s")
    print(f"ratio tessera / torch: {tessera_rate / torch_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
