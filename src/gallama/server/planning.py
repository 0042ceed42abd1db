"""From a validated request to the engine requests of its choices."""

from __future__ import annotations

from gallama.engines.base import GenerationRequest, SamplingParams
from gallama.protocol.errors import ContextLengthExceeded, InvalidRequest
from gallama.protocol.requests import SamplingFields
from gallama.router.served_model import ServedModel
from gallama.server.choices import ChoiceSpec


def sampling_params(body: SamplingFields, vocab_size: int, seed: int | None) -> SamplingParams:
    bias: dict[int, float] = {}
    for key, value in (body.logit_bias or {}).items():
        token = int(key)
        if token >= vocab_size:
            raise InvalidRequest(
                f"logit_bias names token {token}, but the vocabulary has {vocab_size} tokens", param="logit_bias"
            )
        bias[token] = value
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        presence_penalty=body.presence_penalty,
        frequency_penalty=body.frequency_penalty,
        repetition_penalty=body.repetition_penalty,
        logit_bias=bias,
        seed=seed,
    )


def output_budget(model: ServedModel, prompt_tokens: list[int], requested: int | None, param: str) -> int:
    """max_tokens, checked against the context; no silent truncation."""
    context = model.engine.context_length
    if len(prompt_tokens) >= context:
        raise ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens, "
            f"but the prompt has {len(prompt_tokens)} tokens."
        )
    if requested is None:
        return context - len(prompt_tokens)
    if len(prompt_tokens) + requested > context:
        error = ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{len(prompt_tokens) + requested} tokens ({len(prompt_tokens)} in the prompt, {requested} for the "
            f"completion). Please reduce the prompt or {param}."
        )
        raise error
    return requested


def choice_specs(
    model: ServedModel,
    body: SamplingFields,
    prompt_tokens: list[int],
    max_tokens: int,
    top_logprobs: int | None,
    stops: list[str],
    keep_stop: bool = False,
) -> list[ChoiceSpec]:
    specs = []
    for index in range(body.n):
        # n choices under one seed must differ from each other yet stay reproducible.
        seed = None if body.seed is None else body.seed + index
        request = GenerationRequest(
            prompt_tokens=prompt_tokens,
            max_tokens=max_tokens,
            sampling=sampling_params(body, model.engine.vocab_size, seed),
            top_logprobs=top_logprobs,
        )
        specs.append(ChoiceSpec(request=request, stops=stops, keep_stop=keep_stop))
    return specs
