"""POST /v1/responses: OpenAI's Responses API, translated onto the chat core (gallama.protocol.responses_api)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from gallama.protocol.errors import ContextLengthExceeded, ResponseNotFound
from gallama.protocol.responses_api import (
    EventStream, ResponseShell, ResponsesRequest, Translation, drop_oldest_turn, translate,
)
from gallama.protocol.responses_lifecycle import ResponseIdentity
from gallama.serving.served_model import ServedModel
from gallama.server.responses_store import ResponsesStore
from gallama.server.routes.chat import complete, start_chat, stream_chunks
from gallama.server.sse import sse_response, stream_error

router = APIRouter()
log = logging.getLogger("gallama")


def responses_store(app) -> ResponsesStore:
    """The worker's store: the front's file, or (an app run without a front) a temporary one of its own."""
    store = getattr(app.state, "responses_store", None)
    if store is None:
        store = app.state.responses_store = ResponsesStore(ResponsesStore.temporary_path())
    return store


def token_counter(model: ServedModel):
    def count(text: str) -> int:
        return len(model.engine.tokenize(text, add_special=False, parse_special=False))
    return count


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    store = responses_store(request.app)
    secret = store.secret()
    history = None
    if body.previous_response_id is not None:
        history = await asyncio.to_thread(store.conversation, body.previous_response_id)
        if history is None:
            raise ResponseNotFound(body.previous_response_id, param="previous_response_id")
    translation = translate(body, history, secret)
    if translation.not_offered:
        # A warning: workers log from that level up, and the client asked for something it does not get.
        log.warning("responses: hosted tools not offered to the model (gallama cannot run them): %s",
                    ", ".join(translation.not_offered))
    chat = start_within_context(model, translation)
    shell = ResponseShell(body, translation, body.model, secret, ResponseIdentity.from_headers(request.headers))
    conversation = (history or []) + translation.input_items

    async def keep(response: dict[str, Any]) -> None:
        if body.store:
            await asyncio.to_thread(store.put, response, conversation + response["output"])

    if body.stream:
        chunks = stream_chunks(chat.runs, chat.outputs, chat.header, chat.n_prompt, True, False, chat.verification)
        return sse_response(stream_events(chunks, EventStream(shell, token_counter(model)), keep), chat.runs, request)
    result = await complete(chat.runs, chat.outputs, chat.header, chat.n_prompt, False, chat.verification)
    choice = result["choices"][0]
    response = shell.final(choice["message"], choice["finish_reason"], result["usage"], token_counter(model))
    await keep(response)
    return response


def start_within_context(model: ServedModel, translation: Translation):
    """The chat started; with truncation "auto", its oldest turns dropped until it fits the context (and said so)."""
    while True:
        try:
            return start_chat(model, translation.chat, translation.custom)
        except ContextLengthExceeded:
            shorter = drop_oldest_turn(translation.chat) if translation.truncate else None
            if shorter is None:
                raise
            translation.chat, dropped = shorter
            translation.dropped_messages += dropped
            log.warning("responses: truncation auto dropped the oldest %d messages to fit the context", dropped)


async def stream_events(chunks: AsyncIterator[dict[str, Any]], events: EventStream, keep) -> AsyncIterator[dict[str, Any]]:
    """The Responses events of a chat stream; it always ends with response.completed or response.failed."""
    for event in events.start():
        yield event
    try:
        async for chunk in chunks:
            for event in events.feed(chunk):
                yield event
    except Exception as error:  # noqa: BLE001 (an engine failure still ends the stream as the API ends it)
        for event in events.fail(stream_error(error)):
            yield event
        return
    finished = events.finish()
    await keep(events.final)
    for event in finished:
        yield event
