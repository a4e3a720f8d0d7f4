"""`tessera tokenizer train` end to end: the folder it writes is read by the Python `tokenizers`
library, by transformers and by `tessera tokenize`, and all of them give the same ids.
"""
import json
import pathlib
import random
import shutil
import subprocess

import pytest
from tokenizers import Tokenizer

from conftest import ROOT

CORPUS = ROOT / "tests" / "fixtures" / "bpe_trainer" / "corpus"

STRINGS = [
    "The lighthouse keeper's log, kept through the winter of 1887.",
    "DON'T WAIT, we'll be late; they've gone and she'd say so.",
    "Déjà vu: Straße, маяк, 灯台守は毎晩日誌を書く, منارة, 🌧️🌫️☀️, 👩‍👩‍👧, −3 °C → +2 °C",
    "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhen does the boat come?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "text<|endoftext|>more text<|pad|><|pad|>",
    "    four spaces\n\n\n\ttab\t\ttabs   \r\n\r\n  trailing   ",
    " ",
    "\n\n",
    "x" + " " * 17 + "y",
    "1234567890 3.14159 0x1F 2,718,281 1887-01-17",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n",
    "Words the corpus never had: zebra, quokka, xylophone, Ångström, Ωμέγα.",
    "<|im_start|<|im_end|>|> <| im_start |> <|IM_START|>",
]


def make_corpus(folder: pathlib.Path) -> None:
    """The golden corpus plus generated documents with mixed scripts and whitespace."""
    shutil.copytree(CORPUS, folder)
    rng = random.Random(11)
    words = ["keeper", "lamp", "boat", "oil", "fog", "phare", "Leuchtturm", "маяк", "灯台", "🌧️", "1887", "it's"]
    lines = []
    for _ in range(300):
        sep = rng.choice([" ", " ", " ", "  ", "\n", "\t", ", "])
        lines.append(json.dumps({"text": sep.join(rng.choice(words) for _ in range(rng.randint(3, 20)))}))
    (folder / "generated.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def trained(tessera_bin, tmp_path_factory):
    base = tmp_path_factory.mktemp("tokenizer_train")
    make_corpus(base / "corpus")
    out = base / "tok"
    r = subprocess.run([str(tessera_bin), "tokenizer", "train", "--input", str(base / "corpus"),
                        "--vocab-size", "640", "--min-frequency", "2", "-o", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return out, r.stdout


def tessera_ids(tessera_bin, folder, text, *flags):
    r = subprocess.run([str(tessera_bin), "tokenize", "-m", str(folder), "--text", text, *flags],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    line = r.stdout.strip()
    return [int(x) for x in line.split(",")] if line else []


def test_summary_reports_the_vocabulary(trained):
    _, summary = trained
    assert "640 tokens (4 special, 256 bytes, 380 merged)" in summary
    assert "stopped: the vocabulary is full" in summary
    assert "bytes per token" in summary


def test_python_tokenizers_and_tessera_give_the_same_ids(tessera_bin, trained):
    folder, _ = trained
    hf = Tokenizer.from_file(str(folder / "tokenizer.json"))
    assert hf.get_vocab_size() == 640
    for text in STRINGS:
        expected = hf.encode(text).ids
        assert tessera_ids(tessera_bin, folder, text) == expected, repr(text)
        assert hf.decode(expected, skip_special_tokens=False) == text
    # Special tokens' text as plain text: tessera's --no-special is the library's
    # encode_special_tokens.
    hf.encode_special_tokens = True
    for text in STRINGS[3:5]:
        assert tessera_ids(tessera_bin, folder, text, "--no-special") == hf.encode(text).ids, repr(text)


def test_whole_file_encodes_the_same(tessera_bin, trained, tmp_path):
    folder, _ = trained
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(CORPUS.glob("*.txt"))) + "\n".join(STRINGS)
    (tmp_path / "input.txt").write_text(text, encoding="utf-8", newline="")
    r = subprocess.run([str(tessera_bin), "tokenize", "-m", str(folder), "--file", str(tmp_path / "input.txt")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ids = [int(x) for x in r.stdout.strip().split(",")]
    assert ids == Tokenizer.from_file(str(folder / "tokenizer.json")).encode(text).ids


def test_transformers_reads_the_config_and_renders_chatml(tessera_bin, trained):
    transformers = pytest.importorskip("transformers")
    folder, _ = trained
    tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert tok.eos_token == "<|endoftext|>" and tok.pad_token == "<|pad|>"
    assert tok.convert_tokens_to_ids(["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"]) == [0, 1, 2, 3]
    messages = [{"role": "user", "content": "When does the boat come?"},
                {"role": "assistant", "content": "On Thursday."},
                {"role": "user", "content": "And the oil?"}]
    prompt = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(1) == 4 and ids.count(2) == 3
    assert tessera_ids(tessera_bin, folder, prompt) == ids
    assert tok.decode(ids) == prompt


def test_bad_input_is_one_line_and_exit_2(tessera_bin, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"txt": "typo"}\n')
    cases = [
        (["--input", str(tmp_path / "missing"), "--vocab-size", "500"], "no such file or folder"),
        (["--input", str(CORPUS), "--vocab-size", "200"], "vocab size 200 is too small"),
        (["--input", str(tmp_path / "empty.txt"), "--vocab-size", "500"], "corpus is empty"),
        (["--input", str(tmp_path / "bad.jsonl"), "--vocab-size", "500"], "bad.jsonl:2: the object has no \"text\""),
        (["--input", str(CORPUS), "--vocab-size", "500", "--special", "<a>", "<a>"], "given twice"),
    ]
    for args, message in cases:
        r = subprocess.run([str(tessera_bin), "tokenizer", "train", *args, "-o", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert message in r.stderr and r.stderr.count("\n") == 1, (args, r.stderr)
    assert not (tmp_path / "out").exists()
