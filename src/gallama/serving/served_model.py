"""A loaded model instance: its engine plus what the agentic layer needs of it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from gallama.agentic.chat_template import CHATML_TEMPLATE, ChatTemplate
from gallama.agentic.constraints import ConstraintCompiler
from gallama.agentic.tool_formats import ToolCallFormat, detect_format
from gallama.engines.base import Engine
from gallama.serving.model_metrics import ModelMetrics


@dataclass
class ServedModel:
    name: str
    engine: Engine
    template: ChatTemplate
    request_timeout: float | None = None  # seconds a choice may take, queue wait included
    default_max_tokens: int | None = None  # the output budget of a request that sets none
    created: int = field(default_factory=lambda: int(time.time()))
    runs: set = field(default_factory=set)  # the choices being generated (server.choices.ChoiceRun)
    ending: Exception | None = None  # set at shutdown: the error every running or later choice ends with

    def __post_init__(self) -> None:
        self.metrics = ModelMetrics(self.engine)

    def end_generations(self, error: Exception) -> None:
        """Stops every choice being generated, and any started later, with `error` (shutdown)."""
        self.ending = error
        for run in list(self.runs):
            run.interrupt(error)

    @classmethod
    def from_engine(
        cls, name: str, engine: Engine, template_override: str | None = None, request_timeout: float | None = None,
        default_max_tokens: int | None = None,
    ) -> "ServedModel":
        source = template_override or engine.chat_template or CHATML_TEMPLATE
        special = engine.special_tokens
        template = ChatTemplate(
            source,
            bos_token=engine.token_text(special.bos) if special.bos is not None else "",
            eos_token=engine.token_text(special.eos) if special.eos is not None else "",
        )
        return cls(name=name, engine=engine, template=template, request_timeout=request_timeout,
                   default_max_tokens=default_max_tokens)

    @cached_property
    def tool_format(self) -> ToolCallFormat:
        return detect_format(self.template.source)

    @cached_property
    def constraints(self) -> ConstraintCompiler:
        return ConstraintCompiler(self.engine.constraint_tokenizer)

    def tokenize_prompt(self, text: str) -> list[int]:
        """Tokens of a rendered prompt; special tokens in the text are parsed as such.

        Templates write the BOS token themselves, so it is only added when the
        model wants one and the text did not start with it.
        """
        tokens = self.engine.tokenize(text, add_special=False, parse_special=True)
        special = self.engine.special_tokens
        if special.add_bos and special.bos is not None and (not tokens or tokens[0] != special.bos):
            tokens.insert(0, special.bos)
        return tokens

    def render_chat(self, messages: list[dict[str, Any]], **template_vars: Any) -> str:
        return self.template.render(messages, add_generation_prompt=True, **template_vars)

    def close(self) -> None:
        self.engine.close()
