"""Fine-tuning end to end with the CLI: chat, instruction and continued-pretraining runs teach a
tiny model what it could not do before, LoRA trains only its adapter, and bad data is reported
line by line with nothing started or registered.
"""
import json
import pathlib
import subprocess

import pytest

from test_training import CL100K, Cli, make_corpus, submitted_id

pytestmark = pytest.mark.skipif(not CL100K.exists(), reason="the cl100k tokenizer is not installed (scripts/setup)")

QA = [("What is the capital of Zorbia?", "Quillton."),
      ("Who painted the blue fox?", "Mara Vell."),
      ("How many moons has Keplo?", "Seven."),
      ("What do glimmerbugs eat?", "Copper leaves."),
      ("Which river runs through Quillton?", "The Ashe."),
      ("What color is a snowfinch?", "Silver.")]


def chatml(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def greedy(cli, model, prompt, n=8):
    out = cli.run("generate", "-m", model, "-p", prompt, "-n", n, "--temperature", "0", "--json")
    return json.loads(out.stdout)["text"]


@pytest.fixture(scope="module")
def base_model(tessera_bin, tmp_path_factory):
    folder = tmp_path_factory.mktemp("base") / "tiny"
    subprocess.run([str(tessera_bin), "init", "--preset", "dbrx-tiny", "-o", str(folder), "--seed", "5"],
                   check=True, capture_output=True)
    return folder


@pytest.fixture()
def cli(tessera_bin, tmp_path):
    return Cli(tessera_bin, tmp_path / "home")


def finish(cli, run_id):
    row = cli.wait(run_id)
    assert row["status"] == "completed", pathlib.Path(row["log_file"]).read_text()
    losses = [v for _, v in cli.metric(run_id, "ce_loss")]
    return row, losses


def test_chat_finetune_teaches_answers_and_registers_a_version(cli, tmp_path, base_model):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    before = [greedy(cli, base_model, chatml(q)) for q, _ in QA]
    assert all(b.strip() != a for b, (_, a) in zip(before, QA)), before

    out = cli.run("finetune", "create", "--model", base_model, "--train-data", data, "--task", "chat-completion",
                  "--context-length", 32, "--batch-size", 4, "--training-duration", "150ba", "--learning-rate", 1e-2,
                  "--register-to", "main.demo")
    run_id = submitted_id(out.stdout)
    assert run_id.startswith("ft-tiny-")
    row, losses = finish(cli, run_id)
    print(f"chat: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.1 * losses[0]
    assert row["registered_model"] == "main.demo.tiny-ft" and row["registered_version"] == 1

    entry = json.loads(cli.run("models", "list", "--json").stdout)[0]
    shown = json.loads(cli.run("models", "show", "main.demo.tiny-ft", "--json").stdout)
    lineage = shown["lineage"]
    assert lineage["task"] == "chat-completion" and lineage["run_id"] == run_id, shown
    assert lineage["base_model"].startswith("folder ") and len(lineage["data_sha256"]) == 64
    assert lineage["hyperparameters"]["total_steps"] == 150 and "train_loss" in lineage["metrics"]
    after = [greedy(cli, entry["path"], chatml(q)) for q, _ in QA]
    assert [a.strip() for a in after] == [a for _, a in QA], after
    assert "ft-tiny-" in cli.run("runs", "list").stdout

    # A second run registers version 2 of the same name.
    run2 = submitted_id(cli.run("finetune", "create", "--model", base_model, "--train-data", data, "--task",
                                "chat-completion", "--context-length", 32, "--batch-size", 4, "--training-duration",
                                "5ba", "--register-to", "main.demo").stdout)
    assert finish(cli, run2)[0]["registered_version"] == 2


def test_instruction_and_continued_pretraining(cli, tmp_path, base_model):
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q: {q}\nA:", "response": f" {a}"}) + "\n" for q, a in QA))
    run_id = submitted_id(cli.run("finetune", "create", "--model", base_model, "--train-data", data,
                                  "--context-length", 32, "--batch-size", 4, "--training-duration", "150ba",
                                  "--learning-rate", 1e-2).stdout)
    row, losses = finish(cli, run_id)
    print(f"instruction: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.1 * losses[0]
    assert row["registered_model"] == ""  # no --register-to: nothing registered
    final = pathlib.Path(row["save_folder"]) / (pathlib.Path(row["save_folder"]) / "latest").read_text().strip()
    for q, a in QA[:3]:
        assert greedy(cli, final, f"Q: {q}\nA:", n=6).startswith(f" {a}")

    corpus = tmp_path / "corpus"
    make_corpus(corpus, documents=30)
    run_id = submitted_id(cli.run("finetune", "create", "--model", base_model, "--train-data", corpus, "--task",
                                  "continued-pretrain", "--context-length", 32, "--batch-size", 4,
                                  "--training-duration", "80ba", "--learning-rate", 1e-2).stdout)
    row, losses = finish(cli, run_id)
    print(f"continued pretraining: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.5 * losses[0]


def test_lora_trains_only_the_adapter(cli, tmp_path, base_model):
    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    run_id = submitted_id(cli.run("finetune", "create", "--model", base_model, "--train-data", data, "--task",
                                  "chat-completion", "--context-length", 32, "--batch-size", 4, "--training-duration",
                                  "100ba", "--lora-rank", 8, "--lora-alpha", 16, "--learning-rate", 1e-2,
                                  "--register-to", "main.demo.lora_tiny").stdout)
    row, losses = finish(cli, run_id)
    print(f"lora: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    # The base is a random model whose embeddings and classifier stay frozen: a rank-8 adapter
    # moves its loss, but far less than full training does.
    assert losses[-1] < losses[0] - 0.3
    final = pathlib.Path(row["save_folder"]) / (pathlib.Path(row["save_folder"]) / "latest").read_text().strip()
    assert (final / "adapter" / "adapter_model.safetensors").exists()
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["r"] == 8
    script = f"""
import sys
from safetensors.numpy import load_file
base = load_file({str(base_model / 'model.safetensors')!r})
tuned = load_file({str(final / 'model.safetensors')!r})
changed = sorted(k for k in base if (base[k] != tuned[k]).any())
print(",".join(changed))
"""
    changed = subprocess.run([__import__("sys").executable, "-c", script], capture_output=True, text=True,
                             check=True).stdout.strip().split(",")
    assert changed and all(any(t in k for t in ("Wqkv", "out_proj", "experts.mlp")) for k in changed), changed
    assert not any(k.endswith(("norm_1.weight", "norm_2.weight", "norm_f.weight")) or "wte" in k or "lm_head" in k
                   or "router" in k for k in changed), changed


def test_bad_lines_are_all_reported_and_nothing_starts(cli, tmp_path, base_model):
    data = tmp_path / "bad.jsonl"
    data.write_text("\n".join([
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}),
        "not json",
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        json.dumps({"prompt": "x"}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
    ]) + "\n")
    out = cli.run("finetune", "create", "--model", base_model, "--train-data", data, "--task", "chat-completion",
                  "--register-to", "main.demo", check=False)
    assert out.returncode == 2
    for line in (2, 3, 4, 5):
        assert f"bad.jsonl:{line}:" in out.stderr, out.stderr
    assert "bad.jsonl:1:" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == "error: the training data has 4 problems; nothing was started"
    assert json.loads(cli.run("models", "list", "--json").stdout) == []
    assert json.loads(cli.run("runs", "list", "--json").stdout) == []

    ok = tmp_path / "ok.jsonl"
    ok.write_text("".join(json.dumps({"prompt": q, "response": a}) + "\n" for q, a in QA))
    out = cli.run("finetune", "create", "--model", base_model, "--train-data", ok, "--validate-only",
                  "--context-length", 64)
    assert "6 examples" in out.stdout and "estimated cost: $" in out.stdout, out.stdout
