#!/usr/bin/env python3
"""tessera's text-to-image pipeline against stable-diffusion.cpp on the same model folder.

Both run the same diffusers folder (float16 weights; stable-diffusion.cpp reads diffusers
folders directly) with the same thread count, size, steps, sampler (euler) and guidance, one
process each, one after the other. Printed: seconds per denoising step (both branches of
classifier-free guidance), VAE decode seconds, peak resident memory, and the ratio
stable-diffusion.cpp / tessera (above 1.0: tessera is faster or smaller).

The peer is stable-diffusion-cpp-python built from its sdist (bench/requirements-bench.txt);
the model is made by bench/make_sd_random.py when missing.

Run: .venv/bin/python bench/image_vs_sdcpp.py [--arch sd15 --size 512 --steps 20 --threads 2]
     .venv/bin/python bench/image_vs_sdcpp.py --arch sdxl --size 1024 --steps 1   (memory peak)
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
PROMPT = "a lighthouse on a cliff at sunset, oil painting"
NEGATIVE = "blurry"

SDCPP_SCRIPT = r"""
import sys
from stable_diffusion_cpp import StableDiffusion
model, size, steps, threads, prompt, negative, guidance = sys.argv[1:8]
sd = StableDiffusion(model_path=model, n_threads=int(threads), verbose=True)
img = sd.generate_image(prompt=prompt, negative_prompt=negative, width=int(size), height=int(size),
                        sample_method="euler", sample_steps=int(steps), cfg_scale=float(guidance), seed=42)
img[0].save(sys.argv[8])
"""


def run(cmd: list[str]) -> tuple[str, float]:
    """Runs cmd, returns (stdout + stderr, peak RSS in GiB)."""
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read().decode("utf-8", "replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed:\n{text[-3000:]}")
    return text, usage.ru_maxrss / (1024 * 1024)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", choices=["sd15", "sdxl"], default="sd15")
    ap.add_argument("--model", help="diffusers folder (default: ~/.cache/tessera/bench/<arch>-random)")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--skip-peer", action="store_true", help="measure tessera only")
    args = ap.parse_args()
    model = args.model or os.path.expanduser(f"~/.cache/tessera/bench/{args.arch}-random")
    if not os.path.exists(os.path.join(model, "model_index.json")):
        subprocess.check_call([sys.executable, os.path.join(ROOT, "bench", "make_sd_random.py"), "--arch", args.arch,
                               "--out", model])
    tessera = os.path.join(ROOT, "build", "tessera")
    tmp = tempfile.mkdtemp()
    print(f"model {model}, {args.size}x{args.size}, {args.steps} steps, euler, guidance {args.guidance}, "
          f"{args.threads} threads", flush=True)

    text, t_rss = run([tessera, "image", "-m", model, "-p", PROMPT, "-n", NEGATIVE, "--size", f"{args.size}x{args.size}",
                       "--steps", str(args.steps), "--sampler", "euler", "-g", str(args.guidance), "-s", "42",
                       "-t", str(args.threads), "-o", os.path.join(tmp, "tessera.png")])
    m = re.search(r"denoise ([\d.]+) s \(([\d.]+) s/step\) \| vae decode ([\d.]+) s", text)
    if not m:
        sys.exit("could not read tessera's timings:\n" + text[-2000:])
    t_step, t_vae = float(m.group(2)), float(m.group(3))
    rows = [("tessera", t_step, t_vae, t_rss)]

    if not args.skip_peer:
        text, s_rss = run([sys.executable, "-c", SDCPP_SCRIPT, model, str(args.size), str(args.steps), str(args.threads),
                           PROMPT, NEGATIVE, str(args.guidance), os.path.join(tmp, "sdcpp.png")])
        sampling = re.search(r"sampling completed, taking ([\d.]+)s", text)
        decode = re.search(r"decode_first_stage completed, taking ([\d.]+)s", text)
        if not sampling or not decode:
            sys.exit("could not read stable-diffusion.cpp's timings:\n" + text[-3000:])
        rows.append(("stable-diffusion.cpp", float(sampling.group(1)) / args.steps, float(decode.group(1)), s_rss))

    print(f"{'':22} {'s/step':>8} {'vae s':>8} {'peak GiB':>9}")
    for name, step, vae, rss in rows:
        print(f"{name:22} {step:8.2f} {vae:8.2f} {rss:9.2f}")
    if len(rows) == 2:
        (_, a, b, c), (_, x, y, z) = rows
        print(f"{'ratio (peer/tessera)':22} {x / a:8.2f} {y / b:8.2f} {z / c:9.2f}")


if __name__ == "__main__":
    main()
