#!/usr/bin/env python3
"""Writes the model card (README.md) of tessera-dbrx-tiny-instruct from what train.sh measured:
the config, the data counts (stats.json), the runs' losses (tessera's run store), the stage
times (timings.json) and the held-out evaluation (eval.json). Every figure comes from those files."""
import argparse
import json
import math
import pathlib
import sqlite3


def params(c):
    d, v, L = c["d_model"], c["vocab_size"], c["n_layers"]
    f, e, k = c["ffn_config"]["ffn_hidden_size"], c["ffn_config"]["moe_num_experts"], c["ffn_config"]["moe_top_k"]
    hd = d // c["n_heads"]
    attn = d * (d + 2 * c["attn_config"]["kv_n_heads"] * hd) + d * d + 2 * d
    experts = 3 * d * f
    embeddings = (1 if c.get("tie_word_embeddings") else 2) * v * d
    total = embeddings + d + L * (attn + d * e + e * experts)
    active = embeddings + d + L * (attn + d * e + k * experts)
    return total, active


def series(db, run_id, name):
    return db.execute("SELECT step, value FROM run_metrics WHERE run_id = ? AND name = ? ORDER BY step",
                      (run_id, name)).fetchall()


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--work", required=True, type=pathlib.Path)
    ap.add_argument("--out", required=True, type=pathlib.Path)
    args = ap.parse_args()
    w = args.work
    config = json.loads((w / "base" / "config.json").read_text())
    stats = json.loads((w / "data" / "stats.json").read_text())
    timings = json.loads((w / "timings.json").read_text())
    evaluation = json.loads((w / "eval.json").read_text())
    db = sqlite3.connect(w / "home" / "tessera.db")
    runs = {kind: run_id for run_id, kind in db.execute("SELECT id, kind FROM runs ORDER BY created_ms")}
    pre_eval = series(db, runs["pretrain"], "eval_loss")
    pre_ce = series(db, runs["pretrain"], "ce_loss")
    ft_ce = series(db, runs["ft"], "ce_loss")
    total, active = params(config)
    base, tuned, shipped = evaluation["models"][0], evaluation["models"][1], evaluation["models"][-1]
    fc = config["ffn_config"]
    def took(stage):
        seconds = timings[stage]
        return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.0f} min"

    lines = [
        "# tessera-dbrx-tiny-instruct",
        "",
        "tessera's own small chat model: the DBRX architecture scaled down, with a vocabulary, pre-training",
        "and chat fine-tuning all made by tessera's tools on a two-core CPU, from text that Debian packages",
        "ship under licenses that allow commercial use. It knows a dictionary's worth of common English",
        "words and answers questions about them in ChatML; it is a demonstration of the platform, not a",
        "general assistant.",
        "",
        "## Architecture",
        "",
        f"- DBRX (`DbrxForCausalLM`): {config['n_layers']} layers, d_model {config['d_model']}, "
        f"{config['n_heads']} query heads and {config['attn_config']['kv_n_heads']} KV heads (GQA), "
        f"RoPE (theta {config['attn_config']['rope_theta']:g}), QKV clipped at {config['attn_config']['clip_qkv']:g}, "
        "LayerNorm without bias" + (", input and output embeddings tied." if config.get("tie_word_embeddings") else "."),
        f"- Mixture of experts: {fc['moe_num_experts']} experts of hidden size {fc['ffn_hidden_size']} "
        f"(SiLU-gated), {fc['moe_top_k']} active per token, load-balancing loss weight {fc['moe_loss_weight']}.",
        f"- {total / 1e6:.2f}M parameters, {active / 1e6:.2f}M active per token; context {config['max_seq_len']} tokens.",
        f"- Byte-level BPE of {config['vocab_size']} tokens trained by `tessera tokenizer train` on the "
        "pre-training text (cl100k pre-tokenizer rules; `<|endoftext|>`, `<|im_start|>`, `<|im_end|>`, `<|pad|>`).",
        "- Shipped as 8-bit weights (`model.gguf`, q8_0 blocks, from `tessera quantize`).",
        "",
        "## Data",
        "",
        "| source (Debian package) | license | used for | size |",
        "|---|---|---|---|",
        f"| WordNet 3.0 (`wordnet-base`) | WordNet 3.0 license (Princeton): use, copy, modify and distribute for any purpose with the notice | the {stats['words']} most used lemmas in WordNet's sense-tagged counts, {stats['senses']} senses with examples and synonyms: pre-training text and the chat set | {stats['dictionary_bytes'] / 1e6:.2f} MB ({stats.get('copies', 1)} shuffled copies) |",
        f"| fortune-mod (`fortunes-min`: fortunes, literature, riddles) | BSD | {stats['fortunes']} fortunes, pre-training | {stats['fortunes_bytes'] / 1e6:.2f} MB |",
        "",
        f"Of the {stats['words']} words, {stats['eval_words']} are held out of everything (their entries measure "
        f"perplexity), {stats['heldout_words']} are read in pre-training but never asked about (the evaluation "
        f"questions), and {stats['trained_words']} are also asked about: {stats['chat_pairs']} chat examples "
        "(what a word means, a synonym, the word used in a sentence).",
        "",
        "The pre-training text gives every word four documents: its dictionary entry, its senses said in sentences",
        "(\"The word dog (noun) means ...\"), the meaning first and the word last, and the word in its example.",
        "For the words of the chat set it also holds the question and answer as plain text, in each phrasing of the",
        "chat set (\"Question: What does dog mean?\\nAnswer: ...\"). Reading facts in more than one form, and",
        "seeing questions answered for some words while reading, is what lets a small model answer the same",
        "question later about words it only read about. The input and output embeddings are tied: an answer starts",
        "by repeating the asked word, and with separate output embeddings the model learned that copy word by word",
        "and could not repeat a word it was never asked about (measured in pre-training: 1 of 20 held-out words",
        "untied, 13 of 20 tied, at a similar step; see docs/BENCHMARKS.md).",
        "",
        "WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. THIS SOFTWARE AND DATABASE IS",
        "PROVIDED \"AS IS\" AND PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.",
        "",
        "## Training",
        "",
        "`tools/chat_model/train.sh` (BUDGET=full) does everything below; `BUDGET=short` runs the same stages in a",
        "minute and is part of `scripts/test`.",
        "",
        f"| stage | command | time on this 2-core machine |",
        "|---|---|---|",
        f"| data | `tools/chat_model/make_data.py` | {took('data')} |",
        f"| tokenizer | `tessera tokenizer train --vocab-size {config['vocab_size']}` | {took('tokenizer')} |",
        f"| pre-training | `tessera train -f pretrain.yaml` ({pre_ce[-1][0]} steps of 32 x 128 tokens, lr 2e-3, cosine) | {took('pretrain')} |",
        f"| chat fine-tuning | `tessera finetune create --task chat-completion` ({ft_ce[-1][0]} steps, lr 1e-3), registered | {took('finetune')} |",
        f"| 8-bit weights | `tessera quantize --to q8_0` | {took('quantize')} |",
        f"| evaluation | `tools/chat_model/evaluate.py` | {took('evaluate')} |",
        "",
        "## Measured quality",
        "",
        f"- Pre-training loss {pre_ce[0][1]:.3f} -> {pre_ce[-1][1]:.3f}; held-out perplexity (the "
        f"{stats['eval_words']} unseen dictionary entries) {math.exp(pre_eval[0][1]):.0f} at step 0 -> "
        f"{math.exp(pre_eval[-1][1]):.0f} after pre-training (lowest {math.exp(min(v for _, v in pre_eval)):.0f}, at step "
        f"{min(pre_eval, key=lambda r: r[1])[0]}). The recipe trains for recall of its own dictionary, so text about "
        "unseen words grows less likely once the dictionary is learned; held-out accuracy below measures that recall.",
        f"- Chat fine-tuning loss {ft_ce[0][1]:.3f} -> {ft_ce[-1][1]:.3f}.",
        f"- \"What does WORD mean?\" on {evaluation['questions']} held-out words (greedy): "
        f"**{shipped['accuracy']:.0%} correct** for this 8-bit model, {tuned['accuracy']:.0%} for the same model "
        f"in f32, {base['accuracy']:.0%} for the pre-trained model before fine-tuning. Judge: {evaluation['judge']} "
        "(main clause: the text before the first ';', without parentheses; content words: three or more letters, "
        "not a stop word, not the word itself).",
        "",
        "A transcript of real answers (the first ten evaluation questions, greedy):",
        "",
    ]
    for a in shipped["answers"][:10]:
        mark = "correct" if a["correct"] else "wrong"
        lines += [f"> **user:** {a['question']}  ", f"> **assistant:** {a['answer']}  ", f"> ({mark})", ""]
    lines += [
        "## Known limits",
        "",
        "- It knows only the words in its dictionary and the style of its chat set; other questions get",
        "  dictionary-like or fortune-like text. It has no knowledge of the world beyond that.",
        "- Definitions can be mixed up between senses or between similar words; it is small and was trained",
        "  for about an hour.",
        "- Context is short (the chat set used 128 tokens); long conversations fall outside what it saw.",
        "",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "README.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'README.md'}")


if __name__ == "__main__":
    main()
