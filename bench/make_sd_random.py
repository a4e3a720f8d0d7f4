#!/usr/bin/env python3
"""Make full-size Stable-Diffusion-architecture pipelines with random weights, for benchmarks.

Speed does not depend on weight values, so a pipeline with the exact SD 1.5 (or SDXL base)
architecture and random weights measures what a real checkpoint would. The pipeline is a
diffusers folder in float16 (as released checkpoints ship), with the real CLIP tokenizer
built from open-clip's bpe_simple_vocab_16e6.txt.gz (models/tokenizers, installed by
scripts/setup). Text-encoder weights are saved under the "text_model." names released
checkpoints use.

Run: .venv/bin/python bench/make_sd_random.py --arch sd15 --out ~/.cache/tessera/bench/sd15-random
     .venv/bin/python bench/make_sd_random.py --arch sdxl --out ~/.cache/tessera/bench/sdxl-random
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import sys
import tempfile

import torch
from safetensors.torch import load_file, save_file

from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools", "golden"))
from make_diffusion_golden import bytes_to_unicode  # noqa: E402


def write_tokenizer(out_dir: str, pad: str) -> None:
    bpe = os.path.join(ROOT, "models", "tokenizers", "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(out_dir, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tok = CLIPTokenizer(os.path.join(out_dir, "vocab.json"), os.path.join(out_dir, "merges.txt"), pad_token=pad)
    tok.model_max_length = 77
    tok.save_pretrained(out_dir)


def save_text_encoder(model, out_dir: str) -> None:
    model.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    path = os.path.join(out_dir, "model.safetensors")
    tensors = load_file(path)
    renamed = {(k if k.startswith("text_model.") or k.startswith("text_projection") else "text_model." + k): v
               for k, v in tensors.items()}
    save_file(renamed, path, metadata={"format": "pt"})


def clip_config(hidden: int, layers: int, heads: int, act: str, proj: int = 0) -> CLIPTextConfig:
    kw = dict(vocab_size=49408, hidden_size=hidden, intermediate_size=hidden * 4, num_hidden_layers=layers,
              num_attention_heads=heads, max_position_embeddings=77, hidden_act=act, bos_token_id=49406,
              eos_token_id=49407 if proj else 2, pad_token_id=1)
    if proj:
        kw["projection_dim"] = proj
    return CLIPTextConfig(**kw)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    torch.manual_seed(0)
    out = os.path.expanduser(args.out)
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    index = {"_diffusers_version": "0.42.1", "vae": ["diffusers", "AutoencoderKL"],
             "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"], "scheduler": ["diffusers", "EulerDiscreteScheduler"]}
    if args.arch == "sd15":
        index["_class_name"] = "StableDiffusionPipeline"
        unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=512, scaling_factor=0.18215)
        save_text_encoder(CLIPTextModel(clip_config(768, 12, 12, "quick_gelu")), os.path.join(out, "text_encoder"))
        write_tokenizer(os.path.join(out, "tokenizer"), "<|endoftext|>")
    else:
        index["_class_name"] = "StableDiffusionXLPipeline"
        index["force_zeros_for_empty_prompt"] = True
        index["text_encoder_2"] = ["transformers", "CLIPTextModelWithProjection"]
        index["tokenizer_2"] = ["transformers", "CLIPTokenizer"]
        unet = UNet2DConditionModel(
            sample_size=128, cross_attention_dim=2048, attention_head_dim=[5, 10, 20],
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=[1, 2, 10], use_linear_projection=True,
            addition_embed_type="text_time", addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816)
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            sample_size=1024, scaling_factor=0.13025)
        save_text_encoder(CLIPTextModel(clip_config(768, 12, 12, "quick_gelu")), os.path.join(out, "text_encoder"))
        save_text_encoder(CLIPTextModelWithProjection(clip_config(1280, 32, 20, "gelu", proj=1280)),
                          os.path.join(out, "text_encoder_2"))
        write_tokenizer(os.path.join(out, "tokenizer"), "<|endoftext|>")
        write_tokenizer(os.path.join(out, "tokenizer_2"), "!")
    unet.to(torch.float16).save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    vae.to(torch.float16).save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading").save_pretrained(os.path.join(out, "scheduler"))
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=1)
    n = sum(p.numel() for p in unet.parameters())
    print(f"{args.arch}: UNet {n / 1e6:.0f}M parameters, written to {out}")


if __name__ == "__main__":
    main()
