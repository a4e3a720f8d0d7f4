#!/usr/bin/env python3
"""tessera's sgemm against numpy's matmul (OpenBLAS) on the same shapes, in one run.

    cmake --build build --target gemm_bench
    .venv/bin/python bench/gemm_vs_numpy.py [--threads N] [--rounds R] [--seconds S]

For each shape the two alternate for R rounds (so that load from elsewhere on the machine hits
both alike) and each keeps its best time; prints GFLOP/s of both, tessera / numpy, and
tessera's share of the FMA peak that build/gemm_bench measures with the same threads.
"""
import argparse
import os
import subprocess
import sys
import time

SHAPES = [  # m, n, k, op(A) transposed, op(B) transposed
    (4096, 320, 2880, False, False),    # 3x3 convolution by im2col: 64x64 positions, 320 channels
    (1024, 1280, 11520, False, False),  # 3x3 convolution by im2col: 32x32 positions, 1280 channels
    (4096, 4096, 40, False, True),      # attention scores Q K^T: 4096 queries, head_dim 40
    (4096, 40, 4096, False, False),     # attention output P V
    (77, 768, 768, False, True),        # CLIP text encoder linear layer
    (4096, 1280, 320, False, True),     # linear layer over 4096 positions, 320 -> 1280
    (2048, 2048, 2048, False, False),
    (8, 3072, 768, False, True),        # a linear layer over a few rows
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=0.3, help="per shape, per round, per library")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    parser.add_argument("--bench", default=os.path.join(root, "build", "gemm_bench"))
    args = parser.parse_args()
    if not os.access(args.bench, os.X_OK):
        sys.exit(f"{args.bench} not found: build it with cmake --build build --target gemm_bench")

    # OpenBLAS reads its thread count when it loads.
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import numpy as np

    def tessera_gflops(shape):
        m, n, k, ta, tb = shape
        cmd = [args.bench, "--threads", str(args.threads), "--seconds", str(args.seconds),
               str(m), str(n), str(k), "T" if ta else "N", "T" if tb else "N"]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        line = next(l for l in out.splitlines() if l.startswith("gemm "))
        return float(line.split()[6])

    def numpy_gflops(shape):
        m, n, k, ta, tb = shape
        rng = np.random.default_rng(42)
        a = rng.uniform(-1, 1, (k, m) if ta else (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (n, k) if tb else (k, n)).astype(np.float32)
        opa = a.T if ta else a
        opb = b.T if tb else b
        c = np.empty((m, n), dtype=np.float32)
        np.matmul(opa, opb, out=c)
        best, total, runs = float("inf"), 0.0, 0
        while runs < 3 or (total < args.seconds and runs < 1000):
            t0 = time.perf_counter()
            np.matmul(opa, opb, out=c)
            t = time.perf_counter() - t0
            best, total, runs = min(best, t), total + t, runs + 1
        return 2.0 * m * n * k / best / 1e9

    peak_line = subprocess.run([args.bench, "--threads", str(args.threads), "--peak", "1", "1", "1"],
                               check=True, capture_output=True, text=True).stdout.splitlines()[0]
    peak = float(peak_line.split()[1])
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(f"numpy {np.__version__} with {blas['name']} {blas['version']}; {args.threads} threads; {peak_line}")
    print(f"GFLOP/s, best of {args.rounds} rounds")
    print(f"{'m':>6} {'n':>6} {'k':>6} op  {'tessera':>8} {'numpy':>8}  ratio  tessera/peak")
    for shape in SHAPES:
        ours, theirs = 0.0, 0.0
        for _ in range(args.rounds):
            ours = max(ours, tessera_gflops(shape))
            theirs = max(theirs, numpy_gflops(shape))
        m, n, k, ta, tb = shape
        op = ("T" if ta else "N") + ("T" if tb else "N")
        print(f"{m:>6} {n:>6} {k:>6} {op}  {ours:8.1f} {theirs:8.1f}  {ours / theirs:5.2f}  {100 * ours / peak:5.0f}%",
              flush=True)


if __name__ == "__main__":
    sys.exit(main())
