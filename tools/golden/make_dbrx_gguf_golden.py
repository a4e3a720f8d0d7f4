#!/usr/bin/env python3
"""GGUF versions of tiny DBRX golden models, converted by llama.cpp's own converter
(convert_hf_to_gguf.py from the pinned llama-cpp-python sdist), for tessera's GGUF loader tests.

The golden models carry no tokenizer; the converter needs one, so a byte-level BPE tokenizer
with exactly the model's vocabulary (256 byte tokens) is written beside a copy of each model,
and the converter's pre-tokenizer fingerprinting (which only knows published tokenizers) is told
"gpt2". Weights, hyperparameters and tensor layouts are the converter's own.

    .venv/bin/python tools/golden/make_dbrx_gguf_golden.py [--out tests/fixtures/dbrx_gguf]
"""
import argparse
import json
import pathlib
import sys
import tempfile

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from llama_cpp_source import llama_cpp_source  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODELS = ["e4_top1_gqa_clip_f32", "e4_top2_d64_clip_f32"]  # clip_qkv set, weights normalised with p = 1
TYPES = ["f32", "q8_0"]


def byte_tokenizer(folder: pathlib.Path, vocab_size: int) -> None:
    """256 byte tokens; a larger vocabulary is padded by the converter with unused entries."""
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet, key=lambda c: (ord(c) > 255, ord(c))))}
    assert len(vocab) == 256 <= vocab_size, vocab_size
    merges = []
    if vocab_size > 256:  # llama.cpp refuses a BPE vocabulary without merges; give it one
        vocab["Ġt"] = 256
        merges = [("Ġ", "t")]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))


def convert(model_dir: pathlib.Path, target: pathlib.Path, outtype: str) -> None:
    """Runs llama.cpp's converter on a Hugging Face DBRX folder (no tokenizer needed)."""
    src = llama_cpp_source()
    for path in (str(src), str(src / "gguf-py")):
        if path not in sys.path:
            sys.path.insert(0, path)
    import convert_hf_to_gguf  # noqa: E402
    from conversion import base  # noqa: E402

    base.TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
    with tempfile.TemporaryDirectory() as tmp:
        folder = pathlib.Path(tmp) / model_dir.name
        folder.mkdir()
        for item in model_dir.iterdir():
            if item.suffix in (".json", ".safetensors") and not item.name.startswith("tokenizer"):
                (folder / item.name).symlink_to(item.resolve())
        config = json.loads((folder / "config.json").read_text())
        byte_tokenizer(folder, config["vocab_size"])
        sys.argv = ["convert_hf_to_gguf.py", str(folder), "--outfile", str(target), "--outtype", outtype]
        convert_hf_to_gguf.main()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(ROOT / "tests" / "fixtures" / "dbrx_gguf"))
    args = ap.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    for name in MODELS:
        for outtype in TYPES:
            target = out / f"{name}.{outtype}.gguf"
            convert(ROOT / "tests" / "fixtures" / "dbrx" / name, target, outtype)
            print(f"{target}: {target.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
