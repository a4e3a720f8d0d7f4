"""The OpenAI-compatible API through the official openai SDK, against the real server."""
import base64
import json
import struct
import time

import jsonschema
import openai
import pytest
import requests
from openai import OpenAI

CHAT = "databricks-dbrx-instruct"
IMAGE = "databricks-shutterstock-imageai"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_size(data):
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(api_key=server.token, base_url=f"{server.url}/serving-endpoints")


@pytest.fixture(scope="module")
def v1(server):
    return OpenAI(api_key=server.token, base_url=f"{server.url}/v1")


def test_chat_snippet(client):
    chat_completion = client.chat.completions.create(
        messages=[{"role": "user", "content": "Give me the character profile of a knight in JSON."}],
        model="databricks-dbrx-instruct")
    choice = chat_completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    usage = chat_completion.usage
    assert usage.prompt_tokens > 10 and usage.completion_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert chat_completion.model == CHAT


def test_image_snippet(client, server):
    image_response = client.images.generate(
        prompt="A cozy corner with a warm fireplace and a comfy chair",
        model="databricks-shutterstock-imageai",
        extra_body={"negative_prompt": "vector, illustration", "seed": 57})
    item = image_response.data[0]
    # The default response_format is a URL that stays downloadable.
    png = requests.get(item.url, timeout=30).content
    assert png_size(png) == (256, 256)  # the endpoint's first size
    assert item.model_extra["seed"] == 57


def test_image_b64_sizes_and_seed(v1):
    a = v1.images.generate(prompt="a lighthouse at dusk", model=IMAGE, size="1280x768", response_format="b64_json",
                           extra_body={"seed": 3, "steps": 1})
    assert png_size(base64.b64decode(a.data[0].b64_json)) == (1280, 768)
    kw = dict(prompt="a lighthouse at dusk", model=IMAGE, response_format="b64_json", n=2,
              extra_body={"seed": 3, "steps": 1, "guidance_scale": 3.0, "negative_prompt": "fog"})
    b, c = v1.images.generate(**kw), v1.images.generate(**kw)
    assert [d.model_extra["seed"] for d in b.data] == [3, 4]
    pb = [base64.b64decode(d.b64_json) for d in b.data]
    assert pb == [base64.b64decode(d.b64_json) for d in c.data]  # same seed, same images
    assert pb[0] != pb[1] and png_size(pb[1]) == (256, 256)


def greedy(client, content, **kw):
    r = client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": content}], temperature=0,
                                       max_tokens=kw.pop("max_tokens", 40), **kw)
    return r


def test_streaming_matches_non_streaming(client):
    full = greedy(client, "Name three colors.")
    chunks = list(client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Name three colors."}], temperature=0, max_tokens=40,
        stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # token by token


def test_n_and_seed_repeatability(client):
    kw = dict(model=CHAT, messages=[{"role": "user", "content": "Write a short poem about the sea."}], temperature=1.0,
              max_tokens=24, n=2, seed=1234)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.choices[0].message.content != a.choices[1].message.content
    c = client.chat.completions.create(**{**kw, "seed": 99})
    assert [x.message.content for x in c.choices] != [x.message.content for x in a.choices]
    if all(ch.finish_reason == "length" for ch in a.choices):
        assert a.usage.completion_tokens == 48  # summed over both choices


def test_stop_strings(client):
    base = greedy(client, "Tell me about the ocean.").choices[0].message.content
    words = base.split()
    assert len(words) >= 6, base
    stop = " " + words[4]  # a string from the middle of the greedy answer
    r = greedy(client, "Tell me about the ocean.", stop=["zzzz", stop])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == base[:base.index(stop)]
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Tell me about the ocean."}], temperature=0, max_tokens=40,
        stop=stop, stream=True) if c.choices)
    assert streamed == r.choices[0].message.content


def test_logprobs(client):
    r = greedy(client, "What is the capital of France?", logprobs=True, top_logprobs=3, max_tokens=12)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for item in content:
        assert item.logprob <= 0
        tops = [t.logprob for t in item.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        # Greedy: the chosen token is the most likely one.
        assert item.top_logprobs[0].token == item.token and abs(item.top_logprobs[0].logprob - item.logprob) < 1e-5
        assert bytes(item.bytes).decode("utf-8", "replace") == item.token
    assert "".join(i.token for i in content).startswith(r.choices[0].message.content[:5])


def test_json_schema_output_validates(client):
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "age": {"type": "integer"},
            "weapon": {"type": "string", "enum": ["sword", "lance", "bow"]},
            "brave": {"type": "boolean"},
        },
        "required": ["name", "age", "weapon", "brave"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Give me the character profile of a knight in JSON."}],
        temperature=0, max_tokens=100,
        response_format={"type": "json_schema", "json_schema": {"name": "knight", "schema": schema, "strict": True}})
    doc = json.loads(r.choices[0].message.content)
    jsonschema.validate(doc, schema)
    assert r.choices[0].finish_reason == "stop"


def test_json_object_output_parses(client):
    # Sampled, so the document's length depends on the draw: the budget is ample, and a finished
    # answer must be one JSON object.
    r = client.chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "List two fruits as JSON."}], temperature=0.7, seed=5,
        max_tokens=400, response_format={"type": "json_object"})
    assert r.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_completions_and_models(v1):
    models = {m.id: m for m in v1.models.list().data}
    assert {CHAT, IMAGE, "tiny-dbrx", "tiny-completion", "one-at-a-time"} <= set(models)
    r = v1.completions.create(model="tiny-completion", prompt=["Once upon a time", "The sea"], max_tokens=5,
                              temperature=0, n=2, logprobs=2)
    assert [c.index for c in r.choices] == [0, 1, 2, 3]
    assert r.choices[0].text == r.choices[1].text  # greedy: both choices agree
    assert len(r.choices[0].logprobs.tokens) == 5 and len(r.choices[0].logprobs.top_logprobs[0]) == 2
    assert r.usage.completion_tokens == 20
    stream = list(v1.completions.create(model="tiny-completion", prompt="Once upon a time", max_tokens=5, temperature=0,
                                        stream=True))
    assert "".join(c.choices[0].text for c in stream) == r.choices[0].text


def test_invocations_route(server):
    r = requests.post(f"{server.url}/serving-endpoints/tiny-dbrx/invocations", headers=server.headers(),
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}, timeout=60)
    assert r.status_code == 200 and r.json()["object"] == "chat.completion"


# --- errors -----------------------------------------------------------------------------------
def error_of(response, status):
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


def test_no_token(server):
    r = requests.post(f"{server.url}/v1/chat/completions", json={"model": CHAT, "messages": []}, timeout=10)
    error_of(r, 401)
    with pytest.raises(openai.AuthenticationError):
        OpenAI(api_key="tsr-not-a-real-token", base_url=f"{server.url}/v1").models.list()
    assert requests.get(f"{server.url}/metrics", timeout=10).status_code == 401
    assert requests.get(f"{server.url}/health", timeout=10).status_code == 200


def test_revoked_token(server):
    token = server.cli("tokens", "create", "short-lived").stdout.strip().splitlines()[-1]
    c = OpenAI(api_key=token, base_url=f"{server.url}/v1")
    assert c.models.list().data
    server.cli("tokens", "revoke", "short-lived")
    with pytest.raises(openai.AuthenticationError) as e:
        c.models.list()
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.code == "model_not_found"


def test_bad_size(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(prompt="a cat", model=IMAGE, size="512x512")
    assert e.value.param == "size" and "1280x768" in str(e.value)


def test_bad_json(server):
    r = requests.post(f"{server.url}/v1/chat/completions", data=b'{"model": "x", "messages": [',
                      headers={**server.headers(), "Content-Type": "application/json"}, timeout=10)
    assert error_of(r, 400)["type"] == "invalid_request_error"
    r = requests.post(f"{server.url}/v1/chat/completions", data=b'[1, 2]', headers=server.headers(), timeout=10)
    error_of(r, 400)


@pytest.mark.parametrize("field,value", [
    ("temperature", "hot"), ("max_tokens", 2.5), ("n", "2"), ("stream", "yes"), ("messages", "hello"),
    ("stop", 7), ("top_p", 0), ("temperature", 5), ("seed", "x"), ("logprobs", 1),
])
def test_wrong_field_types(server, field, value):
    body = {"model": CHAT, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, field: value}
    r = requests.post(f"{server.url}/v1/chat/completions", json=body, headers=server.headers(), timeout=30)
    assert error_of(r, 400)["param"] == field


def test_wrong_message_shape(server):
    for messages, param in [([{"content": "hi"}], "messages[0].role"), ([{"role": "wizard", "content": "hi"}], "messages[0].role"),
                            ([{"role": "user", "content": 5}], "messages[0].content"), ([], "messages")]:
        r = requests.post(f"{server.url}/v1/chat/completions", json={"model": CHAT, "messages": messages},
                          headers=server.headers(), timeout=30)
        assert error_of(r, 400)["param"] == param


def test_body_too_large(server):
    big = {"model": CHAT, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    r = requests.post(f"{server.url}/v1/chat/completions", json=big, headers=server.headers(), timeout=30)
    assert error_of(r, 413)["code"] == "request_too_large"


def test_context_too_long(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-dbrx", messages=[{"role": "user", "content": "word " * 3000}])
    assert e.value.code == "context_length_exceeded"


def test_queue_full_answers_429(server):
    # one-at-a-time decodes one sequence at a time and queues at most 4. While a long stream
    # holds the batch, one n=4 request fills the queue and the next is refused.
    url, headers = f"{server.url}/v1/completions", server.headers()
    blocker = requests.post(url, headers=headers, stream=True, timeout=60,
                            json={"model": "one-at-a-time", "prompt": "a", "max_tokens": 2000, "stream": True})
    lines = blocker.iter_lines()
    next(line for line in lines if line.startswith(b"data: {"))  # it is running
    import concurrent.futures as cf
    with cf.ThreadPoolExecutor(1) as pool:
        queued = pool.submit(requests.post, url, headers=headers, timeout=60,
                             json={"model": "one-at-a-time", "prompt": "b", "max_tokens": 2, "n": 4})
        deadline = time.time() + 10
        while server.metric("tessera_sequences_waiting", endpoint="one-at-a-time") != 4 and time.time() < deadline:
            time.sleep(0.05)
        limited = requests.post(url, headers=headers, timeout=60,
                                json={"model": "one-at-a-time", "prompt": "c", "max_tokens": 2, "n": 4})
        blocker.close()
        assert queued.result().status_code == 200
    assert limited.status_code == 429, limited.text
    assert int(limited.headers["Retry-After"]) >= 1
    assert limited.json()["error"]["code"] == "rate_limit_exceeded"


def test_metrics_and_usage(server, client):
    greedy(client, "Say hi.", max_tokens=5)
    text = requests.get(f"{server.url}/metrics", headers=server.headers(), timeout=10).text
    for name in ("tessera_http_requests_total", "tessera_kv_blocks_used", "tessera_time_to_first_token_seconds_bucket",
                 "tessera_completion_tokens_total"):
        assert name in text
    usage = requests.get(f"{server.url}/api/2.0/usage", headers=server.headers(), timeout=10).json()["usage"]
    chat = [u for u in usage if u["endpoint"] == CHAT and u["token_name"] == "e2e"]
    assert chat and chat[0]["completion_tokens"] > 0
    expected = chat[0]["prompt_tokens"] * 0.75e-6 + chat[0]["completion_tokens"] * 2.25e-6
    assert abs(chat[0]["cost_usd"] - expected) < 1e-9
    images = [u for u in usage if u["endpoint"] == IMAGE]
    if images:
        assert abs(images[0]["cost_usd"] - 0.06 * images[0]["images"]) < 1e-9
    r = requests.get(f"{server.url}/api/2.0/usage", params={"start_time": "2001-01-01", "end_time": "2001-01-02"},
                     headers=server.headers(), timeout=10)
    assert r.json()["usage"] == []
    error_of(requests.get(f"{server.url}/api/2.0/usage", params={"start_time": "yesterday"}, headers=server.headers(),
                          timeout=10), 400)


def test_ignore_eos_runs_to_max_tokens(client):
    short = greedy(client, "What is the capital of France?", max_tokens=40)
    assert short.choices[0].finish_reason == "stop" and short.usage.completion_tokens < 40
    full = greedy(client, "What is the capital of France?", max_tokens=40, extra_body={"ignore_eos": True})
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 40
    assert full.choices[0].message.content.startswith(short.choices[0].message.content)
