import json

import llguidance
import pytest

from gallama.agentic.tool_formats import GENERIC, HERMES, LLAMA3, MISTRAL, detect_format
from gallama.agentic.tool_grammar import tool_grammar
from gallama.agentic.tool_parser import ArgumentsDelta, CallEnd, CallStart, TextDelta, ToolCallParser
from gallama.agentic.tools import plan_tools
from tests.byte_tokenizer import byte_tokenizer

TOOLS = {
    "get_weather": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    "add": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]},
}
FORMATS = [GENERIC, HERMES, MISTRAL, LLAMA3]


def written(syntax, calls):
    body = syntax.separator.join(syntax.call_prefix(n) + a + syntax.call_suffix() for n, a in calls)
    return syntax.section_open + body + syntax.section_close


@pytest.mark.parametrize("syntax", FORMATS, ids=lambda f: f.name)
@pytest.mark.parametrize("mode, forced", [("none", None), ("auto", None), ("required", None), ("required", "add")])
def test_grammars_compile(syntax, mode, forced):
    grammar = llguidance.LLMatcher.grammar_from_lark(tool_grammar(TOOLS, syntax, mode, parallel=True, forced=forced))
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


def accepts(grammar: str, text: str) -> bool:
    tokenizer = byte_tokenizer()
    matcher = llguidance.LLMatcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(grammar), log_level=0)
    tokens = list(text.encode())
    if matcher.validate_tokens(tokens) != len(tokens):
        return False
    matcher.consume_tokens(tokens)
    return matcher.is_accepting()


def test_generic_auto_answers_with_a_call_or_the_text_tag():
    grammar = tool_grammar(TOOLS, GENERIC, "auto", parallel=True)
    assert accepts(grammar, written(GENERIC, [("add", '{"a": 1, "b": 2}')]))
    assert accepts(grammar, "<response>It is sunny.")
    assert not accepts(grammar, "It is sunny.")  # text without its tag
    assert not accepts(grammar, "<response>")  # a tag with no answer


@pytest.mark.parametrize("syntax", [HERMES, MISTRAL, LLAMA3], ids=lambda f: f.name)
def test_native_auto_text_needs_no_tag(syntax):
    assert not syntax.text_open
    assert accepts(tool_grammar(TOOLS, syntax, "auto", parallel=True), "It is sunny.")


def test_generic_none_and_required_have_no_text_tag():
    assert accepts(tool_grammar(TOOLS, GENERIC, "none", parallel=True), "It is sunny.")
    assert not accepts(tool_grammar(TOOLS, GENERIC, "required", parallel=True), "<response>It is sunny.")


def test_calls_use_only_listed_parameters_unless_the_schema_allows_more():
    call = written(GENERIC, [("get_weather", '{"city": "Paris", "description": "sunny"}')])
    assert not accepts(tool_grammar(TOOLS, GENERIC, "required", parallel=True), call)
    open_schema = {"get_weather": {**TOOLS["get_weather"], "additionalProperties": True}}
    assert accepts(tool_grammar(open_schema, GENERIC, "required", parallel=True), call)
    listed_only = written(GENERIC, [("get_weather", '{"city": "Paris"}')])
    assert accepts(tool_grammar(TOOLS, GENERIC, "required", parallel=True), listed_only)


def test_generic_text_tag_is_not_content():
    parser = ToolCallParser(GENERIC, "auto")
    events = [parser.feed(p) for p in ["<", "resp", "onse>", " ", "\nIt is", " <sunny>"]] + [parser.finish()]
    assert "".join(e.text for batch in events for e in batch if isinstance(e, TextDelta)) == "It is <sunny>"
    assert events[0] == events[1] == events[2] == events[3] == []  # held until decided, then the space dropped
    assert parser.complete_calls == []


def test_generic_cut_off_in_the_text_tag_has_no_text():
    parser = ToolCallParser(GENERIC, "auto")
    assert parser.feed("<resp") == [] and parser.finish() == []


def test_native_auto_keeps_a_response_tag_as_text():
    parser = ToolCallParser(HERMES, "auto")
    events = parser.feed("<response>hi") + parser.finish()
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "<response>hi"


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


@pytest.mark.parametrize("name", ["none", "auto"])
def test_a_tool_named_like_a_mode_is_forced_by_a_named_choice(name):
    tools = [{"type": "function", "function": {"name": name, "parameters": TOOLS["add"]}},
             {"type": "function", "function": {"name": "get_weather", "parameters": TOOLS["get_weather"]}}]
    plan = plan_tools(tools, {"type": "function", "function": {"name": name}}, True, GENERIC)
    assert (plan.mode, plan.forced, plan.parser_mode) == ("required", name, "calls")
    grammar = plan.grammar(None)
    assert accepts(grammar, written(GENERIC, [(name, '{"a": 1, "b": 2}')]))
    assert not accepts(grammar, "<response>It is sunny.") and not accepts(grammar, "It is sunny.")
    assert not accepts(grammar, written(GENERIC, [("get_weather", '{"city": "Paris"}')]))
    messages, _ = plan.template_messages([{"role": "user", "content": "Add 1 and 2."}])
    assert f"You must answer by calling the function {name}." in messages[0]["content"]


def test_required_with_a_tool_named_required_may_call_any_tool():
    tools = [{"type": "function", "function": {"name": "required", "parameters": TOOLS["add"]}},
             {"type": "function", "function": {"name": "get_weather", "parameters": TOOLS["get_weather"]}}]
    plan = plan_tools(tools, "required", True, GENERIC)
    assert plan.forced is None
    assert accepts(plan.grammar(None), written(GENERIC, [("get_weather", '{"city": "Paris"}')]))
