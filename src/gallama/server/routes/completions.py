"""POST /v1/completions (legacy text completions)."""

from __future__ import annotations

from typing import Any, AsyncIterator

from fastapi import APIRouter, Request

from gallama.protocol.errors import InvalidRequest, check_token_ids
from gallama.protocol.requests import CompletionRequest
from gallama.protocol.responses import CompletionLogprobs, ResponseHeader, usage
from gallama.serving.served_model import ServedModel
from gallama.server.choices import ChoiceRun, merge_choices, start_choices
from gallama.server.planning import choice_specs, constraint_grammar, output_budget
from gallama.server.sse import sse_response

router = APIRouter()


def prompt_tokens_of(model: ServedModel, prompt: str | list[int]) -> list[int]:
    if isinstance(prompt, str):
        if not prompt:
            raise InvalidRequest("prompt must not be empty", param="prompt")
        return model.tokenize_prompt(prompt)
    check_token_ids(prompt, model.engine.vocab_size, "prompt")
    return list(prompt)


def leading_tokens(model: ServedModel, body: CompletionRequest) -> list[int]:
    """The leading prompt continues the prompt; it is not echoed nor returned."""
    if not body.leading_prompt:
        return []
    return model.engine.tokenize(body.leading_prompt, add_special=False, parse_special=True)


def prompt_text(model: ServedModel, prompt: str | list[int]) -> str:
    if isinstance(prompt, str):
        return prompt
    return model.engine.detokenize(prompt)


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request):
    model: ServedModel = request.app.state.registry.get(body.model)
    if body.echo and body.logprobs is not None:
        raise InvalidRequest("echo together with logprobs (prompt logprobs) is not supported", param="echo")
    prompts = body.prompts()
    grammar = constraint_grammar(model, body)
    token_lists = [prompt_tokens_of(model, p) + leading_tokens(model, body) for p in prompts]
    runs: list[ChoiceRun] = []
    try:
        for tokens in token_lists:
            max_tokens = output_budget(model, tokens, body.max_tokens, "max_tokens")
            specs = choice_specs(
                model, body, tokens, max_tokens, body.logprobs, body.stop_list(), body.return_stop_word, grammar
            )
            runs.extend(start_choices(model, specs))
    except BaseException:
        for run in runs:
            run.cancel()
        raise
    echoes = [prompt_text(model, prompts[i // body.n]) if body.echo else "" for i in range(len(runs))]
    n_prompt = sum(len(t) for t in token_lists) * body.n
    header = ResponseHeader("cmpl", "text_completion", body.model)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(stream_chunks(model, runs, header, echoes, n_prompt, include_usage, body.logprobs), runs, request)
    return await complete(model, runs, header, echoes, n_prompt, body.logprobs)


async def complete(model, runs: list[ChoiceRun], header: ResponseHeader, echoes: list[str], n_prompt: int, logprobs):
    texts = list(echoes)
    tracks = [CompletionLogprobs(model.engine.token_bytes, len(e)) for e in echoes]
    finish: list[str | None] = [None] * len(runs)
    try:
        async for index, piece in merge_choices([run.pieces() for run in runs]):
            texts[index] += piece.text
            tracks[index].add(piece.events)
            finish[index] = piece.finish_reason or finish[index]
    finally:
        for run in runs:
            run.cancel()
    choices = [
        {
            "index": i,
            "text": texts[i],
            "logprobs": tracks[i].as_dict() if logprobs is not None else None,
            "finish_reason": finish[i],
        }
        for i in range(len(runs))
    ]
    return header.wrap(choices=choices, usage=usage(n_prompt, sum(r.completion_tokens for r in runs), runs))


async def stream_chunks(
    model, runs: list[ChoiceRun], header: ResponseHeader, echoes: list[str], n_prompt: int, include_usage: bool, logprobs
) -> AsyncIterator[dict[str, Any]]:
    extra = {"usage": None} if include_usage else {}
    tracks = [CompletionLogprobs(model.engine.token_bytes, len(e)) for e in echoes]

    def chunk(index: int, text: str, finish_reason: str | None = None, logprob_view=None) -> dict[str, Any]:
        choice = {"index": index, "text": text, "logprobs": logprob_view, "finish_reason": finish_reason}
        return header.wrap(choices=[choice], **extra)

    for index, echo in enumerate(echoes):
        if echo:
            yield chunk(index, echo)
    async for index, piece in merge_choices([run.pieces() for run in runs]):
        view = tracks[index].add(piece.events) if logprobs is not None else None
        if piece.text or view:
            yield chunk(index, piece.text, logprob_view=view)
        if piece.finish_reason is not None:
            yield chunk(index, "", piece.finish_reason)
    if include_usage:
        yield header.wrap(choices=[], usage=usage(n_prompt, sum(r.completion_tokens for r in runs), runs))
