"""The retry loop of a non-streamed answer: a broken answer is drawn again, usage counts every try."""

import asyncio

import pytest

from gallama.agentic.schema_check import AnswerCheck, SchemaCheck
from gallama.protocol.errors import AnswerInvalid
from gallama.protocol.responses import ResponseHeader
from gallama.server.choices import Piece
from gallama.server.chat_answer import ChoiceOutput
from gallama.server.routes.chat import complete
from gallama.server.verification import ANSWER_TRIES, Verification

UNIQUE = SchemaCheck({"type": "array", "uniqueItems": True})


class TextRun:
    """A finished answer's text in one piece (the loop under test, not the engine)."""

    def __init__(self, text: str, tokens: int):
        self.text, self.completion_tokens, self.cancelled = text, tokens, False

    async def pieces(self):
        yield Piece(self.text, [], "stop")

    def cancel(self):
        self.cancelled = True


def run_complete(answers: list[str], tries_made: list[tuple[int, int]]):
    runs = [TextRun(answers[0], 5)]

    def retry(index: int, attempt: int) -> TextRun:
        tries_made.append((index, attempt))
        return TextRun(answers[attempt], 5)

    verification = Verification(AnswerCheck(text=UNIQUE), "response_format", retry)
    outputs = [ChoiceOutput(model=None, plan=None)]
    return asyncio.run(complete(runs, outputs, ResponseHeader("chatcmpl", "chat.completion", "m"), 10, False,
                                verification)), runs


def test_broken_answer_is_drawn_again_and_usage_counts_every_try():
    tries: list[tuple[int, int]] = []
    reply, _ = run_complete(["[1, 1]", "[2, 2]", "[1, 2]"], tries)
    assert tries == [(0, 1), (0, 2)]
    assert reply["choices"][0]["message"]["content"] == "[1, 2]"
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert reply["usage"]["completion_tokens"] == 15


def test_no_valid_try_is_an_error_naming_keyword_and_path():
    tries: list[tuple[int, int]] = []
    with pytest.raises(AnswerInvalid) as raised:
        run_complete(["[1, 1]"] * ANSWER_TRIES, tries)
    assert len(tries) == ANSWER_TRIES - 1
    assert "'uniqueItems' at '/'" in raised.value.message and raised.value.status_code == 422


def test_an_answer_out_of_tokens_is_not_checked():
    output = ChoiceOutput(model=None, plan=None, content="[1, 1", finish_reason="length")
    assert Verification(AnswerCheck(text=UNIQUE), "response_format").violation(output) is None
