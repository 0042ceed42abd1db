"""One error body per API, one 429 for a full engine queue, one token-id check, one model card."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import BaseModel, model_validator

from gallama.engines.base import EngineOverloaded
from gallama.protocol.errors import APIError, InvalidRequest, RateLimited, as_api_error, check_token_ids
from gallama.protocol.responses import model_card
from gallama.server.error_handlers import install_error_handlers
from gallama.protocol.sse_frames import error_frames


@pytest.mark.parametrize("status, kind", [(400, "invalid_request_error"), (401, "authentication_error"),
                                          (403, "permission_error"), (404, "invalid_request_error"),
                                          (429, "rate_limit_error"), (500, "server_error"), (503, "server_error")])
def test_the_openai_type_follows_the_status(status, kind):
    body = APIError("no", code="c", status=status).body("/v1/chat/completions")
    assert body == {"error": {"message": "no", "type": kind, "param": None, "code": "c"}}


def test_messages_routes_get_anthropic_bodies():
    body = APIError("slow down", status=429).body("/v1/messages")
    assert body == {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}


def test_a_stream_ends_with_its_api_own_error_event():
    error = InvalidRequest("bad", param="x", code="c")
    assert error_frames("/v1/chat/completions", error).endswith("data: [DONE]\n\n")
    assert error_frames("/v1/responses", error).startswith("event: error\n")
    assert '"code":"c","message":"bad","param":"x"' in error_frames("/v1/responses", error)
    assert '"type":"invalid_request_error","message":"bad"' in error_frames("/v1/messages", error)


def test_a_full_queue_is_one_429_with_retry_after_for_every_route_and_stream():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/messages")
    async def full():
        raise EngineOverloaded(retry_after_s=3)

    response = TestClient(app).post("/v1/messages")
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json()["error"]["type"] == "rate_limit_error"
    mapped = as_api_error(EngineOverloaded())
    assert isinstance(mapped, RateLimited) and mapped.code == "rate_limit_exceeded"
    assert as_api_error(RuntimeError("decode failed")) is None


@pytest.mark.parametrize("tokens, bad", [([0, 5, 9], None), ([3, 10], 10), ([-1], -1)])
def test_token_ids_must_lie_in_the_vocabulary(tokens, bad):
    if bad is None:
        check_token_ids(tokens, 10, "tokens")
        return
    with pytest.raises(InvalidRequest) as caught:
        check_token_ids(tokens, 10, "prompt")
    assert caught.value.param == "prompt"
    assert f"has token id {bad}, outside the vocabulary (ids 0 to 9)" in caught.value.message


def test_model_cards():
    assert model_card("m", 1, 4096) == {"id": "m", "object": "model", "created": 1, "owned_by": "gallama",
                                        "context_length": 4096}
    assert model_card("m", 1, None, instances=2, status="ready") == {
        "id": "m", "object": "model", "created": 1, "owned_by": "gallama", "instances": 2, "status": "ready"}


class _CompletionBody(BaseModel):
    n: int = 1
    best_of: int | None = None

    @model_validator(mode="after")
    def same_n(self):
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported")
        return self


def test_validation_errors_name_the_field_or_the_body_without_pythons_words():
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/v1/completions")
    async def complete(body: _CompletionBody):
        return {}

    client = TestClient(app)
    field = client.post("/v1/completions", json={"n": "many"}).json()["error"]
    assert field["param"] == "n" and field["message"].startswith("Invalid value for 'n': ")
    whole = client.post("/v1/completions", json={"n": 1, "best_of": 3}).json()["error"]
    assert whole == {"message": "Invalid request: best_of other than n is not supported",
                     "type": "invalid_request_error", "param": None, "code": None}
    not_object = client.post("/v1/completions", json=[1]).json()["error"]
    assert not_object["message"] == "The request body must be a JSON object." and not_object["param"] is None
