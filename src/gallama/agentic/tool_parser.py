"""Reading tool calls out of streamed model text.

The grammar fixes the layout of calls exactly, so the parser only has to follow
it: the format's opening text, `{"name": "NAME", "ARGS_KEY": `, the arguments'
JSON (tracked by bracket depth, strings aware), then `}` and the closing text.
A custom tool's call is `{"name": "NAME"}<input>`, its raw input, `</input>` and
the closing text, or (a Lark grammar's input) its raw input to the end of the
answer; the input is passed on as the call's arguments.
Arguments are passed on as they arrive, so streamed deltas carry fragments.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Collection

from gallama.agentic.tool_formats import INPUT_CLOSE, INPUT_OPEN, ToolCallFormat


@dataclass
class TextDelta:
    text: str


@dataclass
class CallStart:
    index: int
    name: str


@dataclass
class ArgumentsDelta:
    index: int
    text: str


@dataclass
class CallEnd:
    index: int


ParserEvent = TextDelta | CallStart | ArgumentsDelta | CallEnd


class ToolCallParser:
    def __init__(self, syntax: ToolCallFormat, mode: str, to_the_end: Collection[str] = ()):
        """mode: "text" (no calls possible), "calls" (only calls), "auto" (either, decided by the start).
        to_the_end: the custom tools whose input runs to the end of the answer."""
        self.syntax = syntax
        self.mode = mode
        self.to_the_end = to_the_end
        self._buffer = ""
        self._pos = 0
        self._calls = 0
        self._state = "call"  # in calls mode: "call", "arguments", "after"
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._text_started = True  # False right after the text tag: leading whitespace is dropped
        self._prefix = re.compile(
            re.escape(syntax.call_open) + r'\{"name": "([^"]+)"(, "' + re.escape(syntax.arguments_key) + '": |'
            + re.escape("}" + INPUT_OPEN) + ")"
        )
        self._suffix = ""  # what closes the call being read, after its arguments
        self.calls: list[dict[str, str]] = []  # the finished calls: name and arguments

    def feed(self, text: str) -> list[ParserEvent]:
        self._buffer += text
        if self.mode == "auto":
            stripped = self._buffer.lstrip()
            start, text_open = self.syntax.start, self.syntax.text_open
            if stripped.startswith(start):
                self.mode = "calls"
                self._pos = len(self._buffer) - len(stripped)
            elif text_open and stripped.startswith(text_open):
                self.mode = "text"
                self._buffer = stripped[len(text_open) :]
                self._text_started = False
            elif start.startswith(stripped) or text_open.startswith(stripped):
                return []  # still undecided
            else:
                self.mode = "text"
        if self.mode == "text":
            out, self._buffer = self._buffer, ""
            if not self._text_started:  # the space a model puts after the text tag is no content
                out = out.lstrip()
                self._text_started = bool(out)
            return [TextDelta(out)] if out else []
        return self._parse_calls()

    def _parse_calls(self) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        syntax = self.syntax
        while self._pos < len(self._buffer) or self._state == "after":  # an empty suffix ends a call at once
            rest = self._buffer[self._pos :]
            if self._state == "call":
                lead = syntax.section_open if self._calls == 0 else syntax.separator
                if not rest.startswith(lead):
                    break  # wait for more text (the grammar guarantees it comes)
                match = self._prefix.match(rest, len(lead))
                if match is None:
                    break
                self._pos += match.end()
                self.calls.append({"name": match.group(1), "arguments": ""})
                events.append(CallStart(self._calls, match.group(1)))
                if not match.group(2).endswith(INPUT_OPEN):
                    self._state, self._suffix = "arguments", syntax.call_suffix()
                elif match.group(1) in self.to_the_end:
                    self._state, self._suffix = "last input", ""
                else:
                    self._state, self._suffix = "input", syntax.call_close
            elif self._state == "last input":
                self._pos = len(self._buffer)
                self.calls[-1]["arguments"] += rest
                events.append(ArgumentsDelta(self._calls, rest))
            elif self._state in ("arguments", "input"):
                fragment = self._scan_input(rest) if self._state == "input" else self._scan_arguments(rest)
                if fragment:
                    self.calls[-1]["arguments"] += fragment
                    events.append(ArgumentsDelta(self._calls, fragment))
                if self._state != "after":
                    break
            else:  # after the arguments: the rest of the call's fixed text
                if len(rest) < len(self._suffix):
                    break
                self._pos += len(self._suffix)
                events.append(CallEnd(self._calls))
                self._calls += 1
                self._state = "call"
        return events

    def _scan_arguments(self, rest: str) -> str:
        """Consumes argument characters up to the end of the JSON value; returns them."""
        for offset, char in enumerate(rest):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self._pos += offset + 1
                    self._state = "after"
                    return rest[: offset + 1]
        self._pos += len(rest)
        return rest

    def _scan_input(self, rest: str) -> str:
        """Consumes a custom call's raw input up to its closing tag; holds back what may begin that tag."""
        end = rest.find(INPUT_CLOSE)
        if end >= 0:
            self._pos += end + len(INPUT_CLOSE)
            self._state = "after"
            return rest[:end]
        held = next((n for n in range(min(len(rest), len(INPUT_CLOSE) - 1), 0, -1) if INPUT_CLOSE.startswith(rest[-n:])), 0)
        self._pos += len(rest) - held
        return rest[: len(rest) - held]

    def finish(self, ended: bool = True) -> list[ParserEvent]:
        """At the end of generation: text that was held back as a possible call start, and the end of an input
        that runs to the end of the answer, when the model ended it (`ended`; not cut off by the token budget)."""
        if self._state == "last input" and ended:
            self._state = "after"
            return self._parse_calls()
        if self.mode == "auto" and self._buffer:
            stripped = self._buffer.lstrip()
            if self.syntax.text_open and self.syntax.text_open.startswith(stripped):
                return []  # cut off inside the text tag: no text yet
            self.mode = "text"
            return self.feed("")
        return []

    @property
    def complete_calls(self) -> list[dict[str, str]]:
        """Calls whose arguments were closed (a cut-off last call is left out)."""
        closed = self._calls + (1 if self._state == "after" else 0)
        return self.calls[:closed]

    def drop_last_call(self) -> None:
        """Forgets the last call (a repeat that ended the turn)."""
        del self.calls[-1]
        self._calls = len(self.calls)
