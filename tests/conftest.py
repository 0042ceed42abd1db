"""A real `gallama serve` subprocess on the bundled default model, shared by the e2e tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    base_url: str
    process: subprocess.Popen
    log_path: str

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"


def start_server(tmp_dir, *args: str, timeout_s: float = 120.0) -> RunningServer:
    port = free_port()
    log_path = os.path.join(tmp_dir, f"gallama-{port}.log")
    log_file = open(log_path, "w")
    process = subprocess.Popen(
        [sys.executable, "-m", "gallama", "serve", "--port", str(port), *args],
        stdout=log_file,
        stderr=subprocess.STDOUT,
        env={**os.environ, "GALLAMA_HOME": os.path.join(tmp_dir, "gallama-home")},  # model_config.yaml stays in tmp
    )
    base_url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gallama exited with {process.returncode}:\n{open(log_path).read()}")
        try:
            if httpx.get(f"{base_url}/health", timeout=1).status_code == 200:
                return RunningServer(base_url, process, log_path)
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"gallama did not start in {timeout_s}s:\n{open(log_path).read()}")


def doomed_requests(api, http: httpx.Client, model: str, end_tokens: str) -> tuple[list[threading.Thread], dict]:
    """A plain and a streamed completion of `model` that go on (its end tokens banned) until their worker is
    killed; `results` gets the error each one ends with ("plain", "stream"). The threads are started."""
    import openai

    banned = http.post("/tokenize", json={"model": model, "content": end_tokens}).json()["tokens"]
    endless = {"logit_bias": {str(t): -100 for t in banned}, "max_tokens": 900}  # within a 1024-token sequence
    results = {}

    def plain():
        try:
            api.completions.create(model=model, prompt="Once upon a time", **endless)
        except openai.APIStatusError as error:
            results["plain"] = error

    def streamed():
        try:
            for _ in api.completions.create(model=model, prompt="Long ago", stream=True, **endless):
                pass
        except openai.APIError as error:
            results["stream"] = error

    threads = [threading.Thread(target=plain), threading.Thread(target=streamed)]
    for thread in threads:
        thread.start()
    return threads, results


def stop_server(server: RunningServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    # The chat model alone: a plain `gallama serve` would also load the default embedding model.
    running = start_server(
        str(tmp_path_factory.mktemp("server")), "-id", f"model_id={DEFAULT_MODEL}", "--max-sequences", "4", "--cache-size", "8192"
    )
    yield running
    stop_server(running)


@pytest.fixture(scope="session")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server.api_url, api_key="unused")


@pytest.fixture(scope="session")
def async_client(server):
    from openai import AsyncOpenAI

    return AsyncOpenAI(base_url=server.api_url, api_key="unused")


@pytest.fixture(scope="session")
def http(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as session:
        yield session
