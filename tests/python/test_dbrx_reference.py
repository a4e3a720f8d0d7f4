"""tessera's DBRX against transformers on configs drawn at random (not the committed fixtures):
build a model with DbrxForCausalLM, save it in the Hugging Face layout, and compare the full
logits of `tessera score` with the reference forward."""
import copy
import json
import random

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import DbrxConfig, DbrxForCausalLM


def random_config(rng: random.Random):
    n_heads = rng.choice([2, 4, 8])
    head_dim = rng.choice([4, 8, 16])
    kv = rng.choice([k for k in (1, 2, 4, 8) if n_heads % k == 0])
    experts = rng.choice([2, 4, 8, 16])
    theta = rng.choice([10000.0, 500000.0, 1234.5])
    clip = rng.choice([None, 0.4, 2.0])
    return dict(
        d_model=n_heads * head_dim,
        n_heads=n_heads,
        n_layers=rng.randint(1, 3),
        max_seq_len=64,
        vocab_size=rng.choice([97, 128, 300]),
        attn_config=dict(kv_n_heads=kv, clip_qkv=clip, rope_theta=theta),
        ffn_config=dict(
            ffn_hidden_size=rng.choice([8, 24, 40]),
            moe_num_experts=experts,
            moe_top_k=rng.randint(1, experts),
            moe_normalize_expert_weights=rng.choice([None, 1.0, 2.0, 0.5]),
        ),
        rope_parameters=dict(rope_type="default", rope_theta=theta),
    )


def build(config: dict, seed: int, dtype: torch.dtype, scale: float = 1.0):
    torch.manual_seed(seed)
    model = DbrxForCausalLM(DbrxConfig(**config)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p))
            elif "wte" in name:
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                # Scaled by fan-in so activations stay O(1) and float32 is well conditioned.
                fan_in = config["ffn_config"]["ffn_hidden_size"] if name.endswith("w2") else p.shape[-1]
                p.copy_(torch.randn_like(p) * scale / fan_in**0.5)
    if config["attn_config"]["clip_qkv"] is None:
        # transformers clamps with both bounds None here, which torch rejects; no clip = inf.
        for module in model.modules():
            if hasattr(module, "clip_qkv"):
                module.clip_qkv = float("inf")
    if dtype != torch.float32:
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(dtype).to(torch.float32))
    return model


@pytest.mark.parametrize("seed", range(8))
def test_random_config_matches_transformers(seed, tmp_path, run):
    rng = random.Random(seed)
    config = random_config(rng)
    dtype = torch.bfloat16 if seed % 3 == 2 else torch.float32
    tokens = [rng.randrange(config["vocab_size"]) for _ in range(rng.randint(1, 24))]
    model = build(config, seed, dtype)
    with torch.no_grad():
        expected = model(torch.tensor([tokens])).logits[0].float().numpy()
        exact = copy.deepcopy(model).double()(torch.tensor([tokens])).logits[0].numpy()
    # Random weights can make float32 itself inexact (large activations); then tessera must be
    # as close to the float64 answer as torch's float32 is, within a factor of two.
    reference_error = float(np.abs(expected - exact).max())
    folder = tmp_path / "model"
    if dtype == torch.float32:
        model.save_pretrained(folder, safe_serialization=True)
    else:
        # Only the weights go to bf16 (model.to() would also round the rotary buffers).
        model.config.save_pretrained(folder)
        state = {k: v.to(dtype).contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    out = run("score", "--model", folder, "--tokens", ",".join(map(str, tokens)))
    got = np.array(json.loads(out.stdout)["logits"], dtype=np.float32)
    assert got.shape == expected.shape
    diff = float(np.abs(got - expected).max())
    error = float(np.abs(got - exact).max())
    if reference_error < 2e-5:
        assert diff <= 1e-4, f"config {config}: max |diff| {diff}"
    else:
        assert error <= max(1e-4, 2 * reference_error), f"config {config}: error {error}, torch's {reference_error}"
