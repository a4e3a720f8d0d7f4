"""SmolLM2-135M-Instruct (Q4_1 GGUF, the default chat model) run by tessera and by llama.cpp
(llama-cpp-python from the dev venv) on the same file: greedy decoding gives the same first 16
tokens for fixed prompts, and the top-1 token of every prefill position agrees."""
import json
import os
import pathlib

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = pathlib.Path(os.environ.get("TESSERA_MODELS", ROOT / "models")) / "smollm2-135m-instruct" / \
    "SmolLM2-135M-Instruct.Q4_1.gguf"

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "<|im_start|>user\nWhat is a mixture of experts model?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time, in a small village by the sea,",
    "List three colors: 1.",
]

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/setup installs it)")


# Two implementations of the same 4-bit model round differently (llama.cpp keeps f16 queries,
# keys, values and attention weights; its sums run in another order), so their logits differ by
# ~0.1 on average. Where llama.cpp's best two tokens are closer than this, either choice is a
# correct greedy step; everywhere else the choice must be the same.
NEAR_TIE = 0.5


@pytest.fixture(scope="module")
def llm():
    if not MODEL.exists():
        pytest.fail(f"{MODEL} is missing: run scripts/setup")
    return llama_cpp.Llama(model_path=str(MODEL), n_ctx=512, n_threads=2, logits_all=True, verbose=False)


def decisive_mismatches(ours: np.ndarray, reference: np.ndarray) -> list:
    """Positions where the top-1 tokens differ although the reference's margin is clear."""
    bad = []
    for i, (row, ref) in enumerate(zip(ours, reference)):
        top2 = np.argsort(ref)[-2:]
        margin = ref[top2[1]] - ref[top2[0]]
        if int(np.argmax(row)) != int(top2[1]) and margin > NEAR_TIE:
            bad.append((i, int(np.argmax(row)), int(top2[1]), float(margin)))
    return bad


@pytest.mark.parametrize("prompt", PROMPTS)
def test_greedy_and_prefill_top1_match_llamacpp(prompt, llm, run):
    tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
    ours = [int(t) for t in run("tokenize", "--model", MODEL, "--text", prompt).stdout.decode().strip().split(",")]
    assert ours == tokens, "tokenizers disagree"

    # llama.cpp's greedy continuation of 16 tokens, with its logits at every position.
    llm.reset()
    llm.eval(tokens)
    generated = []
    for _ in range(16):
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        generated.append(token)
        llm.eval([token])
    sequence = tokens + generated
    reference = np.array([llm.scores[i] for i in range(len(sequence) - 1)])

    # tessera scores the same sequence: its top-1 at every prefill position and at each of the
    # 16 greedy steps must agree wherever llama.cpp's choice is clear.
    scored = json.loads(run("score", "--model", MODEL, "--tokens", ",".join(map(str, sequence[:-1]))).stdout)
    logits = np.array(scored["logits"])
    assert decisive_mismatches(logits, reference) == []

    # And tessera's own greedy run follows the same tokens up to the first near-tie.
    out = json.loads(run("generate", "--model", MODEL, "--prompt", prompt, "--max-tokens", "16",
                         "--temperature", "0", "--ignore-eos", "--json").stdout)
    assert out["prompt_tokens"] == tokens
    for step, (a, b) in enumerate(zip(out["tokens"], generated)):
        if a != b:
            ref = reference[len(tokens) - 1 + step]
            top2 = np.sort(ref)[-2:]
            assert top2[1] - top2[0] <= NEAR_TIE, f"step {step}: {a} != {b} with a clear margin"
            break
