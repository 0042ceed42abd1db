"""Servers under test for the accuracy benchmarks (bfcl.py, schema_coverage.py):
an already running OpenAI-compatible URL, a gallama started here, or llama.cpp's
llama-server started here on the same GGUF; plus the docs/benchmarks.md writer."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import re
import shlex
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs" / "benchmarks.md"


@dataclass
class Target:
    label: str
    base_url: str  # ends in /v1
    model: str


def default_gguf() -> str:
    from gallama import bundled_models

    return str(bundled_models.locate(bundled_models.DEFAULT_CHAT_MODEL))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(process: subprocess.Popen, url: str, log_path: str, timeout_s: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{Path(log_path).read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"server not ready after {timeout_s}s:\n{Path(log_path).read_text()[-3000:]}")


@contextlib.contextmanager
def _process(command: list[str], health_path: str, port: int, label: str, model: str,
             timeout_s: float = 180.0) -> Iterator[Target]:
    log = tempfile.NamedTemporaryFile("w", prefix=f"bench-{label}-", suffix=".log", delete=False)
    print(f"[{label}] starting: {shlex.join(command)} (log: {log.name})", file=sys.stderr)
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_ready(process, f"http://127.0.0.1:{port}{health_path}", log.name, timeout_s)
        yield Target(label, f"http://127.0.0.1:{port}/v1", model)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def start_gallama(gguf: str, threads: int, context: int, extra: list[str] = ()) -> contextlib.AbstractContextManager[Target]:
    """gallama with one sequence of `context` tokens, like llama-server -np 1 -c context."""
    port = _free_port()
    model = Path(gguf).stem
    command = [sys.executable, "-m", "gallama", "serve", "--model", gguf, "--port", str(port),
               "--threads", str(threads), "--max-sequences", "1", "--cache-size", str(context), *extra]
    return _process(command, "/health", port, "gallama", model)


def start_llama_server(binary: str, gguf: str, threads: int, context: int) -> contextlib.AbstractContextManager[Target]:
    """llama.cpp's server with --jinja (its tool-call support) and --no-repack (repack
    buffers segfault on this CPU)."""
    port = _free_port()
    model = Path(gguf).stem
    command = [binary, "-m", gguf, "--jinja", "--no-repack", "--host", "127.0.0.1", "--port", str(port),
               "-t", str(threads), "-c", str(context), "-np", "1", "--alias", model]
    return _process(command, "/health", port, "llama-server", model)


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
    argv = [os.path.relpath(sys.argv[0], REPO) if sys.argv[0].endswith(".py") else sys.argv[0], *sys.argv[1:]]
    return "python " + shlex.join(argv)


def write_section(key: str, body: str) -> None:
    """Replace (or append) the section between `<!-- bench:key -->` markers in docs/benchmarks.md."""
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    text = DOCS.read_text() if DOCS.exists() else "# Benchmarks\n"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    DOCS.parent.mkdir(parents=True, exist_ok=True)
    DOCS.write_text(text)


def today() -> str:
    return dt.date.today().isoformat()


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
    parser.add_argument("--model", help="model name for --base-url (default: the GGUF's stem)")
    parser.add_argument("--label", default="server", help="name of the --base-url server in the report")
    parser.add_argument("--start-gallama", action="store_true", help="start gallama on --gguf and measure it")
    parser.add_argument("--with-llama-server", metavar="PATH",
                        help="start this llama-server binary on --gguf (--jinja --no-repack) and measure it")
    parser.add_argument("--gguf", help="GGUF for the started servers (default: the bundled SmolLM2-135M-Instruct)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=8192, help="context tokens of the started servers")
    parser.add_argument("--categories", help="comma-separated categories (default: all present)")
    parser.add_argument("--limit", type=int, help="at most this many items per category")
    parser.add_argument("--max-tokens", type=int, default=max_tokens)
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight per server")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per request")
    parser.add_argument("--save", type=Path, help="write every item's outcome here (JSON)")
    parser.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")


def plans(args, gguf: str) -> list[tuple[str, contextlib.AbstractContextManager[Target]]]:
    """The servers the options name, each as a context manager that yields its Target; measure
    them one at a time, since they would share the same cores."""
    out: list[tuple[str, contextlib.AbstractContextManager[Target]]] = []
    if args.base_url:
        out.append((args.label, contextlib.nullcontext(Target(args.label, args.base_url, args.model or Path(gguf).stem))))
    if args.start_gallama:
        out.append(("gallama", start_gallama(gguf, args.threads, args.context)))
    if args.with_llama_server:
        out.append(("llama-server", start_llama_server(args.with_llama_server, gguf, args.threads, args.context)))
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
            if index % 10 == 0 or index == len(items):
                print(f"[{target.label}] {index}/{len(items)} {noun}, {time.perf_counter() - started:.0f}s", file=sys.stderr)
    return results


def pct(part: int, whole: int) -> str:
    return f"{100.0 * part / whole:.1f}%" if whole else "-"
