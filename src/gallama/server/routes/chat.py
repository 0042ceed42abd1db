"""POST /v1/chat/completions, and the chat core that every chat-shaped API (chat, Responses, Messages) runs."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from gallama.agentic.custom_input import CustomInput
from gallama.protocol.errors import AnswerInvalid
from gallama.protocol.requests import ChatCompletionRequest
from gallama.protocol.responses import ResponseHeader, chat_logprobs, usage
from gallama.server.chat_answer import REASONING_TAGS, ChoiceOutput
from gallama.server.chat_plan import ChatPlan, plan_chat
from gallama.server.choices import ChoiceRun, merge_choices, start_choices
from gallama.server.planning import choice_spec, choice_specs, output_budget
from gallama.server.sse import sse_response
from gallama.server.thinking_run import start_thinking
from gallama.server.verification import Verification
from gallama.serving.served_model import ServedModel

router = APIRouter()


@dataclass
class ChatStart:
    """A chat request under way: one run per choice, and what assembles each choice's answer."""

    runs: list
    outputs: list[ChoiceOutput]
    header: ResponseHeader
    n_prompt: int
    verification: Verification | None = None  # the exact schema's check of each finished answer


def start_chat(model: ServedModel, body: ChatCompletionRequest, custom: dict[str, CustomInput] | None = None) -> ChatStart:
    """Plans and starts a chat request.

    custom: the tools whose input is freeform text (Responses custom tools); their calls' arguments are that text.
    """
    plan = plan_chat(model, body, custom)
    runs = start_thinking(model, body, plan) if body.thinking_template is not None else start_answers(model, body, plan)
    # A template that opens the thinking tag itself leaves the model inside it.
    thinking_open = plan.prompt_text.rstrip().endswith(REASONING_TAGS.open) and not body.leading_prompt
    outputs = [
        ChoiceOutput(model, plan.tools, legacy=body.legacy_functions, return_thinking=body.return_thinking,
                     thinking_open=thinking_open)
        for _ in runs
    ]
    header = ResponseHeader("chatcmpl", "chat.completion", body.model)
    return ChatStart(runs, outputs, header, len(plan.prompt_tokens), plan.verification)


def start_answers(model: ServedModel, body: ChatCompletionRequest, plan: ChatPlan) -> list[ChoiceRun]:
    """Each choice answers the prompt; a non-streamed answer that breaks its schema may be drawn again."""
    param = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    max_tokens = output_budget(model, plan.prompt_tokens, body.output_limit(), param)
    args = (plan.prompt_tokens, max_tokens, plan.top_logprobs, body.stop_list(), body.return_stop_word, plan.grammar)
    runs = start_choices(model, choice_specs(model, body, *args))
    if plan.verification is not None and not body.stream:  # a stream's deltas are out: it cannot take them back

        def retry(index: int, attempt: int) -> ChoiceRun:
            model.metrics.schema_retries.inc()
            return start_choices(model, [choice_spec(model, body, index, *args, attempt=attempt)])[0]

        plan.verification.retry = retry
    return runs


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    chat = start_chat(model, body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        chunks = stream_chunks(chat.runs, chat.outputs, chat.header, chat.n_prompt, include_usage, body.logprobs,
                               chat.verification)
        return sse_response(chunks, chat.runs, request)
    return await complete(chat.runs, chat.outputs, chat.header, chat.n_prompt, body.logprobs, chat.verification)


async def collect(run: ChoiceRun, output: ChoiceOutput) -> None:
    async for piece in run.pieces():
        output.piece_deltas(piece)
        output.events.extend(piece.events)
        output.finish_reason = piece.finish_reason or output.finish_reason
        if output.repeated:
            run.cancel()


async def complete(runs: list[ChoiceRun], outputs: list[ChoiceOutput], header: ResponseHeader, n_prompt: int, logprobs,
                   verification: Verification | None = None):
    spent = list(runs)  # every try's run: usage counts all their tokens

    async def settle(index: int) -> None:
        """Collects the choice; an answer that breaks its schema is drawn again while tries remain."""
        for attempt in range(verification.tries if verification else 1):
            if attempt:
                runs[index] = verification.retry(index, attempt)
                spent.append(runs[index])
                outputs[index] = outputs[index].restarted()
            await collect(runs[index], outputs[index])
            violation = verification.violation(outputs[index]) if verification else None
            if violation is None:
                return
        raise AnswerInvalid(violation, verification.tries, verification.param)

    tasks = [asyncio.create_task(settle(index)) for index in range(len(runs))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        for run in spent:
            run.cancel()
    choices = [
        {
            "index": i,
            "message": output.message(),
            "logprobs": {"content": chat_logprobs(output.events, output.model.engine.token_bytes), "refusal": None}
            if logprobs
            else None,
            "finish_reason": output.final_reason(output.finish_reason),
        }
        for i, output in enumerate(outputs)
    ]
    return header.wrap(choices=choices, usage=usage(n_prompt, sum(r.completion_tokens for r in spent), spent))


async def stream_chunks(
    runs: list[ChoiceRun],
    outputs: list[ChoiceOutput],
    header: ResponseHeader,
    n_prompt: int,
    include_usage: bool,
    logprobs: bool,
    verification: Verification | None = None,
) -> AsyncIterator[dict[str, Any]]:
    header.object = "chat.completion.chunk"
    extra = {"usage": None} if include_usage else {}

    def chunk(index: int, delta: dict[str, Any], finish_reason: str | None = None, events=None) -> dict[str, Any]:
        model = outputs[index].model
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
        output = outputs[index]
        deltas = output.piece_deltas(piece)
        for number, delta in enumerate(deltas):
            yield chunk(index, delta, events=piece.events if number == 0 else None)
        if not deltas and logprobs and piece.events:
            yield chunk(index, {"content": ""}, events=piece.events)
        if output.repeated and output.finish_reason is None:
            runs[index].cancel()
            output.finish_reason = output.final_reason(None)
        elif piece.finish_reason is not None:
            output.finish_reason = piece.finish_reason
        else:
            continue
        # The deltas went out as they came; an answer that breaks its schema ends with an error, not a stop.
        violation = verification.violation(output) if verification else None
        if violation is not None:
            raise AnswerInvalid(violation, 1, verification.param)
        yield chunk(index, {}, output.final_reason(output.finish_reason))
    if include_usage:
        yield header.wrap(choices=[], usage=usage(n_prompt, sum(r.completion_tokens for r in runs), runs))
