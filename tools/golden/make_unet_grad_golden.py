#!/usr/bin/env python3
"""Reference loss and gradients of a whole tiny UNet2DConditionModel, for the UNet training model's tests.

--out (default tests/fixtures/unet_grad) gets one folder per case:

    <case>/model/config.json, <case>/model/diffusion_pytorch_model.safetensors
        the diffusers model with random float32 weights, as save_pretrained writes it
    <case>/step.safetensors
        sample [B, C, H, W], timesteps [B], context [B, M, cross_attention_dim], noise (the
        target), pred (the model's output), loss [1], grad.context and grad.<parameter> for
        every parameter (float32)

The reference runs in float64 on the float32 weights and inputs, so it carries no rounding of its
own: the loss is F.mse_loss(pred, noise) (the mean) and every gradient is that of the loss. The
time embedding is computed in float32 by diffusers itself whatever the model's dtype, as the
engine does.

Cases, both with block_out_channels (4, 8) in 2 groups, 2 heads, 8x8 samples, batch 2, 5 text
tokens of width 12: "conv" (1x1-convolution proj_in/proj_out, two layers per block) and "linear"
(use_linear_projection, one layer per block). Both have down blocks CrossAttnDownBlock2D +
DownBlock2D, the cross-attention mid block and up blocks UpBlock2D + CrossAttnUpBlock2D.

Run: .venv/bin/python tools/golden/make_unet_grad_golden.py [--out tests/fixtures/unet_grad]
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import diffusers
from diffusers import UNet2DConditionModel


def make_case(out: str, name: str, seed: int, layers_per_block: int, linear_projection: bool) -> None:
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape, scale=1.0: (torch.randn(*shape, generator=gen) * scale).float()
    model = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(4, 8),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=layers_per_block, norm_num_groups=2, cross_attention_dim=12, attention_head_dim=2,
        use_linear_projection=linear_projection)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            # Norm scales around 1, as trained ones are; everything else centred on 0.
            centre = 1.0 if "norm" in pname and pname.endswith("weight") else 0.0
            p.copy_(randn(*p.shape, scale=0.3) + centre)
    model.save_pretrained(os.path.join(out, name, "model"), safe_serialization=True)

    batch, tokens = 2, 5
    sample, context, noise = randn(batch, 4, 8, 8), randn(batch, tokens, 12), randn(batch, 4, 8, 8)
    timesteps = torch.tensor([37.0, 910.0])
    ref = model.double()
    ctx = context.double().requires_grad_(True)
    pred = ref(sample.double(), timesteps, encoder_hidden_states=ctx).sample
    loss = F.mse_loss(pred, noise.double())
    loss.backward()

    tensors = {"sample": sample, "timesteps": timesteps, "context": context, "noise": noise,
               "pred": pred.detach().float(), "loss": loss.detach().reshape(1).float(),
               "grad.context": ctx.grad.float()}
    for pname, p in ref.named_parameters():
        if p.grad is None or not torch.isfinite(p.grad).all():
            raise RuntimeError(f"{name}: gradient of {pname} is missing or not finite")
        tensors[f"grad.{pname}"] = p.grad.float().contiguous()
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(out, name, "step.safetensors"),
              metadata={"torch": torch.__version__, "diffusers": diffusers.__version__, "seed": str(seed)})
    params = sum(p.numel() for p in ref.parameters())
    print(f"{name}: {params} parameters, loss {loss.item():.6f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "unet_grad"))
    ap.add_argument("--seed", type=int, default=11)
    args = ap.parse_args()
    torch.set_num_threads(1)
    make_case(args.out, "conv", args.seed, layers_per_block=2, linear_projection=False)
    make_case(args.out, "linear", args.seed + 1, layers_per_block=1, linear_projection=True)
    with open(os.path.join(args.out, "README.json"), "w") as f:
        json.dump({"made_by": "tools/golden/make_unet_grad_golden.py", "seed": args.seed,
                   "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}}, f, indent=1)


if __name__ == "__main__":
    main()
