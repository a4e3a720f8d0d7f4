#!/usr/bin/env python3
"""The same GGUF file run by tessera and by llama.cpp (llama-cpp-python built from its sdist in
the dev venv), with the same thread count: a prompt of 512 tokens, then 128 generated tokens,
repeated; the best run of each is reported with the ratio tessera / llama.cpp.

    .venv/bin/python bench/llm_vs_llamacpp.py MODEL.gguf [--threads 2] [--repeats 3] [--roofline]

tessera is timed by `tessera perf` (model forward and argmax only); llama.cpp by its own perf
counters (llama_perf_context: prompt eval and eval time), so neither side pays for Python.

--roofline also measures the memory bandwidth (bench/stream_triad.cpp, best of the runs just
before and just after tessera's) and prints decode tok/s as a fraction of bandwidth / bytes of
weights read per generated token: every tensor once, except the token embedding (one row; in
full where it doubles as the output head) and expert tensors (top-k of n experts).
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


def weight_bytes_per_token(model: str) -> int:
    import gguf

    reader = gguf.GGUFReader(model)
    meta = {f.name: f for f in reader.fields.values()}

    def scalar(key):
        field = meta.get(key)
        return None if field is None else int(field.parts[field.data[0]][0])

    arch = bytes(meta["general.architecture"].parts[meta["general.architecture"].data[0]]).decode()
    experts, used = scalar(f"{arch}.expert_count"), scalar(f"{arch}.expert_used_count")
    names = {t.name for t in reader.tensors}
    total = 0
    for t in reader.tensors:
        if t.name == "token_embd.weight" and "output.weight" in names:
            continue  # one row per token
        share = used / experts if "_exps." in t.name and experts else 1.0
        total += int(t.n_bytes * share)
    return total


def triad_gb_s(threads: int) -> float:
    binary = ROOT / "build" / "stream_triad"
    if not binary.exists():
        subprocess.run(["g++", "-O3", "-march=native", "-fopenmp", str(ROOT / "bench" / "stream_triad.cpp"), "-o",
                        str(binary)], check=True)
    out = subprocess.run([str(binary)], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": str(threads)}).stdout
    return float(out.split()[1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--gen-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--bin", default=str(ROOT / "build" / "tessera"))
    ap.add_argument("--roofline", action="store_true", help="also measure bandwidth and the decode fraction of it")
    args = ap.parse_args()
    bandwidth = [triad_gb_s(args.threads)] if args.roofline else []
    t_prefill, t_decode = run_tessera(args.bin, args.model, args.threads, args.prompt_tokens, args.gen_tokens,
                                      args.repeats)
    if args.roofline:
        bandwidth.append(triad_gb_s(args.threads))
    l_prefill, l_decode = run_llamacpp(args.model, args.threads, args.prompt_tokens, args.gen_tokens, args.repeats)
    name = pathlib.Path(args.model).name
    print(f"model: {name}, threads: {args.threads}, prompt {args.prompt_tokens} + {args.gen_tokens} generated, "
          f"best of {args.repeats}")
    print(f"{'':10} {'tessera':>10} {'llama.cpp':>10} {'ratio':>7}")
    print(f"{'prefill':10} {t_prefill:10.1f} {l_prefill:10.1f} {t_prefill / l_prefill:6.2f}x   tok/s")
    print(f"{'decode':10} {t_decode:10.1f} {l_decode:10.1f} {t_decode / l_decode:6.2f}x   tok/s")
    if args.roofline:
        per_token, bw = weight_bytes_per_token(args.model), max(bandwidth)
        print(f"roofline: {per_token / 1e9:.3f} GB of weights per token, triad {bw:.1f} GB/s "
              f"(before/after: {bandwidth[0]:.1f}/{bandwidth[1]:.1f}), bound {bw * 1e9 / per_token:.1f} tok/s; "
              f"tessera decode {t_decode * per_token / 1e9:.1f} GB/s = {t_decode * per_token / (bw * 1e9):.0%}, "
              f"llama.cpp {l_decode * per_token / (bw * 1e9):.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
