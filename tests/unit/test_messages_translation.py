"""Anthropic Messages requests in chat's terms, and chat deltas as Anthropic's block events (pure logic)."""

from __future__ import annotations

import pytest

from gallama.protocol.anthropic import MessagesRequest
from gallama.protocol.errors import InvalidRequest
from gallama.server.routes.messages import BlockWriter, chat_request, sign, system_text


def request(**fields) -> MessagesRequest:
    return MessagesRequest.model_validate({"model": "m", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}],
                                           **fields})


def test_the_billing_line_is_dropped_from_either_form_of_system():
    line = "x-anthropic-billing-header: cc_version=2.1.197.c40; cc_entrypoint=sdk-cli; cch=1a2b3;"
    assert system_text(f"{line}\nYou are terse.") == "You are terse."
    blocks = request(system=[{"type": "text", "text": line}, {"type": "text", "text": "You are terse."}]).system
    assert system_text(blocks) == "You are terse."
    assert system_text("You are terse.\nx-anthropic-billing-header: kept when not first").endswith("kept when not first")


def test_tool_use_and_tool_result_become_tool_calls_and_tool_messages():
    chat = chat_request(request(
        system="S",
        messages=[
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [{"type": "thinking", "thinking": "hm", "signature": "x"},
                                              {"type": "tool_use", "id": "toolu_1", "name": "w", "input": {"c": "P"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
                                         {"type": "text", "text": "and tomorrow?"}]},
        ],
        tools=[{"name": "w", "input_schema": {"type": "object"}}],
        tool_choice={"type": "any", "disable_parallel_tool_use": True},
    ))
    assert [m.role for m in chat.messages] == ["system", "user", "assistant", "tool", "user"]
    assert chat.messages[2].content is None and chat.messages[2].tool_calls[0].function.arguments == '{"c": "P"}'
    assert chat.messages[3].tool_call_id == "toolu_1" and chat.messages[3].content == "sunny"
    assert chat.tool_choice == "required" and chat.parallel_tool_calls is False


def test_an_error_result_says_so():
    chat = chat_request(request(messages=[
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "w", "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "is_error": True,
                                      "content": [{"type": "text", "text": "no such city"}]}]}]))
    assert chat.messages[-1].content == "Error: no such city"


@pytest.mark.parametrize("fields, param", [
    ({"tools": [{"type": "bash_20250124", "name": "bash"}]}, "tools.0.type"),
    ({"tools": [{"name": "w"}]}, "tools.0.input_schema"),
    ({"tool_choice": {"type": "tool"}}, "tool_choice.name"),
    ({"messages": [{"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "x"}]}]},
     "messages.0.content.0"),
])
def test_what_cannot_be_served_is_a_400_naming_it(fields, param):
    with pytest.raises(InvalidRequest) as caught:
        chat_request(request(**fields))
    assert caught.value.param == param


def test_thinking_effort_and_output_format_map_onto_chat():
    chat = chat_request(request(thinking={"type": "disabled"},
                                output_config={"effort": "max", "format": {"type": "json_schema", "schema": {"type": "object"}}}))
    assert chat.reasoning_effort == "none" and chat.return_thinking is False
    assert chat.response_format.json_schema.schema_ == {"type": "object"}
    chat = chat_request(request(thinking={"type": "adaptive"},
                                output_config={"effort": "xhigh"}))
    assert chat.reasoning_effort == "high" and chat.return_thinking is True


def test_block_events_open_and_close_one_block_at_a_time():
    writer = BlockWriter()
    events = writer.feed({"reasoning_content": "think"}) + writer.feed({"content": "Hi"})
    events += writer.feed({"tool_calls": [{"index": 0, "id": "call_ab", "type": "function",
                                           "function": {"name": "w", "arguments": ""}}]})
    events += writer.feed({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}) + writer.close()
    kinds = [(e["type"], e.get("index"), (e.get("delta") or e.get("content_block") or {}).get("type")) for e in events]
    assert kinds == [
        ("content_block_start", 0, "thinking"), ("content_block_delta", 0, "thinking_delta"),
        ("content_block_delta", 0, "signature_delta"), ("content_block_stop", 0, None),
        ("content_block_start", 1, "text"), ("content_block_delta", 1, "text_delta"), ("content_block_stop", 1, None),
        ("content_block_start", 2, "tool_use"), ("content_block_delta", 2, "input_json_delta"),
        ("content_block_stop", 2, None),
    ]
    assert events[2]["delta"]["signature"] == sign("think")
    assert events[7]["content_block"]["id"] == "toolu_ab"
