#!/usr/bin/env python3
"""Builds tests/fixtures/tokenizer/smollm2_cases.json: the ids llama.cpp's tokenizer gives
for hard strings, using the tokenizer stored in the SmolLM2 GGUF file's metadata.

Run with the dev venv (llama-cpp-python, which builds llama.cpp):
    python tools/golden/make_gguf_tokenizer_golden.py

The model file comes from scripts/setup (models/smollm2-135m-instruct/, or $TESSERA_MODELS);
only its vocabulary is loaded (vocab_only=True). The strings are every text of
cl100k_cases.json (whitespace, digits, contractions, scripts, emoji, code, odd code points,
special tokens inside text, long runs) plus strings aimed at this tokenizer: its own control
tokens (<|im_start|>, <repo_name>, ...), ChatML conversations and digit runs, since the
"smollm" pre-tokenizer splits every digit on its own. A few cases are encoded with special
tokens off ("special": false), where control tokens are plain text.

The same vocabulary is also tokenized under the other pre-tokenizers tessera knows
(tokenizer.ggml.pre = gpt-2, llama-bpe, dbrx, qwen2, default, falcon, starcoder): the file is
copied, metadata only, with that one key changed. A case's "by_pre" lists the ids a
pre-tokenizer gives only where they differ from "ids", which keeps the fixture small.
"""
from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures" / "tokenizer"
MODELS = Path(os.environ.get("TESSERA_MODELS", ROOT / "models"))
GGUF = MODELS / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = FIXTURES / "smollm2_cases.json"

SMOLLM_STRINGS = [
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|><|im_end|><|endoftext|>",
    "<|im_start|>assistant\n4<|im_end|><|endoftext|>",
    "<repo_name>tessera<file_sep>src/main.cpp<|endoftext|>",
    "<reponame>x<filename>a.py<gh_stars>100-1000",
    "<issue_start>bug<issue_comment>fixed<issue_closed>",
    "<jupyter_start><jupyter_text>text<jupyter_code>print(1)<jupyter_output>1<empty_output>",
    "<jupyter_script>", "<|im_start", "im_start|>", "<|im_end|", "<<|im_start|>>", "<|im_start|>|>",
    "<repo_name><reponame>", " <|im_end|> ", "\n<|im_start|>\n", "a<|endoftext|>b",
    # digits: each one is its own piece before GPT-2's pattern runs
    "0", "12", "123", "1234", "12345678901234567890", " 1", " 12", "a1", "a 1", "x 123 y",
    "1 2 3", "1,234,567.89", "3.14159265358979", "v2.0.1", "2024-11-26", "0x7fff", "1e-5",
    "$100", "100%", "#1", "1st 2nd 3rd 4th", "٣٤", "१२", "²³", "½", "①②", "Ⅻ", "１２３",
    "  12  ", "\n1\n", "\t7", "a\u00a01", "12abc34", "abc123def", "1'", "1's", "'1",
    # contractions and spaces around them
    "it's", "IT'S", "they're", "We'll", "I'd", " 's", "'s'", "''s", "a's b't", "'ve'd",
    # whitespace runs before letters, digits and punctuation
    "   a", "   1", "   !", "\t\ta", "\n\n1", "  \n  x", " \u3000x", "a  \n\n  b",
    # code
    "for i in range(10):\n    print(i ** 2)\n",
    "int main(void) { return 0; }\n",
    "x=[1,2,3];y={'a':1}",
    "    if (a != b && c >= 10) {\n        d += 1;\n    }\n",
]

# Encoded with special tokens off: control tokens are plain text then.
OTHER_PRE = ["gpt-2", "llama-bpe", "dbrx", "qwen2", "default", "falcon", "starcoder"]

NO_SPECIAL = [
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "<repo_name>tessera",
    "a<|endoftext|>b 123",
]


def build_strings() -> list[str]:
    cl100k = json.loads((FIXTURES / "cl100k_cases.json").read_text(encoding="utf-8"))
    strings = [c["text"] for c in cl100k["cases"]]
    strings += SMOLLM_STRINGS
    rng = random.Random(20241126)
    pool = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "user", "\n", " ", "12", "3", "hello",
            "world", "'s", "😀", "你好", "  ", "\t", "x1y2", ".", "!!", "<file_sep>"]
    strings += ["".join(rng.choice(pool) for _ in range(rng.randint(2, 12))) for _ in range(60)]
    seen, unique = set(), []
    for s in strings:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


def copy_with_pre(pre: str, path: Path) -> None:
    """Writes the metadata of GGUF (no tensors) to `path` with tokenizer.ggml.pre = pre."""
    import gguf

    reader = gguf.GGUFReader(str(GGUF))
    writer = gguf.GGUFWriter(str(path), reader.fields["general.architecture"].contents())
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        kind = field.types[0]
        if key == "tokenizer.ggml.pre":
            writer.add_string(key, pre)
        elif kind == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        elif kind == gguf.GGUFValueType.STRING:
            writer.add_string(key, field.contents())
        else:
            writer.add_key_value(key, field.contents(), kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main() -> None:
    if not GGUF.exists():
        sys.exit(f"{GGUF} is missing: run scripts/setup first")
    try:
        import llama_cpp
    except ImportError:
        sys.exit("llama-cpp-python is not installed in this venv (requirements-dev.txt)")

    def tokenizer(path: Path):
        llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        return lambda text, special: llm.tokenize(text.encode("utf-8"), add_bos=False, special=special)

    tokenize = tokenizer(GGUF)
    strings = build_strings()
    cases = [{"text": s, "ids": tokenize(s, True)} for s in strings]
    with tempfile.TemporaryDirectory() as tmp:
        for pre in OTHER_PRE:
            path = Path(tmp) / f"{pre}.gguf"
            copy_with_pre(pre, path)
            other = tokenizer(path)
            for case in cases:
                ids = other(case["text"], True)
                if ids != case["ids"]:
                    case.setdefault("by_pre", {})[pre] = ids
    cases += [{"text": s, "special": False, "ids": tokenize(s, False)} for s in NO_SPECIAL]
    lines = [json.dumps(c, ensure_ascii=False) for c in cases]
    header = {
        "model": GGUF.name,
        "reference": f"llama-cpp-python {llama_cpp.__version__} (Llama.tokenize, add_bos=False)",
        "pre": "smollm",
        "other_pre": OTHER_PRE,
    }
    text = json.dumps(header, ensure_ascii=False)[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(cases)} cases)")


if __name__ == "__main__":
    main()
