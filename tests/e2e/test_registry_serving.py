"""The server serves models from tessera's registry and picks up a new version without a restart.

Two random DBRX models (dbrx-tiny, seeds 1 and 2) stand for two versions of a trained model: an
endpoint following `registry:main.demo.tiny` answers like version 1, then, once version 2 is
registered, like version 2, with greedy answers compared against `tessera generate` and
`tessera chat` run on each model folder.
"""
import json
import os
import pathlib
import subprocess
import time

import pytest
import requests
from openai import OpenAI

from conftest import Server

PROMPT = "The registry keeps"
QUESTION = "What is in version two?"
LONG = 400  # tokens: a stream that is still running when the model is swapped

CONFIG = """
threads: 2
endpoints:
  - name: tiny-chat
    kind: chat
    model: registry:main.demo.tiny
    max_tokens: 12
    reload_interval_s: 0.5
  - name: tiny-completion
    kind: completion
    model: main.demo.tiny          # a bare registered name works too
    reload_interval_s: 0.5
  - name: tiny-pinned
    kind: completion
    model: registry:main.demo.tiny/1
"""


def run(binary, env, *args, stdin=None):
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, env=env, timeout=300,
                          input=stdin)
    assert proc.returncode == 0, f"tessera {' '.join(map(str, args))} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def generate(binary, env, model, n=16, *flags):
    out = run(binary, env, "generate", "--model", model, "--prompt", PROMPT, "-n", n, "--temperature", "0", "--json",
              *flags)
    return json.loads(out)["text"]


def chat(binary, env, model):
    # Not a terminal: one answer per input line, each followed by a newline.
    out = run(binary, env, "chat", "--model", model, "--temperature", "0", "-n", "12", stdin=QUESTION + "\n")
    assert out.endswith("\n")
    return out[:-1]


def served(srv):
    models = requests.get(srv.url + "/v1/models", headers=srv.headers(), timeout=10).json()["data"]
    return {m["id"]: m for m in models}


@pytest.fixture()
def setup(tessera_bin, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = {**os.environ, "TESSERA_DATA": str(data)}
    env.pop("TESSERA_HOME", None)
    models = {}
    for seed in (1, 2):
        models[seed] = tmp_path / f"tiny-{seed}"
        run(tessera_bin, env, "init", "--preset", "dbrx-tiny", "-o", models[seed], "--seed", seed)
    return data, env, models


def test_an_endpoint_follows_the_latest_registered_version(tessera_bin, tmp_path, setup):
    data, env, models = setup
    out = run(tessera_bin, env, "models", "register", "main.demo.tiny", "--path", models[1], "--description", "seed 1")
    assert "registered main.demo.tiny version 1" in out
    config = tmp_path / "serve.yaml"
    config.write_text(CONFIG)
    srv = Server(tessera_bin, data, config)
    try:
        client = OpenAI(api_key=srv.token, base_url=srv.url + "/v1")
        expected = {seed: generate(tessera_bin, env, models[seed]) for seed in (1, 2)}
        answers = {seed: chat(tessera_bin, env, models[seed]) for seed in (1, 2)}
        assert expected[1] != expected[2], "two random models should not complete alike"

        def complete(endpoint):
            r = client.completions.create(model=endpoint, prompt=PROMPT, max_tokens=16, temperature=0)
            return r.choices[0].text

        def ask():
            r = client.chat.completions.create(model="tiny-chat", temperature=0, max_tokens=12,
                                               messages=[{"role": "user", "content": QUESTION}])
            return r.choices[0].message.content

        listed = served(srv)
        for name in ("tiny-chat", "tiny-completion", "tiny-pinned"):
            assert listed[name]["version"] == 1 and listed[name]["registered_model"] == "main.demo.tiny", listed[name]
        assert complete("tiny-completion") == expected[1]
        assert ask() == answers[1]

        # A long stream that started on version 1 keeps version 1 while version 2 is registered
        # and swapped in (on demand here, so that the swap happens while it runs).
        long_text = generate(tessera_bin, env, models[1], LONG, "--ignore-eos")
        stream = client.completions.create(model="tiny-completion", prompt=PROMPT, max_tokens=LONG, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True})
        chunks = iter(stream)
        pieces = [next(chunks).choices[0].text]
        out = run(tessera_bin, env, "models", "register", "main.demo.tiny", "--path", models[2])
        assert "version 2" in out
        r = requests.post(srv.url + "/serving-endpoints/tiny-completion/reload", headers=srv.headers(), timeout=60)
        assert r.status_code == 200 and r.json()["version"] == 2, r.text
        assert complete("tiny-completion") == expected[2], "new requests go to version 2 at once"
        pieces += [c.choices[0].text for c in chunks if c.choices]
        assert "".join(pieces) == long_text

        deadline = time.time() + 60
        while True:
            listed = served(srv)
            if listed["tiny-chat"]["version"] == 2 and listed["tiny-completion"]["version"] == 2:
                break
            assert time.time() < deadline, f"still serving {listed}"
            time.sleep(0.2)
        assert complete("tiny-completion") == expected[2]
        assert ask() == answers[2]
        # The pinned endpoint stays on version 1, even when asked to reload.
        assert listed["tiny-pinned"]["version"] == 1
        assert complete("tiny-pinned") == expected[1]
        r = requests.post(srv.url + "/serving-endpoints/tiny-pinned/reload", headers=srv.headers(), timeout=30)
        assert r.status_code == 200 and r.json()["version"] == 1 and r.json()["reloaded"] is False, r.text
        assert requests.post(srv.url + "/serving-endpoints/tiny-pinned/reload", timeout=30).status_code == 401

        # Deleting version 2 makes version 1 the latest again; a reload on demand goes back to it.
        run(tessera_bin, env, "models", "delete", "--yes", "main.demo.tiny/2")
        r = requests.post(srv.url + "/serving-endpoints/tiny-completion/reload", headers=srv.headers(), timeout=60)
        assert r.status_code == 200, r.text
        assert r.json()["version"] == 1
        assert complete("tiny-completion") == expected[1]
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, (data / "server.log").read_text()
    log = (data / "server.log").read_text()
    assert "endpoint 'tiny-chat' now serves main.demo.tiny/2" in log, log


def test_a_missing_registered_model_fails_at_startup_with_one_line(tessera_bin, tmp_path, setup):
    data, env, _ = setup
    config = tmp_path / "serve.yaml"
    config.write_text("endpoints:\n  - {name: x, kind: chat, model: 'registry:main.demo.none'}\n")
    proc = subprocess.run([str(tessera_bin), "serve", "--config", str(config), "--port", "0"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: endpoint 'x': no registered model 'main.demo.none' (see `tessera models list`)"], proc.stderr
