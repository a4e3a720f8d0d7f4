#!/usr/bin/env python3
"""Builds the benchmark models: a DBRX-architecture model of about 1B total parameters with
random weights (transformers), converted to GGUF Q8_0 by llama.cpp's own converter, and a dense
model of the same total size (one expert holding all 16 experts' width) for the MoE comparison.
Speed does not depend on weight values.

    .venv/bin/python bench/make_dbrx_1b.py [--out ~/.cache/tessera/bench]
"""
import argparse
import os
import pathlib
import sys

import torch
from transformers import DbrxConfig, DbrxForCausalLM

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools" / "golden"))
from make_dbrx_gguf_golden import convert  # noqa: E402

SHAPE = dict(d_model=1024, n_heads=16, n_layers=9, max_seq_len=4096, vocab_size=32000)


def build(name: str, experts: int, top_k: int, ffn: int, out: pathlib.Path) -> pathlib.Path:
    target = out / f"{name}.q8_0.gguf"
    if target.exists():
        return target
    config = DbrxConfig(**SHAPE,
                        attn_config=dict(kv_n_heads=4, clip_qkv=8.0, rope_theta=500000.0),
                        ffn_config=dict(ffn_hidden_size=ffn, moe_num_experts=experts, moe_top_k=top_k,
                                        moe_normalize_expert_weights=1.0))
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = DbrxForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    total = sum(p.numel() for p in model.parameters())
    print(f"{name}: {total / 1e9:.2f}B parameters")
    hf = out / name
    model.save_pretrained(hf, safe_serialization=True)
    del model
    convert(hf, target, "q8_0")
    for f in hf.iterdir():
        f.unlink()
    hf.rmdir()
    return target


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.expanduser("~/.cache/tessera/bench"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(build("dbrx-1b-moe", 16, 4, 2048, out))
    print(build("dbrx-1b-dense", 1, 1, 16 * 2048, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
