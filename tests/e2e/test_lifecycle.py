"""Request timeouts (a model added to the shared server), graceful shutdown on SIGTERM (the model in the
server's process or in a worker's), a worker's streams and a worker killed mid-stream (servers of their own)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL, start_server, stop_server

TIMEOUT_S = 3.0
TIMED_MODEL = "smollm-timeout"
LONG = {"model": TIMED_MODEL, "messages": [{"role": "user", "content": "Write a very long story about the sea."}],
        "max_tokens": 3000, "temperature": 0}


@pytest.fixture(scope="module")
def timed(server, http):
    """The bundled model again, under its own name, with a per-model request timeout."""
    added = http.post("/add_model", json={"model_id": DEFAULT_MODEL, "model_name": TIMED_MODEL,
                                          "request_timeout": TIMEOUT_S, "max_sequences": 1, "cache_size": 4096})
    assert added.status_code == 200, added.text
    yield server
    http.post("/remove_model", json={"model": TIMED_MODEL})


def own_server(tmp_path_factory, *args: str):
    """A server of the bundled model for one test, stopped afterwards if it still runs (SIGTERM: a killed
    server leaves its temporary responses store behind)."""
    server = start_server(str(tmp_path_factory.mktemp("own")), "-id", f"model_id={DEFAULT_MODEL}",
                          "--max-sequences", "2", *args)
    yield server
    if server.process.poll() is None:
        stop_server(server)


@pytest.fixture(params=["in-process", "worker-processes"])
def stoppable(tmp_path_factory, request):
    """A server of its own, to stop: its model in the server's process (the default) or in a worker process."""
    workers = ("--worker-processes",) if request.param == "worker-processes" else ()
    yield from own_server(tmp_path_factory, "--request-timeout", "60", "--shutdown-grace", "1", *workers)


@pytest.fixture
def with_worker(tmp_path_factory):
    yield from own_server(tmp_path_factory, "--worker-processes")


def sse_events(response: httpx.Response) -> list:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def assert_idle(http: httpx.Client) -> None:
    """The engine slot of a stopped generation is freed (at the engine's next step)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        model = next(m for m in http.get("/health").json()["models"] if m["id"] == TIMED_MODEL)
        if model["running"] == model["queued"] == 0:
            return
        time.sleep(0.1)
    pytest.fail(f"the stopped generation still holds the engine: {model}")


def test_timeout_is_a_clear_error_and_frees_the_slot(timed):
    client = openai.OpenAI(base_url=timed.api_url, api_key="unused", max_retries=0)
    started = time.monotonic()
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(**LONG)
    assert TIMEOUT_S <= time.monotonic() - started < TIMEOUT_S + 3
    error = raised.value.body
    assert error["code"] == "request_timeout" and "--request-timeout" in error["message"]
    with httpx.Client(base_url=timed.base_url, timeout=30) as http:
        assert_idle(http)


def test_timeout_in_a_stream_is_an_error_event_then_done(timed):
    with httpx.Client(base_url=timed.base_url, timeout=30) as http:
        with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as response:
            assert response.status_code == 200
            events = sse_events(response)
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["code"] == "request_timeout"
        assert_idle(http)


def test_sigterm_ends_a_busy_stream_and_exits_zero(stoppable):
    events: list = []

    def stream() -> None:
        body = {**LONG, "model": DEFAULT_MODEL, "stream": True}
        with httpx.stream("POST", f"{stoppable.base_url}/v1/chat/completions", json=body, timeout=30) as response:
            for line in response.iter_lines():  # as they come: the test watches the stream start
                if line.startswith("data: "):
                    events.append(line[6:])

    reader = threading.Thread(target=stream)
    reader.start()
    deadline = time.monotonic() + 10
    while len(events) < 2 and time.monotonic() < deadline:  # streaming for sure
        time.sleep(0.05)
    assert len(events) >= 2
    stoppable.process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    reader.join(10)
    assert not reader.is_alive()
    # The grace period (1 s) is too short for this stream: it ends with an error event, not a cut connection.
    assert events[-1] == "[DONE]"
    assert json.loads(events[-2])["error"]["code"] == "server_shutting_down"
    assert stoppable.process.wait(10) == 0
    assert time.monotonic() - signalled < 8
    # New connections are refused once it stopped.
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{stoppable.base_url}/health", timeout=2)


def test_streams_go_from_the_worker_to_the_client(with_worker):
    """The front hands a stream's connection to the worker (gallama.server.handover): the worker's
    response closes the connection, which is the front's; other responses keep it alive."""
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 4,
            "stream": True, "temperature": 0}
    with httpx.Client(base_url=with_worker.base_url, timeout=60) as http:
        worker = http.get("/health").json()["models"][0]["instances"][0]["pid"]
        assert worker != with_worker.process.pid
        with http.stream("POST", "/v1/chat/completions", json=body, headers={"x-request-id": "handover-1"}) as response:
            raw = response.read().decode()
        assert response.headers["connection"] == "close" and response.headers["x-request-id"] == "handover-1"
        assert raw.endswith("data: [DONE]\n\n")
        plain = http.post("/v1/chat/completions", json={**body, "stream": False})
    assert plain.status_code == 200 and "connection" not in plain.headers
    # The same request streamed and not give the same greedy text, on the connections that follow.
    client = openai.OpenAI(base_url=with_worker.api_url, api_key="unused")
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**body))
    assert streamed == plain.json()["choices"][0]["message"]["content"]


def test_the_in_process_model_is_removed_and_added_back(stoppable):
    """/remove_model unloads the model the server runs in its own process; /add_model loads one there again."""
    with httpx.Client(base_url=stoppable.base_url, timeout=120) as http:
        instance = http.get("/health").json()["models"][0]["instances"][0]
        in_process = instance["pid"] == stoppable.process.pid
        assert in_process == (stoppable.process.args.count("--worker-processes") == 0)
        assert http.post("/remove_model", json={"model": DEFAULT_MODEL}).status_code == 200
        assert http.get("/v1/models").json()["data"] == []
        assert http.post("/add_model", json={"model_id": DEFAULT_MODEL, "max_sequences": 1}).status_code == 200
        instance = http.get("/health").json()["models"][0]["instances"][0]
        assert (instance["pid"] == stoppable.process.pid) == in_process
        answer = http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": "Hi", "max_tokens": 2})
    assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] >= 1


# At least 300 numbers: the grammar keeps the model from ending early, so the stream outlasts the kill.
NUMBERS = {"type": "json_schema", "name": "numbers", "strict": True, "schema": {
    "type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 300}},
    "required": ["numbers"], "additionalProperties": False}}


@pytest.mark.parametrize("handed_over", [True, False], ids=["handed-over", "relayed"])
def test_a_worker_killed_mid_responses_stream_ends_it_with_response_failed(with_worker, handed_over):
    # A request with an Origin is relayed by the front (CORS may need to add headers); others are handed over.
    client = openai.OpenAI(base_url=with_worker.api_url, api_key="unused", max_retries=0,
                           default_headers={} if handed_over else {"Origin": "http://localhost"})
    worker = httpx.get(f"{with_worker.base_url}/health").json()["models"][0]["instances"][0]["pid"]
    events = []
    with client.responses.stream(model=DEFAULT_MODEL, input="List numbers.", text={"format": NUMBERS},
                                 max_output_tokens=1500, temperature=0, store=False) as stream:
        for event in stream:
            events.append(event)
            if len(events) == 8:  # streaming for sure
                os.kill(worker, signal.SIGKILL)
    kinds = [event.type for event in events]
    assert "response.output_text.delta" in kinds and "response.completed" not in kinds
    assert kinds[-2:] == ["error", "response.failed"], kinds[-5:]
    assert events[-2].code == "worker_unavailable" and "worker" in events[-2].message
    failed = events[-1].response
    # The same response as the one created (the front chose its id), numbered after every event before it.
    assert failed.id == events[0].response.id and failed.status == "failed"
    assert failed.error.code == "worker_unavailable"
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers))
    # A relayed stream passed the front, which counted its events; a handed-over one went past it, and the
    # worker's reservations (gallama.server.handover.RESERVED_EVENTS) may leave a gap before the failure.
    assert numbers[-2] == numbers[-3] + 1 if not handed_over else numbers[-2] > numbers[-3]
