"""Servers under test for the accuracy benchmarks (bfcl.py, schema_coverage.py), over
bench/common.py's servers: an already running OpenAI-compatible URL, a gallama started
here, or llama.cpp's llama-server started here (with --jinja) on the same GGUF; plus the
options, the request loop and the report helpers both benchmarks share."""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from bench import common

REPO = common.REPO_ROOT
SERVED_NAME = "bench"  # the model name bench/common.py's servers serve under


@dataclass
class Target:
    label: str
    base_url: str  # ends in /v1
    model: str


_RUNNING: list[common.Server] = []


def _stop_on_signal(signum, frame) -> None:
    """SIGTERM/SIGINT while requests are in flight: stop the servers started here, then exit."""
    for server in list(_RUNNING):
        server.stop()
    os._exit(128 + signum)


@contextlib.contextmanager
def serving(server: common.Server) -> Iterator[Target]:
    signal.signal(signal.SIGTERM, _stop_on_signal)
    signal.signal(signal.SIGINT, _stop_on_signal)
    print(f"[{server.name}] starting: {shlex.join(server.command)}", file=sys.stderr)
    _RUNNING.append(server)
    try:
        server.start()
        yield Target(server.name, server.base_url + "/v1", SERVED_NAME)
    finally:
        server.stop()
        _RUNNING.remove(server)


def gallama(gguf: str, threads: int, context: int, slots: int) -> common.Server:
    """gallama with `slots` sequences of `context` tokens each, like llama-server -np slots."""
    return common.gallama_server(gguf, threads, slots, "--cache-size", str(context * slots))


def llama_server(binary: str, gguf: str, threads: int, context: int, slots: int) -> common.Server:
    """llama.cpp's server with --jinja, its tool-calling and chat-template mode."""
    server = common.llama_server(binary, gguf, threads, slots, context)
    server.command.append("--jinja")
    return server


def error_kind(exc: Exception) -> tuple[str, str]:
    """An openai client exception as (kind, message): `http_400:code`, `timeout`, `connection`..."""
    import openai

    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error", body) if isinstance(body, dict) else {}
        code = error.get("code") if isinstance(error, dict) else None
        message = (error.get("message") if isinstance(error, dict) else None) or str(exc)
        return f"http_{exc.status_code}" + (f":{code}" if code else ""), str(message)[:300]
    if isinstance(exc, openai.APITimeoutError):
        return "timeout", str(exc)[:300]
    if isinstance(exc, openai.APIConnectionError):
        return "connection", str(exc)[:300]
    return f"exception:{type(exc).__name__}", str(exc)[:300]


def command_line() -> str:
    script = sys.argv[0]
    if script.endswith(".py"):
        script = str(Path(script).resolve().relative_to(REPO)) if Path(script).resolve().is_relative_to(REPO) else script
    return "python " + shlex.join([script, *sys.argv[1:]])


def gallama_head() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def add_arguments(parser, data_default: Path, data_help: str, max_tokens: int) -> None:
    """The options both accuracy benchmarks share: data, servers, limits, output."""
    parser.add_argument("--data", type=Path, default=data_default, help=f"{data_help} (default: %(default)s)")
    parser.add_argument("--base-url", help="an OpenAI-compatible server to measure, e.g. http://127.0.0.1:8000/v1")
    parser.add_argument("--model", default=SERVED_NAME, help="model name for --base-url (default: %(default)s)")
    parser.add_argument("--label", default="server", help="name of the --base-url server in the report")
    parser.add_argument("--start-gallama", action="store_true", help="start gallama on --gguf and measure it")
    parser.add_argument("--with-llama-server", metavar="PATH",
                        help="start this llama-server binary on --gguf (--jinja --no-repack) and measure it")
    parser.add_argument("--gguf", help="GGUF for the started servers (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=8192, help="context tokens per sequence of the started servers")
    parser.add_argument("--categories", help="comma-separated categories (default: all present)")
    parser.add_argument("--limit", type=int, help="at most this many items per category")
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--concurrency", type=int, default=1,
                        help="requests in flight per server; started servers get as many sequences")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--save", type=Path, help="write every item's outcome here (JSON)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")


def plans(args, gguf: str) -> list[tuple[str, contextlib.AbstractContextManager[Target]]]:
    """The servers the options name, each as a context manager that yields its Target; measure
    them one at a time, since they would share the same cores."""
    out: list[tuple[str, contextlib.AbstractContextManager[Target]]] = []
    if args.base_url:
        out.append((args.label, contextlib.nullcontext(Target(args.label, args.base_url, args.model or SERVED_NAME))))
    if args.start_gallama:
        out.append(("gallama", serving(gallama(gguf, args.threads, args.context, args.concurrency))))
    if args.with_llama_server:
        out.append(("llama-server", serving(llama_server(args.with_llama_server, gguf, args.threads, args.context,
                                                         args.concurrency))))
    return out


def run_each(target: Target, items: list, ask, concurrency: int, timeout_s: float, noun: str) -> list:
    """`ask(client, target, item)` for every item, `concurrency` at a time, with progress on stderr."""
    from concurrent.futures import ThreadPoolExecutor

    from openai import OpenAI

    client = OpenAI(base_url=target.base_url, api_key="unused", timeout=timeout_s, max_retries=0)
    started = time.perf_counter()
    results = []
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for index, result in enumerate(pool.map(lambda item: ask(client, target, item), items), 1):
            results.append(result)
            if index % 5 == 0 or index == len(items) or concurrency == 1:
                print(f"[{target.label}] {index}/{len(items)} {noun}, {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return results


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"


def machine_note() -> str:
    """The machine and its load when the run ended: the cores are shared, so say how busy they were."""
    return f"{common.machine_description()}; load average {os.getloadavg()[0]:.1f} at the end of the run"
