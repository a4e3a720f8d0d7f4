#!/usr/bin/env python3
"""Write tiny Stable Diffusion pipelines as original-layout single-file checkpoints.

Users often hold one .safetensors file per model in the layout of the original training code
(CompVis/Stability): "model.diffusion_model.*" for the UNet, "first_stage_model.*" for the VAE,
and the text encoder(s) under "cond_stage_model.*" or "conditioner.embedders.N.*". This script
takes diffusers folders, renames every weight into that layout (the inverse of the mapping the
C++ loader implements, written independently here), and then checks the file with diffusers'
own single-file loader: `from_single_file(file, config=<diffusers folder>)` must give back every
weight of the original pipeline exactly. Files are stored in f16 to stay small, so the
reference weights are the f16-rounded ones.

Outputs in --out (default tests/fixtures/diffusion_single):
  sd.safetensors     SD 1.x layout, from tests/fixtures/diffusion/sd (CLIP-L style text encoder
                     under cond_stage_model.transformer.text_model.*)
  sdxl.safetensors   SDXL layout, from tests/fixtures/diffusion/sdxl (CLIP under
                     conditioner.embedders.0.transformer.*, OpenCLIP naming with the packed
                     in_proj and the transposed text_projection under conditioner.embedders.1.model.*,
                     label_emb.0.{0,2} for the added text/time embedding)
  sd2.safetensors    SD 2.x layout of a tiny SD2-like pipeline built here (gelu text encoder in
                     OpenCLIP naming under cond_stage_model.model.*, with one more resblock and a
                     text_projection that diffusers drops, linear projections in the UNet)
  sd2/               that pipeline as a diffusers folder (f16 weights, no tokenizer: it shares
                     tests/fixtures/diffusion/sd/tokenizer)
  golden.safetensors reference outputs of the f16-rounded models, computed in f32, per pipeline
                     P in {sd, sdxl, sd2}:
                       P.te{e}.ids / .hidden / .penultimate / .pooled   text encoder e
                       P.unet.latents / .t / .context / .out (sdxl: .text_embeds, .time_ids)
                       P.vae.latents / .decoded / .image / .encoded_mean
  golden.json        versions and the prompt used

Run: .venv/bin/python tools/golden/make_single_file_golden.py
Deterministic for a given torch/diffusers build (one CPU thread, fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file

import diffusers
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_diffusion_golden import randomize  # noqa: E402  (the same weight spread as the pipelines)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..", "..")
PROMPT = "a watercolor fox in the snow"
# The sd2 text encoder keeps only the first ids of the shared tokenizer's vocabulary, so its
# golden ids are drawn rather than tokenized (the files stay small).
SD2_VOCAB = 160

# ---------------------------------------------------------------------------------------------
# diffusers name -> original name
# ---------------------------------------------------------------------------------------------

RESNET_PARTS = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    layers = config["layers_per_block"]
    layers = [layers] * levels if isinstance(layers, int) else list(layers)
    up_types = config["up_block_types"]
    top = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "add_embedding.linear_1": "label_emb.0.0",
        "add_embedding.linear_2": "label_emb.0.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    # Where each down level starts in the flat input_blocks list (index 0 is conv_in).
    down_start, index = [], 1
    for n in layers:
        down_start.append(index)
        index += n + 1
    out: dict[str, torch.Tensor] = {}

    def resnet(rest: str) -> str:
        part, leaf = rest.rsplit(".", 1)
        return RESNET_PARTS[part] + "." + leaf

    for name, tensor in state.items():
        parts = name.split(".")
        module = ".".join(parts[:-1])
        if module in top:
            new = top[module] + "." + parts[-1]
        elif parts[0] == "down_blocks":
            b = int(parts[1])
            if parts[2] == "resnets":
                new = f"input_blocks.{down_start[b] + int(parts[3])}.0." + resnet(".".join(parts[4:]))
            elif parts[2] == "attentions":
                new = f"input_blocks.{down_start[b] + int(parts[3])}.1." + ".".join(parts[4:])
            else:  # downsamplers.0.conv.{weight,bias}
                new = f"input_blocks.{down_start[b] + layers[b]}.0.op." + parts[-1]
        elif parts[0] == "mid_block":
            if parts[1] == "resnets":
                new = f"middle_block.{2 * int(parts[2])}." + resnet(".".join(parts[3:]))
            else:
                new = "middle_block.1." + ".".join(parts[3:])
        elif parts[0] == "up_blocks":
            b = int(parts[1])
            per_level = layers[levels - 1 - b] + 1
            first = sum(layers[levels - 1 - k] + 1 for k in range(b))
            if parts[2] == "resnets":
                new = f"output_blocks.{first + int(parts[3])}.0." + resnet(".".join(parts[4:]))
            elif parts[2] == "attentions":
                new = f"output_blocks.{first + int(parts[3])}.1." + ".".join(parts[4:])
            else:  # upsamplers.0.conv: after the attention when the level has one
                slot = 2 if up_types[b] == "CrossAttnUpBlock2D" else 1
                new = f"output_blocks.{first + per_level - 1}.{slot}.conv." + parts[-1]
        else:
            raise ValueError(f"unet weight {name} has no original name")
        out["model.diffusion_model." + new] = tensor
    return out


def vae_to_original(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    levels = len(config["block_out_channels"])
    out: dict[str, torch.Tensor] = {}
    attn_parts = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for name, tensor in state.items():
        parts = name.split(".")
        side = parts[0]  # encoder / decoder / quant_conv / post_quant_conv
        if side in ("quant_conv", "post_quant_conv"):
            new = name
        elif parts[1] in ("conv_in", "conv_out"):
            new = name
        elif parts[1] == "conv_norm_out":
            new = f"{side}.norm_out.{parts[-1]}"
        elif parts[1] == "mid_block":
            if parts[2] == "resnets":
                rest = ".".join(parts[4:]).replace("conv_shortcut", "nin_shortcut")
                new = f"{side}.mid.block_{int(parts[3]) + 1}.{rest}"
            else:
                module = ".".join(parts[4:-1])
                new = f"{side}.mid.attn_1.{attn_parts[module]}.{parts[-1]}"
                if module != "group_norm" and parts[-1] == "weight":
                    tensor = tensor.reshape(*tensor.shape, 1, 1)  # 1x1 convolutions originally
        elif parts[1] == "down_blocks":
            i = int(parts[2])
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"encoder.down.{i}.block.{parts[4]}.{rest}"
            else:
                new = f"encoder.down.{i}.downsample.conv.{parts[-1]}"
        elif parts[1] == "up_blocks":
            i = levels - 1 - int(parts[2])  # the original decoder counts from the bottom
            if parts[3] == "resnets":
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                new = f"decoder.up.{i}.block.{parts[4]}.{rest}"
            else:
                new = f"decoder.up.{i}.upsample.conv.{parts[-1]}"
        else:
            raise ValueError(f"vae weight {name} has no original name")
        out["first_stage_model." + new] = tensor
    return out


def clip_to_original(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """HF CLIP naming kept, under `prefix` and always with the text_model. level."""
    out = {}
    for name, tensor in state.items():
        inner = name if name.startswith("text_model.") else "text_model." + name
        out[prefix + inner] = tensor
    # Released files carry the position id buffer; loaders must skip it.
    out[prefix + "text_model.embeddings.position_ids"] = torch.arange(77, dtype=torch.int64)[None]
    return out


def open_clip_to_original(state: dict[str, torch.Tensor], prefix: str, layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP naming: resblocks with one packed q/k/v projection, [hidden, proj] text_projection."""
    s = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        prefix + "token_embedding.weight": s["embeddings.token_embedding.weight"],
        prefix + "positional_embedding": s["embeddings.position_embedding.weight"],
        prefix + "ln_final.weight": s["final_layer_norm.weight"],
        prefix + "ln_final.bias": s["final_layer_norm.bias"],
        prefix + "logit_scale": torch.tensor(4.6052),
    }
    if "text_projection.weight" in s:
        out[prefix + "text_projection"] = s["text_projection.weight"].t().contiguous()
    for i in range(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[dst + "ln_1." + w] = s[src + "layer_norm1." + w]
            out[dst + "ln_2." + w] = s[src + "layer_norm2." + w]
            out[dst + "attn.in_proj_" + w] = torch.cat(
                [s[src + f"self_attn.{p}_proj." + w] for p in ("q", "k", "v")], dim=0)
            out[dst + "attn.out_proj." + w] = s[src + "self_attn.out_proj." + w]
            out[dst + "mlp.c_fc." + w] = s[src + "mlp.fc1." + w]
            out[dst + "mlp.c_proj." + w] = s[src + "mlp.fc2." + w]
    return out


def extra_open_clip_layer(prefix: str, index: int, hidden: int, inner: int, seed: int) -> dict[str, torch.Tensor]:
    """The last OpenCLIP resblock that SD 2.x never uses (diffusers' text encoder stops one early)."""
    g = torch.Generator().manual_seed(seed)
    p = f"{prefix}transformer.resblocks.{index}."
    shapes = {"ln_1.weight": [hidden], "ln_1.bias": [hidden], "ln_2.weight": [hidden], "ln_2.bias": [hidden],
              "attn.in_proj_weight": [3 * hidden, hidden], "attn.in_proj_bias": [3 * hidden],
              "attn.out_proj.weight": [hidden, hidden], "attn.out_proj.bias": [hidden],
              "mlp.c_fc.weight": [inner, hidden], "mlp.c_fc.bias": [inner],
              "mlp.c_proj.weight": [hidden, inner], "mlp.c_proj.bias": [hidden]}
    return {p + k: 0.1 * torch.randn(v, generator=g) for k, v in shapes.items()}


# ---------------------------------------------------------------------------------------------


def round_to_f16(*modules: torch.nn.Module) -> None:
    with torch.no_grad():
        for m in modules:
            for p in m.parameters():
                p.copy_(p.half().float())


def write_single_file(path: str, tensors: dict[str, torch.Tensor]) -> None:
    stored = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(stored, path, metadata={"format": "pt"})


def state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_weights(name: str, want: torch.nn.Module, got: torch.nn.Module) -> int:
    a, b = want.state_dict(), got.state_dict()
    if set(a) != set(b):
        raise AssertionError(f"{name}: names differ: only original {sorted(set(a) - set(b))[:5]}, "
                             f"only converted {sorted(set(b) - set(a))[:5]}")
    for k in a:
        if a[k].shape != b[k].shape or not torch.equal(a[k].float(), b[k].float()):
            raise AssertionError(f"{name}: weight {k} differs after diffusers' single-file conversion")
    return len(a)


def make_sd2(out_dir: str, sd_dir: str):
    """A tiny SD 2.x-like pipeline: gelu text encoder whose hidden states feed the UNet, linear
    projections and per-level head counts in the UNet."""
    tok = CLIPTokenizer.from_pretrained(os.path.join(sd_dir, "tokenizer"))
    vocab = SD2_VOCAB
    torch.manual_seed(21)
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32 + 3, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, hidden_act="gelu", layer_norm_eps=1e-5, bos_token_id=vocab - 2,
        eos_token_id=vocab - 1, pad_token_id=0)).eval()
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, attention_head_dim=(2, 4), norm_num_groups=4, use_linear_projection=True).eval()
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=32, scaling_factor=0.18215).eval()
    for seed, m in ((22, te), (23, unet), (24, vae)):
        randomize(m, seed)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                          set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
                          timestep_spacing="leading")
    round_to_f16(te, unet, vae)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    shutil.rmtree(out_dir, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    pipe.to(torch.float32)
    shutil.rmtree(os.path.join(out_dir, "tokenizer"))  # shared with the sd fixture
    return pipe


def original_file(kind: str, pipe) -> dict[str, torch.Tensor]:
    tensors = {}
    tensors.update(unet_to_original(state(pipe.unet), pipe.unet.config))
    tensors.update(vae_to_original(state(pipe.vae), pipe.vae.config))
    te = pipe.text_encoder
    if kind == "sd":
        tensors.update(clip_to_original(state(te), "cond_stage_model.transformer."))
    elif kind == "sd2":
        prefix = "cond_stage_model.model."
        n, h = te.config.num_hidden_layers, te.config.hidden_size
        tensors.update(open_clip_to_original(state(te), prefix, n))
        tensors.update(extra_open_clip_layer(prefix, n, h, te.config.intermediate_size, 31))
        g = torch.Generator().manual_seed(32)
        tensors[prefix + "text_projection"] = torch.randn((h, h), generator=g) / h ** 0.5
        tensors[prefix + "logit_scale"] = torch.tensor(4.6052)
    else:
        tensors.update(clip_to_original(state(te), "conditioner.embedders.0.transformer."))
        te2 = pipe.text_encoder_2
        tensors.update(open_clip_to_original(state(te2), "conditioner.embedders.1.model.",
                                             te2.config.num_hidden_layers))
    return tensors


def verify_with_diffusers(kind: str, path: str, config_dir: str, pipe) -> int:
    cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
    kwargs = {"local_files_only": True}
    if kind != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if kind == "sd2":
        kwargs["tokenizer"] = pipe.tokenizer
    loaded = cls.from_single_file(path, config=config_dir, torch_dtype=torch.float32, **kwargs)
    count = 0
    names = ["unet", "vae", "text_encoder"] + (["text_encoder_2"] if kind == "sdxl" else [])
    for component in names:
        count += assert_same_weights(f"{kind}.{component}", getattr(pipe, component), getattr(loaded, component))
    return count


def text_outputs(te, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        r = te(ids[None], output_hidden_states=True)
    pooled = r.text_embeds if hasattr(r, "text_embeds") else r.pooler_output
    return {"ids": ids.to(torch.int64), "hidden": r.last_hidden_state[0], "penultimate": r.hidden_states[-2][0],
            "pooled": pooled[0]}


def record(kind: str, pipe, g: torch.Generator) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    encoders = [(pipe.tokenizer, pipe.text_encoder)]
    if kind == "sdxl":
        encoders.append((pipe.tokenizer_2, pipe.text_encoder_2))
    contexts, pooled = [], None
    for e, (tok, te) in enumerate(encoders):
        if kind == "sd2":
            ids = torch.zeros(77, dtype=torch.int64)
            ids[0] = SD2_VOCAB - 2
            ids[1:12] = torch.randint(0, SD2_VOCAB - 2, (11,), generator=g)
            ids[12] = SD2_VOCAB - 1
        else:
            ids = tok(PROMPT, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
        res = text_outputs(te, ids)
        for k, v in res.items():
            out[f"{kind}.te{e}.{k}"] = v
        contexts.append(res["penultimate"] if kind == "sdxl" else res["hidden"])
        pooled = res["pooled"]
    context = torch.cat(contexts, dim=-1)
    lat = torch.randn((4, 4, 6), generator=g)
    t = torch.tensor(321.0)
    added = None
    if kind == "sdxl":
        time_ids = torch.tensor([32.0, 48.0, 0.0, 0.0, 32.0, 48.0])
        added = {"text_embeds": pooled[None], "time_ids": time_ids[None]}
        out[f"{kind}.unet.text_embeds"] = pooled.clone()
        out[f"{kind}.unet.time_ids"] = time_ids
    with torch.no_grad():
        u = pipe.unet(lat[None], t, encoder_hidden_states=context[None], added_cond_kwargs=added).sample[0]
    out.update({f"{kind}.unet.latents": lat, f"{kind}.unet.t": t.reshape(1), f"{kind}.unet.context": context,
                f"{kind}.unet.out": u})
    factor = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    vlat = torch.randn((1, 4, 3, 5), generator=g)
    img = torch.rand((1, 3, 3 * factor, 5 * factor), generator=g) * 2 - 1
    with torch.no_grad():
        dec = pipe.vae.decode(vlat).sample
        mean = pipe.vae.encode(img).latent_dist.mean
    out.update({f"{kind}.vae.latents": vlat[0], f"{kind}.vae.decoded": dec[0], f"{kind}.vae.image": img[0],
                f"{kind}.vae.encoded_mean": mean[0]})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fixtures", default=os.path.join(ROOT, "tests", "fixtures", "diffusion"))
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "fixtures", "diffusion_single"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    golden: dict[str, torch.Tensor] = {}
    g = torch.Generator().manual_seed(77)
    for kind in ("sd", "sdxl", "sd2"):
        if kind == "sd2":
            config_dir = os.path.join(args.out, "sd2")
            pipe = make_sd2(config_dir, os.path.join(args.fixtures, "sd"))
        else:
            config_dir = os.path.join(args.fixtures, kind)
            cls = StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline
            pipe = cls.from_pretrained(config_dir, torch_dtype=torch.float32, local_files_only=True)
            parts = [pipe.unet, pipe.vae, pipe.text_encoder] + ([pipe.text_encoder_2] if kind == "sdxl" else [])
            round_to_f16(*parts)
        path = os.path.join(args.out, f"{kind}.safetensors")
        write_single_file(path, original_file(kind, pipe))
        count = verify_with_diffusers(kind, path, config_dir, pipe)
        golden.update(record(kind, pipe, g))
        print(f"{kind}: {os.path.getsize(path) / 1e6:.2f} MB, {count} weights reproduced by diffusers' from_single_file")
    save_file({k: v.contiguous() for k, v in golden.items()}, os.path.join(args.out, "golden.safetensors"))
    with open(os.path.join(args.out, "golden.json"), "w") as f:
        json.dump({"diffusers": diffusers.__version__, "torch": torch.__version__, "prompt": PROMPT,
                   "files": ["sd.safetensors", "sdxl.safetensors", "sd2.safetensors"]}, f, indent=1)


if __name__ == "__main__":
    main()
