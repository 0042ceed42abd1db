"""Shared helpers of the benchmarks: servers, readiness, peak RSS, SSE timing, reports.

Every benchmark runs its peers in the same run, interleaves their repetitions
(round-robin) so that all engines see the same machine load, and reports medians.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_MD = REPO_ROOT / "docs" / "benchmarks.md"
CACHE_DIR = Path(os.environ.get("GALLAMA_BENCH_CACHE", Path.home() / ".cache" / "gallama-bench"))

# A handful of fixed chat prompts, different enough that no engine can answer one
# from another's cache beyond the shared chat-template prefix.
PROMPTS = [
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Explain how a refrigerator works to a ten-year-old.",
    "List some tips for writing clean Python code, and explain each one.",
    "Describe the water cycle in detail.",
    "What are the main differences between cats and dogs as pets?",
    "Write a letter to a friend describing your last holiday by the sea.",
]

# A small JSON schema for the constrained-decoding measurement.
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "city": {"type": "string"},
        "hobbies": {"type": "array", "items": {"type": "string"}},
    },
    "required": ["name", "age", "city", "hobbies"],
    "additionalProperties": False,
}


def default_model_path() -> str:
    from gallama.bundled_models import DEFAULT_CHAT_MODEL, locate

    return str(locate(DEFAULT_CHAT_MODEL))


class VocabTokenizer:
    """The model's vocabulary alone (no weights): its end tokens, and token counts of streamed text."""

    def __init__(self, model_path: str):
        import logging

        import llama_cpp
        from llama_cpp import _internals

        logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = _internals.LlamaModel(path_model=model_path, params=params, verbose=False)

    def count(self, text: str) -> int:
        return len(self._model.tokenize(text.encode(), add_bos=False, special=False))

    def end_of_generation_tokens(self) -> list[int]:
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        return [t for t in range(self._model.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)]


def count_first_chunk_tokens(results: list["StreamResult"], tokenizer: VocabTokenizer) -> None:
    """A server that holds tokens back sends several in its first chunk (llama-server does under a
    JSON schema, speculation sends accepted drafts together): they must not count as decoded in the
    time between the first chunk and the last."""
    for result in results:
        if result.first_text:
            result.first_chunk_tokens = max(1, tokenizer.count(result.first_text))


def end_of_generation_tokens(model_path: str) -> list[int]:
    """The model's end-of-generation token ids (read from the vocabulary only)."""
    return VocabTokenizer(model_path).end_of_generation_tokens()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- memory ------------------------------------------------------------------


def _proc_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def process_tree(pid: int) -> list[int]:
    """The pid and all its descendants (from /proc/*/task/*/children)."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    todo.extend(int(c) for c in children.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return pids


def rss_mib(pids: list[int]) -> float:
    """The summed resident memory of these processes, in MiB."""
    return sum(_proc_kib(p, "VmRSS") for p in pids) / 1024


def tree_cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process tree's live processes."""
    total = 0
    for member in process_tree(pid):
        try:
            with open(f"/proc/{member}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def thread_cpu_seconds(root: int) -> dict[tuple[int, int], float]:
    """CPU seconds of every thread of a process tree, by (pid, tid). Exact: schedstat's nanoseconds on the
    CPU (stat's utime and stime are sampled at the clock tick and misread work that recurs every ~10 ms)."""
    found = {}
    for pid in process_tree(root):
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/schedstat") as stat:
                    found[(pid, int(tid))] = int(stat.read().split()[0]) / 1e9
        except OSError:
            pass  # a process or thread that ended meanwhile
    return found


class PeakRSS:
    """Samples the summed RSS of a process tree in a thread; `peak_mib` is the highest seen.

    Each process's own high-water mark (VmHWM) is also read at every sample, so a
    single-process server's peak is exact even between samples.
    """

    def __init__(self, pid: int, interval_s: float = 0.05):
        self.pid = pid
        self.interval_s = interval_s
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> None:
        pids = process_tree(self.pid)
        rss = rss_mib(pids) * 1024
        if len(pids) == 1:
            rss = max(rss, _proc_kib(self.pid, "VmHWM"))
        self.peak_kib = max(self.peak_kib, rss)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval_s)

    def stop(self) -> float:
        self.sample()
        self._stop.set()
        self._thread.join()
        return self.peak_mib

    @property
    def peak_mib(self) -> float:
        return self.peak_kib / 1024


# -- servers -----------------------------------------------------------------


@dataclass
class Server:
    """A server subprocess in its own process group, with a peak-RSS sampler."""

    name: str
    command: list[str]
    port: int
    ready_path: str = "/health"
    env: dict[str, str] | None = None
    log_path: str = ""
    process: subprocess.Popen | None = None
    memory: PeakRSS | None = None
    started_s: float = 0.0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 180.0) -> "Server":
        self.log_path = self.log_path or str(CACHE_DIR / "logs" / f"{self.name}-{self.port}.log")
        Path(self.log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        began = time.perf_counter()
        self.process = subprocess.Popen(
            self.command, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        self.memory = PeakRSS(self.process.pid)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.base_url + self.ready_path, timeout=2).status_code == 200:
                    self.started_s = time.perf_counter() - began
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready in {timeout_s}s:\n{self.log_tail()}")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid) if self.process else 0.0

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "".join(open(self.log_path).readlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> float:
        """Stops the whole process group; returns the peak RSS in MiB."""
        peak = self.memory.stop() if self.memory else 0.0
        if self.process is None:
            return peak
        group = self.process.pid
        if self.process.poll() is None:
            try:
                os.killpg(group, signal.SIGTERM)
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(group, signal.SIGKILL)
                self.process.wait()
            except ProcessLookupError:
                pass
        # A supervisor may have restarted a child while it was being stopped: end
        # whatever is left of the group.
        deadline = time.monotonic() + 10
        while (left := group_members(group)) and time.monotonic() < deadline:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.1)
        return peak


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is pgid."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def gallama_server(model_path: str, threads: int, max_sequences: int, *extra: str) -> Server:
    port = free_port()
    command = [
        sys.executable, "-m", "gallama", "serve", "--model", model_path, "--model-name", "bench",
        "--port", str(port), "--threads", str(threads), "--max-sequences", str(max_sequences),
        "--log-level", "warning", *extra,
    ]
    return Server("gallama", command, port)


# gallama's CPU default (see bench/flash_attention.py); peers run the same attention kernels.
LLAMA_SERVER_FLASH_ATTENTION_OFF = ("-fa", "off")


def llama_server(binary: str, model_path: str, threads: int, slots: int, context_per_slot: int, *extra: str) -> Server:
    port = free_port()
    command = [
        binary, "-m", model_path, "--host", "127.0.0.1", "--port", str(port),
        "--threads", str(threads), "--threads-batch", str(threads),
        "-np", str(slots), "-c", str(slots * context_per_slot), "--no-repack",
        "--alias", "bench", "--log-disable", *extra,
    ]
    return Server("llama-server", command, port)


LCP_SERVER_DEPS = ["starlette-context==0.5.1", "pydantic-settings==2.16.3", "python-dotenv==1.2.4"]


def llama_cpp_server_deps() -> Path:
    """llama-cpp-python's server extras, installed once outside the project's venv."""
    target = CACHE_DIR / "lcp-server-deps"
    marker = target / ".complete"
    if not marker.exists():
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target), *LCP_SERVER_DEPS],
            check=True,
        )
        marker.touch()
    return target


def llama_cpp_python_server(model_path: str, threads: int, context: int) -> Server:
    """`python -m llama_cpp.server` through bench/lcp_norepack.py (weight repacking off)."""
    port = free_port()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(llama_cpp_server_deps()), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    command = [
        sys.executable, str(BENCH_DIR / "lcp_norepack.py"), "llama_cpp.server",
        "--model", model_path, "--model_alias", "bench", "--host", "127.0.0.1", "--port", str(port),
        "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", str(context),
        "--flash_attn", "false", "--interrupt_requests", "false",  # queue concurrent requests instead of cutting them off
    ]
    return Server("llama-cpp-python", command, port, ready_path="/v1/models", env=env)


# -- requests ----------------------------------------------------------------


@dataclass
class StreamResult:
    status: int
    sent_s: float
    first_token_s: float | None = None  # first chunk with content, since sent
    first_text: str = ""  # that chunk's content
    first_chunk_tokens: int = 1  # the tokens in it (count_first_chunk_tokens)
    last_token_s: float | None = None
    chunks: int = 0  # chunks carrying content
    completion_tokens: int | None = None  # from usage, when the server reports it
    usage: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)  # llama-server's own statistics, on its last chunk
    finish_reason: str | None = None
    text: str = ""
    error: str | None = None

    @property
    def tokens(self) -> int:
        return self.completion_tokens if self.completion_tokens is not None else self.chunks

    @property
    def decode_tokens_per_s(self) -> float | None:
        """Tokens after the first chunk's, over the time between the first chunk and the last."""
        if self.first_token_s is None or self.last_token_s is None or self.tokens <= self.first_chunk_tokens:
            return None
        span = self.last_token_s - self.first_token_s
        return (self.tokens - self.first_chunk_tokens) / span if span > 0 else None


def chat_payload(prompt: str, max_tokens: int, banned: list[int], **extra: Any) -> dict[str, Any]:
    return {
        "model": "bench",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        "logit_bias": {str(t): -100 for t in banned},
        **extra,
    }


async def stream_chat(client: httpx.AsyncClient, base_url: str, payload: dict[str, Any]) -> StreamResult:
    """Sends a streaming chat request and times its SSE chunks."""
    began = time.perf_counter()
    result = StreamResult(status=0, sent_s=began)
    async with client.stream("POST", base_url + "/v1/chat/completions", json=payload) as response:
        result.status = response.status_code
        if response.status_code != 200:
            result.error = (await response.aread()).decode(errors="replace")[:300]
            return result
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            now = time.perf_counter() - began
            chunk = json.loads(data)
            if "error" in chunk:
                result.error = json.dumps(chunk["error"])[:300]
                break
            if chunk.get("usage"):
                result.usage = chunk["usage"]
                result.completion_tokens = chunk["usage"].get("completion_tokens")
            if chunk.get("timings"):
                result.timings = chunk["timings"]
            for choice in chunk.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    result.chunks += 1
                    result.text += content
                    if result.first_token_s is None:
                        result.first_token_s = now
                        result.first_text = content
                    result.last_token_s = now
                if choice.get("finish_reason"):
                    result.finish_reason = choice["finish_reason"]
    return result


# -- statistics and reports --------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values: list[float], q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    rank = q / 100 * (len(values) - 1)
    low = int(rank)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (rank - low)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b not in (None, 0) else None


def fmt(value: float | None, digits: int = 1, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:.{digits}f}{suffix}"


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions(*packages: str) -> str:
    found = []
    for package in packages:
        try:
            found.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            found.append(f"{package} (not installed)")
    return ", ".join(found) + f", Python {platform.python_version()}"


def cpu_busy(interval_s: float = 2.0) -> float:
    """The machine's CPU use over interval_s, in cores (from /proc/stat)."""

    def times() -> tuple[int, int]:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)

    busy0, total0 = times()
    time.sleep(interval_s)
    busy1, total1 = times()
    return (busy1 - busy0) / max(total1 - total0, 1) * (os.cpu_count() or 1)


def wait_for_quiet(max_busy_cores: float = 0.3, max_wait_s: float = 120.0) -> float:
    """Waits (up to max_wait_s) until other work uses under max_busy_cores; returns the last reading.

    The machine is shared: this keeps a benchmark round from starting in the
    middle of someone else's build or test run when that can be avoided.
    """
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while busy > max_busy_cores and time.monotonic() < deadline:
        busy = cpu_busy()
    return busy


def today() -> str:
    return datetime.datetime.now().strftime("%Y-%m-%d %H:%M")


def write_section(title: str, body: str) -> None:
    """Replaces (or appends) the `## title` section of docs/benchmarks.md."""
    header = "# Benchmarks\n\nLatest results of the scripts in `bench/`; each section is rewritten by its script.\n"
    text = RESULTS_MD.read_text() if RESULTS_MD.exists() else header
    section = f"## {title}\n\n{body.strip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    RESULTS_MD.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_MD.write_text(text)


def exit_on_sigterm() -> None:
    """Turns SIGTERM into SystemExit so that `finally` blocks stop the servers."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))


def llama_server_binary() -> str:
    """The cached llama-server of the installed llama-cpp-python version (built if missing)."""
    script = BENCH_DIR / "build_llama_server.sh"
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True, env=env)
    return done.stdout.strip().splitlines()[-1]
