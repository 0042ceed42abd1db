"""API keys, admin key, CORS, body limit, request ids and /metrics on a real server."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL, start_server, stop_server

KEY, ADMIN = "user-key-123", "admin-key-456"
CHAT = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    server = start_server(
        str(tmp_path_factory.mktemp("guarded")), "-id", f"model_id={DEFAULT_MODEL}", "--max-sequences", "2",
        "--cache-size", "4096", "--api-key", KEY, "--admin-key", ADMIN, "--cors-origin", "http://app.example",
        "--max-body-mb", "0.01",
    )
    yield server
    stop_server(server)


def test_key_required_on_v1(guarded):
    with httpx.Client(base_url=guarded.base_url, timeout=120) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = http.post("/v1/chat/completions", json=CHAT, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"
        assert http.get("/v1/models").status_code == 401
        assert http.get("/health").status_code == 200  # health checks need no key


def test_openai_client_with_the_key(guarded):
    client = openai.OpenAI(base_url=guarded.api_url, api_key=KEY)
    assert client.chat.completions.create(**CHAT).choices[0].message.content is not None
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=guarded.api_url, api_key="nope", max_retries=0).models.list()


def test_anthropic_client_sends_its_key_as_x_api_key(guarded):
    import anthropic

    claude = anthropic.Anthropic(base_url=guarded.base_url, api_key=KEY, max_retries=0)
    ask = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    assert claude.messages.count_tokens(**ask).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as caught:
        anthropic.Anthropic(base_url=guarded.base_url, api_key="nope", max_retries=0).messages.count_tokens(**ask)
    assert caught.value.body["type"] == "error" and caught.value.body["error"]["type"] == "authentication_error"


def test_admin_routes_need_the_admin_key(guarded):
    with httpx.Client(base_url=guarded.base_url, timeout=120) as http:
        user = http.post("/remove_model", json={"model": "x"}, headers={"Authorization": f"Bearer {KEY}"})
        assert user.status_code == 403 and user.json()["error"]["type"] == "permission_error"
        admin = http.post("/remove_model", json={"model": "not-served"}, headers={"Authorization": f"Bearer {ADMIN}"})
        assert admin.status_code == 404  # past the guard: the pool answers
        assert http.post("/add_model", json={}).status_code == 401


def test_body_limit_request_id_and_metrics(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=guarded.base_url, timeout=120) as http:
        big = {**CHAT, "messages": [{"role": "user", "content": "x" * 20_000}]}
        response = http.post("/v1/chat/completions", json=big, headers=headers)
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        tagged = http.post("/v1/chat/completions", json=CHAT, headers={**headers, "x-request-id": "trace-7"})
        assert tagged.headers["x-request-id"] == "trace-7"
        assert http.get("/health").headers["x-request-id"]
        metrics = http.get("/metrics").text
        assert 'gallama_requests_total{endpoint="/v1/chat/completions",status="200"}' in metrics
        assert 'status="413"' in metrics


def test_cors_for_the_named_origin_only(guarded):
    with httpx.Client(base_url=guarded.base_url, timeout=60) as http:
        preflight = {"Origin": "http://app.example", "Access-Control-Request-Method": "POST"}
        allowed = http.options("/v1/chat/completions", headers=preflight)
        assert allowed.headers.get("access-control-allow-origin") == "http://app.example"
        other = http.options("/v1/chat/completions", headers={**preflight, "Origin": "http://evil.example"})
        assert other.headers.get("access-control-allow-origin") is None


def _streamed_200s(http) -> float:
    line = next((line for line in http.get("/metrics").text.splitlines()
                 if line.startswith('gallama_requests_total{endpoint="/v1/chat/completions",status="200"}')), None)
    return float(line.split()[-1]) if line else 0.0


def test_streams_keep_request_ids_cors_and_metrics(guarded):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {**CHAT, "stream": True}
    with httpx.Client(base_url=guarded.base_url, timeout=120) as http:
        before = _streamed_200s(http)
        # Answered in the server's process (a one-model server): the request id comes along.
        with http.stream("POST", "/v1/chat/completions", json=body, headers={**headers, "x-request-id": "trace-8"}) as r:
            assert r.read().decode().endswith("data: [DONE]\n\n")
        assert r.headers["x-request-id"] == "trace-8"
        # From a browser (an Origin), with CORS headers added.
        browser = {**headers, "Origin": "http://app.example"}
        with http.stream("POST", "/v1/chat/completions", json=body, headers=browser) as r:
            assert r.read().decode().endswith("data: [DONE]\n\n")
        assert r.headers["access-control-allow-origin"] == "http://app.example" and r.headers["x-request-id"]
        # The front records a request when its side ends, which may come just after the client's last byte.
        deadline = time.monotonic() + 10
        while _streamed_200s(http) < before + 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _streamed_200s(http) == before + 2
