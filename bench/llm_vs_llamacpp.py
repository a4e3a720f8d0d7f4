#!/usr/bin/env python3
"""The same GGUF file run by tessera and by llama.cpp (llama-cpp-python built from its sdist in
the dev venv), with the same thread count: a prompt of 512 tokens, then 128 generated tokens,
repeated; the best run of each is reported with the ratio tessera / llama.cpp.

    .venv/bin/python bench/llm_vs_llamacpp.py MODEL.gguf [--threads 2] [--repeats 3]

tessera is timed by `tessera perf` (model forward and argmax only); llama.cpp by its own perf
counters (llama_perf_context: prompt eval and eval time), so neither side pays for Python.
"""
import argparse
import json
import os
import pathlib
import random
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_llamacpp(model: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int):
    import llama_cpp

    llm = llama_cpp.Llama(model_path=model, n_ctx=prompt_tokens + gen_tokens + 16, n_threads=threads,
                          n_threads_batch=threads, n_batch=prompt_tokens, n_ubatch=prompt_tokens, verbose=False)
    rng = random.Random(1)
    prompt = [rng.randrange(min(llm.n_vocab(), 1000)) for _ in range(prompt_tokens)]
    best_prefill = best_decode = 0.0
    for _ in range(repeats):
        llm.reset()
        llama_cpp.llama_perf_context_reset(llm.ctx)
        llm.eval(prompt)
        n_vocab = llm.n_vocab()
        for _ in range(gen_tokens):
            last = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))
            llm.eval([int(np.argmax(last))])
        perf = llama_cpp.llama_perf_context(llm.ctx)
        best_prefill = max(best_prefill, perf.n_p_eval / (perf.t_p_eval_ms / 1000))
        best_decode = max(best_decode, perf.n_eval / (perf.t_eval_ms / 1000))
    return best_prefill, best_decode


def run_tessera(binary: str, model: str, threads: int, prompt_tokens: int, gen_tokens: int, repeats: int):
    out = subprocess.run([binary, "perf", "--model", model, "--threads", str(threads), "--prompt-tokens",
                          str(prompt_tokens), "--gen-tokens", str(gen_tokens), "--repeats", str(repeats), "--json"],
                         capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    return result["prefill_tok_s"], result["decode_tok_s"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bin", default=str(ROOT / "build" / "tessera"))
    args = ap.parse_args()
    t_prefill, t_decode = run_tessera(args.bin, args.model, args.threads, args.prompt_tokens, args.gen_tokens,
                                      args.repeats)
    l_prefill, l_decode = run_llamacpp(args.model, args.threads, args.prompt_tokens, args.gen_tokens, args.repeats)
    name = pathlib.Path(args.model).name
    print(f"model: {name}, threads: {args.threads}, prompt {args.prompt_tokens} + {args.gen_tokens} generated, "
          f"best of {args.repeats}")
    print(f"{'':10} {'tessera':>10} {'llama.cpp':>10} {'ratio':>7}")
    print(f"{'prefill':10} {t_prefill:10.1f} {l_prefill:10.1f} {t_prefill / l_prefill:6.2f}x   tok/s")
    print(f"{'decode':10} {t_decode:10.1f} {l_decode:10.1f} {t_decode / l_decode:6.2f}x   tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
