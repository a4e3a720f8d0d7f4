#!/usr/bin/env python3
"""Training tokens/s of tessera against PyTorch eager on the CPU, same model, same batch.

Both train a DBRX model of the same config (transformers' DbrxForCausalLM on the torch side),
with random tokens, batch B x sequence T, full steps: forward, backward of the loss (cross-entropy
plus the MoE load-balancing loss), gradient clipping, AdamW. Same thread count for both, in one
run on one machine. Prints both throughputs and the ratio tessera / torch.

Run (after building: ninja -C build train_bench):
  .venv/bin/python bench/train_vs_torch.py [--threads 2] [--batch 8] [--seq 256] [--steps 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# About 36M parameters (15M active): 4 layers of 16 experts, top-4, d_model 384, GQA 6/2.
CONFIG = {
    "model_type": "dbrx", "d_model": 384, "n_heads": 6, "n_layers": 4, "max_seq_len": 512,
    "vocab_size": 8192, "tie_word_embeddings": False,
    "attn_config": {"kv_n_heads": 2, "clip_qkv": 8.0, "rope_theta": 500000.0},
    "ffn_config": {"ffn_hidden_size": 384, "moe_num_experts": 16, "moe_top_k": 4,
                   "moe_normalize_expert_weights": 1.0, "moe_loss_weight": 0.05},
}


def torch_tokens_per_second(args) -> tuple[float, list[float]]:
    import torch
    from transformers import DbrxConfig, DbrxForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = DbrxConfig(
        d_model=CONFIG["d_model"], n_heads=CONFIG["n_heads"], n_layers=CONFIG["n_layers"],
        max_seq_len=CONFIG["max_seq_len"], vocab_size=CONFIG["vocab_size"],
        attn_config=CONFIG["attn_config"], ffn_config=dict(CONFIG["ffn_config"], ffn_act_fn={"name": "silu"}),
        rope_parameters={"rope_type": "default", "rope_theta": CONFIG["attn_config"]["rope_theta"]},
        resid_pdrop=0.0, emb_pdrop=0.0, tie_word_embeddings=False, use_cache=False,
        output_router_logits=True)
    cfg._attn_implementation = args.torch_attention
    model = DbrxForCausalLM(cfg)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    times = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(0, CONFIG["vocab_size"], (args.batch, args.seq))
        t0 = time.perf_counter()
        out = model(input_ids=ids, labels=ids, output_router_logits=True)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= args.warmup:
            times.append(dt)
    return args.batch * args.seq * args.steps / sum(times), times


def tessera_tokens_per_second(args) -> tuple[float, list[float]]:
    exe = os.path.join(ROOT, "build", "train_bench")
    if not os.path.exists(exe):
        sys.exit("build/train_bench is missing: run `ninja -C build train_bench` first")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "config.json")
        with open(path, "w") as f:
            json.dump(CONFIG, f)
        out = subprocess.run([exe, "--config", path, "--threads", str(args.threads), "--batch", str(args.batch),
                              "--seq", str(args.seq), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                             check=True, capture_output=True, text=True)
    result = json.loads(out.stdout)
    return result["tokens_per_second"], result["seconds_per_step"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--torch-attention", default="sdpa", choices=["sdpa", "eager"],
                    help="transformers' attention implementation for the torch side")
    args = ap.parse_args()
    import torch
    print(f"config: {json.dumps(CONFIG)}")
    print(f"batch {args.batch} x seq {args.seq}, {args.steps} timed steps after {args.warmup} warmup, "
          f"{args.threads} threads, torch {torch.__version__}")
    tess, tess_times = tessera_tokens_per_second(args)
    ref, ref_times = torch_tokens_per_second(args)
    print(f"tessera      {tess:9.1f} tok/s   s/step {' '.join(f'{t:.2f}' for t in tess_times)}")
    print(f"torch eager  {ref:9.1f} tok/s   s/step {' '.join(f'{t:.2f}' for t in ref_times)}")
    print(f"ratio tessera / torch: {tess / ref:.2f}x")


if __name__ == "__main__":
    main()
