#!/usr/bin/env python3
"""Record what diffusers' noise schedulers do, for tests/test_schedulers.cpp.

Each config in CONFIGS is written as a scheduler_config.json under --out/configs/ (the way a
diffusers model folder holds one), then loaded back with `<Class>.from_config` for each sampler,
exactly as a pipeline swaps schedulers:

    ddim      DDIMScheduler
    euler     EulerDiscreteScheduler
    euler_a   EulerAncestralDiscreteScheduler
    dpmpp_2m  DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2)

For each step count the script runs the pipeline loop (set_timesteps, set_begin_index(0), latents
* init_noise_sigma, then per timestep: scale_model_input, model, step) with a deterministic fake
model that depends on both the sample and the timestep,

    model(x, t)[i] = float32(sin(float64(x[i] * 0.7f + float32(0.004 * t) + phase[i]))),
    phase[i] = 0.3f * (i % 7)        (float32 except the sine; i is the flat index)

over fixed N(0, 1) latents of shape LATENT_SHAPE. The noise that the ancestral steps draw
(randn_tensor, monkeypatched) is recorded so the C++ test can feed the same values.

Outputs in --out (default tests/fixtures/schedulers):
    configs/<name>.json      the scheduler configs
    golden.json              {"shape", "cases": [{name, config, sampler, steps, eta, timesteps,
                              init_noise_sigma, has_noise, timesteps_only?, diffusers_timesteps?}]}
    golden.safetensors       "latents"; per case "<name>/scaled0" (model input at step 0),
                              "<name>/first" (sample after step 0), "<name>/final",
                              "<name>/noise" [steps, *shape] where noise was drawn

Run: .venv/bin/python tools/golden/make_scheduler_golden.py [--out tests/fixtures/schedulers]
Deterministic for a given torch/diffusers build (one thread, fixed seeds).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import warnings

import numpy as np
import torch
from safetensors.numpy import save_file

import diffusers
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_ddim, scheduling_euler_ancestral_discrete
from diffusers.utils import logging as diffusers_logging

LATENT_SHAPE = (2, 4, 4, 4)
STEPS = (1, 4, 20, 25)
SAMPLERS = ("ddim", "euler", "euler_a", "dpmpp_2m")

SD15 = {
    # As Stable Diffusion 1.5 ships it: a PNDM config, no timestep_spacing (so each class
    # falls back to its own default).
    "_class_name": "PNDMScheduler",
    "_diffusers_version": "0.6.0",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
    "clip_sample": False,
}

CONFIGS = {
    "sd15": SD15,
    "sd2_v": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
    },
    "sdxl": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "interpolation_type": "linear",
        "num_train_timesteps": 1000,
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "trained_betas": None,
        "use_karras_sigmas": False,
        "timestep_type": "discrete",
    },
    "trailing": {**SD15, "_class_name": "DDIMScheduler", "timestep_spacing": "trailing", "steps_offset": 0},
    # diffusers' own defaults: linear betas, DDIM clipping on, set_alpha_to_one on.
    "linspace_linear": {"_class_name": "DDIMScheduler", "timestep_spacing": "linspace"},
    "karras": {**SD15, "use_karras_sigmas": True},
    "sdxl_karras": {
        "_class_name": "EulerDiscreteScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "steps_offset": 1,
        "timestep_spacing": "leading",
        "use_karras_sigmas": True,
    },
    "cosine_v": {
        "_class_name": "DPMSolverMultistepScheduler",
        "beta_schedule": "squaredcos_cap_v2",
        "prediction_type": "v_prediction",
        "final_sigmas_type": "sigma_min",
        "lower_order_final": False,
        "use_karras_sigmas": True,
        "num_train_timesteps": 1000,
    },
    "zero_snr": {
        "_class_name": "DDIMScheduler",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "clip_sample": False,
        "num_train_timesteps": 1000,
        "prediction_type": "v_prediction",
        "rescale_betas_zero_snr": True,
        "set_alpha_to_one": False,
        "timestep_spacing": "trailing",
    },
    # Filled in by main() from DPMSolverMultistepScheduler.save_config: every key diffusers
    # writes, -Infinity included.
    "dpm_saved": None,
    "lambda_clipped": {
        **SD15,
        "_class_name": "DPMSolverMultistepScheduler",
        "timestep_spacing": "trailing",
        "lambda_min_clipped": -2.5,
        "steps_offset": 0,
    },
}

# Euler ancestral on the cosine schedule (sigma_max 20291) gets NaN in diffusers itself: in
# float32 sigma_up^2 can round above sigma_to^2, and sigma_down = sqrt(negative).
SKIP = {("cosine_v", "euler_a")}

# Cases beyond CONFIGS x SAMPLERS x STEPS: (name, config, sampler, steps, eta).
EXTRA_CASES = [
    ("sd15_ddim_eta_s4", "sd15", "ddim", 4, 0.5),
    ("sd15_ddim_eta_s20", "sd15", "ddim", 20, 0.5),
    ("linspace_linear_ddim_eta_s25", "linspace_linear", "ddim", 25, 1.0),
]

# numpy's arange gives 62 "trailing" timesteps for 61 steps, the last one -1; these cases record
# diffusers' timesteps only (the engine drops the negative one).
TRAILING_QUIRK = [("trailing_quirk_" + s, "trailing", s, 61) for s in ("ddim", "euler", "dpmpp_2m")]


def make_scheduler(sampler: str, config: dict):
    if sampler == "ddim":
        return DDIMScheduler.from_config(config)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config)
    if sampler == "euler_a":
        return EulerAncestralDiscreteScheduler.from_config(config)
    if sampler == "dpmpp_2m":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(sampler)


PHASE = (np.float32(0.3) * (np.arange(int(np.prod(LATENT_SHAPE))) % 7).astype(np.float32)).reshape(LATENT_SHAPE)


def fake_model(x: torch.Tensor, t) -> torch.Tensor:
    xn = x.numpy().astype(np.float32)
    arg = xn * np.float32(0.7) + np.float32(0.004 * float(t))
    # sin in float64, rounded once: float32 sin implementations differ by an ulp, which the
    # 4096-fold steps of zero-SNR schedules would magnify past the test tolerance.
    return torch.from_numpy(np.sin((arg + PHASE).astype(np.float64)).astype(np.float32))


class NoiseRecorder:
    """Stands in for diffusers' randn_tensor: draws from a seeded generator and keeps a copy."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)
        self.drawn: list[np.ndarray] = []

    def __call__(self, shape, generator=None, device=None, dtype=None, layout=None):
        z = torch.randn(shape, generator=self.generator, dtype=torch.float32)
        if dtype is not None:
            z = z.to(dtype)
        self.drawn.append(z.numpy().copy())
        return z


def run_case(sampler: str, config: dict, steps: int, eta: float, latents: torch.Tensor, seed: int):
    recorder = NoiseRecorder(seed)
    saved = (scheduling_ddim.randn_tensor, scheduling_euler_ancestral_discrete.randn_tensor)
    scheduling_ddim.randn_tensor = recorder
    scheduling_euler_ancestral_discrete.randn_tensor = recorder
    try:
        scheduler = make_scheduler(sampler, config)
        scheduler.set_timesteps(steps)
        # Without this, diffusers finds the first step by looking timesteps[0] up in the list
        # and takes the second match when it repeats (DPM++ with Karras sigmas on the cosine
        # schedule truncates several leading timesteps to 998), then runs past the end.
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(0)
        sample = latents * scheduler.init_noise_sigma
        scaled0 = first = None
        for i, t in enumerate(scheduler.timesteps):
            model_input = scheduler.scale_model_input(sample, t)
            if i == 0:
                scaled0 = model_input.numpy().copy()
            output = fake_model(model_input, t)
            kwargs = {"eta": eta} if sampler == "ddim" else {}
            sample = scheduler.step(output, t, sample, **kwargs).prev_sample
            if i == 0:
                first = sample.numpy().copy()
    finally:
        scheduling_ddim.randn_tensor, scheduling_euler_ancestral_discrete.randn_tensor = saved
    init = scheduler.init_noise_sigma
    return {
        "timesteps": [float(t) for t in scheduler.timesteps],
        "init_noise_sigma": float(init),
        "scaled0": scaled0,
        "first": first,
        "final": sample.numpy().copy(),
        "noise": np.stack(recorder.drawn) if recorder.drawn else None,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "schedulers"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    diffusers_logging.set_verbosity_error()

    out = os.path.abspath(args.out)
    os.makedirs(os.path.join(out, "configs"), exist_ok=True)

    saved = DPMSolverMultistepScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        solver_type="heun",
        euler_at_final=True,
        lower_order_final=False,
        final_sigmas_type="sigma_min",
        timestep_spacing="leading",
        steps_offset=1,
    )
    saved.save_config(os.path.join(out, "configs"))
    path = os.path.join(out, "configs", "scheduler_config.json")
    with open(path) as f:
        dpm_saved_text = f.read()
    os.remove(path)
    assert "-Infinity" in dpm_saved_text, "expected diffusers to write lambda_min_clipped as -Infinity"
    CONFIGS["dpm_saved"] = json.loads(dpm_saved_text)

    for name, config in CONFIGS.items():
        with open(os.path.join(out, "configs", name + ".json"), "w") as f:
            if name == "dpm_saved":
                f.write(dpm_saved_text)
            else:
                json.dump(config, f, indent=2, sort_keys=True)
                f.write("\n")

    latents = torch.randn(LATENT_SHAPE, generator=torch.Generator().manual_seed(1234), dtype=torch.float32)
    tensors = {"latents": latents.numpy().copy()}
    cases = []
    plan = [(f"{c}_{s}_s{n}", c, s, n, 0.0) for c in CONFIGS for s in SAMPLERS for n in STEPS
            if (c, s) not in SKIP] + EXTRA_CASES
    for index, (name, config_name, sampler, steps, eta) in enumerate(plan):
        r = run_case(sampler, CONFIGS[config_name], steps, eta, latents, seed=1000 + index)
        final = r["final"]
        if not np.all(np.isfinite(final)):
            raise SystemExit(f"{name}: diffusers produced non-finite values")
        case = {
            "name": name,
            "config": config_name,
            "sampler": sampler,
            "steps": steps,
            "eta": eta,
            "timesteps": r["timesteps"],
            "init_noise_sigma": r["init_noise_sigma"],
            "has_noise": r["noise"] is not None,
        }
        cases.append(case)
        tensors[f"{name}/scaled0"] = r["scaled0"]
        tensors[f"{name}/first"] = r["first"]
        tensors[f"{name}/final"] = final
        if r["noise"] is not None:
            tensors[f"{name}/noise"] = r["noise"]

    for name, config_name, sampler, steps in TRAILING_QUIRK:
        scheduler = make_scheduler(sampler, CONFIGS[config_name])
        scheduler.set_timesteps(steps)
        ts = [float(t) for t in scheduler.timesteps]
        assert len(ts) == steps + 1 and ts[-1] == -1, (name, len(ts), ts[-3:])
        cases.append({"name": name, "config": config_name, "sampler": sampler, "steps": steps,
                      "timesteps_only": True, "diffusers_timesteps": ts})

    doc = {
        "generator": "tools/golden/make_scheduler_golden.py",
        "diffusers": diffusers.__version__,
        "torch": torch.__version__.split("+")[0],
        "shape": list(LATENT_SHAPE),
        "model": "float32(sin(float64(x * 0.7f + float32(0.004 * t) + 0.3f * (i % 7))))",
        "cases": cases,
    }
    with open(os.path.join(out, "golden.json"), "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    save_file({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in tensors.items()},
              os.path.join(out, "golden.safetensors"))
    print(f"{len(cases)} cases, {len(tensors)} tensors -> {out}")


if __name__ == "__main__":
    main()
