"""Pre-training end to end, as a user runs it: `tessera train -f config.yaml`, `tessera runs ...`.

A tiny DBRX model (the dbrx-tiny preset: cl100k vocabulary, d_model 32) is trained on a small
generated corpus. The tests check that the loss falls, that the checkpoint loads in `tessera
generate` and in transformers with the same loss, that a run killed with SIGKILL and resumed
repeats the losses of an uninterrupted run, that MLflow receives the run, and that bad configs
and data give one clear line.
"""
import json
import math
import os
import pathlib
import random
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT, free_port

CL100K = ROOT / "models" / "tokenizers" / "cl100k_base.tiktoken"
pytestmark = pytest.mark.skipif(not CL100K.exists(), reason="the cl100k tokenizer is not installed (scripts/setup)")

WORDS = ["the", "cat", "dog", "sat", "on", "mat", "ran", "to", "a", "red", "blue", "house", "and", "saw", "big"]


def make_corpus(folder: pathlib.Path, documents: int = 60, seed: int = 3) -> None:
    """Short documents from a tiny grammar: learnable in a few hundred steps."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(documents):
        sentences = []
        for _ in range(rng.randint(3, 8)):
            subject, verb, obj = rng.choice(["the cat", "the dog", "a bird"]), rng.choice(["sat on", "ran to", "saw"]), \
                rng.choice(["the mat", "a red house", "the big dog", "a blue mat"])
            sentences.append(f"{subject} {verb} {obj}.")
        text = " ".join(sentences)
        if i % 3 == 0:
            (folder / f"doc{i:03d}.txt").write_text(text + "\n")
        else:
            lines.append(json.dumps({"text": text}))
    (folder / "more.jsonl").write_text("\n".join(lines) + "\n")


class Cli:
    def __init__(self, binary, home: pathlib.Path):
        self.binary = str(binary)
        self.home = home
        self.env = {**os.environ, "TESSERA_HOME": str(home)}
        self.env.pop("TESSERA_DATA", None)

    def run(self, *args, check=True, timeout=600, env=None):
        proc = subprocess.run([self.binary, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                              env={**self.env, **(env or {})})
        if check and proc.returncode != 0:
            raise AssertionError(f"tessera {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr}")
        return proc

    def db(self):
        return sqlite3.connect(self.home / "tessera.db")

    def run_row(self, run_id):
        with self.db() as con:
            con.row_factory = sqlite3.Row
            return dict(con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone())

    def metric(self, run_id, name):
        with self.db() as con:
            return con.execute("SELECT step, value FROM run_metrics WHERE run_id = ? AND name = ? ORDER BY step",
                               (run_id, name)).fetchall()

    def wait(self, run_id, statuses=("completed", "failed", "stopped"), timeout=600, until=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            row = self.run_row(run_id)
            if row["status"] in statuses or (until and until(row)):
                return row
            time.sleep(0.2)
        raise AssertionError(f"run {run_id} still {self.run_row(run_id)['status']} after {timeout} s")


def write_config(path: pathlib.Path, data: pathlib.Path, save: pathlib.Path, training: str, extra: str = "") -> None:
    path.write_text(f"""model: dbrx-tiny
train_data: {data}
save_folder: {save}
compute:
  gpus: 0
  threads: 2
training:
{training}
{extra}""")


def submitted_id(stdout: str) -> str:
    first = stdout.splitlines()[0]
    assert first.startswith("Run ") and first.endswith(" submitted."), stdout
    run_id = first.split()[1]
    assert stdout.splitlines()[1:] == ["To see the training run's progress, use:", f"tessera runs describe {run_id}"]
    return run_id


@pytest.fixture()
def cli(tessera_bin, tmp_path):
    return Cli(tessera_bin, tmp_path / "home")


def test_pretraining_lowers_eval_loss_and_the_checkpoint_loads_everywhere(cli, tmp_path):
    make_corpus(tmp_path / "corpus")
    write_config(tmp_path / "config.yaml", tmp_path / "corpus", tmp_path / "ckpt", """
  max_duration: 300ba
  global_batch_size: 4
  micro_batch_size: 4
  seq_len: 32
  lr: 3.0e-3
  warmup: 20ba
  eval_interval: 100ba
  eval_fraction: 0.1
  save_interval: 150ba
  seed: 11""", "model_registry_path: main.demo.tiny_dbrx\n")
    out = cli.run("train", "-f", tmp_path / "config.yaml")
    run_id = submitted_id(out.stdout)
    assert run_id.startswith("pretrain-dbrx-tiny-") and len(run_id.split("-")[-1]) == 6
    row = cli.wait(run_id)
    assert row["status"] == "completed", row["error"] or (pathlib.Path(row["log_file"]).read_text())
    assert row["step"] == 300 and row["total_steps"] == 300

    evals = cli.metric(run_id, "eval_loss")
    assert [s for s, _ in evals] == [0, 100, 200, 300]
    start, end = evals[0][1], evals[-1][1]
    print(f"eval loss {start:.3f} -> {end:.3f}")
    assert start > 10.0, "an untrained model over 100k tokens starts near ln(100352) = 11.5"
    assert end < 0.4 * start, f"eval loss fell only from {start} to {end}"
    losses = cli.metric(run_id, "loss")
    assert len(losses) == 300 and all(math.isfinite(v) for _, v in losses)

    # The run as the CLI shows it.
    describe = cli.run("runs", "describe", run_id).stdout
    assert "completed" in describe and "300" in describe
    assert run_id in cli.run("runs", "list").stdout
    assert "step 300/300" in cli.run("runs", "logs", run_id).stdout
    plot = tmp_path / "loss.png"
    cli.run("runs", "plot", run_id, "-o", plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Registered in tessera's registry: the final checkpoint's model files (not its optimizer
    # state) stored under the registry's own folder, with the run's lineage.
    final = tmp_path / "ckpt" / "step-000300"
    assert {"config.json", "model.safetensors", "optimizer.safetensors", "trainer_state.json"} <= {
        p.name for p in final.iterdir()}
    models = cli.run("models", "list", "--json").stdout
    entry = next(m for m in json.loads(models) if m["name"] == "main.demo.tiny_dbrx")
    stored = pathlib.Path(entry["path"])
    assert stored == cli.home / "registry" / "main" / "demo" / "tiny_dbrx" / "1"
    names = {p.name for p in stored.iterdir()}
    assert {"config.json", "model.safetensors"} <= names
    assert not names & {"optimizer.safetensors", "trainer_state.json"}, names
    assert (stored / "model.safetensors").read_bytes() == (final / "model.safetensors").read_bytes()
    shown = json.loads(cli.run("models", "show", "--json", "main.demo.tiny_dbrx/1").stdout)
    lineage = shown["lineage"]
    assert lineage["task"] == "pretrain" and lineage["run_id"] == run_id
    assert lineage["base_model"] == "random init of dbrx-tiny"
    assert lineage["data_paths"] and len(lineage["data_sha256"]) == 64
    assert lineage["hyperparameters"]["seed"] == 11 and lineage["hyperparameters"]["total_steps"] == 300
    assert abs(lineage["metrics"]["eval_loss"] - end) < 1e-6 and math.isfinite(lineage["metrics"]["train_loss"])
    assert sum(f["bytes"] for f in shown["files"]) == shown["total_bytes"] > 0

    # tessera generate runs the checkpoint, and it has learned the grammar's words.
    gen = cli.run("generate", "--model", final, "--prompt", "the cat sat on", "-n", "6", "--temperature", "0",
                  "--json")
    text = json.loads(gen.stdout)["text"]
    assert any(w in text.split() for w in ["the", "a", "mat.", "mat", "red", "blue", "house.", "dog."]), text

    # transformers loads the same folder and computes the same loss on held-out text.
    script = f"""
import json, sys, torch
from transformers import DbrxForCausalLM
model = DbrxForCausalLM.from_pretrained({str(final)!r}, torch_dtype=torch.float32)
model.eval()
ids = torch.tensor([json.loads(sys.argv[1])])
with torch.no_grad():
    out = model(input_ids=ids, labels=ids)
print(out.loss.item())
"""
    ids = [int(t) for t in cli.run("tokenize", "--model", final, "--text",
                                   "the dog saw a red house. the cat ran to the mat.").stdout.strip().split(",")]
    hf = subprocess.run([sys.executable, "-c", script, json.dumps(ids)], capture_output=True, text=True, check=True)
    hf_loss = float(hf.stdout.strip().splitlines()[-1])
    logits = json.loads(cli.run("score", "--model", final, "--tokens", ",".join(map(str, ids))).stdout)["logits"]
    nll = []
    for row, target in zip(logits[:-1], ids[1:]):
        top = max(row)
        nll.append(math.log(sum(math.exp(v - top) for v in row)) + top - row[target])
    ours = sum(nll) / len(nll)
    assert abs(hf_loss - ours) < 1e-3 * max(1.0, abs(hf_loss)), (hf_loss, ours)
    assert hf_loss < 0.5 * start


def test_killed_run_resumes_with_the_losses_of_an_uninterrupted_run(cli, tmp_path):
    make_corpus(tmp_path / "corpus", documents=30)
    training = """
  max_duration: 40ba
  global_batch_size: 4
  micro_batch_size: 2
  seq_len: 32
  lr: 2.0e-3
  warmup: 5ba
  eval_interval: 0
  save_interval: 8ba
  keep_last: 3
  moe_jitter_eps: 0.01
  seed: 4"""
    write_config(tmp_path / "a.yaml", tmp_path / "corpus", tmp_path / "ckpt_a", training)
    write_config(tmp_path / "b.yaml", tmp_path / "corpus", tmp_path / "ckpt_b", training)
    straight = submitted_id(cli.run("train", "-f", tmp_path / "a.yaml").stdout)
    assert cli.wait(straight)["status"] == "completed"

    killed = submitted_id(cli.run("train", "-f", tmp_path / "b.yaml").stdout)
    row = cli.wait(killed, until=lambda r: r["step"] >= 19)
    assert row["status"] == "running"
    os.kill(row["pid"], signal.SIGKILL)
    # Nobody is left to record the death: the next reader notices the process is gone.
    deadline = time.time() + 30
    while "failed" not in cli.run("runs", "describe", killed).stdout:
        assert time.time() < deadline, cli.run("runs", "describe", killed).stdout
        time.sleep(0.2)
    row = cli.run_row(killed)
    assert row["status"] == "failed" and "exited without finishing" in row["error"]

    out = cli.run("runs", "resume", killed)
    assert f"Run {killed} resumed." in out.stdout
    assert cli.wait(killed)["status"] == "completed"
    log = pathlib.Path(row["log_file"]).read_text()
    assert "resumed from" in log and "at step 16" in log, log

    a = cli.metric(straight, "loss")
    b = cli.metric(killed, "loss")
    assert [s for s, _ in a] == list(range(1, 41)) == [s for s, _ in b]
    assert a == b, [(s, x, y) for (s, x), (_, y) in zip(a, b) if x != y]


def test_mlflow_receives_params_metrics_model_and_registration(cli, tmp_path):
    mlflow_dir = tmp_path / "mlflow"
    mlflow_dir.mkdir()
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{mlflow_dir / 'mlflow.db'}", "--artifacts-destination",
         str(mlflow_dir / "artifacts"), "--workers", "1"],
        stdout=open(mlflow_dir / "server.log", "wb"), stderr=subprocess.STDOUT, cwd=mlflow_dir)
    try:
        deadline = time.time() + 120
        while True:
            assert server.poll() is None, (mlflow_dir / "server.log").read_text()
            try:
                if requests.get(uri + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.time() < deadline, "mlflow server did not start"
            time.sleep(0.5)

        make_corpus(tmp_path / "corpus", documents=20)
        write_config(tmp_path / "config.yaml", tmp_path / "corpus", tmp_path / "ckpt", """
  max_duration: 12ba
  global_batch_size: 4
  seq_len: 32
  eval_interval: 6ba
  eval_fraction: 0.2""", f"""experiment_tracker:
  mlflow:
    experiment_path: /Users/me/tiny_pretrain
    model_registry_path: main.demo.mlflow_tiny
    tracking_uri: {uri}
""")
        run_id = submitted_id(cli.run("train", "-f", tmp_path / "config.yaml").stdout)
        row = cli.wait(run_id)
        assert row["status"] == "completed", pathlib.Path(row["log_file"]).read_text()
        assert row["mlflow_run_id"] and row["tracking_uri"] == uri

        api = uri + "/api/2.0/mlflow"
        exp = requests.get(api + "/experiments/get-by-name", params={"experiment_name": "/Users/me/tiny_pretrain"}).json()
        run = requests.get(api + "/runs/get", params={"run_id": row["mlflow_run_id"]}).json()["run"]
        assert run["info"]["experiment_id"] == exp["experiment"]["experiment_id"]
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["model"] == "dbrx-tiny" and params["seq_len"] == "32" and params["total_steps"] == "12"
        history = requests.get(api + "/metrics/get-history",
                               params={"run_id": row["mlflow_run_id"], "metric_key": "loss"}).json()["metrics"]
        assert sorted(m["step"] for m in history) == list(range(1, 13))
        ours = dict(cli.metric(run_id, "loss"))
        for m in history:
            assert abs(m["value"] - ours[m["step"]]) < 1e-9
        evals = requests.get(api + "/metrics/get-history",
                             params={"run_id": row["mlflow_run_id"], "metric_key": "eval_loss"}).json()["metrics"]
        assert sorted(m["step"] for m in evals) == [0, 6, 12]
        files = requests.get(api + "/artifacts/list", params={"run_id": row["mlflow_run_id"], "path": "model"}).json()
        names = {pathlib.PurePosixPath(f["path"]).name for f in files.get("files", [])}
        assert {"config.json", "model.safetensors"} <= names, files
        versions = requests.get(api + "/registered-models/get-latest-versions",
                                params={"name": "main.demo.mlflow_tiny"}).json()["model_versions"]
        assert versions and versions[0]["run_id"] == row["mlflow_run_id"]
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()


@pytest.mark.parametrize("case", ["unknown_key", "missing_file", "empty_corpus", "non_utf8", "bad_jsonl", "gpus"])
def test_bad_config_or_data_is_one_clear_line(cli, tmp_path, case):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "ok.txt").write_text("the cat sat on the mat. " * 40)
    config = tmp_path / "config.yaml"
    body = f"model: dbrx-tiny\ntrain_data: {corpus}\nsave_folder: {tmp_path / 'ckpt'}\ntraining:\n  seq_len: 16\n"
    expect = None
    if case == "unknown_key":
        body = body.replace("save_folder", "save_foldr")
        expect = "config.yaml:3: unknown key 'save_foldr'"
    elif case == "missing_file":
        body = body.replace(str(corpus), str(tmp_path / "nope"))
        expect = "config.yaml:2: train_data"
    elif case == "empty_corpus":
        (corpus / "ok.txt").write_text("")
        expect = "empty"
    elif case == "non_utf8":
        (corpus / "bad.txt").write_bytes(b"fine line\nbroken \xff here\n")
        expect = "bad.txt:2: not valid UTF-8"
    elif case == "bad_jsonl":
        (corpus / "d.jsonl").write_text('{"text": "ok"}\n{"text": oops}\n')
        expect = "d.jsonl:2: not valid JSON"
    elif case == "gpus":
        body += "compute:\n  gpus: 2\n"
        expect = "compute.gpus"
    config.write_text(body)
    out = cli.run("train", "-f", config, check=False, timeout=120)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert expect.lower() in lines[0].lower(), lines[0]
    assert "Traceback" not in out.stderr and "terminate" not in out.stderr
