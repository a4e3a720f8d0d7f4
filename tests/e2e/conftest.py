"""Starts the real `tessera serve` binary for the end-to-end tests.

The server gets its own data folder (tokens, usage, image files), a config with a real chat
model (SmolLM2-135M-Instruct, installed by scripts/setup) under the product's endpoint names,
a tiny text-to-image pipeline (tests/fixtures/diffusion/sd) and a tiny DBRX model, and a port
of its own. Tokens are made with the CLI, as a user would.
"""
import os
import pathlib
import re
import socket
import subprocess
import time

import requests
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHAT_MODEL = ROOT / "models" / "smollm2-135m-instruct"
TINY_DBRX = None  # made by the session with `tessera init` (random weights), see tiny_dbrx()
IMAGE_MODEL = ROOT / "tests" / "fixtures" / "diffusion" / "sd"

CONFIG = """
threads: 2
max_body_mb: 1
endpoints:
  - name: databricks-dbrx-instruct
    kind: chat
    model: {chat}
    max_batch: 32
    max_queue: 64
    kv_memory_mb: 256
    max_tokens: 128
  - name: tiny-dbrx
    kind: chat
    model: {tiny}
    max_tokens: 32
  - name: tiny-completion
    kind: completion
    model: {tiny}
    max_tokens: 16
  - name: one-at-a-time
    kind: completion
    model: {chat}
    max_batch: 1
    max_queue: 4
  - name: databricks-shutterstock-imageai
    kind: image
    model: {image}
    # The tiny test pipeline costs seconds per step at the product sizes on two cores; the
    # first (default) size is small so most tests stay quick.
    sizes: [256x256, 1280x768, 768x1280]
    steps: 2
    image_queue: 4
"""

# For the OpenAPI fuzzer: only tiny models, and image requests capped so that any request the
# spec allows finishes in seconds.
FUZZ_CONFIG = """
threads: 2
endpoints:
  - name: databricks-dbrx-instruct
    kind: chat
    model: {tiny}
    max_tokens: 16
  - name: databricks-shutterstock-imageai
    kind: image
    model: {image}
    sizes: [64x64]
    steps: 1
    max_steps: 2
    max_images: 2
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, binary, data_dir, config_path):
        self.binary = pathlib.Path(binary)
        self.data_dir = pathlib.Path(data_dir)
        self.env = {**os.environ, "TESSERA_DATA": str(self.data_dir)}
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(self.data_dir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(config_path), "--port", str(self.port)],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tessera serve exited: {(self.data_dir / 'server.log').read_text()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if time.time() > deadline:
                raise RuntimeError("tessera serve did not come up in 120 s")
            time.sleep(0.2)
        self.token = self.cli("tokens", "create", "e2e").stdout.strip().splitlines()[-1]

    def cli(self, *args, check=True):
        proc = subprocess.run([str(self.binary), *args], capture_output=True, text=True, env=self.env, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"tessera {' '.join(args)} failed: {proc.stderr}")
        return proc

    def headers(self, token=None):
        return {"Authorization": f"Bearer {token or self.token}"}

    def metric(self, name, **labels):
        text = requests.get(self.url + "/metrics", headers=self.headers(), timeout=10).text
        total = None
        for line in text.splitlines():
            m = re.match(r"^([a-z_]+)(\{[^}]*\})? (\S+)$", line)
            if not m or m.group(1) != name:
                continue
            if all(f'{k}="{v}"' in (m.group(2) or "") for k, v in labels.items()):
                total = (total or 0) + float(m.group(3))
        return total

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


@pytest.fixture(scope="session")
def tessera_bin():
    path = pathlib.Path(os.environ.get("TESSERA_BIN", ROOT / "build" / "tessera"))
    if not path.exists():
        pytest.fail(f"{path} is missing: build with scripts/setup first")
    return path


def tiny_dbrx(tessera_bin, tmp_path_factory):
    """A random DBRX of the dbrx-tiny preset (cl100k tokenizer, 2048 context), made once."""
    global TINY_DBRX
    if TINY_DBRX is None:
        path = tmp_path_factory.mktemp("models") / "dbrx-tiny"
        subprocess.run([str(tessera_bin), "init", "--preset", "dbrx-tiny", "-o", str(path), "--seed", "1"],
                       check=True, capture_output=True, timeout=120)
        TINY_DBRX = path
    return TINY_DBRX


def start_server(tessera_bin, tmp_path_factory, template, name):
    for needed in (CHAT_MODEL, IMAGE_MODEL):
        if not needed.exists():
            pytest.fail(f"{needed} is missing: run scripts/setup")
    tiny = tiny_dbrx(tessera_bin, tmp_path_factory)
    data = tmp_path_factory.mktemp(name)
    config = data / "serve.yaml"
    config.write_text(template.format(chat=CHAT_MODEL, tiny=tiny, image=IMAGE_MODEL))
    return Server(tessera_bin, data, config)


def stop_server(srv):
    srv.stop()
    # A clean shutdown: the server exits 0 after SIGTERM.
    assert srv.proc.returncode == 0, (srv.data_dir / "server.log").read_text()


@pytest.fixture(scope="session")
def server(tessera_bin, tmp_path_factory):
    srv = start_server(tessera_bin, tmp_path_factory, CONFIG, "serve")
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def fuzz_server(tessera_bin, tmp_path_factory):
    srv = start_server(tessera_bin, tmp_path_factory, FUZZ_CONFIG, "fuzz")
    yield srv
    stop_server(srv)
