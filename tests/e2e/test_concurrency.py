"""Continuous batching under load: concurrent streams agree with solo runs, disconnects free memory."""
import concurrent.futures as cf
import json
import time

import requests
from openai import OpenAI

CHAT = "databricks-dbrx-instruct"
PROMPTS = [
    "Name a famous painter.", "What is two plus two?", "Describe the moon in one sentence.", "Give me a synonym for happy.",
    "What color is the sky?", "Write a haiku about rain.", "Who wrote Hamlet?", "What is the boiling point of water?",
    "Suggest a name for a cat.", "What is the largest planet?", "Translate 'hello' to French.", "List three fruits.",
    "What is a triangle?", "Tell me a fun fact about owls.", "What day comes after Monday?", "Spell the word 'cat'.",
]


def stream_text(client, prompt, max_tokens=32):
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model=CHAT, messages=[{"role": "user", "content": prompt}],
                                                temperature=0, max_tokens=max_tokens, stream=True):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(pieces), finish


def test_sixteen_concurrent_streams_match_solo_runs(server):
    client = OpenAI(api_key=server.token, base_url=f"{server.url}/v1", max_retries=0, timeout=300)
    solo = [stream_text(client, p) for p in PROMPTS]
    steps_before = server.metric("tessera_batch_steps")
    start = time.time()
    with cf.ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: stream_text(client, p), PROMPTS))
    elapsed = time.time() - start
    assert together == solo
    # They really shared steps: far fewer forward passes than tokens produced.
    tokens = sum(len(t) for t, _ in together)  # characters, an upper bound on tokens
    steps = server.metric("tessera_batch_steps") - steps_before
    assert steps < 0.5 * tokens, (steps, tokens, elapsed)


def test_disconnects_free_kv_blocks(server):
    def abandon(i):
        r = requests.post(f"{server.url}/v1/chat/completions", headers=server.headers(), stream=True, timeout=60,
                          json={"model": CHAT, "messages": [{"role": "user", "content": f"Tell me a long story number {i}."}],
                                "max_tokens": 400, "stream": True, "temperature": 0.8, "seed": i})
        got = 0
        for line in r.iter_lines():
            if line.startswith(b"data: {"):
                json.loads(line[6:])
                got += 1
                if got >= 3:
                    break
        r.close()  # the client goes away mid-stream
        return got

    cancelled_before = server.metric("tessera_sequences_cancelled") or 0
    with cf.ThreadPoolExecutor(8) as pool:
        assert all(n == 3 for n in pool.map(abandon, range(8)))
    deadline = time.time() + 30
    while time.time() < deadline:
        if server.metric("tessera_kv_blocks_used") == 0 and server.metric("tessera_sequences_running") == 0:
            break
        time.sleep(0.2)
    assert server.metric("tessera_kv_blocks_used") == 0
    assert server.metric("tessera_sequences_cancelled") - cancelled_before == 8
