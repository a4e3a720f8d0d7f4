"""The server scripts/run starts (`tessera serve` without a config) serves the installed default
models, among them tessera's own chat model (models/tessera-dbrx-tiny-instruct, in git), which
answers the held-out dictionary questions of its model card through /v1/chat/completions as
its recorded evaluation says, and tessera's own image model (models/tessera-imageai-tiny, in
git), which draws the product sizes through /v1/images/generations as `tessera image` does."""
import base64
import io
import json
import os
import subprocess
import sys
import time

import pytest
import requests
from openai import OpenAI
from PIL import Image

from conftest import ROOT, CHAT_MODEL, free_port

OWN = ROOT / "models" / "tessera-dbrx-tiny-instruct"
OWN_IMAGE = ROOT / "models" / "tessera-imageai-tiny"
sys.path.insert(0, str(ROOT / "tools" / "chat_model"))
from evaluate import correct  # noqa: E402



@pytest.fixture(scope="module")
def default_server(tessera_bin, tmp_path_factory):
    if not CHAT_MODEL.exists():
        pytest.fail(f"{CHAT_MODEL} is missing: run scripts/setup")
    data = tmp_path_factory.mktemp("defaults")
    env = {**os.environ, "TESSERA_DATA": str(data)}
    env.pop("TESSERA_HOME", None)
    port = free_port()
    log = open(data / "server.log", "wb")
    proc = subprocess.Popen([str(tessera_bin), "serve", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT,
                            env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        assert proc.poll() is None, (data / "server.log").read_text()
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        assert time.time() < deadline, "the server did not come up"
        time.sleep(0.2)
    token = subprocess.run([str(tessera_bin), "tokens", "create", "defaults"], capture_output=True, text=True, env=env,
                           check=True).stdout.strip().splitlines()[-1]
    yield url, token
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.mark.skipif(not (OWN / "eval.json").exists(),
                    reason="models/tessera-dbrx-tiny-instruct is not there (tools/chat_model/train.sh makes it)")
def test_tessera_own_chat_model_is_served_and_answers_as_evaluated(default_server):
    url, token = default_server
    client = OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
    served = {m.id for m in client.models.list().data}
    assert {"databricks-dbrx-instruct", "tessera-dbrx-tiny-instruct"} <= served, served

    evaluation = json.loads((OWN / "eval.json").read_text())
    recorded = evaluation["models"][-1]  # the shipped 8-bit weights, run by `tessera generate`
    same = right = 0
    for a in recorded["answers"]:
        reply = client.chat.completions.create(model="tessera-dbrx-tiny-instruct", temperature=0, max_tokens=48,
                                               messages=[{"role": "user", "content": a["question"]}])
        answer = reply.choices[0].message.content.strip()
        same += answer == a["answer"]
        right += correct(answer, a["word"], a["definitions"])
    n = len(recorded["answers"])
    print(f"server: {same}/{n} answers as recorded, {right}/{n} correct (recorded {recorded['accuracy']:.0%})")
    # Greedy decoding on the same weights: the server's batched path gives the recorded answers.
    assert same >= 0.9 * n
    assert right / n >= recorded["accuracy"] - 0.1


@pytest.mark.skipif(not (OWN_IMAGE / "eval.json").exists(),
                    reason="models/tessera-imageai-tiny is not there (tools/image_model/train.sh makes it)")
def test_tessera_own_image_model_draws_the_product_sizes_as_the_cli_does(default_server, tessera_bin, tmp_path):
    url, token = default_server
    client = OpenAI(base_url=url + "/v1", api_key=token, max_retries=0)
    assert "tessera-imageai-tiny" in {m.id for m in client.models.list().data}
    prompt = "flag: France"
    for size in ("1024x1024", "1280x768", "768x1280"):
        reply = client.images.generate(model="tessera-imageai-tiny", prompt=prompt, size=size,
                                       response_format="b64_json", extra_body={"seed": 5, "steps": 8})
        served = Image.open(io.BytesIO(base64.b64decode(reply.data[0].b64_json))).convert("RGB")
        width, height = map(int, size.split("x"))
        assert served.size == (width, height)
        # Drawn at the native scale (64x64, 80x48, 48x80) and upscaled: the CLI draws the same.
        out = tmp_path / f"{size}.png"
        done = subprocess.run([str(tessera_bin), "image", "-m", str(OWN_IMAGE), "-p", prompt, "-s", "5", "--steps", "8",
                               "--size", size, "-o", str(out)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert "upscaled 16x" in done.stderr, done.stderr
        assert served.tobytes() == Image.open(out).convert("RGB").tobytes(), size
