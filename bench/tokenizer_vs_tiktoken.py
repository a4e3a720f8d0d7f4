#!/usr/bin/env python3
"""Encoding throughput of tessera's cl100k tokenizer against tiktoken on the same text, same
machine, one thread each. The corpus is built from the tokenizer golden strings plus prose and
code from Python's own standard library sources (repeated to ~20 MB).

    .venv/bin/python bench/tokenizer_vs_tiktoken.py [--mb 20]
"""
import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile
import time

import tiktoken
from tiktoken.load import load_tiktoken_bpe

ROOT = pathlib.Path(__file__).resolve().parents[1]


def corpus(mb: int) -> str:
    cases = json.loads((ROOT / "tests/fixtures/tokenizer/cl100k_cases.json").read_text())
    strings = [c["text"] for c in cases["cases"]]
    sources = sorted(pathlib.Path(re.__file__).parent.glob("*.py"))
    text = "\n".join(strings) + "\n" + "\n".join(p.read_text(errors="replace") for p in sources[:200])
    return (text * (mb * 1_000_000 // len(text.encode()) + 1))[: mb * 1_000_000]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=int, default=20)
    ap.add_argument("--bin", default=str(ROOT / "build/tessera"))
    args = ap.parse_args()
    text = corpus(args.mb)
    ranks = load_tiktoken_bpe(str(ROOT / "models/tokenizers/cl100k_base.tiktoken"))
    pattern = json.loads((ROOT / "tests/fixtures/tokenizer/cl100k_cases.json").read_text())["pattern"]
    enc = tiktoken.Encoding(name="cl100k_base", pat_str=pattern, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 100257})
    start = time.perf_counter()
    expected = len(enc.encode_ordinary(text))
    tk_seconds = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "corpus.txt"
        path.write_text(text)
        model = pathlib.Path(tmp) / "tok"
        model.mkdir()
        proc = subprocess.run([args.bin, "tokenize", "--model", str(model), "--file", str(path), "--count",
                               "--no-special"], capture_output=True, text=True, check=True)
    count = int(proc.stdout)
    seconds = float(re.search(r"in ([0-9.]+) s", proc.stderr).group(1))
    size = len(text.encode())
    print(f"corpus: {size / 1e6:.1f} MB, {expected} tokens (tiktoken) / {count} tokens (tessera)")
    print(f"tiktoken 0.14: {size / tk_seconds / 1e6:6.1f} MB/s")
    print(f"tessera:       {size / seconds / 1e6:6.1f} MB/s")
    print(f"ratio tessera/tiktoken: {tk_seconds / seconds:.2f}x")
    return 0 if count == expected else 1


if __name__ == "__main__":
    sys.exit(main())
