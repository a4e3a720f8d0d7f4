"""Fine-tuning through the REST API and the Python client (clients/python): create, poll to
completion, find the version in the registry, chat with it through /v1/chat/completions on an
endpoint that waited for it, a second run makes version 2; runs are private to their token
unless the caller is an admin; bad data is refused line by line with nothing started.
"""
import json
import pathlib
import sys
import time

import pytest
import requests
from openai import OpenAI, APIStatusError

from conftest import ROOT, Server
from test_finetune import QA, base_model  # noqa: F401  (fixture)
from test_training import CL100K

sys.path.insert(0, str(ROOT / "clients" / "python"))  # the checkout's client, not an older installed copy
from tessera import Client, TesseraError  # noqa: E402
from tessera.model_training import foundation_model as fm  # noqa: E402

pytestmark = pytest.mark.skipif(not CL100K.exists(), reason="the cl100k tokenizer is not installed (scripts/setup)")

CONFIG = """
threads: 2
endpoints:
  - name: qa-chat
    kind: chat
    model: registry:main.api.qa      # not registered yet: answers 503 until a run registers it
    wait_for_registration: true
    max_tokens: 8
    reload_interval_s: 0.5
"""


@pytest.fixture(scope="module")
def api(tessera_bin, tmp_path_factory):
    data = tmp_path_factory.mktemp("ft-api")
    config = data / "serve.yaml"
    config.write_text(CONFIG)
    srv = Server(tessera_bin, data, config)
    srv.other = srv.cli("tokens", "create", "other").stdout.strip().splitlines()[-1]
    srv.admin = srv.cli("tokens", "create", "boss", "--admin").stdout.strip().splitlines()[-1]
    yield srv
    srv.stop()
    assert srv.proc.returncode == 0, (data / "server.log").read_text()


@pytest.fixture(scope="module")
def chat_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft-data") / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": q},
                                                     {"role": "assistant", "content": a}]}) + "\n" for q, a in QA))
    return path


def registered_versions(srv, name):
    out = srv.cli("models", "list", "--all", "--json", check=False)
    assert out.returncode == 0, out.stderr
    return sorted(m["version"] for m in json.loads(out.stdout) if m["name"] == name)


def ask(openai, question):
    r = openai.chat.completions.create(model="qa-chat", messages=[{"role": "user", "content": question}],
                                       temperature=0, max_tokens=8)
    return r.choices[0].message.content.strip()


def test_create_poll_register_serve_and_a_second_version(api, chat_data, base_model):  # noqa: F811
    # The OpenAI SDK's base URL works for the client too.
    client = Client(api.url + "/serving-endpoints", api.token)
    openai = OpenAI(base_url=api.url + "/serving-endpoints", api_key=api.token, max_retries=0)
    with pytest.raises(APIStatusError) as waiting:
        ask(openai, QA[0][0])
    assert waiting.value.status_code == 503 and "no registered version yet" in str(waiting.value)

    run = fm.create(model=str(base_model), train_data_path=chat_data, register_to="main.api.qa",
                    task_type="CHAT_COMPLETION", context_length=32, batch_size=4, training_duration="150ba",
                    learning_rate=1e-2, client=client)
    assert run.id.startswith("ft-tiny-") and run.status in ("queued", "running"), run
    assert run.task == "chat-completion" and run.hyperparameters["context_length"] == 32
    run.wait(timeout=900, poll_interval=0.5)
    assert run.status == "completed", run.error
    assert (run.registered_model, run.registered_version) == ("main.api.qa", 1)
    assert run.step == run.total_steps == 150

    types = [e.type for e in run.get_events()]
    assert types[0] == "created" and types[-2:] == ["registered", "completed"] and "started" in types, types
    losses = [p.value for p in run.get_metrics()["ce_loss"]]
    assert len(losses) == 150
    print(f"REST chat fine-tuning: CE loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.1 * losses[0]
    assert registered_versions(api, "main.api.qa") == [1]

    # The waiting endpoint picks version 1 up by itself and answers every training question.
    deadline = time.time() + 30
    while True:
        models = {m.id: m for m in openai.models.list().data}
        if models["qa-chat"].model_extra.get("version") == 1:
            break
        assert time.time() < deadline, models
        time.sleep(0.25)
    assert [ask(openai, q) for q, _ in QA] == [a for _, a in QA]

    # A second run registers version 2, which the endpoint then serves.
    second = fm.create(model=str(base_model), train_data_path=chat_data, register_to="main.api.qa",
                       task_type="chat-completion", context_length=32, batch_size=4, training_duration="5ba",
                       client=client).wait(timeout=600, poll_interval=0.5)
    assert (second.status, second.registered_version) == ("completed", 2), second.error
    assert registered_versions(api, "main.api.qa") == [1, 2]
    reloaded = requests.post(api.url + "/serving-endpoints/qa-chat/reload", headers=api.headers(), timeout=60).json()
    assert reloaded["version"] == 2
    assert [r.id for r in fm.list(client=client)][:2] == [second.id, run.id]


def test_runs_are_private_to_their_token_unless_admin(api, chat_data, base_model):  # noqa: F811
    mine = Client(api.url, api.token)
    other = Client(api.url + "/v1", api.other)
    admin = Client(api.url, api.admin)
    run = fm.create(model=str(base_model), train_data_path=chat_data, task_type="CHAT_COMPLETION",
                    context_length=32, batch_size=4, training_duration="100000ba", client=mine)
    try:
        assert run.id in [r.id for r in fm.list(client=mine)]
        assert run.id not in [r.id for r in fm.list(client=other)]
        for call in (lambda: fm.get(run.id, client=other), lambda: fm.cancel(run.id, client=other),
                     lambda: other.request("GET", f"/api/2.0/fine-tuning/runs/{run.id}/metrics")):
            with pytest.raises(TesseraError) as hidden:
                call()
            assert hidden.value.status == 404 and hidden.value.code == "run_not_found"
        assert fm.get(run.id, client=admin).id == run.id
        assert run.id in [r.id for r in fm.list(client=admin)]
        assert requests.get(api.url + "/api/2.0/fine-tuning/runs", timeout=10).status_code == 401

        # Cancel (by an admin): the trainer saves a checkpoint and the run ends stopped, unregistered.
        deadline = time.time() + 120
        while fm.get(run, client=mine).step < 2:
            assert time.time() < deadline
            time.sleep(0.2)
        cancelled = fm.cancel([run], client=admin)[0]
        assert cancelled.status in ("running", "stopped") and "cancel_requested" in [e["type"] for e in cancelled.raw["events"]]
        final = fm.get(run, client=mine).wait(timeout=120, poll_interval=0.2)
        assert final.status == "stopped" and final.registered_model is None
        assert [e.type for e in final.get_events()][-1] == "stopped"
        with pytest.raises(TesseraError) as done:
            fm.cancel(run, client=mine)
        assert done.value.status == 400 and done.value.code == "run_finished"
    finally:
        if not fm.get(run, client=mine).finished:
            fm.cancel(run, client=mine)


def test_bad_data_is_refused_line_by_line_and_nothing_starts(api, tmp_path, base_model):  # noqa: F811
    client = Client(api.url, api.token)
    bad = tmp_path / "bad.jsonl"
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]})
    bad.write_text("\n".join([good, "{not json", good, json.dumps({"messages": [{"role": "user", "content": "x"}]}),
                              json.dumps({"prompt": "wrong task"}), good]) + "\n")
    runs_before = [r.id for r in fm.list(client=client)]
    versions_before = registered_versions(api, "main.api.bad")
    with pytest.raises(TesseraError) as refused:
        fm.create(model=str(base_model), train_data_path=bad, task_type="CHAT_COMPLETION", register_to="main.api.bad",
                  context_length=32, client=client)
    e = refused.value
    assert e.status == 400 and e.code == "invalid_training_data", e
    lines = sorted(p["line"] for p in e.details["problems"] if p["severity"] == "error")
    assert lines == [2, 4, 5], e.details
    assert all(p["file"].endswith("bad.jsonl") and p["message"] for p in e.details["problems"])
    assert "bad.jsonl:2" in e.message
    assert [r.id for r in fm.list(client=client)] == runs_before
    assert registered_versions(api, "main.api.bad") == versions_before == []

    # validate_only plans a good dataset without starting anything.
    good_file = tmp_path / "good.jsonl"
    good_file.write_text(good + "\n")
    plan = fm.validate(str(base_model), good_file, task_type="CHAT_COMPLETION", context_length=32, batch_size=1,
                       training_duration="3ep", client=client)
    assert plan["steps"] == 3 and plan["total_tokens"] > 0, plan
    assert [r.id for r in fm.list(client=client)] == runs_before

    # Request mistakes are one clear line each.
    for body, needle in [({"model": "dbrx-tiny", "train_data_path": "relative.jsonl"}, "absolute path"),
                         ({"model": "dbrx-tiny", "train_data_path": [str(good_file)], "learning_rat": 1}, "learning_rat"),
                         ({"train_data_path": str(good_file)}, "model"),
                         ({"model": "no-such-model", "train_data_path": str(good_file)}, "no-such-model")]:
        with pytest.raises(TesseraError) as wrong:
            client.request("POST", "/api/2.0/fine-tuning/runs", body)
        assert wrong.value.status == 400 and needle in wrong.value.message, (body, wrong.value.message)


def test_the_client_is_installed_as_a_package(tmp_path):
    # scripts/setup pip-installs clients/python into the venv: it imports from anywhere.
    import subprocess
    out = subprocess.run([sys.executable, "-c", "import tessera.model_training.foundation_model as fm, tessera;"
                          "print(tessera.__file__); print(callable(fm.create))"],
                         capture_output=True, text=True, cwd=tmp_path, env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert out.returncode == 0, out.stderr
    path, ok = out.stdout.split()
    assert "site-packages" in path and ok == "True", out.stdout
