"""A chat choice's answer as it streams in: reasoning split from content, tool calls read from the text,
a repeated call cut off, and the legacy `function_call` shape when the request used `functions`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any

from gallama.agentic.reasoning import ReasoningSplitter, ReasoningTags
from gallama.agentic.tool_parser import ArgumentsDelta, CallEnd, CallStart, TextDelta
from gallama.agentic.tools import ToolPlan
from gallama.server.choices import Piece
from gallama.server.thinking_run import ReasoningPiece
from gallama.serving.served_model import ServedModel

REASONING_TAGS = ReasoningTags()


@dataclass
class ChoiceOutput:
    """One choice's answer as it builds up: text, tool calls, finish reason, logprobs."""

    model: ServedModel
    plan: ToolPlan | None
    legacy: bool = False  # the request used `functions`: answer with `function_call`
    return_thinking: bool = False
    thinking_open: bool = False
    content: str = ""
    reasoning: str = ""
    events: list = field(default_factory=list)
    finish_reason: str | None = None
    stop_string: str | None = None  # the stop string that ended the answer
    call_ids: list[str] = field(default_factory=list)
    repeated: bool = False  # the model repeated a call: the turn is over
    _held: list[dict[str, Any]] = field(default_factory=list)

    def restarted(self) -> ChoiceOutput:
        """An empty output for a new try of the same choice."""
        return ChoiceOutput(self.model, self.plan, self.legacy, self.return_thinking, self.thinking_open)

    def __post_init__(self) -> None:
        self.parser = self.plan.parser() if self.plan else None
        self.splitter = ReasoningSplitter(REASONING_TAGS, already_open=self.thinking_open)

    def piece_deltas(self, piece: Piece) -> list[dict[str, Any]]:
        """Deltas of a piece: reasoning first (kept apart from content), then the answer."""
        finished = piece.finish_reason is not None
        self.stop_string = piece.stop_string or self.stop_string
        if isinstance(piece, ReasoningPiece):
            reasoning, answer = piece.text, ""
        else:
            reasoning, answer = self.splitter.feed(piece.text)
            if finished:
                tail_reasoning, tail_answer = self.splitter.flush()
                reasoning, answer = reasoning + tail_reasoning, answer + tail_answer
        deltas = []
        if reasoning:
            self.reasoning += reasoning
            if self.return_thinking:
                deltas.append({"reasoning_content": reasoning, "reasoning": reasoning})
        return deltas + self.deltas(answer, piece.finish_reason)

    def deltas(self, text: str, finish_reason: str | None) -> list[dict[str, Any]]:
        """The message deltas this text adds (content and tool-call pieces).

        The first call streams as it is written. Later calls are held until they
        close: small models tend to repeat a call forever, and a repeat of an
        earlier call ends the turn instead of reaching the client.
        """
        if self.parser is None:
            self.content += text
            return [{"content": text}] if text else []
        events = self.parser.feed(text)
        if finish_reason is not None:  # an input that runs to the end of the answer is whole unless cut off
            events += self.parser.finish(ended=finish_reason != "length")
        deltas = []
        for event in events:
            if self.repeated:
                break
            if isinstance(event, TextDelta):
                self.content += event.text
                deltas.append({"content": event.text})
            elif isinstance(event, CallStart):
                self.call_ids.append(f"call_{secrets.token_hex(12)}")
                self._held = [{"tool_calls": [{
                    "index": event.index, "id": self.call_ids[-1], "type": "function",
                    "function": {"name": event.name, "arguments": ""},
                }]}]
            elif isinstance(event, ArgumentsDelta):
                self._held.append({"tool_calls": [{"index": event.index, "function": {"arguments": event.text}}]})
            elif isinstance(event, CallEnd):
                calls = self.parser.complete_calls
                if calls[-1] in calls[:-1]:
                    self.repeated = True
                    self.parser.drop_last_call()
                    self.call_ids.pop()
                    self._held = []
                    break
            if self._held and (len(self.parser.calls) == 1 or isinstance(event, CallEnd)):
                deltas.extend(self._held)
                self._held = []
        return [self._legacy_delta(d) for d in deltas] if self.legacy else deltas

    @staticmethod
    def _legacy_delta(delta: dict[str, Any]) -> dict[str, Any]:
        if "tool_calls" not in delta:
            return delta
        function = delta["tool_calls"][0]["function"]
        return {"function_call": function}

    def tool_calls(self) -> list[dict[str, Any]]:
        if self.parser is None:
            return []
        return [
            {"id": self.call_ids[i], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for i, c in enumerate(self.parser.complete_calls)
        ]

    def final_reason(self, engine_reason: str | None) -> str | None:
        if (engine_reason == "stop" or self.repeated) and self.tool_calls():
            return "function_call" if self.legacy else "tool_calls"
        return engine_reason

    def message(self) -> dict[str, Any]:
        calls = self.tool_calls()
        message: dict[str, Any] = {"role": "assistant", "content": self.content if self.content or not calls else None,
                                   "refusal": None}
        if calls and self.legacy:
            message["function_call"] = calls[0]["function"]
        elif calls:
            message["tool_calls"] = calls
        if self.return_thinking and self.reasoning:
            message["reasoning_content"] = message["reasoning"] = self.reasoning
        return message
