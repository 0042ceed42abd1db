"""Every error a request can meet, answered as the API's own error object (OpenAI's or Anthropic's).

Shared by a worker's app and the front, which installs them without loading the chat core."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gallama.engines.base import EngineOverloaded
from gallama.protocol.errors import APIError, InvalidRequest, ServerFailed, as_api_error

log = logging.getLogger(__name__)


def _respond(request: Request, error: APIError) -> JSONResponse:
    return JSONResponse(status_code=error.status_code, content=error.body(request.url.path), headers=error.headers)


def _validation_message(error: dict) -> tuple[str, str | None]:
    location = [str(part) for part in error.get("loc", ()) if part != "body"]
    param = ".".join(location) or None
    if error.get("type") == "json_invalid":
        return f"The request body is not valid JSON: {error.get('ctx', {}).get('error', error.get('msg'))}", None
    if error.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if error.get("type") == "missing":
        return f"Missing required parameter: '{param}'.", param
    # pydantic prefixes what a validator raised with "Value error, ": the client wrote no Python.
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    if param is None:  # the body as a whole: not an object, or fields that contradict each other
        if error.get("type") in ("model_attributes_type", "dict_type", "model_type"):
            return "The request body must be a JSON object.", None
        return f"Invalid request: {message}", None
    return f"Invalid value for '{param}': {message}", param


def install_error_handlers(app: FastAPI) -> None:
    """Every error as the API's error object; shared by the single-model app and the multi-model front."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, error: APIError):
        return _respond(request, error)

    @app.exception_handler(EngineOverloaded)
    async def full_queue(request: Request, error: EngineOverloaded):
        # Raised before any output: a stream that meets a full queue later ends with the same error as an event.
        return _respond(request, as_api_error(error))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError):
        errors = error.errors()
        message, param = _validation_message(errors[0]) if errors else ("Invalid request.", None)
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return _respond(request, InvalidRequest(message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):
        code = "not_found" if error.status_code == 404 else None
        return _respond(request, APIError(str(error.detail), code=code, status=error.status_code))

    @app.exception_handler(RecursionError)
    async def too_deep(request: Request, error: RecursionError):
        # Only a client's absurdly nested JSON recurses this deep.
        return _respond(request, InvalidRequest("The request body is nested too deeply.", code="nesting_too_deep"))

    @app.exception_handler(Exception)
    async def unexpected_error(request: Request, error: Exception):
        log.exception("unhandled error")
        return _respond(request, ServerFailed(f"internal error: {type(error).__name__}"))
