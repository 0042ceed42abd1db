"""How a model family writes tool calls: small plug-ins, one data object each.

A format says how calls are spelled (the text around each call's JSON) and
whether the model's own chat template renders `tools`. The grammar, the parser
and the prompt are derived from it, so adding a family is adding one entry.
"""

from __future__ import annotations

from dataclasses import dataclass


INPUT_OPEN, INPUT_CLOSE = "<input>", "</input>"


@dataclass(frozen=True)
class ToolCallFormat:
    name: str
    section_open: str  # before the first call
    call_open: str  # before each call's JSON object
    call_close: str  # after each call's JSON object
    separator: str  # between two calls
    section_close: str  # after the last call
    arguments_key: str = "arguments"
    native: bool = True  # the chat template renders tools and tool-call history itself
    template_marker: str = ""  # text in a chat template that identifies the family
    # Under tool_choice "auto", the tag a text answer opens with (not returned).
    # With it, call or text is one token's choice between two tags, instead of
    # the call tag against every word a sentence may start with.
    text_open: str = ""

    def call_prefix(self, name: str) -> str:
        """The fixed text of a call up to its arguments' JSON."""
        return f'{self.call_open}{{"name": "{name}", "{self.arguments_key}": '

    def call_suffix(self) -> str:
        return "}" + self.call_close

    # A custom tool's freeform input is raw text between fixed tags, not a JSON string: a grammar
    # (Lark, regex) constrains the text itself, and a small model writes a patch or a script
    # without escaping every line.
    def custom_prefix(self, name: str) -> str:
        return f'{self.call_open}{{"name": "{name}"}}{INPUT_OPEN}'

    def custom_suffix(self) -> str:
        return INPUT_CLOSE + self.call_close

    @property
    def start(self) -> str:
        """The text every tool-call section starts with."""
        return self.section_open + self.call_open + '{"name": "'


# Models without a tool template: gallama describes the tools in the prompt and
# asks for Hermes-style tags, which small models pick up easily.
GENERIC = ToolCallFormat(
    name="generic",
    section_open="",
    call_open="<tool_call>",
    call_close="</tool_call>",
    separator="\n",
    section_close="",
    native=False,
    text_open="<response>",
)

HERMES = ToolCallFormat(  # Hermes, Qwen 2.5/3 and their many fine-tunes
    name="hermes",
    section_open="",
    call_open="<tool_call>\n",
    call_close="\n</tool_call>",
    separator="\n",
    section_close="",
    template_marker="<tool_call>",
)

MISTRAL = ToolCallFormat(
    name="mistral",
    section_open="[TOOL_CALLS][",
    call_open="",
    call_close="",
    separator=", ",
    section_close="]",
    template_marker="[TOOL_CALLS]",
)

LLAMA3 = ToolCallFormat(  # Llama 3.1+ JSON tool calling
    name="llama3",
    section_open="",
    call_open="",
    call_close="",
    separator="; ",
    section_close="",
    arguments_key="parameters",
    template_marker="<|python_tag|>",
)

NATIVE_FORMATS = [HERMES, MISTRAL, LLAMA3]


def detect_format(template_source: str) -> ToolCallFormat:
    """The native format a chat template speaks, or the generic one."""
    if "tools" in template_source:
        for candidate in NATIVE_FORMATS:
            if candidate.template_marker in template_source:
                return candidate
    return GENERIC
