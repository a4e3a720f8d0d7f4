#!/usr/bin/env python3
"""Build tiny random DBRX models with transformers and record reference outputs.

Each config gets its own folder under --out (default tests/fixtures/dbrx) holding the
Hugging Face files exactly as `save_pretrained` writes them (config.json plus
model.safetensors, or shards plus model.safetensors.index.json) and golden.json:

    {
      "config_name": str,
      "storage_dtype": "float32" | "bfloat16",
      "sharded": bool,
      "n_params": int,            # every parameter, lm_head included (it is not tied)
      "n_active_params": int,     # n_params - n_layers * (experts - top_k) * per_expert_params
      "per_expert_params": int,   # 3 * ffn_hidden_size * d_model (w1, v1, w2 rows of one expert)
      "sequences": [[ids]] * 3,
      "logits": [seq][position][vocab] float32 values, full no-cache forward,
      "greedy": [{"prompt": [ids], "tokens": [32 ids]}] * 2,
      "incremental_check": {"sequence": i, "prefill_len": n, "max_abs_diff": x},
      "checks": {...}             # what the script verified about the reference itself
    }

All reference numbers come from float32 compute in eval mode. For the bfloat16 config the
weights are rounded to bfloat16 (that is what lies on disk), upcast to float32, and then run.

Run: venv/bin/python tools/golden/make_dbrx_golden.py [--out tests/fixtures/dbrx]
The output is deterministic for a given torch/transformers build (one CPU thread, fixed seeds).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from safetensors import safe_open
from transformers import DbrxConfig, DbrxForCausalLM, GenerationConfig
from transformers.utils import logging as hf_logging

SEQ_LENGTHS = (1, 7, 16)
GREEDY_PROMPT_LENGTHS = (3, 9)
GREEDY_NEW_TOKENS = 32
INCREMENTAL_PREFILL = 6
# Greedy tokens and expert choices must not hinge on float noise, or an engine that is
# correct to 1e-4 could still disagree; candidates closer than these are rejected.
MIN_GREEDY_MARGIN = 1e-3
MIN_ROUTER_GAP = 1e-5


@dataclass
class Spec:
    name: str
    seed: int
    d_model: int
    n_heads: int
    kv_n_heads: int
    n_layers: int
    vocab_size: int
    max_seq_len: int
    ffn_hidden_size: int
    moe_num_experts: int
    moe_top_k: int
    moe_normalize_expert_weights: float | None
    clip_qkv: float | None
    rope_theta: float
    storage_dtype: str = "float32"  # or "bfloat16"
    max_shard_size: str | None = None  # set to save sharded
    # Standard deviations of the random weights, far above the 0.02 default so that logits
    # spread out, clipping bites and the router prefers different experts per token.
    std: dict = field(default_factory=dict)


DEFAULT_STD = {
    "wte": 0.5,
    "Wqkv": 0.1,
    "out_proj": 0.15,
    "router": 0.3,
    "experts": 0.15,
    "lm_head": 0.3,
    "norm": 0.1,  # LayerNorm weights are 1 + norm * N(0, 1)
}

SPECS = [
    # 4 experts, top-1, GQA with one kv head, clip on, L1 normalisation (top-1 weight is 1).
    Spec(name="e4_top1_gqa_clip_f32", seed=1001, d_model=32, n_heads=4, kv_n_heads=1,
         n_layers=2, vocab_size=256, max_seq_len=64, ffn_hidden_size=48, moe_num_experts=4,
         moe_top_k=1, moe_normalize_expert_weights=1.0, clip_qkv=0.5, rope_theta=10000.0),
    # 8 experts, top-2, plain multi-head (kv == heads), no clip, raw softmax weights,
    # stored in bfloat16.
    Spec(name="e8_top2_mha_noclip_bf16", seed=2002, d_model=48, n_heads=4, kv_n_heads=4,
         n_layers=3, vocab_size=384, max_seq_len=128, ffn_hidden_size=32, moe_num_experts=8,
         moe_top_k=2, moe_normalize_expert_weights=None, clip_qkv=None, rope_theta=500000.0,
         storage_dtype="bfloat16"),
    # 16 experts, top-4, GQA, no clip, L2 normalisation of the top-k weights, sharded.
    Spec(name="e16_top4_p2_sharded", seed=3003, d_model=32, n_heads=4, kv_n_heads=2,
         n_layers=1, vocab_size=320, max_seq_len=96, ffn_hidden_size=32, moe_num_experts=16,
         moe_top_k=4, moe_normalize_expert_weights=2.0, clip_qkv=None, rope_theta=500000.0,
         max_shard_size="100KB"),
    # 4 experts, top-2, wider model (d_model 64, head_dim 8, 4 query heads per kv head),
    # clip on, L1 normalisation of two weights.
    Spec(name="e4_top2_d64_clip_f32", seed=4004, d_model=64, n_heads=8, kv_n_heads=2,
         n_layers=1, vocab_size=256, max_seq_len=128, ffn_hidden_size=32, moe_num_experts=4,
         moe_top_k=2, moe_normalize_expert_weights=1.0, clip_qkv=1.0, rope_theta=10000.0),
]


def make_config(s: Spec) -> DbrxConfig:
    cfg = DbrxConfig(
        d_model=s.d_model,
        n_heads=s.n_heads,
        n_layers=s.n_layers,
        max_seq_len=s.max_seq_len,
        vocab_size=s.vocab_size,
        # Real DBRX checkpoints keep rope_theta in attn_config; transformers 5 reads it from
        # rope_parameters. Both are written, equal, so either reader gets the same model.
        attn_config={"clip_qkv": s.clip_qkv, "kv_n_heads": s.kv_n_heads, "rope_theta": s.rope_theta},
        ffn_config={
            "ffn_hidden_size": s.ffn_hidden_size,
            "moe_num_experts": s.moe_num_experts,
            "moe_top_k": s.moe_top_k,
            "moe_normalize_expert_weights": s.moe_normalize_expert_weights,
            "ffn_act_fn": {"name": "silu"},
        },
        rope_parameters={"rope_type": "default", "rope_theta": s.rope_theta},
        initializer_range=DEFAULT_STD["experts"],
        tie_word_embeddings=False,
        use_cache=True,
    )
    cfg._attn_implementation = "eager"
    return cfg


def patch_no_clip(model: DbrxForCausalLM) -> None:
    # transformers 5.24 calls qkv.clamp(min=None, max=None) when clip_qkv is None, which torch
    # rejects. No clip means identity, which a clamp to +-inf is exactly.
    for mod in model.modules():
        if type(mod).__name__ == "DbrxAttention" and mod.clip_qkv is None:
            mod.clip_qkv = math.inf


def init_weights(model: DbrxForCausalLM, s: Spec) -> None:
    init_weights_with(model, dict(DEFAULT_STD, **s.std))


def init_weights_with(model: DbrxForCausalLM, std: dict) -> None:
    """Normal weights with a standard deviation per kind of parameter; norms near 1."""
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith(("norm_1.weight", "norm_2.weight", "norm_f.weight")):
                p.copy_(1.0 + std["norm"] * torch.randn_like(p))
                continue
            key = next((k for k in ("wte", "Wqkv", "out_proj", "router", "lm_head") if k in name), None)
            if key is None and ".experts.mlp." in name:
                key = "experts"
            if key is None:
                raise RuntimeError(f"no init rule for parameter {name}")
            p.normal_(0.0, std[key])


def _f32(x: np.float32) -> float:
    # str(np.float32) is the shortest string that round-trips to this float32; parsing it as a
    # double and letting json print the double gives back that same short string.
    return float(str(np.float32(x)))


class Probe:
    """Records router choices and Wqkv magnitudes during forwards."""

    def __init__(self, model: DbrxForCausalLM, s: Spec):
        self.s = s
        self.counts = np.zeros((s.n_layers, s.moe_num_experts), dtype=np.int64)
        self.min_gap = math.inf
        self.qkv_max = 0.0
        self.qkv_over = 0
        self.qkv_total = 0
        self.active = True
        self.handles = []
        for li, block in enumerate(model.transformer.blocks):
            self.handles.append(block.ffn.router.register_forward_hook(self._router_hook(li)))
            self.handles.append(block.norm_attn_norm.attn.Wqkv.register_forward_hook(self._qkv_hook))

    def _router_hook(self, li):
        def hook(_mod, _inp, out):
            if not self.active:
                return
            k, n = self.s.moe_top_k, self.s.moe_num_experts
            probs = torch.softmax(out.float(), dim=-1)
            top = torch.topk(probs, min(k + 1, n), dim=-1)
            for e in top.indices[:, :k].reshape(-1).tolist():
                self.counts[li, e] += 1
            if k < n:
                # How close the last chosen expert came to losing its place.
                gap = (top.values[:, k - 1] - top.values[:, k]).min().item()
                self.min_gap = min(self.min_gap, gap)
        return hook

    def _qkv_hook(self, _mod, _inp, out):
        if not self.active:
            return
        self.qkv_max = max(self.qkv_max, out.abs().max().item())
        if self.s.clip_qkv is not None:
            self.qkv_over += int((out.abs() > self.s.clip_qkv).sum().item())
        self.qkv_total += out.numel()

    def remove(self):
        for h in self.handles:
            h.remove()


def full_logits(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return out.logits[0].float()


def greedy_with_cache(model, prompt: list[int]) -> list[int]:
    gen_cfg = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=GREEDY_NEW_TOKENS,
        min_new_tokens=GREEDY_NEW_TOKENS, use_cache=True, eos_token_id=None,
        pad_token_id=0, bos_token_id=None,
    )
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([prompt]), generation_config=gen_cfg)
    toks = out[0, len(prompt):].tolist()
    assert len(toks) == GREEDY_NEW_TOKENS, len(toks)
    return toks


def top2_margin(logits: torch.Tensor) -> float:
    v = torch.topk(logits, 2, dim=-1).values
    return (v[..., 0] - v[..., 1]).min().item()


def incremental_max_diff(model, ids: list[int], prefill: int, ref: torch.Tensor) -> float:
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    rows = []
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids[:prefill]]), cache=cache, use_cache=True)
        rows.append(out.logits[0])
        for t in range(prefill, len(ids)):
            out = model(input_ids=torch.tensor([[ids[t]]]), cache=out.cache, use_cache=True)
            rows.append(out.logits[0])
    inc = torch.cat(rows, dim=0).float()
    return (inc - ref).abs().max().item()


def build(s: Spec, out_root: str) -> dict:
    torch.manual_seed(s.seed)
    cfg = make_config(s)
    model = DbrxForCausalLM(cfg)
    init_weights(model, s)
    model.eval()

    folder = os.path.join(out_root, s.name)
    if os.path.isdir(folder):
        shutil.rmtree(folder)
    os.makedirs(folder)

    save_kwargs = {"safe_serialization": True}
    if s.max_shard_size:
        save_kwargs["max_shard_size"] = s.max_shard_size
    if s.storage_dtype == "bfloat16":
        # Round the parameters only; model.to(bfloat16) would also round the RoPE inv_freq
        # buffer, which a fresh load recomputes in float32.
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.bfloat16).to(torch.float32))
        copy.deepcopy(model).to(torch.bfloat16).save_pretrained(folder, **save_kwargs)
    else:
        model.save_pretrained(folder, **save_kwargs)
    gen_path = os.path.join(folder, "generation_config.json")
    if os.path.exists(gen_path):
        os.remove(gen_path)
    # From here on: the weights exactly as stored, computed in float32.
    patch_no_clip(model)

    n_params = sum(p.numel() for p in model.parameters())
    per_expert = 3 * s.ffn_hidden_size * s.d_model
    n_active = n_params - s.n_layers * (s.moe_num_experts - s.moe_top_k) * per_expert

    gen = torch.Generator().manual_seed(s.seed + 17)
    sequences = [torch.randint(0, s.vocab_size, (n,), generator=gen).tolist() for n in SEQ_LENGTHS]

    probe = Probe(model, s)
    logits = [full_logits(model, seq) for seq in sequences]
    probe.active = False

    # Greedy prompts: drawn from the seeded generator, skipping any whose continuation has a
    # near-tie (under MIN_GREEDY_MARGIN) or whose cached and uncached argmax disagree.
    greedy = []
    greedy_margins = []
    tries = 0
    for plen in GREEDY_PROMPT_LENGTHS:
        while True:
            tries += 1
            if tries > 200:
                raise RuntimeError(f"{s.name}: no greedy prompt without near-ties")
            prompt = torch.randint(0, s.vocab_size, (plen,), generator=gen).tolist()
            toks = greedy_with_cache(model, prompt)
            full = full_logits(model, prompt + toks)
            steps = full[plen - 1: plen - 1 + GREEDY_NEW_TOKENS]
            if steps.argmax(dim=-1).tolist() != toks:
                print(f"  {s.name}: cached generate disagrees with no-cache argmax for {prompt}; retry")
                continue
            margin = top2_margin(steps)
            if margin < MIN_GREEDY_MARGIN:
                continue
            probe.active = True
            full_logits(model, prompt + toks)  # route statistics and tie gaps for these tokens too
            probe.active = False
            greedy.append({"prompt": prompt, "tokens": toks})
            greedy_margins.append(margin)
            break

    inc_seq = len(sequences) - 1
    inc_diff = incremental_max_diff(model, sequences[inc_seq], INCREMENTAL_PREFILL, logits[inc_seq])
    probe.remove()

    if probe.min_gap < MIN_ROUTER_GAP:
        raise RuntimeError(f"{s.name}: router top-k near tie (gap {probe.min_gap:.3g}); change seed")
    if s.clip_qkv is not None and probe.qkv_over == 0:
        raise RuntimeError(f"{s.name}: clip_qkv={s.clip_qkv} never clips; raise Wqkv std")
    if inc_diff > 1e-5:
        raise RuntimeError(f"{s.name}: cached prefill+decode differs from full forward by {inc_diff}")
    if (probe.counts == 0).any():
        print(f"  warning: {s.name}: some experts never chosen: {probe.counts.tolist()}")

    # The files on disk must reproduce the golden logits when loaded back. Not bit for bit:
    # mmap'd tensors can take other BLAS paths, which moves the last bits (seen: ~2e-6).
    reloaded = DbrxForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    reloaded.eval()
    patch_no_clip(reloaded)
    reload_diff = 0.0
    for seq, ref in zip(sequences, logits):
        d = (full_logits(reloaded, seq) - ref).abs().max().item()
        reload_diff = max(reload_diff, d)
        if d > 1e-5:
            raise RuntimeError(f"{s.name}: reloaded model differs from golden by {d}")

    files = sorted(os.listdir(folder))
    shards = [f for f in files if f.endswith(".safetensors")]
    disk_dtypes = set()
    for f in shards:
        with safe_open(os.path.join(folder, f), framework="pt") as sf:
            for k in sf.keys():
                disk_dtypes.add(str(sf.get_slice(k).get_dtype()))
    if s.max_shard_size and (len(shards) < 2 or "model.safetensors.index.json" not in files):
        raise RuntimeError(f"{s.name}: expected >= 2 shards and an index, got {files}")

    golden = {
        "config_name": s.name,
        "storage_dtype": s.storage_dtype,
        "sharded": bool(s.max_shard_size),
        "n_params": n_params,
        "n_active_params": n_active,
        "per_expert_params": per_expert,
        "sequences": sequences,
        "logits": [[[_f32(x) for x in row] for row in l.numpy()] for l in logits],
        "greedy": greedy,
        "incremental_check": {
            "sequence": inc_seq,
            "prefill_len": INCREMENTAL_PREFILL,
            "max_abs_diff": _f32(inc_diff),
        },
        "checks": {
            "greedy_min_top2_margin": _f32(min(greedy_margins)),
            "router_min_topk_gap": _f32(probe.min_gap) if math.isfinite(probe.min_gap) else None,
            "qkv_max_abs": _f32(probe.qkv_max),
            "qkv_fraction_clipped": _f32(probe.qkv_over / probe.qkv_total) if s.clip_qkv is not None else None,
            "reload_max_abs_diff": _f32(reload_diff),
            "routing_counts": probe.counts.tolist(),
        },
    }
    with open(os.path.join(folder, "golden.json"), "w") as f:
        json.dump(golden, f, separators=(",", ":"))
        f.write("\n")

    max_logit = max(l.abs().max().item() for l in logits)
    print(f"{s.name}: params {n_params} active {n_active} | files {files} dtypes {sorted(disk_dtypes)}")
    print(f"  max|logit| {max_logit:.3f}  greedy margin {min(greedy_margins):.4f}  "
          f"router gap {probe.min_gap:.4g}  incremental diff {inc_diff:.3g}")
    if s.clip_qkv is not None:
        print(f"  clip {s.clip_qkv}: max|qkv| {probe.qkv_max:.3f}, "
              f"{100.0 * probe.qkv_over / probe.qkv_total:.1f}% of qkv values clipped")
    else:
        print(f"  no clip: max|qkv| {probe.qkv_max:.3f}")
    for li, row in enumerate(probe.counts.tolist()):
        print(f"  layer {li} routing counts: {row}")
    return golden


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="tests/fixtures/dbrx")
    args = ap.parse_args()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    os.makedirs(args.out, exist_ok=True)
    for s in SPECS:
        build(s, args.out)
    total = 0
    for root, _dirs, files in os.walk(args.out):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print(f"total fixture bytes: {total}")
    if total > 1_800_000:
        print("error: fixtures exceed 1.8 MB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
