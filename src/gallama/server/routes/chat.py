"""POST /v1/chat/completions."""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from gallama.agentic.chat_template import TemplateError
from gallama.protocol.errors import InvalidRequest
from gallama.protocol.requests import ChatCompletionRequest, ChatMessage
from gallama.protocol.responses import ResponseHeader, chat_logprobs, usage
from gallama.router.served_model import ServedModel
from gallama.server.choices import ChoiceRun, merge_choices, start_choices
from gallama.server.planning import choice_specs, output_budget
from gallama.server.sse import sse_response

router = APIRouter()


def template_messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    rendered = []
    for message in messages:
        # Few templates know the developer role; it means what system meant before it.
        role = "system" if message.role == "developer" else message.role
        entry: dict[str, Any] = {"role": role, "content": message.text()}
        if message.name is not None:
            entry["name"] = message.name
        if message.tool_call_id is not None:
            entry["tool_call_id"] = message.tool_call_id
        rendered.append(entry)
    return rendered


def chat_prompt(model: ServedModel, body: ChatCompletionRequest) -> list[int]:
    try:
        text = model.render_chat(template_messages(body.messages))
    except TemplateError as error:
        raise InvalidRequest(str(error), param="messages") from error
    return model.tokenize_prompt(text)


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    prompt_tokens = chat_prompt(model, body)
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = output_budget(model, prompt_tokens, body.output_limit(), param)
    top_logprobs = (body.top_logprobs or 0) if body.logprobs else None
    specs = choice_specs(model, body, prompt_tokens, max_tokens, top_logprobs, body.stop_list())
    runs = start_choices(model, specs)
    header = ResponseHeader("chatcmpl", "chat.completion", body.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(stream_chunks(model, runs, header, len(prompt_tokens), include_usage, body.logprobs), runs)
    return await complete(model, runs, header, len(prompt_tokens), body.logprobs)


async def complete(model: ServedModel, runs: list[ChoiceRun], header: ResponseHeader, n_prompt: int, logprobs: bool):
    texts = [""] * len(runs)
    events: list[list] = [[] for _ in runs]
    finish: list[str | None] = [None] * len(runs)
    try:
        async for index, piece in merge_choices([run.pieces() for run in runs]):
            texts[index] += piece.text
            events[index].extend(piece.events)
            finish[index] = piece.finish_reason or finish[index]
    finally:
        for run in runs:
            run.cancel()
    choices = [
        {
            "index": i,
            "message": {"role": "assistant", "content": texts[i], "refusal": None},
            "logprobs": {"content": chat_logprobs(events[i], model.engine.token_bytes), "refusal": None}
            if logprobs
            else None,
            "finish_reason": finish[i],
        }
        for i in range(len(runs))
    ]
    header.object = "chat.completion"
    return header.wrap(choices=choices, usage=usage(n_prompt, sum(r.completion_tokens for r in runs)))


async def stream_chunks(
    model: ServedModel,
    runs: list[ChoiceRun],
    header: ResponseHeader,
    n_prompt: int,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[dict[str, Any]]:
    header.object = "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, events=None) -> dict[str, Any]:
        choice = {
            "index": index,
            "delta": delta,
            "logprobs": {"content": chat_logprobs(events, model.engine.token_bytes), "refusal": None}
            if logprobs and events
            else None,
            "finish_reason": finish_reason,
        }
        return header.wrap(choices=[choice], **extra)

    for index in range(len(runs)):
        yield chunk(index, {"role": "assistant", "content": "", "refusal": None})
    async for index, piece in merge_choices([run.pieces() for run in runs]):
        if piece.text or (logprobs and piece.events):
            yield chunk(index, {"content": piece.text}, events=piece.events)
        if piece.finish_reason is not None:
            yield chunk(index, {}, piece.finish_reason)
    if include_usage:
        yield header.wrap(choices=[], usage=usage(n_prompt, sum(r.completion_tokens for r in runs)))
