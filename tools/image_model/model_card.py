#!/usr/bin/env python3
"""Write README.md, the model card of tessera-imageai-tiny, from what train.sh measured.

Every figure comes from a file the recipe wrote: OUT/training.json (settings, parameter counts,
losses, held-out loss history), OUT/eval.json (prompt adherence), OUT/data_stats.json
(make_data.py's counts), WORK/timings.json (seconds per stage) and the weights' file sizes.

    python tools/image_model/model_card.py --work WORK --out OUT
"""
import argparse
import json
import pathlib
import sys


def load(path: pathlib.Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        sys.exit(f"error: {path}: {e}")


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--work", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    out = args.out
    training = load(out / "training.json")
    ev = load(out / "eval.json")
    data = load(out / "data_stats.json")
    timings = load(args.work / "timings.json") if (args.work / "timings.json").exists() else {}
    unet_cfg = load(out / "unet" / "config.json")
    text_cfg = load(out / "text_encoder" / "config.json")
    o = training["options"]
    size_mb = sum(f.stat().st_size for f in out.glob("*/*.safetensors")) / 1e6
    history = training["heldout_history"]

    lines = []
    add = lines.append
    add("# tessera-imageai-tiny")
    add("")
    add("tessera's own small text-to-image model, trained on this project's tools from pictures and captions that "
        "Debian packages ship. It draws emoji-, icon- and clip-art-like pictures at "
        f"{o['size']}x{o['size']} pixels. It exists to prove the platform end to end (data, training, serving, the "
        "playground), not to make good pictures.")
    add("")
    st = ev["settings"]
    guidance = "guidance 7.5 (the default)" if st["guidance"] is None else f"guidance {st['guidance']:g}"
    if (out / "samples.png").exists():
        add("![Samples: the first held-out caption of each category, four seeds](samples.png)")
        add("")
        add("*Each row is the first held-out caption of a category (never trained on), drawn at four seeds "
            f"(DDIM, {st['steps']} steps, {guidance}).*")
        add("")
    add("## Architecture")
    add("")
    add("A Stable-Diffusion-style pipeline in the diffusers folder layout, without a VAE: the UNet denoises the RGB "
        "pixels themselves.")
    add("")
    add("| part | what |")
    add("|---|---|")
    add(f"| tokenizer | CLIP's BPE cut to its first {len((out / 'tokenizer' / 'merges.txt').read_text().splitlines()) - 1} "
        f"merges ({text_cfg['vocab_size']} tokens), 77 tokens per prompt |")
    add(f"| text encoder | a CLIPTextModel with no transformer layers: token and position embeddings and the final "
        f"LayerNorm, width {text_cfg['hidden_size']}; {training['text_encoder_parameters'] / 1e6:.2f}M parameters, "
        "trained together with the UNet |")
    down = ", ".join(f"{c}{' + cross-attention' if a else ''}" for c, a in zip(o["channels"], o["attention"]))
    add(f"| UNet | UNet2DConditionModel, {len(o['channels'])} levels of {down} channels, {o['layers_per_block']} "
        f"resnet per level, GroupNorm of {o['norm_groups']} groups, {o['head_channels']} channels per attention "
        f"head, cross-attention width {unet_cfg['cross_attention_dim']}; {training['unet_parameters'] / 1e6:.2f}M "
        "parameters |")
    prediction = "v" if o.get("prediction") == "v" else "epsilon (the noise)"
    add(f"| scheduler | DDIM over DDPM's linear betas (1e-4 to 0.02, 1000 steps), the UNet predicting {prediction}, "
        "trailing timesteps, the predicted picture clipped to [-1, 1] |")
    add(f"| weights | f16 safetensors, {size_mb:.1f} MB in all |")
    add("")
    u = max(1, 1024 // o["size"])
    add(f"**Sizes.** The native size is {o['size']}x{o['size']}. For a larger request (the product sizes 1024x1024, "
        f"1280x768 and 768x1280) tessera draws at the native scale, keeping the aspect ({1024 // u}x{1024 // u}, "
        f"{1280 // u}x{768 // u}, {768 // u}x{1280 // u}), and upscales {u}x bilinearly; the response's warnings say "
        "so.")
    add("")
    add("## Data")
    add("")
    add(f"{data['images']:,} pictures of {data['size']}x{data['size']} pixels from "
        "`tools/image_model/make_data.py` (seed "
        f"{data['seed']}); its README lists the filtering rules. Sources and licenses:")
    add("")
    add("| Debian package | version | license | considered | kept |")
    add("|---|---|---|---|---|")
    for name, s in data["sources"].items():
        add(f"| {name} | {s.get('package_version', '')} | {s['license']} | {s['considered']:,} | {s['kept']:,} |")
    add("")
    add("Caption metadata: " + ", ".join(f"{k} {v}" for k, v in data["packages"].items()) + ".")
    add("")
    add(f"Categories (the emoji groups; clip art and icons mapped onto them). {training['heldout']} pictures, "
        f"{o['heldout_per_category']} per category, are held out of training: the held-out loss and the adherence "
        "prompts use them.")
    add("")
    add("| category | pictures |")
    add("|---|---|")
    for name, c in sorted(training["categories"].items(), key=lambda kv: -kv[1]["images"]):
        add(f"| {name} | {c['images']:,} |")
    add("")
    largest, biggest = max(training["categories"].items(), key=lambda kv: kv[1]["images"])
    add(f"Training samples an image with weight (pictures in its category)^-{o['category_balance']}, so the "
        f"small categories are seen more often than their share (the largest, {largest}, holds "
        f"{biggest['images'] / training['pictures']:.0%} of the pictures).")
    add("")
    add("## Training")
    add("")
    add("```")
    add("tools/image_model/train.sh      # data, tokenizer, train, classifier, export, evaluate, card")
    add("```")
    add("")
    add(f"The training command it runs: `tessera train-image` with {o['steps']:,} AdamW steps of {o['batch']} "
        f"pictures (learning rate {o['lr']:g}, {o['warmup']} warmup steps, cosine to {o['min_lr_ratio']:g} of it, "
        f"weight decay {o['weight_decay']:g}, gradient clipping at {o['max_grad_norm']:g}), uniform timesteps, "
        f"{o['caption_dropout']:.0%} of captions dropped (for classifier-free guidance), weights averaged with "
        f"decay {o['ema_decay']:g} (the averaged ones are shipped), seed {o['seed']}.")
    add("")
    if timings:
        add("Time on a 2-core machine: " + ", ".join(f"{k} {minutes(v)}" for k, v in timings.items()) +
            f" ({minutes(sum(timings.values()))} in all).")
        add("")
    add(f"Training loss (mean squared error of the prediction, {prediction}): {training['first_logged_loss']:.4f} "
        f"over the "
        f"first logged steps, {training['last_logged_loss']:.4f} over the last.")
    add("")
    add("Held-out diffusion loss (the same held-out pictures, noise and timesteps at every evaluation):")
    add("")
    steps_t = list(history[0]["per_timestep"].keys())
    add("| step | mean | " + " | ".join(f"t = {t}" for t in steps_t) + " |")
    add("|---|---|" + "---|" * len(steps_t))
    for h in history:
        add(f"| {h['step']:,} | {h['heldout_loss']:.4f} | " +
            " | ".join(f"{h['per_timestep'][t]:.4f}" for t in steps_t) + " |")
    add("")
    add("## Prompt adherence")
    add("")
    c = ev["classifier"]
    p = ev.get("paired")
    add(f"Measured by `tools/image_model/evaluate.py`. The model draws each of the {ev['prompts']} held-out captions "
        f"of the {ev['categories']} named categories (one seed each; DDIM, {st['steps']} steps, {guidance}); the same "
        "seeds drawn from the empty prompt give the score of a model that ignores its prompt. A classifier then names "
        "the category of each drawing:")
    add("")
    add("| classifier | prompted drawings in the asked category | empty-prompt drawings | chance |")
    add("|---|---|---|---|")
    if p:
        add(f"| **learnt from the model's own drawings** of {p['per_category_training_captions']} training captions "
            f"per category ({p['features']}) | **{p['adherence']:.1%}** | {p['unconditional']:.1%} | "
            f"{ev['chance']:.1%} |")
    add(f"| CNN of the real pictures (`adherence.py`; held-out accuracy on real pictures {c['heldout_accuracy']:.1%}, "
        f"balanced {c['heldout_balanced_accuracy']:.1%}) | {ev['adherence']:.1%} | {ev['unconditional']:.1%} | "
        f"{ev['chance']:.1%} |")
    add("")
    if p:
        from math import comb
        n, k = ev["prompts"], round(p["adherence"] * ev["prompts"])
        tail = sum(comb(n, i) * ev["chance"] ** i * (1 - ev["chance"]) ** (n - i) for i in range(k, n + 1))
        add(f"The first row is the adherence figure: the drawings of unseen captions carry the category their "
            f"prompt asked for, {p['adherence'] / ev['chance']:.1f} times chance (a prompt-blind model would place "
            f"{k} or more of {n} in the asked category with probability {tail:.1g}) and above the empty prompt. "
            "The second shows how far the drawings "
            "are from the real pictures: the classifier of real pictures files most of them under \"other\" "
            "(the drawings are speckled, guidance overshoots their colours), so it scores at or below chance.")
        add("")
    add("Per category, with the CNN of the real pictures:")
    add("")
    add("| category | prompts | adherence | empty prompt |")
    add("|---|---|---|---|")
    for name, e in sorted(ev["per_category"].items()):
        add(f"| {name} | {e['prompts']} | {e['prompted_hits']}/{e['prompts']} | {e['empty_hits']}/{e['prompts']} |")
    add("")
    add("## Known limits")
    add("")
    add("- Tiny and briefly trained: the pictures are soft, often blobs of the right colours and layout (a flag's "
        "stripes, a yellow face) rather than recognisable drawings. Large sizes are upscaled, not drawn.")
    add("- The text encoder has no layers, so each word is read with its position only; the UNet's cross-attention "
        "does all the combining. Words outside the captions' vocabulary mean nothing to it.")
    add("- Captions come from packaged metadata and are sometimes wrong or vague; see tools/image_model/README.md.")
    add("- Adherence is a category-level measure (a flag's stripes, a face's round yellow), not a judgement of "
        "detail; the classifiers are small (their accuracies are above).")
    add("- Trained to predict v, not the noise: a first run predicting the noise (epsilon) drew the same saturated "
        "texture for every prompt and seed after 1,200 steps, because at the last timesteps of this schedule "
        "(signal 0.6% of the picture) a small error in the predicted noise becomes a large error in the picture.")
    add("")
    (out / "README.md").write_text("\n".join(lines))
    print(f"wrote {out / 'README.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
