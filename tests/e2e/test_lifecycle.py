"""Request timeouts (a model added to the shared server), graceful shutdown on SIGTERM and a worker killed
mid-stream (a server of its own)."""

from __future__ import annotations

import json
import os
import signal
import threading
import time

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL, start_server

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


@pytest.fixture
def stoppable(tmp_path_factory):
    server = start_server(str(tmp_path_factory.mktemp("shutdown")), "-id", f"model_id={DEFAULT_MODEL}",
                          "--max-sequences", "2", "--request-timeout", "60", "--shutdown-grace", "1")
    yield server
    if server.process.poll() is None:
        server.process.kill()


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


# At least 300 numbers: the grammar keeps the model from ending early, so the stream outlasts the kill.
NUMBERS = {"type": "json_schema", "name": "numbers", "strict": True, "schema": {
    "type": "object", "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 300}},
    "required": ["numbers"], "additionalProperties": False}}


@pytest.mark.parametrize("handed_over", [True, False], ids=["handed-over", "relayed"])
def test_a_worker_killed_mid_responses_stream_ends_it_with_response_failed(stoppable, handed_over):
    # A request with an Origin is relayed by the front (CORS may need to add headers); others are handed over.
    client = openai.OpenAI(base_url=stoppable.api_url, api_key="unused", max_retries=0,
                           default_headers={} if handed_over else {"Origin": "http://localhost"})
    worker = httpx.get(f"{stoppable.base_url}/health").json()["models"][0]["instances"][0]["pid"]
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
