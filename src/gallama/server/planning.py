"""From a validated request to the engine requests of its choices."""

from __future__ import annotations

import dataclasses
import json
import random

from gallama.agentic import constraints
from gallama.agentic.constraints import ConstraintError
from gallama.agentic.schema_check import SchemaCheck, SchemaCheckError, check_for
from gallama.engines.base import GenerationRequest, SamplingParams
from gallama.protocol.errors import ContextLengthExceeded, InvalidRequest, check_token_ids
from gallama.protocol.requests import SamplingFields
from gallama.serving.served_model import ServedModel
from gallama.server.choices import ChoiceSpec


def sampling_params(body: SamplingFields, vocab_size: int, seed: int | None) -> SamplingParams:
    bias = {int(key): value for key, value in (body.logit_bias or {}).items()}
    check_token_ids(bias, vocab_size, "logit_bias")
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
        return min(context - len(prompt_tokens), model.default_max_tokens or context)
    if len(prompt_tokens) + requested > context:
        error = ContextLengthExceeded(
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{len(prompt_tokens) + requested} tokens ({len(prompt_tokens)} in the prompt, {requested} for the "
            f"completion). Please reduce the prompt or {param}."
        )
        raise error
    return requested


# A retry draws with at least this temperature, more each try: at temperature 0 it would repeat the broken answer.
RETRY_TEMPERATURE = 0.7
RETRY_TEMPERATURE_STEP = 0.3


def _guided_json_schema(value):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as error:
            raise ConstraintError(f"guided_json is not valid JSON: {error}") from error
    return value


def _guided_json_grammar(value) -> str:
    return constraints.json_schema_grammar(_guided_json_schema(value))


def requested_schema(body: SamplingFields) -> tuple[str, dict | bool] | None:
    """(parameter, schema) of the JSON schema the answer must follow, when the request gives one."""
    if body.response_format is not None and body.response_format.type == "json_schema":
        return "response_format", body.response_format.json_schema.schema_
    if body.guided_json is not None:
        try:
            return "guided_json", _guided_json_schema(body.guided_json)
        except ConstraintError as error:
            raise InvalidRequest(f"Invalid guided_json: {error}", param="guided_json", code="invalid_grammar") from error
    return None


def schema_check(body: SamplingFields) -> tuple[str, SchemaCheck] | None:
    """(parameter, check) for the request's JSON schema; a schema jsonschema cannot read is a 400."""
    found = requested_schema(body)
    if found is None:
        return None
    param, schema = found
    try:
        return param, check_for(schema)
    except SchemaCheckError as error:
        raise InvalidRequest(f"Invalid {param}: {error}", param=param, code="invalid_grammar") from error


def requested_constraints(body: SamplingFields) -> list[tuple[str, callable]]:
    """The constraint parameters this request sets, each with its grammar builder."""
    found = []
    if body.response_format is not None and body.response_format.type == "json_object":
        found.append(("response_format", constraints.json_object_grammar))
    if body.response_format is not None and body.response_format.type == "json_schema":
        schema = body.response_format.json_schema.schema_
        found.append(("response_format", lambda: constraints.json_schema_grammar(schema)))
    builders = {
        "regex_pattern": constraints.regex_grammar,
        "regex_prefix_pattern": constraints.regex_prefix_grammar,
        "grammar": constraints.user_grammar,
        "guided_json": _guided_json_grammar,
        "guided_regex": constraints.regex_grammar,
        "guided_choice": constraints.choice_grammar,
        "guided_grammar": constraints.user_grammar,
    }
    for name, build in builders.items():
        value = getattr(body, name)
        if value is not None:
            found.append((name, lambda build=build, value=value: build(value)))
    return found


def constraint_grammar(
    model: ServedModel, body: SamplingFields, grammar_override: str | None = None, param: str | None = None
) -> str | None:
    """The request's one grammar, checked by the compiler; None when output is free.

    grammar_override: a grammar built elsewhere (tool calls), checked under `param`.
    """
    found = requested_constraints(body) if grammar_override is None else [(param, lambda: grammar_override)]
    if len(found) > 1:
        names = [name for name, _ in found]
        raise InvalidRequest(
            f"{' and '.join(names)} cannot be combined in one request: each constrains the whole output",
            param=names[1],
        )
    if not found:
        return None
    name, build = found[0]
    try:
        grammar = build()
        model.constraints.matcher(grammar)  # compile now: a bad grammar fails before any token
    except ConstraintError as error:
        raise InvalidRequest(f"Invalid {name}: {error}", param=name, code="invalid_grammar") from error
    return grammar


def choice_spec(
    model: ServedModel,
    body: SamplingFields,
    index: int,
    prompt_tokens: list[int],
    max_tokens: int,
    top_logprobs: int | None,
    stops: list[str],
    keep_stop: bool = False,
    grammar: str | None = None,
    attempt: int = 0,
) -> ChoiceSpec:
    """The engine request of choice `index`; `attempt` > 0: its retry after an answer that broke the schema."""
    # n choices under one seed must differ from each other yet stay reproducible.
    seed = None if body.seed is None else body.seed + index
    sampling = sampling_params(body, model.engine.vocab_size, seed)
    if attempt:
        sampling = retry_sampling(sampling, attempt)
    request = GenerationRequest(
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        sampling=sampling,
        top_logprobs=top_logprobs,
        constraint=model.constraints.matcher(grammar) if grammar is not None else None,
    )
    return ChoiceSpec(request=request, stops=stops, keep_stop=keep_stop)


def retry_sampling(sampling: SamplingParams, attempt: int) -> SamplingParams:
    """A retry samples, under a seed derived from the request's so a seeded request stays reproducible."""
    seed = None if sampling.seed is None else random.Random(f"{sampling.seed}/{attempt}").getrandbits(63)
    floor = RETRY_TEMPERATURE + RETRY_TEMPERATURE_STEP * (attempt - 1)
    return dataclasses.replace(sampling, temperature=max(sampling.temperature, floor), seed=seed)


def choice_specs(model: ServedModel, body: SamplingFields, *args, **kwargs) -> list[ChoiceSpec]:
    return [choice_spec(model, body, index, *args, **kwargs) for index in range(body.n)]
