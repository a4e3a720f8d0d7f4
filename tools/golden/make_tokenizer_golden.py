#!/usr/bin/env python3
"""Builds the tokenizer golden fixtures under tests/fixtures/tokenizer/.

Run with the dev venv (tiktoken, tokenizers, transformers):
    python tools/golden/make_tokenizer_golden.py

Writes:
  cl100k_cases.json        hard strings and the ids tiktoken's cl100k_base gives them
                           (ranks from models/tokenizers/cl100k_base.tiktoken, no network)
  small_bpe/tokenizer.json a ~600-token byte-level BPE trained here (cl100k Split regex +
                           ByteLevel(use_regex=False), special and non-special added tokens)
  small_bpe_strings/ (or small_bpe_arrays/)
                           the same model with merges in the other spelling ("a b" / [a, b])
  small_bpe_cases.json     ids the `tokenizers` library gives for a subset of the strings
  small_gpt2/tokenizer.json, small_gpt2_cases.json
                           a ~400-token BPE with plain ByteLevel(add_prefix_space=True)
  chatml_cases.json        the dbrx-instruct chat template rendered by transformers

Everything is deterministic: a fixed list plus combinations drawn from a seeded RNG.
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import tiktoken
import tiktoken.load
import tiktoken_ext.openai_public as openai_public
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "tokenizer"
MODELS = Path(os.environ.get("TESSERA_MODELS", ROOT / "models"))
RANKS = MODELS / "tokenizers" / "cl100k_base.tiktoken"

# The pattern the C++ side uses (classic form); tiktoken's own cl100k definition uses an
# optimised but equivalent spelling, and the goldens come from tiktoken's own definition.
CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]++[\r\n]*"""
    r"""|\s*[\r\n]|\s+(?!\S)|\s+"""
)


def cl100k_encoding() -> tiktoken.Encoding:
    if not RANKS.exists():
        sys.exit(f"{RANKS} is missing: run scripts/setup first")

    def local_load(url, expected_hash=None):
        return tiktoken.load.load_tiktoken_bpe(str(RANKS), expected_hash)

    openai_public.load_tiktoken_bpe = local_load  # never fetch; hash is still checked
    params = openai_public.cl100k_base()
    return tiktoken.Encoding(
        name=params["name"],
        pat_str=params["pat_str"],
        mergeable_ranks=params["mergeable_ranks"],
        special_tokens=params["special_tokens"],
    )


# ----------------------------------------------------------------------------------------
# Hard strings
# ----------------------------------------------------------------------------------------

FIXED: list[str] = [
    # whitespace
    "", " ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\n\n\n", "\r\n", "\r\n\r\n", "\r", " \n",
    "  \n  ", "a  ", "a \n", "hello   world", "trailing spaces   ", "\t\tindented", " leading",
    "line1\nline2\r\nline3\rline4", " \t \n \r\n ", "x\u00a0y", "\u3000full width space",
    "a\u2028b\u2029c", "\x0b\x0c", "a\x85b", "a \x85 b", "  \x85", "tab\tseparated\tvalues\n",
    "    def f():\n        return 1\n", "\n \n \n", "a\n\n\n\nb", "   \n\t\t\n", "end\n",
    "x" + " " * 17 + "y", " " * 40, "\t" * 9 + "x", "a\u2003b\u2009c\u200ad", "\u1680ogham",
    # digits
    *["1234567890123456789012"[:n] for n in range(1, 21)],
    "3.14159", "1,000,000", "2024-01-01T12:34:56Z", "0x1F", "0b1010_1010", "1e-10", "-42",
    "+7 (555) 010-9999", "v1.2.3-rc4", "١٢٣٤٥٦", "१२३४", "①②③", "Ⅻ and ⅻ", "½ ¾ ⅞", "²³¹",
    "a1b22c333d4444", "99 bottles", "１２３", "0000000000000000000000000000007",
    # contractions, case
    "don't", "DON'T", "I'm", "I'M", "we'll", "WE'LL", "they're", "THEY'RE", "you've", "YOU'VE",
    "it's", "IT'S", "'S 'LL 're", "'s", "'ll", "'Ll", "'lL", "'VE've'Ve", "he'd", "HE'D",
    "'t'T", "'x", "''", "'", "rock 'n' roll", "it’s curly", "’S", "'ſ", "'ſt", "Y'ALL'RE",
    "HelloWorld", "camelCaseIdentifier", "snake_case_name", "SCREAMING_SNAKE", "iPhone",
    "McDonald's", "O'Neill", "l'homme", "dell'arte",
    # scripts
    "你好世界", "我爱北京天安门", "こんにちは世界", "カタカナとひらがな", "漢字かな交じり文",
    "안녕하세요 세계", "한국어 텍스트입니다", "مرحبا بالعالم", "السَّلَامُ عَلَيْكُمْ",
    "שלום עולם", "नमस्ते दुनिया", "हिन्दी भाषा", "สวัสดีครับ", "Привет, мир!",
    "Ελληνικά γράμματα", "தமிழ் மொழி", "বাংলা ভাষা", "ქართული", "Հայերեն", "ᐃᓄᒃᑎᑐᑦ",
    "Tiếng Việt có dấu", "Zażółć gęślą jaźń", "Ærøskøbing", "straße STRASSE", "İstanbul ıi",
    "ﬁ ligature ﬀ", "ｆｕｌｌｗｉｄｔｈ", "ﾊﾝｶｸ", "mixed 中文 and English",
    # emoji
    "😀", "😀😃😄", "👍🏽", "👍🏿👍🏻", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🏴‍☠️", "🇺🇸🇯🇵🇩🇪", "🇺",
    "❤️", "❤", "🧑🏿‍💻", "1️⃣2️⃣", "#️⃣", "👩🏽‍🚀 to the 🌕", "🫠🫨", "emoji😀in😀text",
    "🏴󠁧󠁢󠁳󠁣󠁴󠁿", "☺︎ vs ☺️",
    # code
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += v[i]; }",
    "#include <vector>\nint main() { std::vector<int> v{1,2,3}; return v.size(); }",
    "const f = async (x) => { await fetch(`/api/${x}`); };",
    "fn main() { let s: &str = \"hi\"; println!(\"{s}\"); }",
    "func main() {\n\tfmt.Println(\"hello\")\n}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "if [ -f ~/.bashrc ]; then . ~/.bashrc; fi && echo $HOME | grep -E '^/'",
    "key: value\nlist:\n  - a\n  - b\n",
    "^(?:[a-z0-9!#$%&'*+/=?^_`{|}~-]+)@\\w+\\.com$",
    "x+=1;y-=2;z*=3;w/=4;a%=5;b<<=6;c>>=7;",
    "public static void main(String[] args) throws Exception {}",
    "    \"\"\"Docstring.\"\"\"\n",
    "}}}}]]]])))) ;;;; ,,,, ....",
    "=== --- *** ___ ~~~ ``` '''",
    "\\n \\t \\\\ \\\"",
    # URLs, JSON
    "https://example.com/path/to/page?query=1&b=two#frag",
    "http://user:pass@host:8080/a%20b",
    "mailto:someone@example.org",
    "file:///C:/Windows/System32",
    '{"key": "value", "n": [1, 2.5, -3e10, true, null], "nested": {"a": {}}}',
    '{"a":1,"b":[{"c":"d"}]}',
    "[[1,2],[3,4]]",
    # math
    "∑_{i=1}^n x_i² ≤ ∞", "∀x∈ℝ, ∃y: x<y", "√2 ≈ 1.41421356", "E = mc²",
    "\\frac{a}{b} + \\sqrt{x^2+y^2}", "∫₀¹ f(x) dx", "α β γ δ ε", "≠ ≡ ≪ ≫ ⊂ ⊆ ∪ ∩",
    "𝔸𝔹ℂ 𝐀𝐁𝐂 𝑥𝑦𝑧", "1/2 + 1/3 = 5/6", "f'(x) = 2x",
    # combining marks, normalization
    "e\u0301", "caf\u00e9", "cafe\u0301", "Z\u0324\u0354\u0367\u0311\u0313a\u0308\u0356\u032d",
    "\u1100\u1161\u11a8", "\uac01", "n\u0303", "\u00f1", "a\u0300\u0301\u0302\u0303\u0304",
    "\u0301leading combining", "ﷺ", "Å Å", "한\u1100\u1161",
    # zero-width and odd code points
    "\u200b", "a\u200bb", "\u200c\u200d", "\ufeffBOM", "word\u2060joiner", "\u00ad soft",
    "\ufffd", "bad \ufffd\ufffd char", "\ue000\uf8ff", "\U000f0000\U0010fffd", "\ufdd0\ufffe\uffff",
    "\U000e0041\U000e007f", "\u202eRTL override", "\u061c\u200e\u200f", "\x00", "\x01\x02\x03",
    "\x7f", "\x1b[31mred\x1b[0m", "nul\x00in\x00middle", "\U0001d11e music", "\U00020000\U0002a6d6",
    "𓀀 hieroglyph", "\u0e3f", "₿", "€£¥₹",
    # special tokens inside text
    "<|endoftext|>", "hello<|endoftext|>world", "<|endoftext|><|endoftext|>",
    "<|im_start|>user\nhi<|im_end|>", "<|fim_prefix|>def f(<|fim_suffix|>)<|fim_middle|>",
    "<|endofprompt|>", "<|endoftext", "endoftext|>", "<|<|endoftext|>|>", " <|endoftext|> ",
    "<|im_start|>", "<|im_end|>\n", "<mask>", "a [[sep]] b", "[[sep]][[sep]]", "x <mask> y",
    "<|endoftext|>\n<|im_start|>system\nYou are helpful.<|im_end|>",
    # misc prose
    "The quick brown fox jumps over the lazy dog.",
    "Hello, world! How are you doing today?",
    "It was the best of times, it was the worst of times.",
    "    Indented prose with   irregular   spacing.  ",
    "Mr. Smith paid $3.50 for 2 apples @ 5pm (approx.).",
    "ALL CAPS SENTENCE WITH NUMBERS 123 AND PUNCTUATION!!!",
    "e.g., i.e., etc., vs.",
    "«quotes» „German“ 「Japanese」 ‘single’ “double”",
    "......", "!!!???", "---", "___init___", "--flag=value", "#hashtag @mention",
]

POOL_WORDS = [
    "hello", "world", "The", " the", "tokenizer", "BPE", "don't", "I'M", "12345", "3.14",
    "你好", "世界", "こんにちは", "안녕", "مرحبا", "नमस्ते", "Привет", "😀", "👍🏽",
    "👨‍👩‍👧", "🇫🇷", "e\u0301", "\u200b", "\ufffd", "<|endoftext|>", "<|fim_middle|>",
    "<|im_start|>", "{\"a\": 1}", "x = y + 1;", "https://a.b/c", "∑", "√", "\t", "\n",
    "\r\n", "  ", "'s", "'LL", "ſ", "straße", "İ", "ﬁ", "\u00a0", "\x85", "0", "007",
    "123456789", "----", "...", "(", ")", "[]", "{}", "#", "@", "$", "%", "^", "&", "*",
    "Zażółć", "ქართ", "𝔸", "\U0010fffd", "\ue000", "ab", "c", "defghij", "CAPS", "Mixed",
]
SEPARATORS = ["", " ", "  ", "\n", "\t", "\r\n", " \n ", ",", ". ", "\u3000"]


def random_combo(rng: random.Random) -> str:
    n = rng.randint(2, 9)
    parts = []
    for _ in range(n):
        parts.append(rng.choice(POOL_WORDS))
        parts.append(rng.choice(SEPARATORS))
    return "".join(parts)


def random_codepoints(rng: random.Random, n: int) -> str:
    # Blocks that have been stable for many Unicode versions, so that regex engines built
    # against different Unicode tables agree on \p{L} / \p{N} / \s.
    ranges = [
        (0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x590, 0x5FF),
        (0x600, 0x6FF), (0x900, 0x97F), (0xE00, 0xE7F), (0x3040, 0x30FF), (0x4E00, 0x4FFF),
        (0xAC00, 0xAFFF), (0x1F600, 0x1F64F), (0x2000, 0x206F), (0x2200, 0x22FF),
    ]
    out = []
    for _ in range(n):
        lo, hi = rng.choice(ranges)
        cp = rng.randint(lo, hi)
        if 0xD800 <= cp <= 0xDFFF:
            cp = 0x41
        out.append(chr(cp))
    return "".join(out)


def long_strings(rng: random.Random) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        "a" * 3000,
        " " * 3000,
        "\n" * 2100,
        " \n" * 1100,
        "1" * 2500,
        "".join(rng.choice(letters) for _ in range(4000)),  # one long word
        "".join(rng.choice(letters + letters.upper()) for _ in range(2500)),
        "ab" * 1500,
        "😀" * 700,
        "你好世界" * 600,
        "x" + " " * 2500 + "y",
        "=" * 2200,
        " ".join(random_combo(rng) for _ in range(60)),
        "".join(rng.choice(FIXED) for _ in range(80)),
        random_codepoints(rng, 2400),
        "word " * 500,
        "<|endoftext|>" * 200,
    ]


def build_cases() -> list[str]:
    rng = random.Random(20240611)
    cases = list(FIXED)
    cases += [random_combo(rng) for _ in range(170)]
    cases += [random_codepoints(rng, rng.randint(1, 40)) for _ in range(40)]
    cases += long_strings(rng)
    seen = set()
    unique = []
    for c in cases:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


# ----------------------------------------------------------------------------------------
# Small tokenizer.json models
# ----------------------------------------------------------------------------------------

TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. It's a tokenizer test, and we'll see how
the byte-level BPE merges common pairs. Don't worry: THEY'RE only bytes after all.
def tokenize(text):
    return [t for t in text.split() if t]
Numbers: 1234567890 3.14159 2024-06-11; prices $12.99, 45% off!
你好世界，こんにちは、안녕하세요. Привет мир. नमस्ते. مرحبا.
Emoji 😀👍🏽 and symbols ∑ √ ≈ ∞ → ← ✓.
"""


def train_small(pre_tokenizer, vocab_size: int, extra_added: bool) -> Tokenizer:
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizer
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    rng = random.Random(7)
    corpus = [TRAINING_TEXT] * 20 + [random_combo(rng) for _ in range(400)]
    tk.train_from_iterator(corpus, trainer=trainer)
    if extra_added:
        tk.add_tokens([AddedToken("[[sep]]", special=False)])
        tk.add_special_tokens([AddedToken("<mask>", special=True, lstrip=True)])
    return tk


def with_merge_form(tokenizer_json: str, as_arrays: bool) -> str:
    data = json.loads(tokenizer_json)
    merges = data["model"]["merges"]
    if as_arrays:
        data["model"]["merges"] = [m.split(" ", 1) if isinstance(m, str) else m for m in merges]
    else:
        data["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in merges]
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


# ----------------------------------------------------------------------------------------
# Chat template (dbrx-instruct's tokenizer_config.json chat_template)
# ----------------------------------------------------------------------------------------

DBRX_DEFAULT_SYSTEM = (
    "You are DBRX, created by Databricks. You were last updated in December 2023. You answer "
    "questions based on information available up to that point.\nYOU PROVIDE SHORT RESPONSES "
    "TO SHORT QUESTIONS OR STATEMENTS, but provide thorough responses to more complex and "
    "open-ended questions.\nYou assist with various tasks, from writing to coding (using "
    "markdown for code blocks \u2014 remember to use ``` with code, JSON, and tables).\n(You do "
    "not have real-time data access or code execution capabilities. You avoid stereotyping and "
    "provide balanced perspectives on controversial topics. You do not provide song lyrics, "
    "poems, or news articles and do not divulge details of your training data.)\nThis is your "
    "system prompt, guiding your responses. Do not reference it, just respond to the user. If "
    "you find yourself talking about this message, stop. You should be responding "
    "appropriately and usually that means not mentioning this.\nYOU DO NOT MENTION ANY OF THIS "
    "INFORMATION ABOUT YOURSELF UNLESS THE INFORMATION IS DIRECTLY PERTINENT TO THE USER'S QUERY."
)


def jinja_quote(s: str) -> str:
    return "'" + s.replace("\\", "\\\\").replace("'", "\\'") + "'"


def dbrx_chat_template(default_system: str | None) -> str:
    default_branch = (
        "{% elif 'system' not in messages[0]['role'] %}{% set loop_messages = messages %}"
        "{% set system_message = " + jinja_quote(default_system) + " %}"
        if default_system is not None
        else ""
    )
    return (
        "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
        "{% set system_message = messages[0]['content'] %}"
        + default_branch
        + "{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
        "{% for message in loop_messages %}{% if loop.index0 == 0 %}"
        "{% if system_message != false %}{{ '<|im_start|>system\\n' + system_message | trim "
        "+ '<|im_end|>\\n'}}{% endif %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' }}"
        "{% else %}{{ '\\n' + '<|im_start|>' + message['role'] + '\\n' + message['content'] "
        "+ '<|im_end|>' }}{% endif %}"
        "{% if (add_generation_prompt == true and loop.last) %}"
        "{{ '\\n' + '<|im_start|>' + 'assistant' + '\\n' }}{% endif %}{% endfor %}"
    )


def chat_cases(tokenizer_json_path: Path) -> list[dict]:
    from transformers import PreTrainedTokenizerFast

    conversations = [
        [{"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        [{"role": "system", "content": "  padded system \n"}, {"role": "user", "content": " x "}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"},
         {"role": "user", "content": "And 3+3?"}],
        [{"role": "system", "content": "S"}, {"role": "user", "content": "u1"},
         {"role": "assistant", "content": "a1\n"}, {"role": "user", "content": "u2"}],
        [{"role": "assistant", "content": "I start."}],
        [{"role": "system", "content": "only system"}],
        [{"role": "system", "content": ""}, {"role": "user", "content": ""}],
        [{"role": "user", "content": "multi\nline\n\ncontent 你好 😀"}],
        [{"role": "tool", "content": "{\"result\": 1}"}, {"role": "user", "content": "ok"}],
        [{"role": "my_system_role", "content": "odd role"}, {"role": "user", "content": "q"}],
        [{"role": "system", "content": "\u3000unicode space\u00a0"}, {"role": "user", "content": "q"}],
    ]
    out = []
    for default in (None, DBRX_DEFAULT_SYSTEM):
        tok = PreTrainedTokenizerFast(tokenizer_file=str(tokenizer_json_path))
        tok.chat_template = dbrx_chat_template(default)
        for conv in conversations:
            for gen in (False, True):
                text = tok.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen)
                out.append({"messages": conv, "add_generation_prompt": gen,
                            "default_system": default is not None, "expected": text})
    return out


# ----------------------------------------------------------------------------------------


def write_cases(path: Path, header: dict, cases: list[dict]) -> None:
    lines = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases]
    head = json.dumps(header, ensure_ascii=False)
    assert head.endswith("}")
    body = head[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    path.write_text(body, encoding="utf-8")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    enc = cl100k_encoding()
    strings = build_cases()

    cl_cases = []
    for s in strings:
        case = {"text": s, "ids": enc.encode(s, allowed_special="all")}
        ordinary = enc.encode_ordinary(s)
        if ordinary != case["ids"]:
            case["ids_no_special"] = ordinary
        assert enc.decode_bytes(case["ids"]) == s.encode("utf-8")
        cl_cases.append(case)
    write_cases(OUT / "cl100k_cases.json",
                {"encoding": "cl100k_base", "tiktoken": tiktoken.__version__,
                 "pattern": CL100K_PATTERN}, cl_cases)

    import tokenizers as hf

    small = train_small(
        pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CL100K_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]),
        vocab_size=600, extra_added=True)
    gpt2 = train_small(pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
                       vocab_size=400, extra_added=False)

    subset = [s for s in strings if len(s) <= 400] + [s for s in strings if len(s) > 400][:4]
    for name, tk in (("small_bpe", small), ("small_gpt2", gpt2)):
        raw = tk.to_str()
        native_arrays = isinstance(json.loads(raw)["model"]["merges"][0], list)
        outputs = [(name, native_arrays)]
        if name == "small_bpe":  # the other merges spelling, to cover both forms
            outputs.append((name + ("_strings" if native_arrays else "_arrays"), not native_arrays))
        for folder, arrays in outputs:
            d = OUT / folder
            d.mkdir(exist_ok=True)
            (d / "tokenizer.json").write_text(with_merge_form(raw, arrays), encoding="utf-8")
        cases = []
        for s in subset:
            tk.encode_special_tokens = False
            ids = tk.encode(s, add_special_tokens=False).ids
            case = {"text": s, "ids": ids}
            tk.encode_special_tokens = True
            plain = tk.encode(s, add_special_tokens=False).ids
            tk.encode_special_tokens = False
            if plain != ids:
                case["ids_no_special"] = plain
            cases.append(case)
        write_cases(OUT / f"{name}_cases.json", {"tokenizers": hf.__version__}, cases)

    chat = chat_cases(OUT / "small_bpe" / "tokenizer.json")
    write_cases(OUT / "chatml_cases.json",
                {"template": "dbrx-instruct", "default_system_prompt": DBRX_DEFAULT_SYSTEM}, chat)

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(cl_cases)} cl100k cases, {len(subset)} small-BPE cases, {len(chat)} chat cases;"
          f" fixtures total {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
