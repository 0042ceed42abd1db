"""Custom tools (freeform input as raw text): the grammar that enforces the input, the parser that reads it back,
and the prompt that shows it. Codex's apply_patch grammar is the Lark case."""

from __future__ import annotations

from pathlib import Path

import llguidance
import pytest

from gallama.agentic.custom_input import CustomInput
from gallama.agentic.schema_check import _byte_tokenizer
from gallama.agentic.tool_formats import GENERIC, HERMES, LLAMA3, MISTRAL
from gallama.agentic.tool_grammar import tool_grammar
from gallama.agentic.tool_parser import ArgumentsDelta, CallEnd, CallStart, ToolCallParser
from gallama.agentic.tool_prompt import generic_history
from gallama.agentic.tools import plan_tools

APPLY_PATCH = (Path(__file__).parent.parent / "data" / "codex_apply_patch.lark").read_text()
PATCH = "*** Begin Patch\n*** Add File: hello.txt\n+hello </input> world\n*** End Patch\n"
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = {"get_weather": WEATHER, "apply_patch": {}, "code": {}, "note": {}}
CUSTOM = {"apply_patch": CustomInput("lark", APPLY_PATCH), "code": CustomInput("regex", "[0-9]{3}/[A-Z]{2}"),
          "note": CustomInput()}
FORMATS = [GENERIC, HERMES, MISTRAL, LLAMA3]


def accepts(grammar: str, text: str) -> bool:
    matcher = llguidance.LLMatcher(_byte_tokenizer(), grammar, log_level=0)
    tokens = list(text.encode())
    if matcher.validate_tokens(tokens) != len(tokens):
        return False
    matcher.consume_tokens(tokens)
    return matcher.is_accepting()


def custom_call(syntax, name, text):
    return syntax.custom_prefix(name) + text + syntax.custom_suffix()


def last_call(syntax, name, text):
    """A call whose input (a Lark grammar's) runs to the end of the answer."""
    return syntax.custom_prefix(name) + text


def written(syntax, *calls, last=None):
    body = syntax.separator.join(calls)
    if last is None:
        return syntax.section_open + body + syntax.section_close
    return syntax.section_open + body + (syntax.separator if calls else "") + last


@pytest.mark.parametrize("syntax", FORMATS, ids=lambda f: f.name)
def test_the_lark_grammar_is_enforced_to_the_end_of_the_answer(syntax):
    grammar = tool_grammar(TOOLS, syntax, "required", True, custom=CUSTOM)
    assert accepts(grammar, written(syntax, last=last_call(syntax, "apply_patch", PATCH)))
    assert accepts(grammar, written(syntax, last=last_call(syntax, "apply_patch", PATCH.rstrip("\n"))))  # LF optional
    assert not accepts(grammar, written(syntax, last=last_call(syntax, "apply_patch", "*** Begin Patch\nhello\n")))
    # The patch holds a closing tag: nothing ends it but the end of the answer.
    assert not accepts(grammar, written(syntax, last=custom_call(syntax, "apply_patch", PATCH)))
    # After other calls, never before them.
    function = syntax.call_prefix("get_weather") + '{"city": "Oslo"}' + syntax.call_suffix()
    note = custom_call(syntax, "note", "x")
    assert accepts(grammar, written(syntax, function, note, last=last_call(syntax, "apply_patch", PATCH)))
    assert not accepts(grammar, written(syntax, last=last_call(syntax, "apply_patch", PATCH) + syntax.separator + function))


def test_a_lark_grammar_that_could_always_go_on_ends_with_the_answer():
    lines = CustomInput("lark", "start: LINE+\nLINE: /[^\\n]*\\n/")  # a line may hold any tag
    grammar = tool_grammar({"log": {}}, GENERIC, "required", True, custom={"log": lines})
    assert accepts(grammar, last_call(GENERIC, "log", "a </input>\nb\n"))
    assert not accepts(grammar, last_call(GENERIC, "log", "a"))


def test_without_parallel_calls_it_is_the_only_call():
    grammar = tool_grammar(TOOLS, GENERIC, "required", False, custom=CUSTOM)
    function = GENERIC.call_prefix("get_weather") + '{"city": "Oslo"}' + GENERIC.call_suffix()
    assert accepts(grammar, last_call(GENERIC, "apply_patch", PATCH))
    assert not accepts(grammar, written(GENERIC, function, last=last_call(GENERIC, "apply_patch", PATCH)))


def test_regex_and_text_inputs_end_at_the_first_closing_tag():
    grammar = tool_grammar(TOOLS, GENERIC, "required", True, custom=CUSTOM)
    assert accepts(grammar, custom_call(GENERIC, "code", "123/AB"))
    assert not accepts(grammar, custom_call(GENERIC, "code", "12/AB"))
    assert accepts(grammar, custom_call(GENERIC, "note", "any\ntext, </inp even"))
    assert accepts(grammar, custom_call(GENERIC, "note", ""))
    # What follows the first closing tag is the rest of the call, never more input.
    assert not accepts(grammar, custom_call(GENERIC, "note", "a</input>b"))


def test_a_forced_custom_tool_is_the_only_call():
    grammar = tool_grammar(TOOLS, GENERIC, "required", True, custom=CUSTOM, forced="code")
    assert accepts(grammar, custom_call(GENERIC, "code", "123/AB"))
    assert not accepts(grammar, custom_call(GENERIC, "note", "x"))


@pytest.mark.parametrize("syntax", FORMATS, ids=lambda f: f.name)
def test_the_parser_reads_raw_input_char_by_char(syntax):
    function = syntax.call_prefix("get_weather") + '{"city": "Oslo"}' + syntax.call_suffix()
    text = written(syntax, custom_call(syntax, "note", "a</inp b"), function, last=last_call(syntax, "apply_patch", PATCH))
    parser = ToolCallParser(syntax, "calls", {"apply_patch"})
    events = [event for char in text for event in parser.feed(char)] + parser.finish()
    assert parser.complete_calls == [{"name": "note", "arguments": "a</inp b"},
                                     {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                                     {"name": "apply_patch", "arguments": PATCH}]
    assert [e.name for e in events if isinstance(e, CallStart)] == ["note", "get_weather", "apply_patch"]
    assert [e.index for e in events if isinstance(e, CallEnd)] == [0, 1, 2]
    # Streamed as written, except a possible closing tag, held until it is one or is not.
    pieces = [e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == 0]
    assert "".join(pieces) == "a</inp b" and "a</inp" not in pieces
    assert "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == 2) == PATCH


def test_an_input_to_the_end_cut_off_by_the_budget_is_not_complete():
    parser = ToolCallParser(GENERIC, "calls", {"apply_patch"})
    parser.feed(last_call(GENERIC, "apply_patch", "*** Begin Patch\n"))
    assert parser.finish(ended=False) == [] and parser.complete_calls == []


def test_a_custom_call_cut_off_is_not_complete():
    parser = ToolCallParser(GENERIC, "calls")
    parser.feed(GENERIC.custom_prefix("note") + "half of it</in")
    assert parser.finish() == [] and parser.complete_calls == []
    assert parser.calls == [{"name": "note", "arguments": "half of it"}]


def test_the_prompt_lists_the_format_and_shows_history_raw():
    tools = [{"type": "function", "function": {"name": name, "description": "d",
                                               "parameters": {"type": "object", "properties": {"input": {}}}}}
             for name in ("apply_patch", "note")]
    history = [{"role": "user", "content": "Patch it."},
               {"role": "assistant", "content": None, "tool_calls": [
                   {"id": "c", "type": "function", "function": {"name": "apply_patch", "arguments": '{"input": "P"}'}}]},
               {"role": "tool", "tool_call_id": "c", "content": "Done."}]
    out = generic_history(history, GENERIC, tools, "auto", custom={"apply_patch": CUSTOM["apply_patch"], "note": CUSTOM["note"]})
    system = out[0]["content"]
    assert '"syntax": "lark"' in system and '"input": "freeform text"' in system
    assert '<tool_call>{"name": "apply_patch"}<input>...\n' in system  # its input runs to the end
    assert '<tool_call>{"name": "apply_patch"}<input>P</input></tool_call>' in out[2]["content"]


def test_a_finished_input_is_checked_against_its_grammar():
    tools = [{"type": "function", "function": {"name": name, "parameters": {}}} for name in ("apply_patch", "note")]
    plan = plan_tools(tools, "required", True, GENERIC, {"apply_patch": CUSTOM["apply_patch"], "note": CUSTOM["note"]})
    check = plan.answer_check(None)
    assert check.violation(None, [("apply_patch", PATCH), ("note", "anything")]) is None
    assert "apply_patch" in check.violation(None, [("apply_patch", "*** Begin Patch\n")])
