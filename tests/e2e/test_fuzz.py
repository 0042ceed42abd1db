"""Schemathesis against the server's own /openapi.json: no 5xx, and every error is an OpenAI error object.

Bounded: a few dozen valid and a few dozen invalid bodies per operation, no shrinking, and generation
lengths clamped so that a valid request costs a handful of tokens. (Schemathesis' pytest plugin does not
run under this pytest, so the test drives its strategies with hypothesis directly.)
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.conftest import DEFAULT_MODEL

# Per operation: valid bodies generate tokens (slow); invalid ones are refused at once (cheap).
EXAMPLES = {GenerationMode.POSITIVE: 30, GenerationMode.NEGATIVE: 100}
SKIPPED = ("/add_model", "/remove_model")  # management: a fuzzer has no business loading or removing models
# Per request: what a generated body may ask for, at most.
CLAMPS = {"max_tokens": 4, "max_completion_tokens": 4, "thinking_max_tokens": 4, "n": 2, "top_logprobs": 2,
          "logprobs": 2}


def tame(body):
    """The served model's name where a string names one (so validation runs past the model lookup), and short
    generations."""
    if not isinstance(body, dict):
        return body
    if isinstance(body.get("model"), str):
        body["model"] = DEFAULT_MODEL
    for key, limit in CLAMPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            body[key] = limit
    if body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = CLAMPS["max_tokens"]  # else a chat generation runs to the end of the context
    if "thinking_template" in body:
        body.setdefault("thinking_max_tokens", CLAMPS["thinking_max_tokens"])
    if isinstance(body.get("prompt"), list):
        body["prompt"] = body["prompt"][:2]
    return body


def operations(base_url: str):
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    return [operation for operation in found if operation.path not in SKIPPED]


def test_the_schema_describes_the_request_bodies(server):
    bodies = {op.path for op in operations(server.base_url) if op.body}
    assert {"/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/tokenize", "/detokenize"} <= bodies


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["valid", "invalid"])
def test_no_server_errors_and_errors_are_openai_objects(server, mode):
    for operation in operations(server.base_url):
        if mode == GenerationMode.NEGATIVE and not operation.body:
            continue  # a GET without a body has nothing to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=EXAMPLES[mode], deadline=None, phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck), database=None)
        def check(case) -> None:
            if case.body is not None:
                case.body = tame(case.body)
            response = case.call(base_url=server.base_url, timeout=60)
            where = f"{case.method} {case.path} {case.body!r:.300} -> {response.status_code}: {response.text[:300]}"
            assert response.status_code < 500, where
            if response.status_code >= 400:
                error = response.json().get("error")
                assert isinstance(error, dict) and isinstance(error.get("message"), str) and "type" in error, where

        check()
