"""A choice that thinks first: the reasoning pass, then the answer conditioned on it."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import AsyncIterator, Callable

from gallama.agentic.text_stream import partial_suffix
from gallama.agentic.thinking import ThinkingTemplate, ThinkingTemplateError, close_open_tags
from gallama.protocol.errors import InvalidRequest
from gallama.protocol.requests import ChatCompletionRequest
from gallama.server.chat_plan import ChatPlan, chat_prompt_text
from gallama.server.choices import ChoiceRun, ChoiceSpec, Piece, queue_all
from gallama.server.planning import choice_spec, choice_specs, constraint_grammar, output_budget
from gallama.serving.served_model import ServedModel

DEFAULT_THINKING_TOKENS = 512


@dataclass
class ReasoningPiece(Piece):
    """Text of the thinking pass: reasoning, never content."""


class ThinkingRun:
    """Same interface as ChoiceRun. The answer's request is built once the thinking is known."""

    def __init__(self, model: ServedModel, thinking: ChoiceSpec, answer_spec: Callable[[str], ChoiceSpec],
                 tags: list[str]):
        """tags: the thinking template's tags, which the thinking's pieces never cut in half."""
        self.model = model
        self._tags = tags
        self._thinking = ChoiceRun(model, thinking)
        self._answer_spec = answer_spec
        self._answer: ChoiceRun | None = None
        self._cancelled = False

    @property
    def completion_tokens(self) -> int:
        return self._thinking.completion_tokens + (self._answer.completion_tokens if self._answer else 0)

    @property
    def drafted(self) -> int:
        return self._thinking.drafted + (self._answer.drafted if self._answer else 0)

    @property
    def cached_prompt_tokens(self) -> int:
        return self._thinking.cached_prompt_tokens  # the request's own prompt is the thinking pass's

    @property
    def accepted(self) -> int:
        return self._thinking.accepted + (self._answer.accepted if self._answer else 0)

    def cancel(self) -> None:
        self._cancelled = True
        self._thinking.cancel()
        if self._answer is not None:
            self._answer.cancel()

    async def pieces(self) -> AsyncIterator[Piece]:
        thought, held, finish = "", "", None
        async for piece in self._thinking.pieces():
            # A tag still being written is held back: a cut there would leave half a tag.
            held += piece.text
            cut = len(held) - partial_suffix(held, self._tags)
            ready, held = held[:cut], held[cut:]
            thought += ready
            finish = piece.finish_reason
            yield ReasoningPiece(ready, piece.events)
        if self._cancelled:
            return
        if finish == "length":  # thinking_max_tokens reached: close the thinking, then answer
            held = close_open_tags(thought)
        thought += held
        yield ReasoningPiece(held)
        self._answer = ChoiceRun(self.model, self._answer_spec(thought), deadline=self._thinking.deadline)
        async for piece in self._answer.pieces():
            yield piece


def start_thinking(model: ServedModel, body: ChatCompletionRequest, plan: ChatPlan) -> list[ThinkingRun]:
    """Each choice thinks under the template's grammar, then answers after its own thinking."""
    try:
        template = ThinkingTemplate.parse(body.thinking_template)
    except ThinkingTemplateError as error:
        raise InvalidRequest(str(error), param="thinking_template") from error
    thinking_tokens = model.tokenize_prompt(chat_prompt_text(model, body, plan.tools, note=template.instruction()))
    budget = body.thinking_max_tokens or DEFAULT_THINKING_TOKENS
    output_budget(model, thinking_tokens, budget, "thinking_max_tokens")
    # The answer's prompt will hold the thinking too: check the worst case now, not mid-answer.
    answer_limit = body.output_limit()
    output_budget(model, plan.prompt_tokens, budget + (answer_limit or 1), "thinking_max_tokens")
    thinking_grammar = constraint_grammar(model, body, grammar_override=template.grammar(budget), param="thinking_template")
    thinking_specs = choice_specs(model, body, thinking_tokens, budget, None, [], grammar=thinking_grammar)

    def answer_spec(index: int):
        def build(thought: str) -> ChoiceSpec:
            tokens = model.tokenize_prompt(plan.prompt_text + thought + "\n\n" + (body.leading_prompt or ""))
            limit = output_budget(model, tokens, answer_limit, "max_tokens")
            return choice_spec(model, body, index, tokens, limit, plan.top_logprobs, body.stop_list(),
                               body.return_stop_word, plan.grammar)
        return build

    tags = template.tags()
    return queue_all([partial(ThinkingRun, model, spec, answer_spec(index), tags) for index, spec in enumerate(thinking_specs)])
