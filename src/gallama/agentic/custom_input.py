"""Custom tools: freeform text input, optionally constrained by a regex or a Lark grammar.

A custom call's input is raw text after the format's input tag (tool_formats.INPUT_OPEN), not a JSON
string. Free text or a regex is a terminal that cannot hold the closing tag (INPUT_CLOSE), so the first
closing tag ends it, exactly as the parser reads it back. A Lark grammar is a subgrammar of its own
(llguidance's `@name` reference): its terminals are greedy and may match any closing tag (a line
`/(.*)/` could go on past one), so its input runs to the end of the answer instead; that call comes
last in the answer.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import Literal

import llguidance

from gallama.agentic.constraints import ConstraintError
from gallama.agentic.schema_check import _byte_tokenizer
from gallama.agentic.tool_formats import INPUT_CLOSE

_WITHOUT_CLOSE = "~/(?s:.*)" + INPUT_CLOSE.replace("/", "\\/") + "(?s:.*)/"


@dataclass(frozen=True)
class CustomInput:
    syntax: Literal["text", "regex", "lark"] = "text"
    definition: str = ""  # the regex or the Lark grammar

    @property
    def runs_to_the_end(self) -> bool:
        """The input ends with the answer, not with a closing tag."""
        return self.syntax == "lark"

    def rules(self, index: int) -> tuple[list[str], dict[str, str]]:
        """Lark rules defining `input_{index}` (with its closing tag, if it has one), and the subgrammars they
        reference by name."""
        if self.runs_to_the_end:
            name = f"custom_input_{index}"
            return [f"input_{index}: @{name}"], {name: self.definition}
        pattern = "(?s:.*)" if self.syntax == "text" else f"(?:{self.definition})"
        # Lazy up to the suffix: the input is what comes before the first closing tag.
        return [f"INPUT_{index}: /{_in_slashes(pattern)}/ & {_WITHOUT_CLOSE}",
                f"input_{index}[suffix={json.dumps(INPUT_CLOSE)}]: INPUT_{index}"], {}

    def grammar(self) -> str:
        """The input alone as a grammar (what a finished call's input is checked against)."""
        if self.syntax == "lark":
            return self.definition
        return llguidance.LLMatcher.grammar_from_regex(self.definition)

    def check(self) -> "InputCheck | None":
        """Compiles the input's grammar alone (a ConstraintError carries the compiler's reason); None for free text."""
        return _compiled_check(self)


# By value: the Responses route compiles a tool's format to name a bad one, the tool plan then uses the
# check, and an agent sends the same tools (Codex's apply_patch grammar) with every turn.
@functools.lru_cache(maxsize=64)
def _compiled_check(custom: CustomInput) -> "InputCheck | None":
    if custom.syntax == "text":
        return None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(custom.grammar(), _byte_tokenizer())
    if is_error:
        raise ConstraintError(messages[0] if messages else "it does not compile")
    return InputCheck(custom)


def _in_slashes(pattern: str) -> str:
    """A regex inside Lark's /.../: slashes escaped, line breaks written as escapes."""
    out, escaped = [], False
    for char in pattern:
        if escaped:
            out.append(char)
            escaped = False
        elif char == "\\":
            out.append(char)
            escaped = True
        else:
            out.append({"/": "\\/", "\n": "\\n", "\r": "\\r"}.get(char, char))
    return "".join(out)


class InputCheck:
    """A finished call's input against its grammar. The grammar enforced it token by token; a stop string
    can still end the answer, and an input that runs to the end, mid-way."""

    def __init__(self, custom: CustomInput):
        self.matcher = llguidance.LLMatcher(_byte_tokenizer(), custom.grammar(), log_level=0)

    def violation(self, text: str) -> str | None:
        matcher = self.matcher.deep_copy()
        if matcher.consume_tokens(list(text.encode())) and matcher.is_accepting():
            return None
        return "its grammar (the input does not parse)"
