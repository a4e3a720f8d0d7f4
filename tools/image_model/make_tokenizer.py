#!/usr/bin/env python3
"""Write a small CLIP tokenizer folder: CLIP's own BPE, cut to its first N merges.

CLIP's BPE applies merges in the order they were learnt, so its first N merges are a complete,
smaller tokenizer: common words stay one token, rarer ones split into pieces. Pipelines load
the folder as any Stable Diffusion tokenizer (vocab.json, merges.txt, tokenizer_config.json).
The vocabulary comes from the installed open_clip package file (models/tokenizers), never from
the network.

    python tools/image_model/make_tokenizer.py -o OUT [--merges 4000] [--vocab-gz PATH]
"""
import argparse
import gzip
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GZ = os.path.join(HERE, "..", "..", "models", "tokenizers", "bpe_simple_vocab_16e6.txt.gz")


def byte_symbols():
    """GPT-2/CLIP's printable stand-in for each byte, in CLIP's order."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    codes = kept[:]
    extra = 0
    for b in range(256):
        if b not in kept:
            kept.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-o", "--output", required=True)
    ap.add_argument("--merges", type=int, default=4000, help="how many of CLIP's merges to keep")
    ap.add_argument("--vocab-gz", default=DEFAULT_GZ, help="CLIP's bpe_simple_vocab_16e6.txt.gz")
    args = ap.parse_args()
    if not os.path.exists(args.vocab_gz):
        print(f"error: {args.vocab_gz}: CLIP vocabulary not installed (run scripts/setup)", file=sys.stderr)
        return 2
    lines = gzip.open(args.vocab_gz, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1:49152 - 256 - 2 + 1]]
    if not 0 <= args.merges <= len(merges):
        print(f"error: --merges must be between 0 and {len(merges)}", file=sys.stderr)
        return 2
    merges = merges[:args.merges]
    symbols = byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({token: i for i, token in enumerate(vocab)}, f, ensure_ascii=False)
    with open(os.path.join(args.output, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for a, b in merges:
            f.write(f"{a} {b}\n")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
              "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
    with open(os.path.join(args.output, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    print(f"{args.output}: {len(vocab)} tokens ({args.merges} merges)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
