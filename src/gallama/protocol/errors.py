"""Error objects, raised as exceptions and rendered in one place, in the shape of the API they came through."""

from __future__ import annotations

from typing import Any, Iterable

from gallama.engines.base import EngineOverloaded

ANTHROPIC_PATHS = ("/v1/messages",)
RESPONSES_PATH = "/v1/responses"
# Anthropic's error types by status (docs.anthropic.com, "Errors").
ANTHROPIC_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                   404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
                   429: "rate_limit_error", 503: "overloaded_error", 529: "overloaded_error"}
# OpenAI's error types that are not invalid_request_error (a 4xx) or server_error (a 5xx).
OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}


def speaks_anthropic(path: str) -> bool:
    return path.startswith(ANTHROPIC_PATHS)


class APIError(Exception):
    """An error a client gets; `status` overrides the class's status (an HTTP layer's 404, 405, 401, 413...)."""

    status_code = 400

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None, headers: dict | None = None,
                 status: int | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}
        if status is not None:
            self.status_code = status

    @property
    def error_type(self) -> str:
        return OPENAI_TYPES.get(self.status_code) or ("invalid_request_error" if self.status_code < 500 else "server_error")

    def body(self, path: str = "") -> dict[str, Any]:
        """The error body for a request to `path`: Anthropic's `{"type": "error", ...}` on its routes, else OpenAI's."""
        if speaks_anthropic(path):
            return {"type": "error", "error": {"type": ANTHROPIC_TYPES.get(self.status_code, "api_error"),
                                               "message": self.message}}
        return {"error": {"message": self.message, "type": self.error_type, "param": self.param, "code": self.code}}

    def stream_event(self, path: str) -> dict[str, Any]:
        """The event that ends a named-event stream on `path` with this error (Messages, Responses)."""
        if path.startswith(RESPONSES_PATH):
            return {"type": "error", "code": self.code, "message": self.message, "param": self.param}
        return self.body(path)


def as_api_error(error: Exception) -> APIError | None:
    """What an exception means to the client: itself, a 429 for a full engine queue; None: a fault of the server."""
    if isinstance(error, APIError):
        return error
    if isinstance(error, EngineOverloaded):
        return RateLimited(str(error), error.retry_after_s)
    return None


class InvalidRequest(APIError):
    status_code = 400


class ModelNotFound(APIError):
    status_code = 404

    def __init__(self, model: str, detail: str = ""):
        message = f"The model '{model}' does not exist or is not served here."
        super().__init__(f"{message} {detail}" if detail else message, param="model", code="model_not_found")


class ContextLengthExceeded(APIError):
    status_code = 400

    def __init__(self, message: str):
        super().__init__(message, param="messages", code="context_length_exceeded")


class RateLimited(APIError):
    status_code = 429

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, code="rate_limit_exceeded", headers={"Retry-After": str(retry_after_s)})


class ServiceUnavailable(APIError):
    status_code = 503


class ServerFailed(APIError):
    status_code = 500


def check_token_ids(tokens: Iterable[int], vocab_size: int, param: str, where: str | None = None) -> None:
    """Token ids a client sends must name tokens of the model (a negative one would count from the end)."""
    outside = next((token for token in tokens if not 0 <= token < vocab_size), None)
    if outside is not None:
        raise InvalidRequest(f"{where or param} has token id {outside}, outside the vocabulary "
                             f"(ids 0 to {vocab_size - 1})", param=param)


def unsupported_parameter(name: str, why: str = "is not supported by this server") -> InvalidRequest:
    return InvalidRequest(f"The parameter '{name}' {why}.", param=name, code="unsupported_parameter")


class AnswerInvalid(APIError):
    """Every try's answer broke the schema. A 4xx: a client retry would meet the same schema and model."""

    status_code = 422

    def __init__(self, violation: str, tries: int, param: str):
        super().__init__(
            f"No valid answer in {tries} {'try' if tries == 1 else 'tries'}: {violation}",
            param=param, code="schema_not_met",
        )


class RequestTimedOut(APIError):
    # A 4xx, not 408 or 5xx: clients (the openai one included) retry those, and the same request would
    # run into the same limit again.
    status_code = 400

    def __init__(self, timeout_s: float, tokens: int):
        super().__init__(
            f"The request ran past the server's request timeout of {timeout_s:g} s after {tokens} generated tokens "
            "and was stopped; lower max_tokens or raise --request-timeout.",
            param="max_tokens", code="request_timeout",
        )


class ServerShuttingDown(ServiceUnavailable):
    def __init__(self):
        super().__init__("The server is shutting down; this request was stopped. Retry on a running server.",
                         code="server_shutting_down", headers={"Retry-After": "5"})


class ResponseNotFound(APIError):
    status_code = 404

    def __init__(self, response_id: str, param: str | None = None):
        super().__init__(f"Response with id '{response_id}' not found.", param=param, code="not_found")
