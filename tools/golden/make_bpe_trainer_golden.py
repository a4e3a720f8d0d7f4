#!/usr/bin/env python3
"""Builds tests/fixtures/bpe_trainer/golden.json: what Hugging Face `tokenizers`' BpeTrainer
learns from the fixed corpus in tests/fixtures/bpe_trainer/corpus/.

Run with the dev venv:
    python tools/golden/make_bpe_trainer_golden.py

Made with tokenizers 0.23.3 (the version pinned in requirements-dev.txt when this was
written); the script records the version it ran with in the golden file.

The corpus is read as `tessera tokenizer train` reads it (src/tokenizers/bpe_trainer.h): files
sorted by path; a .txt file is one document (a leading byte-order mark dropped); a .jsonl file
holds one {"text": ...} document per non-blank line. Each document is one sequence for
`train_from_iterator`, so the pre-tokenizer sees whole documents, as tessera's does.

The trainer is configured like tessera's: a Split(regex, "isolated") + ByteLevel(use_regex=False,
add_prefix_space=False) pre-tokenizer, the full byte alphabet (ByteLevel.alphabet()), the given
special tokens, vocab size and min frequency. For each case the golden keeps the merges (as
byte-level strings, in rank order), the vocabulary in id order, and the ids the trained
tokenizer gives a few strings.
"""
from __future__ import annotations

import json
from pathlib import Path

import tokenizers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = ROOT / "tests" / "fixtures" / "bpe_trainer"
CORPUS = FIXTURE / "corpus"

# The patterns of src/tokenizers/bpe_tokenizer.h (kCl100kPattern, kGpt2Pattern).
CL100K = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)
GPT2 = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""

DEFAULT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]

CASES = [
    # The defaults of `tessera tokenizer train`, a vocabulary the corpus fills.
    {"name": "cl100k_600", "pattern": CL100K, "vocab_size": 600, "min_frequency": 2,
     "special_tokens": DEFAULT_SPECIALS},
    # Every pair counts (min frequency 0), another pattern and one special token.
    {"name": "gpt2_min0_500", "pattern": GPT2, "vocab_size": 500, "min_frequency": 0,
     "special_tokens": ["<|endoftext|>"]},
    # More than the corpus allows: training stops when no pair occurs 3 times.
    {"name": "cl100k_min3_5000", "pattern": CL100K, "vocab_size": 5000, "min_frequency": 3,
     "special_tokens": DEFAULT_SPECIALS},
]

STRINGS = [
    "The lighthouse keeper's log.",
    "We'll ration the oil if the weather doesn't turn.",
    "  indented\n\n\ttabbed   spaced  \r\n",
    "Le phare, der Leuchtturm, маяк, 灯台, منارة 🌧️",
    "<|im_start|>user\nWhen does the boat come?<|im_end|>\n<|im_start|>assistant\n",
    "1887-01-17: 14 gallons, 1,024 prisms, 0x1F",
    "for (char c : text) { word += c; }",
    "text never seen: zebra quokka xylophone",
]


def documents() -> list[str]:
    docs = []
    for path in sorted(p for p in CORPUS.rglob("*") if p.suffix in (".txt", ".jsonl") and p.is_file()):
        text = path.read_bytes().decode("utf-8")
        if path.suffix == ".txt":
            docs.append(text.removeprefix("\ufeff"))
            continue
        for line in text.removeprefix("\ufeff").split("\n"):
            if line.strip(" \t\r\f\v"):
                docs.append(json.loads(line)["text"])
    return [d for d in docs if d]


def train(case: dict, docs: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(case["pattern"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=case["vocab_size"],
        min_frequency=case["min_frequency"],
        special_tokens=case["special_tokens"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(docs, trainer)
    return tok


def main() -> None:
    docs = documents()
    out = {"tokenizers_version": tokenizers.__version__, "documents": len(docs), "cases": []}
    for case in CASES:
        tok = train(case, docs)
        model = json.loads(tok.to_str())["model"]
        vocab = sorted(model["vocab"].items(), key=lambda kv: kv[1])
        assert [i for _, i in vocab] == list(range(len(vocab))), "vocab ids have gaps"
        out["cases"].append({
            **case,
            "merges": model["merges"],
            "vocab": [token for token, _ in vocab],
            "encodings": [{"text": s, "ids": tok.encode(s).ids} for s in STRINGS],
        })
        print(f"{case['name']}: {len(vocab)} tokens, {len(model['merges'])} merges")
    (FIXTURE / "golden.json").write_text(json.dumps(out, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {FIXTURE / 'golden.json'} ({len(docs)} documents, tokenizers {tokenizers.__version__})")


if __name__ == "__main__":
    main()
