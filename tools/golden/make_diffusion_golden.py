#!/usr/bin/env python3
"""Build tiny random text-to-image pipelines with diffusers and record reference outputs.

Two pipelines are written under --out (default tests/fixtures/diffusion), each a diffusers
folder exactly as `save_pretrained` lays it out (model_index.json, unet/, vae/,
text_encoder/, tokenizer/, scheduler/, and for the SDXL-like one text_encoder_2/ and
tokenizer_2/), plus golden.safetensors and golden.json:

  sd    an SD 1.x-style pipeline: one CLIPTextModel (quick_gelu, last layer after the final
        LayerNorm), a UNet with conv projections and cross-attention in the upper levels.
  sdxl  an SDXL-style pipeline: CLIPTextModel + CLIPTextModelWithProjection (gelu),
        penultimate hidden states concatenated, pooled text embeddings and time ids added to
        the timestep embedding, linear projections, several transformer layers per block.

The tokenizers are real CLIP BPE tokenizers cut down to the first MERGES merges of the
open-clip vocabulary (bpe_simple_vocab_16e6.txt.gz from the open-clip-torch wheel), so the
text models stay small while the tokenizer logic is the real one.

golden.safetensors holds, per case i (see golden.json "cases"):
  case{i}.ids{e}, case{i}.neg_ids{e}     padded token ids of encoder e (int64)
  case{i}.hidden{e}, case{i}.penultimate{e}, case{i}.pooled{e}   text encoder outputs (prompt)
  case{i}.prompt_embeds, case{i}.negative_prompt_embeds   what the pipeline feeds the UNet
  case{i}.pooled_embeds, case{i}.negative_pooled_embeds   (sdxl) pooled text embeddings
  case{i}.latents          initial latents (before init_noise_sigma)
  case{i}.unet_t           the timestep of the single UNet check, case{i}.unet_out its output
                           for [negative, prompt] embeddings and the initial latents
  case{i}.image.{sampler}  the final image in [0, 1], HWC float32, for each sampler
  case{i}.noise.euler_a    the noise euler_a drew at each step, concatenated
and vae.latents / vae.decoded (VAE decode in [-1, 1], NCHW), vae.image / vae.encoded_mean,
vae.tiled_latents / vae.tiled_decoded (decoding in overlapping tiles).

Run: .venv/bin/python tools/golden/make_diffusion_golden.py [--out tests/fixtures/diffusion]
Deterministic for a given torch/diffusers build (one CPU thread, fixed seeds).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

MERGES = 600
OPEN_CLIP_WHEEL = "open-clip-torch==3.3.0"
BPE_NAME = "open_clip/bpe_simple_vocab_16e6.txt.gz"
STEPS = 6

CASES = [
    # prompt, negative prompt (None: not given), width, height, guidance
    ("a photograph of an astronaut riding a horse", "blurry, low quality", 64, 64, 7.5),
    ("Red apple on a TABLE, oil painting!!", None, 80, 48, 5.0),
    ("", "", 48, 64, 3.0),
]


def bpe_gz_path(cache: str) -> str:
    """The open-clip vocabulary, from the wheel on PyPI (cached)."""
    installed = os.path.join(os.path.dirname(__file__), "..", "..", "models", "tokenizers", "bpe_simple_vocab_16e6.txt.gz")
    if os.path.exists(installed):
        return installed
    os.makedirs(cache, exist_ok=True)
    wheels = [f for f in os.listdir(cache) if f.startswith("open_clip_torch-3.3.0")]
    if not wheels:
        subprocess.check_call([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", cache, OPEN_CLIP_WHEEL])
        wheels = [f for f in os.listdir(cache) if f.startswith("open_clip_torch-3.3.0")]
    out = os.path.join(cache, "bpe_simple_vocab_16e6.txt.gz")
    with zipfile.ZipFile(os.path.join(cache, wheels[0])) as z, open(out, "wb") as f:
        f.write(z.read(BPE_NAME))
    return out


def bytes_to_unicode() -> dict[int, str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(printable, map(chr, chars)))


def write_small_clip_tokenizer(bpe_gz: str, out_dir: str, pad_token: str) -> CLIPTokenizer:
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 1 + MERGES]]
    base = list(bytes_to_unicode().values())
    vocab = base + [b + "</w>" for b in base] + ["".join(m) for m in merges] + ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file = os.path.join(tmp, "vocab.json")
        merges_file = os.path.join(tmp, "merges.txt")
        with open(vocab_file, "w", encoding="utf-8") as f:
            json.dump({tok: i for i, tok in enumerate(vocab)}, f, ensure_ascii=False)
        with open(merges_file, "w", encoding="utf-8") as f:
            f.write("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
        tok = CLIPTokenizer(vocab_file, merges_file, pad_token=pad_token)
        tok.model_max_length = 77
        tok.save_pretrained(out_dir)
        # transformers 5 saves only tokenizer.json; released pipelines also carry the
        # original vocab.json + merges.txt + special_tokens_map.json, so the folder has both.
        shutil.copy(vocab_file, out_dir)
        shutil.copy(merges_file, out_dir)
        with open(os.path.join(out_dir, "special_tokens_map.json"), "w") as f:
            json.dump({"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad_token,
                       "unk_token": "<|endoftext|>"}, f, indent=1)
    return CLIPTokenizer.from_pretrained(out_dir)


def text_config(vocab: int, hidden: int, layers: int, heads: int, act: str, eos: int, pad: int, proj: int = 0) -> CLIPTextConfig:
    kw = dict(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2 + 3,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        hidden_act=act,
        layer_norm_eps=1e-5,
        bos_token_id=vocab - 2,
        eos_token_id=eos,
        pad_token_id=pad,
    )
    if proj:
        kw["projection_dim"] = proj
    return CLIPTextConfig(**kw)


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Default inits leave norms at 1/0 and some projections at zero; spread every weight
    so that a wrong wiring cannot hide behind an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                fan_in = p[0].numel() if p.ndim > 1 else p.numel()
                p.copy_(torch.randn(p.shape, generator=g) / max(1.0, fan_in) ** 0.5)


def make_vae(scaling: float, seed: int) -> AutoencoderKL:
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=scaling,
    )
    randomize(vae, seed)
    return vae.eval()


def make_sd(out: str, bpe_gz: str) -> StableDiffusionPipeline:
    tok = write_small_clip_tokenizer(bpe_gz, os.path.join(out, "tokenizer"), "<|endoftext|>")
    vocab = len(tok)
    torch.manual_seed(1)
    te = CLIPTextModel(text_config(vocab, 32, 3, 4, "quick_gelu", eos=vocab - 1, pad=vocab - 1)).eval()
    randomize(te, 1)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=2,
        norm_num_groups=8,
        use_linear_projection=False,
    ).eval()
    randomize(unet, 2)
    vae = make_vae(0.18215, 3)
    sched = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon", timestep_spacing="leading",
    )
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    return pipe


def make_sdxl(out: str, bpe_gz: str) -> StableDiffusionXLPipeline:
    tok = write_small_clip_tokenizer(bpe_gz, os.path.join(out, "tokenizer"), "<|endoftext|>")
    tok2 = write_small_clip_tokenizer(bpe_gz, os.path.join(out, "tokenizer_2"), "!")
    vocab = len(tok)
    torch.manual_seed(4)
    te = CLIPTextModel(text_config(vocab, 16, 3, 2, "quick_gelu", eos=vocab - 1, pad=vocab - 1)).eval()
    randomize(te, 4)
    te2 = CLIPTextModelWithProjection(text_config(vocab, 32, 3, 4, "gelu", eos=vocab - 1, pad=0, proj=24)).eval()
    randomize(te2, 5)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=(16, 24, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2),
        attention_head_dim=(2, 2, 4),
        cross_attention_dim=48,
        norm_num_groups=8,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 24,
    ).eval()
    randomize(unet, 6)
    vae = make_vae(0.13025, 7)
    sched = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        prediction_type="epsilon", timestep_spacing="leading", interpolation_type="linear",
    )
    return StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                     unet=unet, scheduler=sched, force_zeros_for_empty_prompt=True)


def scheduler_for(name: str, config) -> object:
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if name == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if name == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2,
                                                       use_karras_sigmas=True)
    raise ValueError(name)


class NoiseRecorder:
    """Wraps the scheduler module's randn_tensor to keep what it draws."""

    def __init__(self, module):
        self.module, self.drawn = module, []
        self.original = module.randn_tensor

    def __enter__(self):
        def wrapped(*args, **kwargs):
            t = self.original(*args, **kwargs)
            self.drawn.append(t.detach().clone())
            return t

        self.module.randn_tensor = wrapped
        return self

    def __exit__(self, *exc):
        self.module.randn_tensor = self.original


def text_outputs(pipe, prompt: str) -> dict[str, torch.Tensor]:
    out = {}
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if getattr(pipe, "text_encoder_2", None) is not None:
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    for e, (tok, te) in enumerate(encoders):
        ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        res = te(ids, output_hidden_states=True)
        out[f"ids{e}"] = ids[0].to(torch.int64)
        out[f"hidden{e}"] = (res.last_hidden_state if hasattr(res, "last_hidden_state") and res.last_hidden_state is not None else res[0])[0]
        out[f"penultimate{e}"] = res.hidden_states[-2][0]
        out[f"pooled{e}"] = (res.text_embeds if hasattr(res, "text_embeds") else res.pooler_output)[0]
    return out


def record(pipe, name: str, out_dir: str) -> None:
    sdxl = isinstance(pipe, StableDiffusionXLPipeline)
    tensors: dict[str, torch.Tensor] = {}
    cases = []
    g = torch.Generator().manual_seed(1234)
    for i, (prompt, negative, width, height, guidance) in enumerate(CASES):
        key = f"case{i}."
        for k, v in text_outputs(pipe, prompt).items():
            tensors[key + k] = v
        if negative is not None:
            for k, v in text_outputs(pipe, negative).items():
                if k.startswith("ids"):
                    tensors[key + "neg_" + k] = v
        enc = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
                                 negative_prompt=negative) if sdxl else \
            pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt=negative)
        tensors[key + "prompt_embeds"] = enc[0][0]
        tensors[key + "negative_prompt_embeds"] = enc[1][0]
        if sdxl:
            tensors[key + "pooled_embeds"] = enc[2][0]
            tensors[key + "negative_pooled_embeds"] = enc[3][0]
        lat = torch.randn((1, 4, height // 8, width // 8), generator=g)
        tensors[key + "latents"] = lat[0]
        # One UNet call on the [negative, prompt] batch, as classifier-free guidance makes it.
        t = torch.tensor(501.0 - 100 * i)
        embeds = torch.cat([enc[1], enc[0]])
        added = None
        if sdxl:
            time_ids = torch.tensor([[height, width, 0, 0, height, width]] * 2, dtype=torch.float32)
            added = {"text_embeds": torch.cat([enc[3], enc[2]]), "time_ids": time_ids}
        with torch.no_grad():
            u = pipe.unet(torch.cat([lat, lat * 0.5]), t, encoder_hidden_states=embeds, added_cond_kwargs=added).sample
        tensors[key + "unet_t"] = t.reshape(1)
        tensors[key + "unet_out"] = u
        base_config = pipe.scheduler.config
        for sampler in ("ddim", "euler", "euler_a", "dpmpp_2m"):
            pipe.scheduler = scheduler_for(sampler, base_config)
            module = sys.modules[type(pipe.scheduler).__module__]
            with NoiseRecorder(module) as rec, torch.no_grad():
                img = pipe(prompt=prompt, negative_prompt=negative, width=width, height=height, num_inference_steps=STEPS,
                           guidance_scale=guidance, latents=lat.clone(), output_type="np",
                           generator=torch.Generator().manual_seed(99)).images[0]
            tensors[key + f"image.{sampler}"] = torch.from_numpy(np.ascontiguousarray(img)).float()
            if rec.drawn:
                tensors[key + f"noise.{sampler}"] = torch.cat([d.flatten() for d in rec.drawn])
        pipe.scheduler = DDIMScheduler.from_config(base_config) if not sdxl else EulerDiscreteScheduler.from_config(base_config)
        cases.append({"prompt": prompt, "negative_prompt": negative, "width": width, "height": height,
                      "guidance": guidance, "steps": STEPS})
    # The VAE alone, decoding and encoding at a non-square size.
    lat = torch.randn((1, 4, 6, 10), generator=g)
    with torch.no_grad():
        dec = pipe.vae.decode(lat).sample
        img = torch.rand((1, 3, 48, 80), generator=g) * 2 - 1
        mean = pipe.vae.encode(img).latent_dist.mean
    tensors.update({"vae.latents": lat, "vae.decoded": dec, "vae.image": img, "vae.encoded_mean": mean})
    # Tiled decoding (diffusers' enable_tiling: tiles of sample_size / 8 latent pixels overlapping
    # by a quarter, blended linearly) of a latent larger than one tile.
    big = torch.randn((1, 4, 12, 20), generator=g)
    pipe.vae.enable_tiling()
    with torch.no_grad():
        tiled = pipe.vae.decode(big).sample
    pipe.vae.disable_tiling()
    tensors.update({"vae.tiled_latents": big, "vae.tiled_decoded": tiled})
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out_dir, "golden.safetensors"))
    with open(os.path.join(out_dir, "golden.json"), "w") as f:
        json.dump({"pipeline": name, "diffusers": diffusers.__version__, "torch": torch.__version__,
                   "samplers": ["ddim", "euler", "euler_a", "dpmpp_2m"], "cases": cases}, f, indent=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "diffusion"))
    ap.add_argument("--cache", default=os.path.expanduser("~/.cache/tessera/wheels"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    bpe = bpe_gz_path(args.cache)
    for name, maker in (("sd", make_sd), ("sdxl", make_sdxl)):
        out = os.path.join(args.out, name)
        shutil.rmtree(out, ignore_errors=True)
        os.makedirs(out)
        pipe = maker(out, bpe)
        pipe.save_pretrained(out, safe_serialization=True)
        record(pipe, name, out)
        size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
        print(f"{name}: {size / 1e6:.2f} MB in {out}")


if __name__ == "__main__":
    main()
