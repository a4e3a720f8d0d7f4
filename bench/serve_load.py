#!/usr/bin/env python3
"""Concurrent streaming chat load against `tessera serve` and llama-cpp-python's OpenAI server.

For each concurrency level (default 1, 8, 32) N clients each send a fixed number of streaming
chat requests one after another (or keep sending for --duration seconds), temperature 0, a fixed
max_tokens and no stop strings, and the run reports aggregate output tokens/s, time to first
token and inter-token latency (p50/p99), requests and errors, with the ratio tessera / peer.

    .venv/bin/python bench/serve_load.py                     # both servers, one after the other
    .venv/bin/python bench/serve_load.py --peer-only --json-out peer.json
    .venv/bin/python bench/serve_load.py --tessera-url http://127.0.0.1:8080 --tessera-token SECRET

Both servers are started by this script on the same GGUF file with the same thread count and
context size, and never run at the same time: one is started, warmed up, swept and stopped
before the other starts. Output tokens come from the usage chunk that a server sends when asked
with stream_options.include_usage; a server that does not send one (llama-cpp-python) is counted
by streamed content chunks, one token each, and the table says which count was used.
Inter-token latency is the gap between consecutive content chunks.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import openai

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_MODEL = ROOT / "models" / "smollm2-135m-instruct" / "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "bench-chat"

# llama-cpp-python's server holds one lock around its single llama context: concurrent requests
# queue and are served one at a time, so its throughput cannot grow with the client count.
PEER_NOTE = ("llama-cpp-python's server does not batch: it runs one request at a time behind a lock "
             "and queues the rest")

PROMPTS = [
    "Explain how a hash table handles collisions.",
    "Write a short poem about the sea at night.",
    "What are the main causes of inflation?",
    "Give me three tips for learning a new language.",
    "Describe the water cycle to a ten-year-old.",
    "Summarise the plot of Romeo and Juliet in a few sentences.",
    "How does a bicycle stay upright while moving?",
    "List some differences between TCP and UDP.",
    "What should I pack for a weekend hiking trip?",
    "Why is the sky blue?",
    "Write a Python function that reverses a linked list, and explain it.",
    "Tell me a story about a robot who learns to paint.",
]


# ----------------------------------------------------------------------------------------------
# Servers


@dataclasses.dataclass
class Server:
    name: str
    base_url: str
    api_key: str
    proc: subprocess.Popen | None = None
    log_path: pathlib.Path | None = None
    note: str = ""

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log_tail(path: pathlib.Path | None, lines: int = 20) -> str:
    if path is None or not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def wait_ready(server: Server, timeout_s: float) -> None:
    """Polls /health, then /v1/models, until one answers 200."""
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {server.api_key}"}
    while time.monotonic() < deadline:
        if server.proc is not None and server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with code {server.proc.returncode} before it was ready; "
                               f"log {server.log_path}:\n{log_tail(server.log_path)}")
        for path in ("/health", "/v1/models"):
            try:
                req = urllib.request.Request(server.base_url + path, headers=headers)
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
        time.sleep(0.5)
    raise RuntimeError(f"{server.name} at {server.base_url} not ready after {timeout_s:.0f} s; "
                       f"log {server.log_path}:\n{log_tail(server.log_path)}")


def start_peer(model: pathlib.Path, threads: int, ctx: int, workdir: pathlib.Path, ready_timeout: float) -> Server:
    port = free_port()
    log_path = workdir / "peer.log"
    # As fast as llama-cpp-python's server goes on a CPU, with the same threads for prompt and
    # generation: logits only for the last token (the server default keeps all of them), a
    # prompt batch larger than any bench prompt, the chat template read from the GGUF (no
    # chat_format given), and interrupt_requests off, since its default cancels the running
    # stream whenever another request arrives.
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", MODEL_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--n_threads", str(threads),
           "--n_threads_batch", str(threads), "--n_ctx", str(ctx), "--n_batch", "512", "--n_ubatch", "512",
           "--logits_all", "False", "--interrupt_requests", "False", "--verbose", "False"]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    server = Server("llama-cpp-python", f"http://127.0.0.1:{port}", "none", proc, log_path, PEER_NOTE)
    try:
        wait_ready(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server


def tessera_env(data_dir: pathlib.Path) -> dict:
    env = dict(os.environ)
    env["TESSERA_DATA"] = str(data_dir)
    return env


def create_token(binary: str, data_dir: pathlib.Path, name: str) -> str:
    out = subprocess.run([binary, "tokens", "create", name], capture_output=True, text=True,
                         env=tessera_env(data_dir), cwd=data_dir)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"`{binary} tokens create {name}` failed ({out.returncode}): "
                           f"{(out.stderr or out.stdout).strip()}")
    return lines[-1].strip()


def write_serve_config(path: pathlib.Path, endpoints: list[dict]) -> None:
    # JSON strings are valid YAML scalars, so paths with odd characters stay intact.
    lines = ["endpoints:"]
    for ep in endpoints:
        first = True
        for key, value in ep.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {json.dumps(value)}")
            first = False
    path.write_text("\n".join(lines) + "\n")


def start_tessera(binary: str, endpoints: list[dict], threads: int, workdir: pathlib.Path, ready_timeout: float,
                  extra_args: list[str] = (), token_names: list[str] = ("bench",)) -> tuple[Server, list[str]]:
    """Starts `tessera serve` on a fresh data dir; returns the server and one secret per token name."""
    if not pathlib.Path(binary).exists():
        raise RuntimeError(f"tessera binary not found: {binary} (build it, or pass --tessera)")
    data_dir = workdir / "tessera-data"
    data_dir.mkdir(exist_ok=True)
    secrets = [create_token(binary, data_dir, name) for name in token_names]
    config = workdir / "serve.yaml"
    write_serve_config(config, endpoints)
    port = free_port()
    log_path = workdir / "tessera.log"
    cmd = [binary, "serve", "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
           "--threads", str(threads), *extra_args]
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=tessera_env(data_dir), cwd=data_dir)
    server = Server("tessera", f"http://127.0.0.1:{port}", secrets[0], proc, log_path)
    try:
        wait_ready(server, ready_timeout)
    except BaseException:
        server.stop()
        raise
    return server, secrets


def make_client(server: Server, timeout_s: float = 600) -> openai.AsyncOpenAI:
    # Retries would hide errors and distort latencies; the bench counts every failure.
    return openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key=server.api_key, max_retries=0,
                              timeout=timeout_s)


# ----------------------------------------------------------------------------------------------
# Load


@dataclasses.dataclass
class RequestResult:
    tokens: int = 0
    counted_by: str = ""  # "usage" or "chunks"
    ttft_s: float | None = None
    gaps_s: list[float] = dataclasses.field(default_factory=list)
    error: str | None = None


async def stream_chat(client: openai.AsyncOpenAI, prompt: str, max_tokens: int) -> RequestResult:
    result = RequestResult()
    chunks = 0
    usage_tokens = None
    start = time.perf_counter()
    last = None
    try:
        stream = await client.chat.completions.create(
            model=MODEL_NAME, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
            temperature=0, stream=True, stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                usage_tokens = chunk.usage.completion_tokens
            if not chunk.choices or not chunk.choices[0].delta.content:
                continue
            now = time.perf_counter()
            if last is None:
                result.ttft_s = now - start
            else:
                result.gaps_s.append(now - last)
            last = now
            chunks += 1
    except Exception as e:  # every failure is reported, none ends the run
        result.error = f"{type(e).__name__}: {e}"[:300]
        return result
    if usage_tokens is not None:
        result.tokens, result.counted_by = usage_tokens, "usage"
    else:
        result.tokens, result.counted_by = chunks, "chunks"
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks, like numpy's default."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


async def run_level(server: Server, clients: int, requests_per_client: int, duration_s: float | None,
                    max_tokens: int, timeout_s: float) -> dict:
    client = make_client(server, timeout_s)
    results: list[RequestResult] = []

    async def one_client(index: int) -> None:
        n = 0
        stop_at = time.perf_counter() + duration_s if duration_s else None
        while (n < requests_per_client) if stop_at is None else (time.perf_counter() < stop_at):
            # Clients start at different prompts so that a level mixes prompt lengths.
            prompt = PROMPTS[(index * 5 + n) % len(PROMPTS)]
            results.append(await stream_chat(client, prompt, max_tokens))
            n += 1

    start = time.perf_counter()
    await asyncio.gather(*(one_client(i) for i in range(clients)))
    wall = time.perf_counter() - start
    await client.close()

    ok = [r for r in results if r.error is None]
    errors = [r.error for r in results if r.error is not None]
    counted_by = sorted({r.counted_by for r in ok})
    tokens = sum(r.tokens for r in ok)
    ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
    gaps = [g for r in ok for g in r.gaps_s]
    ms = lambda v: None if v is None else v * 1000  # noqa: E731
    return {
        "clients": clients,
        "requests": len(results),
        "errors": len(errors),
        "error_samples": sorted(set(errors))[:5],
        "wall_s": wall,
        "output_tokens": tokens,
        "tokens_per_request": tokens / len(ok) if ok else 0,
        "tokens_counted_by": "+".join(counted_by) if counted_by else "none",
        "output_tok_s": tokens / wall if wall > 0 else 0,
        "ttft_p50_ms": ms(percentile(ttft, 50)),
        "ttft_p99_ms": ms(percentile(ttft, 99)),
        "itl_p50_ms": ms(percentile(gaps, 50)),
        "itl_p99_ms": ms(percentile(gaps, 99)),
    }


async def warm_up(server: Server, max_tokens: int) -> None:
    client = make_client(server)
    for prompt in PROMPTS[:2]:
        result = await stream_chat(client, prompt, max_tokens)
        if result.error:
            await client.close()
            raise RuntimeError(f"{server.name}: warm-up request failed: {result.error}")
    await client.close()


def sweep(server: Server, args) -> list[dict]:
    asyncio.run(warm_up(server, min(args.max_tokens, 32)))
    levels = []
    for clients in args.clients:
        level = asyncio.run(run_level(server, clients, args.requests_per_client, args.duration, args.max_tokens,
                                          args.request_timeout))
        print(f"  {server.name}: {clients:3d} clients, {level['requests']} requests, "
              f"{level['output_tok_s']:.1f} tok/s, {level['errors']} errors", flush=True)
        levels.append(level)
    return levels


# ----------------------------------------------------------------------------------------------
# Report

ROWS = [("output tok/s", "output_tok_s", "{:.1f}"),
        ("TTFT p50 ms", "ttft_p50_ms", "{:.0f}"),
        ("TTFT p99 ms", "ttft_p99_ms", "{:.0f}"),
        ("ITL p50 ms", "itl_p50_ms", "{:.1f}"),
        ("ITL p99 ms", "itl_p99_ms", "{:.1f}"),
        ("tokens/request", "tokens_per_request", "{:.1f}"),
        ("requests", "requests", "{}"),
        ("errors", "errors", "{}"),
        ("tokens counted by", "tokens_counted_by", "{}")]


def fmt(template: str, value) -> str:
    return "-" if value is None else template.format(value)


def print_tables(results: dict) -> None:
    sides = [s for s in ("tessera", "peer") if s in results["servers"]]
    labels = {s: results["servers"][s]["name"] for s in sides}
    for i, clients in enumerate(results["clients"]):
        print(f"\n{clients} concurrent client{'s' if clients != 1 else ''}, max_tokens {results['max_tokens']}, "
              f"{results['threads']} threads")
        header = f"{'':20}" + "".join(f"{labels[s]:>18}" for s in sides)
        if len(sides) == 2:
            header += f"{'tessera/peer':>14}"
        print(header)
        for label, key, template in ROWS:
            values = [results["servers"][s]["levels"][i][key] for s in sides]
            line = f"{label:20}" + "".join(f"{fmt(template, v):>18}" for v in values)
            if len(sides) == 2 and all(isinstance(v, (int, float)) for v in values) and key != "errors":
                line += f"{values[0] / values[1]:13.2f}x" if values[1] else f"{'-':>14}"
            print(line)
        for s in sides:
            for sample in results["servers"][s]["levels"][i]["error_samples"]:
                print(f"  {labels[s]} error: {sample}")
    print("\nratio = tessera / peer: above 1 is better for tok/s, below 1 is better for latencies.")
    print("tokens counted by: 'usage' = the final usage chunk (stream_options.include_usage); "
          "'chunks' = streamed content chunks, one token each.")
    for s in sides:
        note = results["servers"][s]["note"]
        if note:
            print(f"note: {note}.")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}")
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"every level must be >= 1, got {text!r}")
    return levels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    side = ap.add_mutually_exclusive_group()
    side.add_argument("--peer-only", action="store_true", help="run llama-cpp-python's server only")
    side.add_argument("--tessera-only", action="store_true", help="run tessera only")
    ap.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL, help="GGUF chat model (default: %(default)s)")
    ap.add_argument("--tessera", default=str(ROOT / "build" / "tessera"), help="tessera binary (default: %(default)s)")
    ap.add_argument("--tessera-url", help="use this running tessera server instead of starting one")
    ap.add_argument("--tessera-token", default="none", help="bearer secret for --tessera-url")
    ap.add_argument("--tessera-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `tessera serve` (repeatable), e.g. --tessera-arg=--ctx=8192")
    ap.add_argument("--peer-url", help="use this running OpenAI-compatible server as the peer instead of starting one")
    ap.add_argument("--threads", type=int, default=2, help="threads for each server (default: %(default)s)")
    ap.add_argument("--ctx", type=int, default=8192,
                    help="peer context size; room for 32 clients x (prompt + 128) tokens (default: %(default)s)")
    ap.add_argument("--clients", type=parse_levels, default=[1, 8, 32], help="concurrency levels (default: 1,8,32)")
    ap.add_argument("--requests-per-client", type=int, default=4, help="requests each client sends per level "
                    "(default: %(default)s)")
    ap.add_argument("--duration", type=float, help="seconds each level runs instead of --requests-per-client")
    ap.add_argument("--max-tokens", type=int, default=128, help="max_tokens of every request (default: %(default)s)")
    ap.add_argument("--request-timeout", type=float, default=1800,
                    help="seconds a request may take, queueing included (default: %(default)s)")
    ap.add_argument("--ready-timeout", type=float, default=180, help="seconds to wait for a server to come up")
    ap.add_argument("--json-out", type=pathlib.Path, help="write the results here as JSON")
    args = ap.parse_args()
    # A plain kill must still stop the servers this script started (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.requests_per_client < 1 or args.max_tokens < 1 or args.threads < 1:
        ap.error("--requests-per-client, --max-tokens and --threads must be >= 1")
    needs_model = (not args.peer_only and not args.tessera_url) or (not args.tessera_only and not args.peer_url)
    if needs_model and not args.model.is_file():
        ap.error(f"--model: no such file: {args.model}")

    results = {"model": str(args.model), "threads": args.threads, "ctx": args.ctx, "max_tokens": args.max_tokens,
               "clients": args.clients, "requests_per_client": None if args.duration else args.requests_per_client,
               "duration_s": args.duration, "servers": {}}
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        workdir = pathlib.Path(tmp)
        for side in ("tessera", "peer"):
            if (side == "tessera" and args.peer_only) or (side == "peer" and args.tessera_only):
                continue
            server = None
            try:
                if side == "tessera":
                    if args.tessera_url:
                        server = Server("tessera", args.tessera_url.rstrip("/"), args.tessera_token)
                    else:
                        endpoint = {"name": MODEL_NAME, "kind": "chat", "model": str(args.model.resolve())}
                        server, _ = start_tessera(args.tessera, [endpoint], args.threads, workdir,
                                                  args.ready_timeout, args.tessera_arg)
                else:
                    if args.peer_url:
                        server = Server("peer", args.peer_url.rstrip("/"), "none")
                    else:
                        server = start_peer(args.model.resolve(), args.threads, args.ctx, workdir,
                                            args.ready_timeout)
                print(f"{server.name} at {server.base_url}: warming up and sweeping {args.clients}", flush=True)
                results["servers"][side] = {"name": server.name, "url": server.base_url, "note": server.note,
                                            "levels": sweep(server, args)}
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
            finally:
                if server is not None:
                    server.stop()

    print_tables(results)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"results written to {args.json_out}")
    failed = sum(level["errors"] for s in results["servers"].values() for level in s["levels"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
