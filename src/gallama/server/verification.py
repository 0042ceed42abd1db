"""A finished answer checked against its schemas; a broken one is drawn again, a bounded number of times."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from gallama.agentic.schema_check import AnswerCheck

if TYPE_CHECKING:
    from gallama.server.chat_answer import ChoiceOutput

# Tries per choice, the first included: each retry costs a whole answer's tokens.
ANSWER_TRIES = 4

FINISHED = ("stop", "tool_calls", "function_call")


@dataclass
class Verification:
    check: AnswerCheck
    param: str  # the request parameter that holds the schema, named in the error
    retry: Callable[[int, int], object] | None = None  # (choice, try) -> a new run; None: one try only

    @property
    def tries(self) -> int:
        return ANSWER_TRIES if self.retry is not None else 1

    def violation(self, answer: ChoiceOutput) -> str | None:
        """What the answer breaks; None when it validates or did not finish (out of tokens is not checked)."""
        if answer.final_reason(answer.finish_reason) not in FINISHED:
            return None
        calls = [(call["function"]["name"], call["function"]["arguments"]) for call in answer.tool_calls()]
        return self.check.violation(answer.content, calls)
