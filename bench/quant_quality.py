#!/usr/bin/env python3
"""How close quantized weights stay to full precision, on a real trained model.

SmolLM2-135M-Instruct ships as Q4_1; its weights are expanded to f32 (`tessera quantize --to
f32`) and that is the reference. The same weights are then quantized by tessera to q8_0, q4_0
and q4_1, and all are scored on the same English text (the GPL-3 text Debian ships). Reports the
mean KL divergence KL(f32 || quantized) per token, top-1 agreement, and perplexity.

    .venv/bin/python bench/quant_quality.py [--tokens 256]
"""
import argparse
import json
import pathlib
import subprocess
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
MODEL = ROOT / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
TEXT = pathlib.Path("/usr/share/common-licenses/GPL-3")


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--bin", default=str(ROOT / "build" / "tessera"))
    args = ap.parse_args()
    run = lambda *a: subprocess.run([args.bin, *map(str, a)], capture_output=True, text=True, check=True).stdout
    text = TEXT.read_text()[2000:20000]
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "text.txt"
        path.write_text(text)
        ids = [int(t) for t in run("tokenize", "--model", MODEL, "--file", path).strip().split(",")][: args.tokens]
        tokens = ",".join(map(str, ids))
        results = {}
        for kind in ("f32", "q8_0", "q4_1", "q4_0"):
            out = pathlib.Path(tmp) / kind
            run("quantize", "--model", MODEL, "--to", kind, "-o", out)
            logits = np.array(json.loads(run("score", "--model", out, "--tokens", tokens))["logits"], dtype=np.float64)
            results[kind] = log_softmax(logits)
    reference = results["f32"]
    targets = np.array(ids[1:])
    print(f"SmolLM2-135M-Instruct, {len(ids)} tokens of GPL-3 text; reference: its weights expanded to f32")
    print(f"{'weights':8} {'perplexity':>10} {'KL vs f32':>10} {'top-1 agree':>12}")
    for kind, logp in results.items():
        ppl = float(np.exp(-logp[np.arange(len(targets)), targets].mean()))
        kl = float((np.exp(reference) * (reference - logp)).sum(axis=-1).mean())
        agree = float((logp.argmax(-1) == reference.argmax(-1)).mean())
        print(f"{kind:8} {ppl:10.3f} {kl:10.5f} {agree:12.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
