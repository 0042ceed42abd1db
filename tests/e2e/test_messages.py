"""Anthropic's Messages API on the bundled model, through the official `anthropic` SDK."""

from __future__ import annotations

import json

import anthropic
import jsonschema
import pytest

from tests.conftest import DEFAULT_MODEL

WEATHER = {
    "name": "get_weather",
    "description": "Get the current weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
GREEDY = {"temperature": 0}  # the SDK no longer takes temperature as an argument; the API still does


@pytest.fixture(scope="module")
def claude(server):
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def test_a_text_answer(claude):
    reply = claude.messages.create(model=DEFAULT_MODEL, max_tokens=20, messages=[{"role": "user", "content": "Hi"}],
                                   extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert reply.model == DEFAULT_MODEL
    assert [block.type for block in reply.content] == ["text"] and reply.content[0].text
    assert reply.stop_reason in ("end_turn", "max_tokens")
    assert reply.usage.output_tokens <= 20 and reply.usage.input_tokens + reply.usage.cache_read_input_tokens > 5


def test_any_forces_a_valid_tool_use_and_a_result_continues_the_turn(claude):
    reply = claude.messages.create(model=DEFAULT_MODEL, max_tokens=80, messages=ASK, tools=[WEATHER],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body=GREEDY)
    assert reply.stop_reason == "tool_use"
    uses = [block for block in reply.content if block.type == "tool_use"]
    assert len(uses) == 1 and uses[0].name == "get_weather" and uses[0].id.startswith("toolu_")
    jsonschema.validate(uses[0].input, WEATHER["input_schema"])
    follow_up = [*ASK, {"role": "assistant", "content": reply.content},
                 {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id, "content": "18 C, sunny"}]}]
    answer = claude.messages.create(model=DEFAULT_MODEL, max_tokens=40, messages=follow_up, tools=[WEATHER],
                                    tool_choice={"type": "none"}, extra_body=GREEDY)
    assert [block.type for block in answer.content] == ["text"] and answer.stop_reason in ("end_turn", "max_tokens")


def test_a_named_tool_choice_calls_that_tool(claude):
    add = {"name": "add", "description": "Add two integers", "input_schema": {
        "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}, "required": ["a", "b"]}}
    reply = claude.messages.create(model=DEFAULT_MODEL, max_tokens=80, messages=ASK, tools=[WEATHER, add],
                                   tool_choice={"type": "tool", "name": "add"}, extra_body=GREEDY)
    names = [block.name for block in reply.content if block.type == "tool_use"]
    assert names and set(names) == {"add"}


def test_a_stream_with_tools_builds_the_same_message(claude):
    kwargs = {"model": DEFAULT_MODEL, "max_tokens": 80, "messages": ASK, "tools": [WEATHER],
              "tool_choice": {"type": "any", "disable_parallel_tool_use": True}, "extra_body": GREEDY}
    expected = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "message_delta" in kinds
    assert "content_block_start" in kinds and "content_block_stop" in kinds
    assert final.stop_reason == expected.stop_reason == "tool_use"
    assert [(b.name, b.input) for b in final.content] == [(b.name, b.input) for b in expected.content]


def test_stop_sequences_say_which_one_stopped(claude):
    reply = claude.messages.create(model=DEFAULT_MODEL, max_tokens=60, stop_sequences=["."], extra_body=GREEDY,
                                   messages=[{"role": "user", "content": "Write two sentences about cats."}])
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == "."
    assert "." not in reply.content[0].text
    with claude.messages.stream(model=DEFAULT_MODEL, max_tokens=60, stop_sequences=["."], extra_body=GREEDY,
                                messages=[{"role": "user", "content": "Write two sentences about cats."}]) as stream:
        final = stream.get_final_message()
    assert final.stop_sequence == "." and final.content[0].text == reply.content[0].text


def test_count_tokens_is_the_prompt_a_request_reads(claude):
    kwargs = {"model": DEFAULT_MODEL, "messages": ASK, "tools": [WEATHER], "system": "Be brief."}
    counted = claude.messages.count_tokens(**kwargs).input_tokens
    reply = claude.messages.create(max_tokens=5, extra_body=GREEDY, **kwargs)
    assert counted == reply.usage.input_tokens + reply.usage.cache_read_input_tokens
    assert counted > claude.messages.count_tokens(model=DEFAULT_MODEL, messages=ASK).input_tokens


def test_claude_codes_billing_line_does_not_defeat_the_prompt_cache(claude):
    def ask(nonce: str):
        system = [{"type": "text", "text": f"x-anthropic-billing-header: cc_version=2.1.1.abc; cc_entrypoint=cli; cch={nonce};"},
                  {"type": "text", "text": "You are a helpful assistant for a weather service. " * 8}]
        return claude.messages.create(model=DEFAULT_MODEL, max_tokens=2, system=system, messages=ASK, extra_body=GREEDY)

    ask("aaaaa")
    again = ask("bbbbb")
    # The whole prompt but the tail the engine always recomputes comes from the cache.
    assert again.usage.cache_read_input_tokens >= again.usage.input_tokens + again.usage.cache_read_input_tokens - 2


def test_json_output_format_is_enforced(claude):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "sunny": {"type": "boolean"}}, "required": ["city", "sunny"],
              "additionalProperties": False}
    reply = claude.messages.create(model=DEFAULT_MODEL, max_tokens=60, messages=ASK, extra_body=GREEDY,
                                   output_config={"format": {"type": "json_schema", "schema": schema}})
    assert reply.stop_reason == "end_turn"
    jsonschema.validate(json.loads(reply.content[0].text), schema)


def test_thinking_with_a_template_comes_back_as_a_signed_thinking_block(claude):
    template = "<thinking>\n  <problem>{the problem}</problem>\n  <answer>{the answer}</answer>\n</thinking>"
    reply = claude.messages.create(
        model=DEFAULT_MODEL, max_tokens=30, messages=[{"role": "user", "content": "What is 2 + 3?"}],
        thinking={"type": "enabled", "budget_tokens": 1024}, extra_body={**GREEDY, "thinking_template": template},
    )
    kinds = [block.type for block in reply.content]
    assert kinds[0] == "thinking" and "text" in kinds
    assert "<problem>" in reply.content[0].thinking and reply.content[0].signature
    assert "<problem>" not in reply.content[kinds.index("text")].text


@pytest.mark.parametrize("kwargs, words", [
    ({"messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"}}]}]}, "no vision"),
    ({"messages": ASK, "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
    ({"messages": ASK, "tool_choice": {"type": "any"}}, "no tools are given"),
    ({"messages": ASK, "extra_body": {"frobnicate": True}}, "frobnicate"),
])
def test_bad_requests_are_anthropic_errors(claude, kwargs, words):
    with pytest.raises(anthropic.BadRequestError) as caught:
        claude.messages.create(model=DEFAULT_MODEL, max_tokens=5, **kwargs)
    body = caught.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert words in body["error"]["message"]


def test_max_tokens_is_required(http):
    response = http.post("/v1/messages", json={"model": DEFAULT_MODEL, "messages": ASK})
    assert response.status_code == 400
    assert response.json() == {"type": "error", "error": {"type": "invalid_request_error",
                                                          "message": "Missing required parameter: 'max_tokens'."}}
