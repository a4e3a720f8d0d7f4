#!/usr/bin/env python3
"""Reference outputs and gradients of a diffusion UNet's ops, for the training engine's UNet tests.

--out (default tests/fixtures/unet_ops_grad) gets two files:

    cases.safetensors   every tensor of every case, named "<case>.<tensor>" (float32)
    cases.json          {"cases": [{"name", "op", "params": {...}, "inputs": [...], "outputs": [...],
                                    "grads": [...]}], "versions": {...}}

For each case the inputs are small random float32 tensors and "dy" a random upstream gradient
of the op's output. The reference runs in float64 on those float32 values, so it carries no
rounding of its own: the output is "y" and the gradient of sum(y * dy) with respect to input or
parameter "<name>" is "d<name>". The engine, in float32, is compared within ~1e-4 relative.

The ops are the ones a Stable-Diffusion UNet step needs, taken from torch and diffusers as the
inference UNet (src/models/diffusion) uses them:

    conv2d           F.conv2d with bias, kernels 1/3/5, stride 1/2, padding 0/1/2, odd sizes
    group_norm       F.group_norm with affine weight and bias, groups < channels
    layer_norm       F.layer_norm with weight and bias
    silu             F.silu
    upsample         F.interpolate(mode="nearest"), scale 2 (Upsample2D) and an explicit size
    linear           F.linear with bias
    geglu            diffusers' GEGLU module (its projection, then hidden * gelu(gate))
    attention        softmax(q k^T / sqrt(head_dim)) v per head: self- and cross-attention
    timestep         diffusers' get_timestep_embedding (no gradient)
    mse              F.mse_loss, mean; "y" is the loss and "dpred" its plain gradient

and two composed blocks, diffusers modules with random weights (parameters under their
diffusers names, gradients as "d<name>"):

    resnet_block     ResnetBlock2D (GroupNorm, SiLU, conv, + time embedding, GroupNorm, SiLU,
                     conv, 1x1 shortcut) on x and a raw time embedding "temb"
    transformer_block BasicTransformerBlock (LayerNorm, self-attention, LayerNorm,
                     cross-attention to "context", LayerNorm, GEGLU feed-forward)

Run: .venv/bin/python tools/golden/make_unet_ops_grad_golden.py [--out tests/fixtures/unet_ops_grad]
"""

from __future__ import annotations

import argparse
import json
import math
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

import diffusers
from diffusers.models.activations import GEGLU
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.embeddings import get_timestep_embedding
from diffusers.models.resnet import ResnetBlock2D


class Cases:
    def __init__(self, seed: int) -> None:
        self.gen = torch.Generator().manual_seed(seed)
        self.tensors: dict[str, torch.Tensor] = {}
        self.index: list[dict] = []

    def randn(self, *shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.gen) * scale).float()

    def add(self, name: str, op: str, params: dict, inputs: dict[str, torch.Tensor], fn) -> None:
        """Runs fn(**inputs in float64) -> y, backpropagates a random dy, stores everything."""
        ref = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
        y = fn(**ref)
        dy = self.randn(*y.shape)
        (y * dy.double()).sum().backward()
        self.store(name, op, params, inputs, y, dy, {k: v.grad for k, v in ref.items()})

    def store(self, name: str, op: str, params: dict, inputs: dict[str, torch.Tensor], y: torch.Tensor,
              dy: torch.Tensor | None, grads: dict[str, torch.Tensor]) -> None:
        for k, v in inputs.items():
            self.tensors[f"{name}.{k}"] = v.float().contiguous()
        self.tensors[f"{name}.y"] = y.detach().float().contiguous()
        if dy is not None:
            self.tensors[f"{name}.dy"] = dy.float().contiguous()
        for k, g in grads.items():
            if g is None or not torch.isfinite(g).all() or float(g.abs().max()) == 0.0:
                raise RuntimeError(f"{name}: gradient of {k} is missing, zero or not finite")
            self.tensors[f"{name}.d{k}"] = g.float().contiguous()
        self.index.append({"name": name, "op": op, "params": params, "inputs": list(inputs),
                           "outputs": ["y"] + (["dy"] if dy is not None else []),
                           "grads": [f"d{k}" for k in grads]})


def add_conv(c: Cases, name: str, batch: int, cin: int, h: int, w: int, cout: int, kernel: int, stride: int,
             padding: int) -> None:
    params = {"batch": batch, "in_channels": cin, "height": h, "width": w, "out_channels": cout,
              "kernel": kernel, "stride": stride, "padding": padding}
    inputs = {"x": c.randn(batch, cin, h, w), "weight": c.randn(cout, cin, kernel, kernel, scale=0.3),
              "bias": c.randn(cout, scale=0.5)}
    c.add(name, "conv2d", params, inputs, lambda x, weight, bias: F.conv2d(x, weight, bias, stride, padding))


def add_group_norm(c: Cases, name: str, batch: int, channels: int, h: int, w: int, groups: int, eps: float) -> None:
    params = {"batch": batch, "channels": channels, "hw": h * w, "groups": groups, "eps": eps}
    # An offset and a scale per image so the statistics are not those of a unit normal.
    inputs = {"x": c.randn(batch, channels, h, w, scale=2.0) + 0.7, "weight": c.randn(channels, scale=0.5) + 1.0,
              "bias": c.randn(channels, scale=0.5)}
    c.add(name, "group_norm", params, inputs,
          lambda x, weight, bias: F.group_norm(x, groups, weight, bias, eps))


def add_attention(c: Cases, name: str, batch: int, q_len: int, kv_len: int, heads: int, head_dim: int) -> None:
    inner = heads * head_dim
    params = {"batch": batch, "q_len": q_len, "kv_len": kv_len, "heads": heads, "head_dim": head_dim}
    inputs = {"q": c.randn(batch, q_len, inner), "k": c.randn(batch, kv_len, inner),
              "v": c.randn(batch, kv_len, inner)}

    def attend(q, k, v):
        split = lambda t: t.reshape(batch, t.shape[1], heads, head_dim).transpose(1, 2)
        p = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(head_dim), dim=-1)
        return (p @ split(v)).transpose(1, 2).reshape(batch, q_len, inner)

    c.add(name, "attention", params, inputs, attend)


def add_module(c: Cases, name: str, op: str, params: dict, module: torch.nn.Module, inputs: dict[str, torch.Tensor],
               call) -> None:
    """A diffusers module with random weights: float32 weights stored, run in float64."""
    with torch.no_grad():
        for pname, p in module.named_parameters():
            # Norm scales around 1, as trained ones are; everything else centred on 0.
            centre = 1.0 if "norm" in pname and pname.endswith("weight") else 0.0
            p.copy_(c.randn(*p.shape, scale=0.3) + centre)
    weights = {k: v.detach().float().clone() for k, v in module.named_parameters()}
    ref_module = module.double()
    ref_inputs = {k: v.double().requires_grad_(True) for k, v in inputs.items()}
    y = call(ref_module, **ref_inputs)
    dy = c.randn(*y.shape)
    (y * dy.double()).sum().backward()
    grads = {k: v.grad for k, v in ref_inputs.items()}
    grads.update({k: p.grad for k, p in ref_module.named_parameters()})
    c.store(name, op, params, {**inputs, **weights}, y, dy, grads)


def build(c: Cases) -> None:
    # Convolutions: the UNet's 3x3 same-size, its stride-2 downsampler, the 1x1 shortcut, and
    # odd sizes with no or wider padding.
    add_conv(c, "conv_3x3_same", 2, 3, 7, 5, 4, 3, 1, 1)
    add_conv(c, "conv_3x3_stride2", 1, 4, 9, 8, 6, 3, 2, 1)
    add_conv(c, "conv_1x1", 2, 5, 4, 6, 3, 1, 1, 0)
    add_conv(c, "conv_3x3_stride2_nopad", 2, 3, 7, 6, 2, 3, 2, 0)
    add_conv(c, "conv_5x5_pad2", 1, 2, 6, 7, 3, 5, 1, 2)

    add_group_norm(c, "group_norm_3_of_6", 2, 6, 3, 5, 3, 1e-5)
    add_group_norm(c, "group_norm_2_of_8", 1, 8, 4, 4, 2, 1e-6)
    add_group_norm(c, "group_norm_1_of_4", 3, 4, 2, 3, 1, 1e-5)

    for name, rows, d in (("layer_norm_6x10", 6, 10), ("layer_norm_5x16", 5, 16)):
        inputs = {"x": c.randn(rows, d, scale=1.5) - 0.4, "weight": c.randn(d, scale=0.5) + 1.0,
                  "bias": c.randn(d, scale=0.5)}
        c.add(name, "layer_norm", {"rows": rows, "d": d, "eps": 1e-5}, inputs,
              lambda x, weight, bias, d=d: F.layer_norm(x, (d,), weight, bias, 1e-5))

    c.add("silu", "silu", {"n": 2 * 3 * 5 * 7}, {"x": c.randn(2, 3, 5, 7, scale=3.0)},
          lambda x: F.silu(x))

    c.add("upsample_2x", "upsample", {"planes": 6, "h": 3, "w": 5, "oh": 6, "ow": 10}, {"x": c.randn(2, 3, 3, 5)},
          lambda x: F.interpolate(x, scale_factor=2.0, mode="nearest"))
    c.add("upsample_to_7x9", "upsample", {"planes": 2, "h": 3, "w": 5, "oh": 7, "ow": 9}, {"x": c.randn(1, 2, 3, 5)},
          lambda x: F.interpolate(x, size=(7, 9), mode="nearest"))

    c.add("linear_bias", "linear", {"n": 7, "k": 5, "m": 9},
          {"x": c.randn(7, 5), "weight": c.randn(9, 5, scale=0.4), "bias": c.randn(9)},
          lambda x, weight, bias: F.linear(x, weight, bias))

    # GEGLU as diffusers builds it: the projection's output splits into (hidden, gate) halves.
    for name, rows, din, dout in (("geglu_6_to_5", 6, 4, 5), ("geglu_3_to_12", 3, 8, 12)):
        add_module(c, name, "geglu", {"rows": rows, "in": din, "out": dout}, GEGLU(din, dout),
                   {"x": c.randn(rows, din)}, lambda m, x: m(x))

    add_attention(c, "attention_self", 2, 9, 9, 2, 4)
    add_attention(c, "attention_cross", 2, 7, 5, 3, 8)
    # More query rows than one block of the engine's loop (64).
    add_attention(c, "attention_self_long", 1, 70, 70, 1, 4)
    add_attention(c, "attention_cross_long", 1, 67, 3, 2, 2)

    for name, dim, flip, shift in (("timestep_32_flip", 32, True, 0.0), ("timestep_7_shift1", 7, False, 1.0)):
        t = torch.tensor([0.0, 1.0, 37.5, 500.0, 999.0])
        y = get_timestep_embedding(t, dim, flip_sin_to_cos=flip, downscale_freq_shift=shift)
        c.store(name, "timestep", {"batch": 5, "dim": dim, "flip_sin_to_cos": flip, "freq_shift": shift},
                {"t": t}, y, None, {})

    pred, target = c.randn(2, 4, 3, 3), c.randn(2, 4, 3, 3)
    p = pred.double().requires_grad_(True)
    loss = F.mse_loss(p, target.double())
    loss.backward()
    c.store("mse", "mse", {"n": pred.numel()}, {"pred": pred, "target": target}, loss.reshape(1), None,
            {"pred": p.grad})

    # Composed blocks.
    add_module(c, "resnet_block", "resnet_block",
               {"batch": 2, "in_channels": 4, "out_channels": 6, "height": 5, "width": 6, "temb": 8, "groups": 2,
                "eps": 1e-5},
               ResnetBlock2D(in_channels=4, out_channels=6, temb_channels=8, groups=2, eps=1e-5),
               {"x": c.randn(2, 4, 5, 6), "temb": c.randn(2, 8)}, lambda m, x, temb: m(x, temb))
    add_module(c, "transformer_block", "transformer_block",
               {"batch": 2, "tokens": 10, "dim": 8, "heads": 2, "head_dim": 4, "context_len": 5, "context_dim": 6,
                "eps": 1e-5},
               BasicTransformerBlock(8, 2, 4, cross_attention_dim=6, activation_fn="geglu"),
               {"x": c.randn(2, 10, 8), "context": c.randn(2, 5, 6)},
               lambda m, x, context: m(x, encoder_hidden_states=context))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "unet_ops_grad"))
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    c = Cases(args.seed)
    build(c)
    save_file(c.tensors, os.path.join(args.out, "cases.safetensors"))
    with open(os.path.join(args.out, "cases.json"), "w") as f:
        json.dump({"cases": c.index, "seed": args.seed,
                   "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__}}, f, indent=1)
    total = sum(t.numel() for t in c.tensors.values())
    print(f"{len(c.index)} cases, {len(c.tensors)} tensors, {total} values")


if __name__ == "__main__":
    main()
