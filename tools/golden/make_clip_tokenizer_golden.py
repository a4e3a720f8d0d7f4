#!/usr/bin/env python3
"""Builds the CLIP tokenizer golden fixtures under tests/fixtures/clip_tokenizer/.

Run with the dev venv (transformers, tokenizers) after scripts/setup has installed
models/tokenizers/bpe_simple_vocab_16e6.txt.gz:
    .venv/bin/python tools/golden/make_clip_tokenizer_golden.py

The reference is what a diffusers pipeline uses: transformers' CLIPTokenizer.from_pretrained
on a tokenizer/ folder (vocab.json + merges.txt + config files). The folders are made here from
the open-clip merges file, the way open_clip builds its vocab, so no hub is needed.

Writes:
  sd15/, sd2/, sdxl/    the config files of three folder styles (the test puts vocab.json and
                        merges.txt made from the .gz next to them):
                        sd15  SD 1.x: special_tokens_map.json, pad <|endoftext|>, bos and eos
                              AddedToken objects with "normalized": true
                        sd2   SD 2.x: the same with pad "!" in special_tokens_map.json
                        sdxl  SDXL tokenizer_2 (newer format): added_tokens_decoder, pad "!"
  cases.json            hard strings: ids of encode (no BOS/EOS) for the bare vocab+merges
                        ("ids") and for each folder style where they differ, padded ids
                        (max_length 77, truncation) for the bare files and sd2, and decode
  decode_cases.json     id lists (stray bytes, special tokens, unknown ids) and their decode
  codepoints.json       every code point (surrogates excepted) encoded in a small context,
                        CRC-32 per block of 4096 code points
  tiny/                 a hand-made 167-token vocab + merges (unknown bytes, merges with
                        and without </w>) and tiny_cases.json with the reference's ids
"""
from __future__ import annotations

import array
import gzip
import json
import os
import random
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "clip_tokenizer"
MODELS = Path(os.environ.get("TESSERA_MODELS", ROOT / "models"))
BPE_GZ = MODELS / "tokenizers" / "bpe_simple_vocab_16e6.txt.gz"

sys.path.insert(0, str(Path(__file__).resolve().parent))


def bytes_to_unicode() -> dict[int, str]:
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) +
                 list(range(ord("®"), ord("ÿ") + 1)))
    bs, cs = printable[:], printable[:]
    n = 0
    for b in range(256):
        if b not in printable:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def open_clip_vocab_and_merges() -> tuple[list[str], list[str]]:
    """The vocab and merges exactly as open_clip's SimpleTokenizer builds them."""
    lines = gzip.open(BPE_GZ).read().decode("utf-8").split("\n")
    merges = lines[1:49152 - 256 - 2 + 1]
    alphabet = list(bytes_to_unicode().values())
    vocab = alphabet + [c + "</w>" for c in alphabet]
    vocab += ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408 and len(set(vocab)) == len(vocab)
    return vocab, merges


def write_vocab_merges(folder: Path, vocab: list[str], merges: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def added(content: str, normalized: bool, with_type: bool = True, special: bool | None = None) -> dict:
    d = {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False, "single_word": False}
    if special is not None:
        d["special"] = special
    return {"__type": "AddedToken", **d} if with_type else d


def folder_configs() -> dict[str, dict[str, dict]]:
    sd15_config = {
        "add_prefix_space": False,
        "bos_token": added("<|startoftext|>", True),
        "do_lower_case": True,
        "eos_token": added("<|endoftext|>", True),
        "errors": "replace",
        "model_max_length": 77,
        "name_or_path": "openai/clip-vit-large-patch14",
        "pad_token": "<|endoftext|>",
        "special_tokens_map_file": "./special_tokens_map.json",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": added("<|endoftext|>", True),
    }
    sd15_map = {
        "bos_token": added("<|startoftext|>", True, with_type=False),
        "eos_token": added("<|endoftext|>", True, with_type=False),
        "pad_token": "<|endoftext|>",
        "unk_token": added("<|endoftext|>", True, with_type=False),
    }
    sd2_map = dict(sd15_map, pad_token="!")
    sdxl_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            "0": added("!", False, with_type=False, special=True),
            "49406": added("<|startoftext|>", True, with_type=False, special=True),
            "49407": added("<|endoftext|>", False, with_type=False, special=True),
        },
        "bos_token": "<|startoftext|>",
        "clean_up_tokenization_spaces": True,
        "do_lower_case": True,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 77,
        "pad_token": "!",
        "tokenizer_class": "CLIPTokenizer",
        "unk_token": "<|endoftext|>",
    }
    return {
        "sd15": {"tokenizer_config.json": sd15_config, "special_tokens_map.json": sd15_map},
        "sd2": {"tokenizer_config.json": sd15_config, "special_tokens_map.json": sd2_map},
        "sdxl": {"tokenizer_config.json": sdxl_config},
    }


# ----------------------------------------------------------------------------------------
# Hard strings

CLIP_FIXED: list[str] = [
    "", " ", "   ", "\t", "\n", "\r\n", " \t\n\r\x0b\x0c ", "\u00a0", "\u3000", "\x85",
    "a photo of a cat", "A Photo Of A Cat", "A PHOTO OF A CAT", "  a photo of a cat  ",
    "\ta\tphoto\nof\r\na  cat\n", "a photo of an astronaut riding a horse on mars",
    "masterpiece, best quality, (ultra-detailed:1.2), [blurry], {cat|dog}, 8k uhd",
    "(((masterpiece))), ((best quality)), ((ultra-detailed)), (illustration), (1girl)",
    "portrait of a woman, by greg rutkowski and alphonse mucha, trending on artstation",
    "lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits",
    "oil painting of a lighthouse at dusk, 35mm, f/1.8, ISO 100, 1/250s, --ar 16:9 --v 5",
    "cyberpunk city at night, neon lights, rain, reflections, highly detailed, 4k, octane render",
    "a cat!", "wow!!!", "!", "!!", "! ! !", "hello ! world", "!important", "what?!", "a!b",
    "don't", "DON'T", "Don'T", "it's", "IT'S", "'S", "'s'S's", "we'll've", "I'd", "I'M", "you're",
    "they've", "can't won't shouldn't", "rock'n'roll", "''", "'", "' s", "it’s", "o'clock",
    "'sun", "'tis", "'re'", "x'y", "'''s",
    "1", "12", "123", "1234567890", "3.14159", "1,000,000", "2024-06-11", "v1.2.3", "0x1F",
    "1st 2nd 3rd 4th", "100%", "$9.99", "½ ¾ ⅞", "²³¹", "①②③", "Ⅻ ⅻ", "١٢٣", "१२३", "１２３",
    "caf\u00e9", "cafe\u0301", "CAFE\u0301", "Caf\u00c9", "e\u0301\u0301", "\u0301", "a\u0300\u0301\u0302",
    "n\u0303o", "A\u030a", "\u212b", "\u2126", "\u1e0b\u0323", "q\u0307\u0323", "\u0344",
    "\u1100\u1161\u11a8", "\u1100\u1161", "\uac00\u11a8", "한국어", "\u1100\u1100\u1161",
    "Zażółć gęślą jaźń", "straße STRASSE ẞ", "İstanbul ıi", "ΣΑΣ σας ς", "ǅ ǆ Ǆ", "ﬁ ﬂ ﬀ",
    "Ⓐⓑ", "ＡＢＣ ｆｕｌｌ", "ﾊﾝｶｸ", "Ǳ", "ΐ", "\u1e9e", "\u0130\u0307",
    "你好世界", "我爱北京天安门", "こんにちは世界", "カタカナ", "漢字かな交じり文", "안녕하세요 세계",
    "مرحبا بالعالم", "שלום עולם", "नमस्ते दुनिया", "สวัสดีครับ", "Привет, мир!", "Ελληνικά",
    "தமிழ்", "ქართული", "Հայերեն", "ᐃᓄᒃᑎᑐᑦ", "Tiếng Việt có dấu", "mixed 中文 and English",
    "😀", "😀😃😄", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇺🇸🇯🇵", "❤️", "❤", "1️⃣", "#️⃣",
    "a cat 🐱 on a mat", "🔥🔥🔥 lit", "emoji😀in😀text", "☺︎ vs ☺️", "🫠",
    "<|startoftext|>", "<|endoftext|>", "<|startoftext|>a cat<|endoftext|>", "a<|endoftext|>b",
    "<|ENDOFTEXT|>", "<|StartOfText|>", "<|STARTOFTEXT|> cat", "< |endoftext| >", "<|endoftext",
    "endoftext|>", "<|<|endoftext|>|>", "<|endoftext|><|endoftext|>", " <|endoftext|> ",
    "x <|startoftext|> y <|endoftext|> z", "<|endoftext|>!<|endoftext|>", "<|im_start|>",
    "<|endof\u0301text|>", "<|endoftext|>\u0301", "e<|endoftext|>\u0301", "<|ENDOFTEXT|>!",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>", "<br/>", "&nbsp;&lt;&gt;",
    "<img src=\"a.png\" alt='cat'>", "https://example.com/a?b=c&d=e#f", "user@example.com",
    "#hashtag @mention", "C:\\Users\\me", "~/.bashrc", "a_b-c.d/e\\f", "snake_case_name",
    "camelCaseWord", "HTTPServer", "iPhone", "McDonald's", "l'homme",
    "......", "!!!???", "---", "___", "***", "~~~", "''''", "\"\"\"", "(((", ")))", "[[]]", "{{}}",
    ":-) ;-) :D <3", "->", "=>", "<=>", "!=", "==", "...!?", "a...b", "a - b", "a—b–c",
    "«quotes» „German“ 「Japanese」 ‘single’ “double”", "§ ¶ † ‡ • ‣ ※", "€£¥₹₿",
    "∑_{i=1}^n x_i² ≤ ∞", "√2 ≈ 1.414", "α β γ", "𝔸𝔹ℂ 𝐀𝐁𝐂 𝑥𝑦𝑧",
    "\u200b", "a\u200bb", "\ufeffBOM", "a\u00adb", "\u2060", "\u180e", "a\u180eb", "\u202eRTL",
    "\x00", "nul\x00in\x00middle", "\x01\x02\x1b[31m", "\x1c\x1d\x1e\x1f", "a\x7fb",
    "\ufffd", "bad \ufffd\ufffd char", "\ue000\uf8ff", "\U000f0000", "\ufdd0\ufffe\uffff",
    "\U000e0041", "\U0001d11e", "\U00020000\U0002a6d6", "𓀀",
    "\u1c89\u1c8a", "a\u1c89b", "\U0002ebf0\U0002ebf1", "\U00010d40\U00010d41", "\U00011938",
    "\u0d3b\u0d3c", "a\u0898\u0334", "\u0c3c", "\u0345\u0334", "\U0001e030",
]


def sweep_text(c: str) -> str:
    return c + "a" + c + c + "5" + c + "?" + c


def long_prompts(rng: random.Random) -> list[str]:
    words = ["a", "photo", "of", "the", "cat", "dog", "masterpiece", "best", "quality", "highly",
             "detailed", "8k", "(cinematic:1.3)", "[lighting]", "sunset", "über", "café", "東京",
             "🌸", "don't", "!", "<|endoftext|>", "\n", "  ", "1234", "oil-painting", "trending"]
    out = [
        " ".join(rng.choice(words) for _ in range(n)) for n in (60, 74, 75, 76, 77, 78, 100, 300)
    ]
    out += [
        "a " * 74 + "a", "a " * 75, "a " * 76, "a " * 200, "cat " * 80, "!" * 100, "! " * 100,
        "a" * 3000, " " * 3000, "ab" * 1500, "😀" * 400, "你好世界" * 200, "1" * 500,
        "supercalifragilisticexpialidocious" * 20, "x" + " " * 2000 + "y",
        "".join(chr(rng.randint(0x20, 0x24F)) for _ in range(1500)),
    ]
    return out


def random_combos(rng: random.Random, pool: list[str], count: int) -> list[str]:
    seps = ["", " ", "  ", "\n", "\t", ", ", ". ", "\u3000", "!", "'"]
    out = []
    for _ in range(count):
        parts = []
        for _ in range(rng.randint(2, 8)):
            parts.append(rng.choice(pool))
            parts.append(rng.choice(seps))
        out.append("".join(parts))
    return out


def build_strings() -> list[str]:
    try:
        from make_tokenizer_golden import FIXED as GENERAL  # the byte-level BPE tests' strings
    except ImportError:
        GENERAL = []
    rng = random.Random(20240612)
    strings = CLIP_FIXED + list(GENERAL)
    pool = [s for s in CLIP_FIXED if 0 < len(s) < 30]
    strings += random_combos(rng, pool, 150)
    strings += long_prompts(rng)
    seen, unique = set(), []
    for s in strings:
        if s not in seen:
            seen.add(s)
            unique.append(s)
    return unique


# Byte strings that are not valid UTF-8; the reference sees them as Python would decode them
# with errors="replace".
BAD_BYTES: list[bytes] = [
    b"\xff", b"\xfe\xff", b"a\x80b", b"\xc3", b"\xc3(", b"caf\xc3", b"\xe2\x82", b"\xe2\x82(",
    b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xf0\x9f\x98", b"\xf0\x9f\x98 cat", b"\xf4\x90\x80\x80",
    b"\xc0\xaf", b"\xe0\x80\xaf", b"\xf8\x88\x80\x80\x80", b"\x80\x80\x80", b"a photo\xff of a cat",
    b"<|endoftext|>\xff<|endoftext|>", b"\xf0\x9f\x98\x80\xf0\x9f\x98", b"\xe6\x97\xa5\xe6\x9c",
    b"DON\xe2\x80'T",
]


def encode_all(tok, texts: list[str]) -> list[list[int]]:
    return [tok.encode(t, add_special_tokens=False) for t in texts]


def padded(tok, text: str) -> list[int]:
    return tok(text, padding="max_length", max_length=77, truncation=True).input_ids


# ----------------------------------------------------------------------------------------
# The tiny hand-made vocab

TINY_WORDS = ["hello", "world", "photo", "cat", "the", "a", "of", "don't", "123"]


def tiny_vocab_and_merges() -> tuple[list[str], list[str]]:
    b2u = bytes_to_unicode()
    # Only ASCII letters, digits and a little punctuation: every other byte is unknown.
    chars = [b2u[b] for b in range(256) if chr(b).isalnum() and b < 128] + [b2u[ord(c)] for c in "!'.,<>|"]
    vocab = chars + [c + "</w>" for c in chars]
    merges = [
        "h e", "l l", "he ll", "hell o</w>", "w o", "r l", "wo rl", "worl d</w>",
        "p h", "o t", "ph ot", "phot o</w>", "c a", "ca t</w>", "t h", "th e</w>", "o f</w>",
        "d o", "n '", "do n'", "don' t</w>", "1 2", "12 3</w>", "! !", "!! !</w>", "< |", "| >",
    ]
    for m in merges:
        a, b = m.split()
        vocab.append(a + b)
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(set(vocab)) == len(vocab)
    return vocab, merges


TINY_STRINGS = [
    "", "hello world", "Hello World!", "hello", "hellohello", "a photo of the cat", "don't",
    "DON'T stop", "123 1234 12 3", "!!! !! !", "café", "über", "😀", "x<|endoftext|>y",
    "<|startoftext|>", "<|ENDOFTEXT|>", "a\tb\nc", "  spaced   out  ", "h.e.l.l.o", "world's",
]


# ----------------------------------------------------------------------------------------


def write_cases(path: Path, header: dict, cases: list[dict]) -> None:
    lines = [json.dumps(c, ensure_ascii=False, separators=(",", ":")) for c in cases]
    head = json.dumps(header, ensure_ascii=False)
    body = head[:-1] + ', "cases": [\n' + ",\n".join(lines) + "\n]}\n"
    path.write_text(body, encoding="utf-8")


def main() -> None:
    if not BPE_GZ.exists():
        sys.exit(f"{BPE_GZ} is missing: run scripts/setup first")
    import tokenizers
    import transformers
    from transformers import CLIPTokenizer
    transformers.logging.set_verbosity_error()

    vocab, merges = open_clip_vocab_and_merges()
    OUT.mkdir(parents=True, exist_ok=True)
    configs = folder_configs()
    work = Path(tempfile.mkdtemp(prefix="clip-golden-"))
    try:
        toks = {}
        write_vocab_merges(work / "plain", vocab, merges)
        toks["plain"] = CLIPTokenizer.from_pretrained(str(work / "plain"))
        for name, files in configs.items():
            write_vocab_merges(work / name, vocab, merges)
            (OUT / name).mkdir(exist_ok=True)
            for filename, content in files.items():
                text = json.dumps(content, indent=2, ensure_ascii=False) + "\n"
                (work / name / filename).write_text(text, encoding="utf-8")
                (OUT / name / filename).write_text(text, encoding="utf-8")
            toks[name] = CLIPTokenizer.from_pretrained(str(work / name))

        plain = toks["plain"]
        assert plain.encode("a photo of a cat", add_special_tokens=False) == [320, 1125, 539, 320, 2368]
        assert plain.bos_token_id == 49406 and plain.eos_token_id == 49407
        assert toks["sd2"].pad_token_id == 0 and toks["sdxl"].pad_token_id == 0

        strings = build_strings()
        entries = [{"text": s} for s in strings]
        entries += [{"bytes": b.hex(), "text": b.decode("utf-8", "replace")} for b in BAD_BYTES]
        texts = [e["text"] for e in entries]
        ids = {name: encode_all(tok, texts) for name, tok in toks.items()}
        cases = []
        for i, entry in enumerate(entries):
            case = {"text": entry["text"]} if "bytes" not in entry else {"bytes": entry["bytes"]}
            case["ids"] = ids["plain"][i]
            for name in ("sd15", "sd2", "sdxl"):
                if ids[name][i] != ids["plain"][i]:
                    case[f"ids_{name}"] = ids[name][i]
            case["padded"] = padded(plain, entry["text"])
            case["padded_sd2"] = padded(toks["sd2"], entry["text"])
            with_specials = [plain.bos_token_id] + ids["plain"][i] + [plain.eos_token_id]
            case["decoded"] = plain.decode(with_specials)
            for name in ("sdxl",):
                d = toks[name].decode(with_specials)
                if d != case["decoded"]:
                    case[f"decoded_{name}"] = d
            cases.append(case)
        write_cases(OUT / "cases.json",
                    {"transformers": transformers.__version__, "tokenizers": tokenizers.__version__,
                     "max_length": 77}, cases)

        # decode of id lists that encode never makes
        rng = random.Random(5)
        id_lists = [[188], [188, 189], [222], [320, 222], [320, 222, 321], [0, 256, 1125],
                    [49406, 49407, 49407], [320, 99999, 321], [99999], [], [3306, 0, 0, 1002],
                    [139, 225], [139], [256, 256], [320, 49407, 1125], [27, 347, 40786, 4160, 91, 285]]
        for _ in range(60):
            id_lists.append([rng.randrange(0, 49408 + 50) for _ in range(rng.randint(1, 12))])
        for _ in range(40):  # lone byte tokens: invalid UTF-8 runs
            id_lists.append([rng.randrange(0, 512) for _ in range(rng.randint(1, 8))])
        decode_cases = [{"ids": l, "text": plain.decode(l)} for l in id_lists]
        write_cases(OUT / "decode_cases.json", {"transformers": transformers.__version__}, decode_cases)

        # every code point, hashed per block
        points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
        # a fresh backend: tokenizer(..., padding=..., truncation=...) above left padding and
        # truncation switched on in plain's
        backend = CLIPTokenizer.from_pretrained(str(work / "plain"))._tokenizer
        sweep = backend.encode_batch([sweep_text(chr(c)) for c in points], add_special_tokens=False)
        chunks: dict[int, list[int]] = {}
        for c, enc in zip(points, sweep):
            block = chunks.setdefault(c >> 12, [])
            block.extend(enc.ids)
            block.append(-1)
        blocks = {b: zlib.crc32(array.array("i", v).tobytes()) for b, v in chunks.items()}
        assert sys.byteorder == "little"
        (OUT / "codepoints.json").write_text(json.dumps({
            "context": "c + 'a' + c + c + '5' + c + '?' + c, for each code point c",
            "hash": "CRC-32 (zlib) of the ids as little-endian int32, with -1 after each code point",
            "blocks": {f"{b:03X}": f"{h:08x}" for b, h in sorted(blocks.items())},
        }, indent=0) + "\n", encoding="utf-8")

        # the tiny hand-made vocab
        tv, tm = tiny_vocab_and_merges()
        tiny_dir = OUT / "tiny"
        write_vocab_merges(tiny_dir, tv, tm)
        tiny = CLIPTokenizer.from_pretrained(str(tiny_dir))
        tiny_cases = [{"text": s, "ids": tiny.encode(s, add_special_tokens=False),
                       "padded": tiny(s, padding="max_length", max_length=8, truncation=True).input_ids}
                      for s in TINY_STRINGS]
        write_cases(OUT / "tiny_cases.json", {"max_length": 8, "vocab_size": len(tv)}, tiny_cases)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"{len(cases)} cases, {len(decode_cases)} decode cases, {len(blocks)} code point blocks, "
          f"{len(tiny_cases)} tiny cases; fixtures total {total / 1024:.0f} KiB in {OUT}")


if __name__ == "__main__":
    main()
