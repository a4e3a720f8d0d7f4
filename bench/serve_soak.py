#!/usr/bin/env python3
"""Soak test of `tessera serve`: mixed traffic for many minutes, then three checks.

    .venv/bin/python bench/serve_soak.py --minutes 10                    # starts tessera itself
    .venv/bin/python bench/serve_soak.py --image-model DIR               # ... with an image endpoint too
    .venv/bin/python bench/serve_soak.py --url http://127.0.0.1:8080 --token SECRET --pid 1234
    .venv/bin/python bench/serve_soak.py --peer --minutes 1 --no-usage-check   # check the script itself

K workers (default 8) loop over a mix of streaming chat (usage asked with
stream_options.include_usage), non-streaming chat, streams the client drops after a few chunks,
and, with an image endpoint, small image generations; every --burst-every seconds a burst of
concurrent requests overflows the server's queue. A 429 is expected then: the client waits for
its Retry-After and tries again (a 429 without Retry-After is an error).

Checks (the exit code is non-zero if one fails):
  errors  every response other than 200 and 429, and every broken connection, counts; must be 0.
  memory  the server's RSS from /proc/PID/status every 5 s; after the warm-up, the average of the
          last minute may exceed the first minute's by at most --rss-tolerance-mb.
  usage   what the clients were told (usage fields, images) against GET /api/2.0/usage, as the
          difference between a reading before and after the run. Completed requests run on one
          token and must match exactly; dropped streams run on a second token (when this script
          creates the tokens) and are metered for what was sent, so their completion tokens must
          be at least the chunks the client read and at most what was asked for.
"""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import pathlib
import random
import signal
import sys
import tempfile
import time
import urllib.request

import openai

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from serve_load import (DEFAULT_MODEL, MODEL_NAME, PROMPTS, ROOT, Server, make_client,  # noqa: E402
                        start_peer, start_tessera)

IMAGE_NAME = "bench-image"
IMAGE_PROMPTS = ["a red apple on a table", "a lighthouse at dusk", "a cat sleeping on a sofa",
                 "mountains under snow"]
RSS_PERIOD_S = 5.0


# ----------------------------------------------------------------------------------------------
# What the clients saw


@dataclasses.dataclass
class Tally:
    """Usage the clients were told about, for one bearer token."""
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    images: int = 0
    missing_usage: int = 0  # completed responses that carried no usage


@dataclasses.dataclass
class Stats:
    completed: Tally = dataclasses.field(default_factory=Tally)
    dropped_streams: int = 0
    dropped_chunks_read: int = 0
    dropped_max_tokens: int = 0
    by_kind: dict = dataclasses.field(default_factory=dict)
    rate_limited: int = 0
    retry_after_waits_s: float = 0.0
    errors: list = dataclasses.field(default_factory=list)

    def count(self, kind: str) -> None:
        self.by_kind[kind] = self.by_kind.get(kind, 0) + 1

    def error(self, kind: str, e: BaseException | str) -> None:
        text = e if isinstance(e, str) else f"{type(e).__name__}: {e}"
        self.errors.append((time.strftime("%H:%M:%S"), kind, text[:300]))


class RateLimited(Exception):
    def __init__(self, retry_after: float):
        self.retry_after = retry_after


def retry_after_of(e: openai.RateLimitError) -> float | None:
    value = e.response.headers.get("retry-after") if e.response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def with_retries(stats: Stats, kind: str, call, max_tries: int = 50):
    """Runs call(); on a 429 waits for Retry-After and tries again. Other failures are recorded."""
    for _ in range(max_tries):
        try:
            result = await call()
            stats.count(kind)
            return result
        except openai.RateLimitError as e:
            stats.rate_limited += 1
            wait = retry_after_of(e)
            if wait is None:
                stats.error(kind, "429 without a usable Retry-After header")
                wait = 1.0
            stats.retry_after_waits_s += wait
            await asyncio.sleep(wait)
        except Exception as e:  # every other failure counts against the server
            stats.error(kind, e)
            return None
    stats.error(kind, f"still rate limited after {max_tries} tries")
    return None


def add_usage(tally: Tally, usage) -> None:
    tally.requests += 1
    if usage is None:
        tally.missing_usage += 1
        return
    tally.prompt_tokens += usage.prompt_tokens or 0
    tally.completion_tokens += usage.completion_tokens or 0


# ----------------------------------------------------------------------------------------------
# Traffic


def chat_messages(rng: random.Random) -> list[dict]:
    return [{"role": "user", "content": rng.choice(PROMPTS)}]


async def streaming_chat(client, stats: Stats, rng: random.Random) -> None:
    max_tokens = rng.randint(1, 128)
    messages = chat_messages(rng)

    async def call():
        stream = await client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                                      temperature=0.7, stream=True,
                                                      stream_options={"include_usage": True})
        usage = None
        async for chunk in stream:
            if chunk.usage is not None:
                usage = chunk.usage
        return usage, True

    result = await with_retries(stats, "stream", call)
    if result is not None:
        add_usage(stats.completed, result[0])


async def plain_chat(client, stats: Stats, rng: random.Random, max_tokens: int | None = None,
                     kind: str = "chat") -> None:
    max_tokens = max_tokens or rng.randint(1, 128)
    messages = chat_messages(rng)

    async def call():
        return await client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                                    temperature=0.7)

    response = await with_retries(stats, kind, call)
    if response is not None:
        add_usage(stats.completed, response.usage)


async def dropped_stream(client, stats: Stats, rng: random.Random) -> None:
    """Reads a few chunks, then closes the connection without reading the rest."""
    max_tokens = rng.randint(32, 128)
    keep = rng.randint(1, 5)
    messages = chat_messages(rng)

    async def call():
        stream = await client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=max_tokens,
                                                      temperature=0.7, stream=True,
                                                      stream_options={"include_usage": True})
        read = 0
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                read += 1
                if read >= keep:
                    break
        await stream.close()
        return read

    read = await with_retries(stats, "dropped", call)
    if read is not None:
        stats.dropped_streams += 1
        stats.dropped_chunks_read += read
        stats.dropped_max_tokens += max_tokens


async def image(client, stats: Stats, rng: random.Random, size: str, steps: int) -> None:
    prompt = rng.choice(IMAGE_PROMPTS)

    async def call():
        return await client.images.generate(model=IMAGE_NAME, prompt=prompt, n=1, size=size,
                                            extra_body={"steps": steps})

    response = await with_retries(stats, "image", call)
    if response is not None:
        stats.completed.requests += 1
        stats.completed.images += len(response.data or [])


async def worker(index: int, client, drop_client, stats: Stats, deadline: float, args) -> None:
    rng = random.Random(args.seed * 1000 + index)
    while time.monotonic() < deadline:
        roll = rng.random()
        if args.image_model and roll < args.image_share:
            await image(client, stats, rng, args.image_size, args.image_steps)
        elif roll < 0.45:
            await streaming_chat(client, stats, rng)
        elif roll < 0.8:
            await plain_chat(client, stats, rng)
        else:
            await dropped_stream(drop_client, stats, rng)


async def bursts(client, stats: Stats, deadline: float, args) -> None:
    """Every --burst-every seconds, more short requests at once than the queue holds."""
    rng = random.Random(args.seed)
    while True:
        await asyncio.sleep(min(args.burst_every, max(0.0, deadline - time.monotonic())))
        if time.monotonic() >= deadline:
            return
        await asyncio.gather(*(plain_chat(client, stats, random.Random(rng.random()), max_tokens=8, kind="burst")
                               for _ in range(args.burst_size)))


# ----------------------------------------------------------------------------------------------
# Memory


def read_rss_mb(pid: int) -> float | None:
    try:
        for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


async def sample_rss(pid: int, samples: list, start: float, stop: asyncio.Event) -> None:
    while not stop.is_set():
        rss = read_rss_mb(pid)
        if rss is not None:
            samples.append((time.monotonic() - start, rss))
        try:
            await asyncio.wait_for(stop.wait(), RSS_PERIOD_S)
        except asyncio.TimeoutError:
            pass


def rss_report(samples: list, warmup_s: float, tolerance_mb: float) -> tuple[bool, list[str]]:
    after = [(t, r) for t, r in samples if t >= warmup_s]
    if len(after) < 4:
        return True, [f"memory: only {len(after)} samples after the {warmup_s:.0f} s warm-up; not checked"]
    span = after[-1][0] - after[0][0]
    window = min(60.0, span / 3)
    first = [r for t, r in after if t <= after[0][0] + window]
    last = [r for t, r in after if t >= after[-1][0] - window]
    first_avg, last_avg = sum(first) / len(first), sum(last) / len(last)
    n = len(after)
    mean_t = sum(t for t, _ in after) / n
    mean_r = sum(r for _, r in after) / n
    var_t = sum((t - mean_t) ** 2 for t, _ in after)
    slope = sum((t - mean_t) * (r - mean_r) for t, r in after) / var_t * 60 if var_t else 0.0
    ok = last_avg - first_avg <= tolerance_mb
    lines = [f"memory: RSS {samples[0][1]:.1f} MB at start, peak {max(r for _, r in samples):.1f} MB; after the "
             f"{warmup_s:.0f} s warm-up, first {window:.0f} s average {first_avg:.1f} MB, last {window:.0f} s "
             f"average {last_avg:.1f} MB (growth {last_avg - first_avg:+.1f} MB, tolerance {tolerance_mb:.0f} MB), "
             f"slope {slope:+.2f} MB/min over {n} samples: {'ok' if ok else 'FAILED'}"]
    return ok, lines


# ----------------------------------------------------------------------------------------------
# Usage


def fetch_usage(server: Server) -> dict:
    url = server.base_url + "/api/2.0/usage"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {server.api_key}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError) as e:
        raise RuntimeError(f"GET {url}: {e}") from e


def usage_by_token(payload) -> dict[str, Tally]:
    """Sums the rows of /api/2.0/usage per token name; missing fields count as 0."""
    rows = payload.get("usage", []) if isinstance(payload, dict) else payload
    if not isinstance(rows, list):
        raise ValueError(f"/api/2.0/usage: expected a list under 'usage', got {type(rows).__name__}")
    totals: dict[str, Tally] = {}
    for row in rows:
        if not isinstance(row, dict):
            continue
        name = str(row.get("token_name", row.get("token_id", "?")))
        tally = totals.setdefault(name, Tally())
        for field in ("requests", "prompt_tokens", "completion_tokens", "images"):
            value = row.get(field) or 0
            setattr(tally, field, getattr(tally, field) + int(value))
    return totals


def usage_delta(before: dict[str, Tally], after: dict[str, Tally], names: list[str]) -> Tally:
    delta = Tally()
    for name in names:
        b, a = before.get(name, Tally()), after.get(name, Tally())
        for field in ("requests", "prompt_tokens", "completion_tokens", "images"):
            setattr(delta, field, getattr(delta, field) + getattr(a, field) - getattr(b, field))
    return delta


def settled_usage(server: Server, timeout_s: float = 30) -> dict[str, Tally]:
    """Reads usage until two readings a second apart agree: metering may trail the responses."""
    previous = usage_by_token(fetch_usage(server))
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        time.sleep(1)
        current = usage_by_token(fetch_usage(server))
        if current == previous:
            return current
        previous = current
    return previous


def usage_report(stats: Stats, before: dict, after: dict, token_names: list[str]) -> tuple[bool, list[str]]:
    main_name, drop_name = token_names[0], token_names[-1]
    client = stats.completed
    lines = []
    ok = True
    if client.missing_usage:
        ok = False
        lines.append(f"usage: {client.missing_usage} completed responses carried no usage field: FAILED")
    fields = ("prompt_tokens", "completion_tokens", "images", "requests")
    if main_name != drop_name:
        server = usage_delta(before, after, [main_name])
        lines.append(f"usage, completed requests (token {main_name!r}):")
        for field in fields:
            c, s = getattr(client, field), getattr(server, field)
            # 'requests' is informative: a server may or may not meter the 429s it refused.
            must = field != "requests"
            good = c == s
            ok &= good or not must
            lines.append(f"  {field:18} clients {c:9d}  server {s:9d}  "
                         f"{'ok' if good else ('FAILED' if must else 'differs (not checked)')}")
        dropped = usage_delta(before, after, [drop_name])
        good = stats.dropped_chunks_read <= dropped.completion_tokens <= stats.dropped_max_tokens
        ok &= good
        lines.append(f"usage, dropped streams (token {drop_name!r}): {stats.dropped_streams} streams, clients read "
                     f"{stats.dropped_chunks_read} chunks of at most {stats.dropped_max_tokens} tokens asked; server "
                     f"metered {dropped.requests} requests, {dropped.prompt_tokens} prompt and "
                     f"{dropped.completion_tokens} completion tokens: {'ok' if good else 'FAILED'}")
    else:
        # One token for everything: completed and dropped cannot be told apart, so bound the sum.
        server = usage_delta(before, after, [main_name])
        low = client.completion_tokens + stats.dropped_chunks_read
        high = client.completion_tokens + stats.dropped_max_tokens
        good = low <= server.completion_tokens <= high and client.images == server.images
        ok &= good
        lines.append(f"usage (one token {main_name!r} for all traffic): clients completed {client.requests} requests, "
                     f"{client.prompt_tokens} prompt + {client.completion_tokens} completion tokens, {client.images} "
                     f"images, and dropped {stats.dropped_streams} streams after {stats.dropped_chunks_read} chunks; "
                     f"server metered {server.requests} requests, {server.prompt_tokens} prompt + "
                     f"{server.completion_tokens} completion tokens (expected {low}..{high}), {server.images} images: "
                     f"{'ok' if good else 'FAILED'}")
    return ok, lines


# ----------------------------------------------------------------------------------------------


async def soak(server: Server, drop_key: str, pid: int | None, args) -> tuple[Stats, list]:
    stats = Stats()
    samples: list = []
    client = make_client(server, timeout_s=args.request_timeout)
    drop_server = dataclasses.replace(server, api_key=drop_key, proc=None)
    drop_client = make_client(drop_server, timeout_s=args.request_timeout)
    start = time.monotonic()
    deadline = start + args.minutes * 60
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, samples, start, stop)) if pid else None
    progress = asyncio.create_task(report_progress(stats, samples, start, deadline))
    await asyncio.gather(*(worker(i, client, drop_client, stats, deadline, args) for i in range(args.workers)),
                         bursts(client, stats, deadline, args))
    progress.cancel()
    stop.set()
    if sampler:
        await sampler
    await client.close()
    await drop_client.close()
    return stats, samples


async def report_progress(stats: Stats, samples: list, start: float, deadline: float) -> None:
    while True:
        await asyncio.sleep(30)
        rss = f", RSS {samples[-1][1]:.1f} MB" if samples else ""
        left = deadline - time.monotonic()
        when = f"{left:.0f} s left" if left > 0 else "past the end, waiting for requests in flight"
        print(f"  {time.monotonic() - start:5.0f} s: {dict(sorted(stats.by_kind.items()))}, "
              f"{stats.rate_limited} x 429, {len(stats.errors)} errors{rss}, {when}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10, help="how long traffic runs (default: %(default)s)")
    ap.add_argument("--workers", type=int, default=8, help="concurrent clients (default: %(default)s)")
    ap.add_argument("--url", help="soak this running server instead of starting tessera")
    ap.add_argument("--token", default="none", help="bearer secret for --url (completed requests)")
    ap.add_argument("--drop-token", help="bearer secret for the streams the client drops, so that the server's "
                    "usage can be checked per token (default: --token)")
    ap.add_argument("--token-name", default="soak", help="token name of --token in /api/2.0/usage")
    ap.add_argument("--drop-token-name", default="soak-dropped", help="token name of --drop-token")
    ap.add_argument("--pid", type=int, help="server process id for the RSS check with --url")
    ap.add_argument("--peer", action="store_true",
                    help="start llama-cpp-python's server instead of tessera, to check this script "
                         "(no usage endpoint, no 429s, no images: use --no-usage-check)")
    ap.add_argument("--tessera", default=str(ROOT / "build" / "tessera"), help="tessera binary (default: %(default)s)")
    ap.add_argument("--tessera-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for `tessera serve` (repeatable)")
    ap.add_argument("--model", type=pathlib.Path, default=DEFAULT_MODEL, help="GGUF chat model (default: %(default)s)")
    ap.add_argument("--image-model", type=pathlib.Path, help="image model folder: adds the endpoint "
                    f"{IMAGE_NAME!r} and image requests to the mix")
    ap.add_argument("--image-share", type=float, default=0.05, help="share of requests that are images")
    ap.add_argument("--image-size", default="256x256", help="image size (default: %(default)s)")
    ap.add_argument("--image-steps", type=int, default=2, help="diffusion steps per image (default: %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="server threads (default: %(default)s)")
    ap.add_argument("--burst-every", type=float, default=45, help="seconds between bursts (default: %(default)s)")
    ap.add_argument("--burst-size", type=int, default=64, help="requests per burst (default: %(default)s)")
    ap.add_argument("--warmup", type=float, help="seconds of RSS ignored at the start "
                    "(default: 60, or a quarter of the run if shorter)")
    ap.add_argument("--rss-tolerance-mb", type=float, default=16,
                    help="allowed growth of average RSS, first to last minute (default: %(default)s)")
    ap.add_argument("--no-usage-check", action="store_true", help="skip the comparison with /api/2.0/usage")
    ap.add_argument("--request-timeout", type=float, default=600, help="seconds per request (default: %(default)s)")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    # A plain kill must still stop the servers this script started (the finally blocks).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.minutes <= 0 or args.workers < 1 or args.burst_size < 0 or args.burst_every <= 0:
        ap.error("--minutes, --workers and --burst-every must be positive, --burst-size >= 0")
    if args.image_model and not args.image_model.is_dir():
        ap.error(f"--image-model: no such folder: {args.image_model}")
    if not args.url and not args.model.is_file():
        ap.error(f"--model: no such file: {args.model}")
    if args.peer and args.image_model:
        ap.error("--peer serves no images; drop --image-model")
    warmup = args.warmup if args.warmup is not None else min(60.0, args.minutes * 60 / 4)

    token_names = [args.token_name, args.drop_token_name]
    server = None
    with tempfile.TemporaryDirectory(prefix="serve-soak-") as tmp:
        workdir = pathlib.Path(tmp)
        try:
            if args.url:
                server = Server("server", args.url.rstrip("/"), args.token)
                drop_key = args.drop_token or args.token
                if not args.drop_token:
                    token_names = [args.token_name]
                pid = args.pid
            elif args.peer:
                server = start_peer(args.model.resolve(), args.threads, 4096, workdir, 180)
                drop_key, pid = server.api_key, server.pid
                token_names = [args.token_name]
            else:
                endpoints = [{"name": MODEL_NAME, "kind": "chat", "model": str(args.model.resolve())}]
                if args.image_model:
                    endpoints.append({"name": IMAGE_NAME, "kind": "image", "model": str(args.image_model.resolve()),
                                      "sizes": [args.image_size]})
                server, secrets = start_tessera(args.tessera, endpoints, args.threads, workdir, 180,
                                                args.tessera_arg, token_names)
                drop_key, pid = secrets[1], server.pid
            before = {} if args.no_usage_check else settled_usage(server)
            print(f"soaking {server.name} at {server.base_url} for {args.minutes:g} min with {args.workers} workers"
                  f"{', images on' if args.image_model else ''}; RSS of pid {pid or '(none)'}", flush=True)
            stats, samples = asyncio.run(soak(server, drop_key, pid, args))
            after, usage_error = {}, None
            if not args.no_usage_check:
                try:
                    after = settled_usage(server)
                except (RuntimeError, ValueError) as e:
                    usage_error = str(e)
        except (RuntimeError, OSError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        finally:
            if server is not None:
                server.stop()

    failed = []
    print(f"\nsoak summary ({args.minutes:g} min, {args.workers} workers, bursts of {args.burst_size} "
          f"every {args.burst_every:g} s)")
    print(f"requests by kind: {dict(sorted(stats.by_kind.items()))}")
    print(f"429s: {stats.rate_limited} (waited {stats.retry_after_waits_s:.1f} s in total for Retry-After)")
    print(f"errors: {len(stats.errors)}: {'ok' if not stats.errors else 'FAILED'}")
    for when, kind, text in stats.errors[:20]:
        print(f"  {when} {kind}: {text}")
    if stats.errors:
        failed.append("errors")
    if pid:
        ok, lines = rss_report(samples, warmup, args.rss_tolerance_mb)
        print("\n".join(lines))
        if not ok:
            failed.append("memory")
    else:
        print("memory: no server pid (pass --pid with --url); not checked")
    if args.no_usage_check:
        c = stats.completed
        print(f"usage: not checked (--no-usage-check); clients saw {c.requests} completed requests, "
              f"{c.prompt_tokens} prompt + {c.completion_tokens} completion tokens, {c.images} images "
              f"({c.missing_usage} responses without usage), {stats.dropped_streams} dropped streams after "
              f"{stats.dropped_chunks_read} chunks")
    elif usage_error:
        print(f"usage: could not read the server's usage after the run: {usage_error}: FAILED")
        failed.append("usage")
    else:
        ok, lines = usage_report(stats, before, after, token_names)
        print("\n".join(lines))
        if not ok:
            failed.append("usage")
    print(f"result: {'FAILED (' + ', '.join(failed) + ')' if failed else 'all checks passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
