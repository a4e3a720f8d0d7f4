#!/usr/bin/env python3
"""Reference loss and gradients of tiny DBRX models, for the training engine's gradient tests.

For each config a folder under --out (default tests/fixtures/dbrx_grad) holds:

    config.json, model.safetensors   the model as transformers saves it (float32)
    grads.safetensors                d(loss)/d(parameter) for every parameter, same names
    golden.json                      {"inputs": [B][T] ids, "targets": [B][T] ids (-100 = ignored),
                                      "loss": total, "ce_loss": ..., "aux_loss": ...,
                                      "moe_loss_weight": ..., "checks": {...}}

The loss is what a DBRX training step minimises:

    loss = cross_entropy(logits, targets, ignore_index=-100, mean over counted targets)
         + moe_loss_weight * load_balancing_loss(router logits of every layer)

where logits and the router logits come from transformers' DbrxForCausalLM
(output_router_logits=True) and the load-balancing term is its `aux_loss`. Router jitter and
dropout are off. Everything is computed in float64 from the float32 weights on disk, so the
reference carries no rounding of its own; the engine, in float32, is compared within 1e-4.

Run: .venv/bin/python tools/golden/make_dbrx_grad_golden.py [--out tests/fixtures/dbrx_grad]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
from dataclasses import dataclass

import torch
from safetensors.torch import save_file
from transformers import DbrxConfig, DbrxForCausalLM
from transformers.utils import logging as hf_logging

from make_dbrx_golden import init_weights_with

# Expert choices and clipping must not hinge on float noise, or an engine that is right to
# 1e-6 could route one token differently and disagree by far more than the tolerance.
MIN_ROUTER_GAP = 1e-4
MIN_CLIP_MARGIN = 2e-5


@dataclass
class Spec:
    name: str
    seed: int
    d_model: int
    n_heads: int
    kv_n_heads: int
    n_layers: int
    vocab_size: int
    ffn_hidden_size: int
    moe_num_experts: int
    moe_top_k: int
    moe_normalize_expert_weights: float | None
    clip_qkv: float | None
    moe_loss_weight: float
    batch: int
    seq_len: int
    rope_theta: float = 10000.0


SPECS = [
    # GQA (2 query heads per kv head), clipping that bites, L1-normalised top-2 of 4 experts.
    Spec(name="e4_top2_gqa_clip", seed=11, d_model=32, n_heads=4, kv_n_heads=2, n_layers=2,
         vocab_size=97, ffn_hidden_size=24, moe_num_experts=4, moe_top_k=2,
         moe_normalize_expert_weights=1.0, clip_qkv=0.6, moe_loss_weight=0.05, batch=2, seq_len=12),
    # One kv head, no clip, L2-normalised top-3 of 8 experts, three layers, a heavier aux loss.
    Spec(name="e8_top3_mqa_p2", seed=22, d_model=24, n_heads=3, kv_n_heads=1, n_layers=3,
         vocab_size=61, ffn_hidden_size=16, moe_num_experts=8, moe_top_k=3,
         moe_normalize_expert_weights=2.0, clip_qkv=None, moe_loss_weight=0.2, batch=3, seq_len=9,
         rope_theta=500000.0),
    # Raw (unnormalised) softmax weights, top-1 of 4, plain multi-head attention.
    Spec(name="e4_top1_mha_raw", seed=33, d_model=16, n_heads=2, kv_n_heads=2, n_layers=1,
         vocab_size=50, ffn_hidden_size=20, moe_num_experts=4, moe_top_k=1,
         moe_normalize_expert_weights=None, clip_qkv=0.8, moe_loss_weight=0.01, batch=2, seq_len=16),
]

STD = {"wte": 0.5, "Wqkv": 0.15, "out_proj": 0.15, "router": 0.4, "experts": 0.15, "lm_head": 0.3, "norm": 0.1}


def make_config(s: Spec) -> DbrxConfig:
    cfg = DbrxConfig(
        d_model=s.d_model, n_heads=s.n_heads, n_layers=s.n_layers, max_seq_len=64,
        vocab_size=s.vocab_size,
        attn_config={"clip_qkv": s.clip_qkv, "kv_n_heads": s.kv_n_heads, "rope_theta": s.rope_theta},
        ffn_config={"ffn_hidden_size": s.ffn_hidden_size, "moe_num_experts": s.moe_num_experts,
                    "moe_top_k": s.moe_top_k,
                    "moe_normalize_expert_weights": s.moe_normalize_expert_weights,
                    "moe_loss_weight": s.moe_loss_weight, "moe_jitter_eps": None,
                    "ffn_act_fn": {"name": "silu"}},
        rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta},
        resid_pdrop=0.0, emb_pdrop=0.0, tie_word_embeddings=False, use_cache=False,
    )
    cfg._attn_implementation = "eager"
    return cfg


def margins(model: DbrxForCausalLM, s: Spec, inputs: torch.Tensor) -> dict:
    """How far routing and clipping stay from their decision boundaries."""
    gaps, clip_margin, clipped, total = [], math.inf, 0, 0
    hooks = []

    def router_hook(_m, _i, out):
        probs = torch.softmax(out, dim=-1)
        if s.moe_top_k < s.moe_num_experts:
            top = torch.topk(probs, s.moe_top_k + 1, dim=-1).values
            gaps.append((top[:, s.moe_top_k - 1] - top[:, s.moe_top_k]).min().item())

    def qkv_hook(_m, _i, out):
        nonlocal clip_margin, clipped, total
        if s.clip_qkv is not None:
            clip_margin = min(clip_margin, (out.abs() - s.clip_qkv).abs().min().item())
            clipped += int((out.abs() > s.clip_qkv).sum())
            total += out.numel()

    for block in model.transformer.blocks:
        hooks.append(block.ffn.router.layer.register_forward_hook(router_hook))
        hooks.append(block.norm_attn_norm.attn.Wqkv.register_forward_hook(qkv_hook))
    with torch.no_grad():
        model(input_ids=inputs)
    for h in hooks:
        h.remove()
    return {"min_router_gap": min(gaps) if gaps else None,
            "min_clip_margin": None if s.clip_qkv is None else clip_margin,
            "clipped_fraction": None if s.clip_qkv is None else clipped / total}


class TooClose(RuntimeError):
    pass


def checked_loss(model: DbrxForCausalLM, s: Spec, inputs: torch.Tensor, targets: torch.Tensor):
    """The training loss (CE with ignored targets + moe_loss_weight * aux), after checking that
    routing and clipping sit clear of their boundaries. Returns (checks, output, loss, ce, aux)."""
    checks = margins(model, s, inputs)
    if checks["min_router_gap"] is not None and checks["min_router_gap"] < MIN_ROUTER_GAP:
        raise TooClose(f"{s.name}: router gap {checks['min_router_gap']:.2e} too small")
    if checks["min_clip_margin"] is not None and checks["min_clip_margin"] < MIN_CLIP_MARGIN:
        raise TooClose(f"{s.name}: a qkv value sits on the clip boundary")
    if s.clip_qkv is not None and not checks["clipped_fraction"] > 0.01:
        raise RuntimeError(f"{s.name}: clipping does not bite ({checks['clipped_fraction']})")
    out = model(input_ids=inputs, output_router_logits=True)
    ce = torch.nn.functional.cross_entropy(out.logits.reshape(-1, s.vocab_size), targets.reshape(-1),
                                           ignore_index=-100)
    aux = out.aux_loss
    return checks, out, ce + s.moe_loss_weight * aux, ce, aux


def build(s: Spec, out_dir: str) -> None:
    # The first seed from s.seed on whose routing and clipping sit clear of their boundaries.
    for attempt in range(50):
        try:
            return build_seed(s, out_dir, s.seed + 1000 * attempt)
        except TooClose as e:
            print(f"  {e}; next seed")
    raise RuntimeError(f"{s.name}: no seed gives clear margins")


def build_seed(s: Spec, out_dir: str, seed: int) -> None:
    torch.manual_seed(seed)
    cfg = make_config(s)
    model = DbrxForCausalLM(cfg).float()
    init_weights_with(model, STD)
    if s.clip_qkv is None:
        # transformers 5.24 calls clamp(min=None, max=None) without a clip, which torch refuses;
        # a clamp to +-inf is the same identity.
        for m in model.modules():
            if type(m).__name__ == "DbrxAttention":
                m.clip_qkv = math.inf

    gen = torch.Generator().manual_seed(seed + 1)
    inputs = torch.randint(0, s.vocab_size, (s.batch, s.seq_len), generator=gen)
    targets = torch.roll(inputs, -1, dims=1)
    targets[:, -1] = torch.randint(0, s.vocab_size, (s.batch,), generator=gen)
    # A few ignored targets, as a fine-tuning prompt mask makes them.
    targets[0, :3] = -100
    targets[-1, 5] = -100

    folder = os.path.join(out_dir, s.name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    model.save_pretrained(folder, safe_serialization=True)
    with open(os.path.join(folder, "config.json")) as f:
        saved = json.load(f)
    # The clip sentinel above must not leak into the saved config.
    if saved["attn_config"].get("clip_qkv") not in (None, s.clip_qkv):
        raise RuntimeError("saved clip_qkv differs from the spec")

    ref = model.double()
    ref.train()  # training mode as in a real step; dropout is 0 and jitter is off
    checks, _, loss, ce, aux = checked_loss(ref, s, inputs, targets)
    ref.zero_grad()
    loss.backward()

    grads = {name: p.grad.detach().float().contiguous() for name, p in ref.named_parameters()}
    for name, g in grads.items():
        if not torch.isfinite(g).all() or float(g.abs().max()) == 0.0:
            raise RuntimeError(f"{s.name}: gradient of {name} is zero or not finite")
    save_file(grads, os.path.join(folder, "grads.safetensors"))
    golden = {
        "inputs": inputs.tolist(), "targets": targets.tolist(),
        "loss": loss.item(), "ce_loss": ce.item(), "aux_loss": aux.item(),
        "moe_loss_weight": s.moe_loss_weight, "seed": seed, "checks": checks,
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    with open(os.path.join(folder, "golden.json"), "w") as f:
        json.dump(golden, f, indent=1)
    print(f"{s.name}: loss {loss.item():.6f} (ce {ce.item():.6f}, aux {aux.item():.6f}), "
          f"{len(grads)} gradients, checks {checks}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join("tests", "fixtures", "dbrx_grad"))
    args = ap.parse_args()
    hf_logging.set_verbosity_error()
    torch.set_num_threads(1)
    os.makedirs(args.out, exist_ok=True)
    for s in SPECS:
        build(s, args.out)


if __name__ == "__main__":
    main()
