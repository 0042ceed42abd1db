"""Every client mistake is an OpenAI error object with the right status, never a 500."""

from __future__ import annotations

import pytest

from tests.conftest import DEFAULT_MODEL

MESSAGES = [{"role": "user", "content": "hi"}]


def assert_error(response, status: int, code: str | None = None, param: str | None = None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error


def test_malformed_json(http):
    response = http.post("/v1/chat/completions", content=b'{"model": ', headers={"content-type": "application/json"})
    assert_error(response, 400)


@pytest.mark.parametrize(
    "patch, param",
    [
        ({"messages": []}, "messages"),
        ({"messages": "hello"}, "messages"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"temperature": 5}, "temperature"),
        ({"top_logprobs": 3}, None),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
        ({"stream_options": {"include_usage": True}}, None),
    ],
)
def test_invalid_values_are_400(http, patch, param):
    body = {"model": DEFAULT_MODEL, "messages": MESSAGES, **patch}
    assert_error(http.post("/v1/chat/completions", json=body), 400, param=param)


@pytest.mark.parametrize("name", ["tools", "made_up_parameter"])
def test_unsupported_parameter_named(http, name):
    body = {"model": DEFAULT_MODEL, "messages": MESSAGES, name: {"type": "json_object"}}
    error = assert_error(http.post("/v1/chat/completions", json=body), 400)
    assert name in error["message"]


def test_missing_model(http):
    assert_error(http.post("/v1/chat/completions", json={"messages": MESSAGES}), 400, param="model")


def test_context_length_exceeded(http):
    long_text = "word " * 5000
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": long_text}]}
    assert_error(http.post("/v1/chat/completions", json=body), 400, code="context_length_exceeded")
    body = {"model": DEFAULT_MODEL, "messages": MESSAGES, "max_tokens": 100000}
    assert_error(http.post("/v1/chat/completions", json=body), 400, code="context_length_exceeded")


def test_logit_bias_outside_vocabulary(http):
    body = {"model": DEFAULT_MODEL, "messages": MESSAGES, "logit_bias": {"99999999": 5}}
    assert_error(http.post("/v1/chat/completions", json=body), 400, param="logit_bias")


def test_completion_errors(http):
    assert_error(http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": []}), 400)
    assert_error(http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": ""}), 400, param="prompt")
    assert_error(http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": [10**9]}), 400, param="prompt")
    assert_error(http.post("/v1/completions", json={"model": DEFAULT_MODEL, "prompt": "x", "suffix": "y"}), 400)


def test_unknown_route_and_method(http):
    assert_error(http.get("/v1/nothing"), 404)
    assert_error(http.get("/v1/chat/completions"), 405)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1' + b"0" * 40 + b"}",
        b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}',
        b'{"model": "SmolLM2-135M-Instruct", "messages": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"model": "SmolLM2-135M-Instruct", "messages": [{"role": "user", "content": "\xff\xfe\xfa"}]}',
        b'{"model": 12, "messages": {"role": "user"}}',
        b"[]",
        b"null",
    ],
    ids=["huge-number", "wrong-type", "deep-nesting", "invalid-utf8", "wrong-shapes", "array-body", "null-body"],
)
def test_hostile_bodies_are_4xx_error_objects(http, raw):
    response = http.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["message"]


def test_megabyte_string_is_a_clear_400(http):
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "word " * 200_000}]}
    assert_error(http.post("/v1/chat/completions", json=body), 400, code="context_length_exceeded")


M = b'"model": "SmolLM2-135M-Instruct"'


@pytest.mark.parametrize(
    "path, raw",
    [
        ("/v1/chat/completions", b"{" + M + b', "messages": [{"role": "user", "content": "hi"}], "temperature": NaN}'),
        ("/v1/chat/completions", b"{" + M + b', "messages": [{"role": "user", "content": "hi"}], "top_p": Infinity}'),
        ("/v1/chat/completions", b"{" + M + b', "messages": [{"role": "user", "content": "hi"}], "n": 1000000000}'),
        ("/v1/chat/completions", b"{" + M + b', "messages": [{"role": "user", "content": "hi"}], "max_tokens": -5}'),
        ("/v1/chat/completions", b"{" + M + b', "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1' + b"9" * 30 + b'": 5}}'),
        ("/v1/chat/completions", b"{" + M + b', "messages": [{"role": "user", "content": "hi"}], "tools": ' + b'[{"type": "function", "function": {"name": "f", "parameters": ' + b'{"type": "object", "properties": {"a": ' * 400 + b"{}" + b"}}" * 400 + b"}}]}"),
        ("/v1/completions", b"{" + M + b', "prompt": [[-1, 5]], "max_tokens": 2}'),
        ("/v1/completions", b"{" + M + b', "prompt": [1e400], "max_tokens": 2}'),
        ("/v1/completions", b"{" + M + b', "prompt": "' + b"\xc3\x28" * 1000 + b'"}'),
        ("/v1/completions", b"{" + M + b', "prompt": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        ("/v1/embeddings", b"{" + M + b', "input": ' + b"[" * 3000 + b"]" * 3000 + b"}"),
        ("/v1/embeddings", b"{" + M + b', "input": [[-7]]}'),
        ("/tokenize", b"{" + M + b', "content": 12345}'),
        ("/detokenize", b"{" + M + b', "tokens": [' + b"9" * 40 + b"]}"),
        ("/detokenize", b"{" + M + b', "tokens": "not a list"}'),
        ("/v1/chat/completions", b'{"model": "' + b"m" * 1_000_000 + b'", "messages": [{"role": "user", "content": "hi"}]}'),
    ],
    ids=["nan", "infinity", "huge-n", "negative-max-tokens", "huge-logit-bias-key", "deep-tool-schema",
         "negative-token-id", "float-overflow-token", "invalid-utf8-prompt", "deep-prompt", "deep-embedding-input",
         "negative-embedding-token", "wrong-type-content", "huge-token-id", "wrong-type-tokens", "megabyte-model-name"],
)
def test_hostile_bodies_on_every_endpoint_are_4xx(http, path, raw):
    response = http.post(path, content=raw, headers={"content-type": "application/json"})
    assert 400 <= response.status_code < 500, response.text[:500]
    assert response.json()["error"]["message"]


BIG_SCHEMA = {"type": "object", "properties": {f"p{i}": {"type": "string", "description": "x" * 100} for i in range(3000)}}


@pytest.mark.parametrize("patch, limit", [
    ({"messages": MESSAGES * 4097}, "at most 4096 items"),
    ({"tools": [{"type": "function", "function": {"name": f"f{i}"}} for i in range(129)]}, "at most 128 items"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "big", "schema": BIG_SCHEMA}}},
     "a JSON schema may take at most 262144 bytes"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": BIG_SCHEMA}}]},
     "a JSON schema may take at most 262144 bytes"),
])
def test_size_limits_are_400s_that_name_the_limit(http, patch, limit):
    response = http.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "messages": MESSAGES, **patch})
    assert limit in assert_error(response, 400)["message"]
