#!/usr/bin/env python3
"""`tessera tokenizer train` against Hugging Face `tokenizers`' BpeTrainer on the same corpus, same
vocabulary size, same pre-tokenizer (cl100k regex + byte-level) and specials, in one run: prints
both wall times, the ratio, and whether the learned merges are identical.

    .venv/bin/python bench/tokenizer_train_vs_hf.py --input DIR_OR_FILES... [--vocab-size 8192]
"""
import argparse
import json
import pathlib
import subprocess
import tempfile
import time

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

CL100K = r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]


def documents(paths):
    for p in paths:
        files = sorted(x for x in p.rglob("*") if x.is_file()) if p.is_dir() else [p]
        for f in files:
            if f.suffix == ".jsonl":
                for line in f.read_text().splitlines():
                    if line.strip():
                        yield json.loads(line)["text"]
            elif f.suffix == ".txt":
                yield f.read_text()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", nargs="+", required=True, type=pathlib.Path)
    ap.add_argument("--vocab-size", type=int, default=8192)
    ap.add_argument("--tessera", default="build/tessera")
    args = ap.parse_args()
    docs = list(documents(args.input))
    size = sum(len(d.encode()) for d in docs)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        subprocess.run([args.tessera, "tokenizer", "train", "--input", *map(str, args.input), "--vocab-size",
                        str(args.vocab_size), "-o", tmp], check=True, capture_output=True)
        ours = time.perf_counter() - start
        mine = json.loads((pathlib.Path(tmp) / "tokenizer.json").read_text())["model"]["merges"]

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(CL100K), behavior="isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab_size, min_frequency=2, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    start = time.perf_counter()
    tok.train_from_iterator(docs, trainer)
    theirs = time.perf_counter() - start
    hf = json.loads(tok.to_str())["model"]["merges"]
    norm = lambda ms: [m if isinstance(m, str) else " ".join(m) for m in ms]  # noqa: E731
    print(f"corpus {size / 1e6:.2f} MB, {len(docs)} documents, vocab {args.vocab_size}")
    print(f"tessera tokenizer train: {ours:.2f} s (process start, reading, writing included)")
    print(f"HF tokenizers BpeTrainer: {theirs:.2f} s (training only)")
    print(f"ratio: {theirs / ours:.1f}x; merges identical: {norm(mine) == norm(hf)} ({len(mine)} vs {len(hf)})")


if __name__ == "__main__":
    main()
