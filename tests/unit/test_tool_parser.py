import json

import llguidance
import pytest

from gallama.agentic.tool_formats import GENERIC, HERMES, LLAMA3, MISTRAL, detect_format
from gallama.agentic.tool_grammar import tool_grammar
from gallama.agentic.tool_parser import ArgumentsDelta, CallEnd, CallStart, TextDelta, ToolCallParser

TOOLS = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
}
FORMATS = [GENERIC, HERMES, MISTRAL, LLAMA3]


def written(syntax, calls):
    body = syntax.separator.join(syntax.call_prefix(n) + a + syntax.call_suffix() for n, a in calls)
    return syntax.section_open + body + syntax.section_close


@pytest.mark.parametrize("syntax", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("choice", ["none", "auto", "required", "add"])
def test_grammars_compile(syntax, choice):
    grammar = llguidance.LLMatcher.grammar_from_lark(tool_grammar(TOOLS, syntax, choice, parallel=True))
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    assert not is_error, messages


@pytest.mark.parametrize("syntax", FORMATS, ids=lambda f: f.name)
def test_parser_reads_calls_char_by_char(syntax):
    calls = [("add", '{"a": 1, "b": 2}'), ("get_weather", '{"city": "Pa}ris \\" {x"}')]
    parser = ToolCallParser(syntax, "auto")
    events = []
    for char in written(syntax, calls):
        events += parser.feed(char)
    events += parser.finish()
    assert parser.complete_calls == [{"name": n, "arguments": a} for n, a in calls]
    assert [e.name for e in events if isinstance(e, CallStart)] == ["add", "get_weather"]
    assert [e.index for e in events if isinstance(e, CallEnd)] == [0, 1]
    streamed = "".join(e.text for e in events if isinstance(e, ArgumentsDelta) and e.index == 1)
    assert json.loads(streamed) == {"city": 'Pa}ris " {x'}


def test_auto_mode_text_answer():
    parser = ToolCallParser(GENERIC, "auto")
    events = parser.feed("<to") + parser.feed("day is sunny {not a call}") + parser.finish()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "<today is sunny {not a call}"
    assert parser.complete_calls == []


def test_cut_off_call_is_not_complete():
    parser = ToolCallParser(GENERIC, "calls")
    parser.feed(GENERIC.call_prefix("add") + '{"a": 1')
    assert parser.calls == [{"name": "add", "arguments": '{"a": 1'}]
    assert parser.complete_calls == []


def test_format_detection():
    assert detect_format("{% if tools %}<tool_call>{% endif %}") is HERMES
    assert detect_format("{% if tools %}[TOOL_CALLS]{% endif %}") is MISTRAL
    assert detect_format("{{ messages }}") is GENERIC


def test_reasoning_splitter_streams_and_splits():
    from gallama.agentic.reasoning import ReasoningSplitter, ReasoningTags

    splitter = ReasoningSplitter(ReasoningTags(), already_open=False)
    parts = [splitter.feed(p) for p in ["<th", "ink>plan a", "nd b</thi", "nk>\nThe answer"]] + [splitter.flush()]
    assert "".join(r for r, _ in parts) == "plan and b"
    assert "".join(c for _, c in parts) == "The answer"
    opened = ReasoningSplitter(ReasoningTags(), already_open=True)
    assert opened.feed("still thinking</think>done") == ("still thinking", "done")
    plain = ReasoningSplitter(ReasoningTags(), already_open=False)
    assert plain.feed("Hello") == ("", "Hello")
