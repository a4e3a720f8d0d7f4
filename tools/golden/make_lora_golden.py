#!/usr/bin/env python3
"""Reference loss, logits and LoRA gradients of tiny DBRX models, for the LoRA tests.

LoRA adds to a frozen weight W [out, in] the low-rank update s * B @ A, with A [r, in],
B [out, r] and s = alpha / r. The targets are the attention's Wqkv and out_proj and the experts'
w1, v1 and w2. Each expert of the stacked [E * F, d] expert tensors is its own matrix W_e [F, d]
with its own A_e [r, d] and B_e [F, r]; the adapter stores them stacked, A as [E, r, d] and B as
[E, F, r]. For w2, which DBRX uses as x . w2_e, the update is added to the stored [F, d] matrix
all the same (W_e + s * B_e @ A_e), so one rule covers every target.

The parametrization here is written with torch.nn.utils.parametrize (no peft): every targeted
weight reads as W + s * B @ A, with W frozen and A, B trainable. B is random and nonzero, unlike
a fresh adapter's zeros, so that the gradients of A are nonzero too.

For each config a folder under --out (default tests/fixtures/lora) holds:

    config.json, model.safetensors   the base model as transformers saves it (float32)
    adapter/adapter_config.json      {"r", "lora_alpha", "target_modules", "base_model", ...}
    adapter/adapter_model.safetensors
                                     "transformer.blocks.L.norm_attn_norm.attn.Wqkv.lora_A.weight"
                                     [r, in] and ".lora_B.weight" [out, r]; for the experts
                                     "transformer.blocks.L.ffn.experts.mlp.w1.lora_A.weight"
                                     [E, r, d] and ".lora_B.weight" [E, F, r]
    grads.safetensors                d(loss)/d(every adapter tensor), the same names and shapes
    golden.json                      {"inputs", "targets" (-100 = ignored), "loss", "ce_loss",
                                      "aux_loss", "moe_loss_weight", "logits" [B][T][V] of the
                                      adapted model, "checks", ...}

The loss is the one of make_dbrx_grad_golden.py: mean cross-entropy over counted targets plus
moe_loss_weight times transformers' load-balancing aux loss, computed in float64 from the
float32 values on disk.

Run: .venv/bin/python tools/golden/make_lora_golden.py [--out tests/fixtures/lora]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.nn.utils.parametrize as parametrize
from safetensors.torch import save_file
from transformers import DbrxForCausalLM
from transformers.utils import logging as hf_logging

from make_dbrx_golden import init_weights_with
from make_dbrx_grad_golden import STD, Spec, TooClose, checked_loss, make_config

ALL_TARGETS = ["Wqkv", "out_proj", "w1", "v1", "w2"]


@dataclass
class LoraSpec:
    model: Spec
    rank: int
    alpha: float
    targets: list[str]
    a_std: float = 0.3
    b_std: float = 0.3


SPECS = [
    # Every target, GQA with clipping, top-2 of 4 experts.
    LoraSpec(model=Spec(name="all_targets_e4_top2", seed=51, d_model=32, n_heads=4, kv_n_heads=2, n_layers=2,
                        vocab_size=97, ffn_hidden_size=24, moe_num_experts=4, moe_top_k=2,
                        moe_normalize_expert_weights=1.0, clip_qkv=0.6, moe_loss_weight=0.05, batch=2,
                        seq_len=12),
             rank=4, alpha=8.0, targets=list(ALL_TARGETS)),
    # A subset of targets, rank 2 with alpha 3 (a scale that is not a power of two), no clip,
    # top-1 of 4 experts with raw softmax weights.
    LoraSpec(model=Spec(name="qkv_w2_e4_top1", seed=62, d_model=16, n_heads=2, kv_n_heads=1, n_layers=2,
                        vocab_size=50, ffn_hidden_size=20, moe_num_experts=4, moe_top_k=1,
                        moe_normalize_expert_weights=None, clip_qkv=None, moe_loss_weight=0.1, batch=2,
                        seq_len=10, rope_theta=500000.0),
             rank=2, alpha=3.0, targets=["Wqkv", "w2"]),
]


class LowRankUpdate(torch.nn.Module):
    """W -> W + scale * B @ A, for one matrix (A [r, in], B [out, r]) or for stacked experts
    (A [E, r, in], B [E, out, r], W [E * out, in])."""

    def __init__(self, a: torch.Tensor, b: torch.Tensor, scale: float):
        super().__init__()
        self.lora_A = torch.nn.Parameter(a)
        self.lora_B = torch.nn.Parameter(b)
        self.scale = scale

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.lora_A.dim() == 2:
            return w + self.scale * (self.lora_B @ self.lora_A)
        return w + self.scale * torch.bmm(self.lora_B, self.lora_A).reshape(w.shape)


def targeted(model: DbrxForCausalLM, targets: list[str]):
    """(adapter name prefix, module, attribute, experts) of every targeted weight, in layer order."""
    out = []
    for li, block in enumerate(model.transformer.blocks):
        attn = block.norm_attn_norm.attn
        mlp = block.ffn.experts.mlp
        for t in ALL_TARGETS:
            if t not in targets:
                continue
            if t in ("Wqkv", "out_proj"):
                out.append((f"transformer.blocks.{li}.norm_attn_norm.attn.{t}", getattr(attn, t), "weight", 0))
            else:
                out.append((f"transformer.blocks.{li}.ffn.experts.mlp.{t}", mlp, t, mlp.moe_num_experts))
    return out


def build(ls: LoraSpec, out_dir: str) -> None:
    for attempt in range(50):
        try:
            return build_seed(ls, out_dir, ls.model.seed + 1000 * attempt)
        except TooClose as e:
            print(f"  {e}; next seed")
    raise RuntimeError(f"{ls.model.name}: no seed gives clear margins")


def build_seed(ls: LoraSpec, out_dir: str, seed: int) -> None:
    s = ls.model
    torch.manual_seed(seed)
    cfg = make_config(s)
    model = DbrxForCausalLM(cfg).float()
    init_weights_with(model, STD)

    folder = os.path.join(out_dir, s.name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    gen_path = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen_path):
        os.remove(gen_path)
    if s.clip_qkv is None:
        # transformers 5.24 calls clamp(min=None, max=None) without a clip, which torch refuses.
        for m in model.modules():
            if type(m).__name__ == "DbrxAttention":
                m.clip_qkv = math.inf

    # The adapter, drawn in float32 (what lies on disk), then everything in float64.
    gen = torch.Generator().manual_seed(seed + 7)
    scale = ls.alpha / ls.rank
    adapter = {}
    model = model.double()
    for p in model.parameters():
        p.requires_grad_(False)
    for prefix, module, attr, experts in targeted(model, ls.targets):
        w = getattr(module, attr)
        if experts:
            out_dim, in_dim = w.shape[0] // experts, w.shape[1]
            a_shape, b_shape = (experts, ls.rank, in_dim), (experts, out_dim, ls.rank)
        else:
            out_dim, in_dim = w.shape
            a_shape, b_shape = (ls.rank, in_dim), (out_dim, ls.rank)
        a = torch.randn(a_shape, generator=gen) * ls.a_std
        b = torch.randn(b_shape, generator=gen) * ls.b_std / math.sqrt(ls.rank)
        adapter[f"{prefix}.lora_A.weight"] = a.float().contiguous()
        adapter[f"{prefix}.lora_B.weight"] = b.float().contiguous()
        parametrize.register_parametrization(module, attr, LowRankUpdate(a.float().double(), b.float().double(), scale))

    generator = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randint(0, s.vocab_size, (s.batch, s.seq_len), generator=generator)
    targets = torch.roll(inputs, -1, dims=1)
    targets[:, -1] = torch.randint(0, s.vocab_size, (s.batch,), generator=generator)
    targets[0, :3] = -100
    targets[-1, 5] = -100

    model.train()  # as in a training step; dropout is 0 and jitter off
    checks, out, loss, ce, aux = checked_loss(model, s, inputs, targets)
    loss.backward()

    grads = {}
    for prefix, module, attr, _experts in targeted(model, ls.targets):
        upd = module.parametrizations[attr][0]
        for part, p in (("lora_A", upd.lora_A), ("lora_B", upd.lora_B)):
            g = p.grad.detach().float().contiguous()
            if not torch.isfinite(g).all() or float(g.abs().max()) == 0.0:
                raise RuntimeError(f"{s.name}: gradient of {prefix}.{part} is zero or not finite")
            grads[f"{prefix}.{part}.weight"] = g
    if sorted(grads) != sorted(adapter):
        raise RuntimeError("gradient names differ from the adapter's")

    # The LoRA must matter: the adapted logits differ clearly from the base model's.
    with torch.no_grad():
        adapted = out.logits.detach()
        for _prefix, module, attr, _experts in targeted(model, ls.targets):
            module.parametrizations[attr][0].scale = 0.0
        base_logits = model(input_ids=inputs).logits
        for _prefix, module, attr, _experts in targeted(model, ls.targets):
            module.parametrizations[attr][0].scale = scale
    checks["max_logit_change"] = float((adapted - base_logits).abs().max())
    if checks["max_logit_change"] < 0.1:
        raise RuntimeError(f"{s.name}: the adapter barely changes the logits ({checks['max_logit_change']})")

    os.makedirs(os.path.join(folder, "adapter"))
    save_file(adapter, os.path.join(folder, "adapter", "adapter_model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(folder, "adapter", "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": ls.rank, "lora_alpha": ls.alpha, "target_modules": ls.targets,
                   "base_model": s.name, "expert_layout": "stacked"}, f, indent=1)
    save_file(grads, os.path.join(folder, "grads.safetensors"))
    golden = {
        "inputs": inputs.tolist(), "targets": targets.tolist(),
        "loss": loss.item(), "ce_loss": ce.item(), "aux_loss": aux.item(),
        "moe_loss_weight": s.moe_loss_weight, "rank": ls.rank, "alpha": ls.alpha, "lora_targets": ls.targets,
        "logits": adapted.float().tolist(),
        "seed": seed, "checks": checks,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    with open(os.path.join(folder, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")
    print(f"{s.name}: loss {loss.item():.6f} (ce {ce.item():.6f}, aux {aux.item():.6f}), "
          f"{len(grads)} adapter gradients, checks {checks}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "lora"))
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for ls in SPECS:
        build(ls, args.out)
    total = 0
    for root, _dirs, files in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"total fixture bytes: {total}")
    if total > 1_000_000:
        print("error: fixtures exceed 1 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
