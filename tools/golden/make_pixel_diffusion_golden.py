#!/usr/bin/env python3
"""Build a tiny pixel-space text-to-image pipeline with diffusers and record reference images.

The pipeline is laid out as `tessera train-image` writes its models (tessera-imageai-tiny): no
VAE (model_index.json has "vae": [null, null]), a UNet with 3 in and 3 out channels denoising the
RGB pixels, a CLIPTextModel without transformer layers (embeddings and the final LayerNorm),
a CLIP tokenizer cut to its first merges, and DDIM over DDPM's linear betas with v-prediction,
the predicted image clipped to [-1, 1] and trailing timesteps.

The reference run is diffusers' own StableDiffusionPipeline given vae=None: with
output_type="latent" it returns the denoised sample without decoding, which for this model is
the image in [-1, 1]. Its vae_scale_factor is set to 1 (diffusers assumes 8 without a VAE).

Written to --out (default tests/fixtures/diffusion/pixel): the pipeline folder and
golden.safetensors with, per case i (golden.json "cases"):
  case{i}.ids           padded token ids of the prompt (int64)
  case{i}.hidden        the text encoder's last hidden state for them
  case{i}.latents       the starting noise [3, h, w] at the drawn size
  text_grad.upstream    a seeded d loss / d hidden for the ids of cases 0 and 1 as one batch
  text_grad.NAME        the text encoder's parameter gradients for it (float64 in torch)
  case{i}.image         the final image in [0, 1], HWC, at the requested size: diffusers'
                        output, upscaled by torch's bilinear interpolate (align_corners=False)
                        when the request is larger than the model's native size

Run: .venv/bin/python tools/golden/make_pixel_diffusion_golden.py
Deterministic for a given torch/diffusers build (one CPU thread, fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import diffusers
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_diffusion_golden import bpe_gz_path, randomize, text_config, write_small_clip_tokenizer  # noqa: E402

NATIVE = 16
STEPS = 5
CASES = [
    # prompt, negative prompt, width, height, guidance, drawn width, drawn height
    ("a red flag on a pole", "blurry", 16, 16, 4.0, 16, 16),
    ("smiling face", None, 24, 16, 2.5, 24, 16),
    ("a blue bird", "", 96, 64, 3.0, 24, 16),  # drawn at 24x16, upscaled 4x
]


def make_pipeline(out: str, bpe_gz: str) -> StableDiffusionPipeline:
    tok = write_small_clip_tokenizer(bpe_gz, os.path.join(out, "tokenizer"), "<|endoftext|>")
    vocab = len(tok)
    te = CLIPTextModel(text_config(vocab, 16, 0, 2, "quick_gelu", eos=vocab - 1, pad=vocab - 1)).eval()
    randomize(te, 5)
    unet = UNet2DConditionModel(
        sample_size=NATIVE, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=(1, 2, 2), norm_num_groups=4,
    ).eval()
    randomize(unet, 6)
    def scheduler():
        return DDIMScheduler(beta_start=1e-4, beta_end=0.02, beta_schedule="linear", clip_sample=True,
                             clip_sample_range=1.0, set_alpha_to_one=False, steps_offset=0,
                             prediction_type="v_prediction", timestep_spacing="trailing")

    pipe = StableDiffusionPipeline(vae=None, text_encoder=te, tokenizer=tok, unet=unet, scheduler=scheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    # The pipeline turns clip_sample off (in place), as latent models want; a pixel-space model keeps it.
    pipe.register_modules(scheduler=scheduler())
    assert pipe.scheduler.config.clip_sample
    pipe.vae_scale_factor = 1
    return pipe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures",
                                                  "diffusion", "pixel"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tessera/wheels"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    shutil.rmtree(args.out, ignore_errors=True)
    os.makedirs(args.out)
    pipe = make_pipeline(args.out, bpe_gz_path(args.cache))
    pipe.save_pretrained(args.out, safe_serialization=True)
    tensors, cases = {}, []
    g = torch.Generator().manual_seed(4321)
    for i, (prompt, negative, width, height, guidance, dw, dh) in enumerate(CASES):
        key = f"case{i}."
        ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt").input_ids
        with torch.no_grad():
            tensors[key + "hidden"] = pipe.text_encoder(ids).last_hidden_state[0]
        tensors[key + "ids"] = ids[0].to(torch.int64)
        lat = torch.randn((1, 3, dh, dw), generator=g)
        tensors[key + "latents"] = lat[0]
        with torch.no_grad():
            x = pipe(prompt=prompt, negative_prompt=negative, width=dw, height=dh, num_inference_steps=STEPS,
                     guidance_scale=guidance, latents=lat.clone(), output_type="latent").images
            if (dw, dh) != (width, height):
                x = F.interpolate(x, size=(height, width), mode="bilinear", align_corners=False)
        img = (x[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0)
        tensors[key + "image"] = img.contiguous().float()
        cases.append({"prompt": prompt, "negative_prompt": negative, "width": width, "height": height,
                      "guidance": guidance, "steps": STEPS})
    # The text encoder's gradients (as `tessera train-image` trains it) for a batch of the first two
    # prompts under a seeded upstream gradient: loss = sum(hidden * upstream).
    te = pipe.text_encoder.double()
    ids = torch.stack([tensors["case0.ids"], tensors["case1.ids"]])
    upstream = torch.randn((2, 77, te.config.hidden_size), generator=g)
    te.zero_grad()
    (te(ids).last_hidden_state * upstream.double()).sum().backward()
    tensors["text_grad.upstream"] = upstream
    for name, p in te.named_parameters():
        tensors["text_grad." + name.removeprefix("text_model.")] = p.grad.float()
    pipe.text_encoder.float()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(args.out, "golden.safetensors"))
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({"pipeline": "pixel", "diffusers": diffusers.__version__, "torch": torch.__version__,
                   "cases": cases}, f, indent=1)
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out) for f in fs)
    print(f"pixel: {size / 1e6:.2f} MB in {args.out}")


if __name__ == "__main__":
    main()
