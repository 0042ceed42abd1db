"""The Responses API's pure parts: request translation, output items and stream events, sealed reasoning, the store."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from gallama.agentic.custom_input import CustomInput
from gallama.protocol.errors import InvalidRequest, RequestTimedOut, ServiceUnavailable
from gallama.protocol.responses_api import (
    EventStream,
    ResponseShell,
    VERBOSITY_INSTRUCTIONS,
    ResponsesRequest,
    drop_oldest_turn,
    open_reasoning,
    seal_reasoning,
    translate,
)
from gallama.protocol.responses_lifecycle import ResponseIdentity, lost_stream_events
from gallama.server.responses_store import ResponsesStore

SECRET = bytes(range(32))
WEATHER = {"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}


def request(**fields) -> ResponsesRequest:
    return ResponsesRequest.model_validate({"model": "m", **fields})


def messages(**fields) -> list[dict]:
    return [m.model_dump(exclude_none=True) for m in translate(request(**fields), secret=SECRET).chat.messages]


def test_string_input_and_instructions():
    assert messages(input="Hi", instructions="Be brief.") == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]


def test_items_become_chat_messages_with_calls_joined_to_the_assistant_turn():
    items = [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Rules."}]},
        {"type": "message", "id": "msg_client1", "role": "user", "content": [{"type": "input_text", "text": "Go"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "thinking"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Calling."}]},
        {"type": "function_call", "call_id": "c1", "name": "a", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "b", "arguments": "{\"x\": 1}"},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]},
    ]
    result = messages(input=items)
    assert [m["role"] for m in result] == ["developer", "user", "assistant", "tool", "tool"]
    assistant = result[2]
    assert assistant["content"] == "Calling."
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["a", "b"]
    assert [c["id"] for c in assistant["tool_calls"]] == ["c1", "c2"]
    assert result[4] == {"role": "tool", "tool_call_id": "c2", "content": "two"}


def test_a_call_without_assistant_text_opens_an_assistant_message():
    result = messages(input=[{"role": "user", "content": "x"},
                             {"type": "custom_tool_call", "call_id": "c", "name": "patch", "input": "*** Begin"}])
    assert result[1]["role"] == "assistant"
    assert json.loads(result[1]["tool_calls"][0]["function"]["arguments"]) == {"input": "*** Begin"}


def test_history_comes_before_the_new_input():
    history = [{"type": "message", "role": "user", "content": "first"},
               {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok"}]}]
    chat = translate(request(input="second"), history, SECRET).chat
    assert [m.text() for m in chat.messages] == ["first", "ok", "second"]


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"type": "function_call", "name": "a", "arguments": "{}"}]}, "input[0].call_id"),
        ({"input": "x", "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": "x", "tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": "x", "tools": [{"type": "frobnicate"}]}, "tools[0].type"),
        ({"input": "x", "tools": [{**WEATHER, "extra": 1}]}, "tools[0].extra"),
        ({"input": []}, "input"),
        ({"input": "x", "text": {"format": {"type": "json_schema"}}}, "text.format"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(fields, param):
    with pytest.raises(InvalidRequest) as caught:
        translate(request(**fields), secret=SECRET)
    assert caught.value.param == param


def test_unknown_parameters_are_refused_by_the_model():
    with pytest.raises(ValueError, match="background"):
        request(input="x", background=True)


def test_tools_hosted_ones_left_out_and_tool_choice():
    translation = translate(request(input="x", tools=[{"type": "web_search", "external_web_access": False}, WEATHER],
                                    tool_choice={"type": "function", "name": "get_weather"}), secret=SECRET)
    assert translation.not_offered == ["web_search"]
    chat = translation.chat
    assert [t.function.name for t in chat.tools] == ["get_weather"]
    assert chat.tool_choice.function.name == "get_weather"


def test_only_hosted_tools_means_no_tools():
    chat = translate(request(input="x", tools=[{"type": "file_search"}], tool_choice="auto"), secret=SECRET).chat
    assert chat.tools is None


def test_text_format_reasoning_and_limits():
    chat = translate(request(input="x", text={"format": {"type": "json_schema", "name": "city", "strict": True,
                                                         "schema": {"type": "object"}}},
                             reasoning={"effort": "none", "summary": "auto"}, max_output_tokens=7, stop=["END"]),
                     secret=SECRET).chat
    assert chat.response_format.type == "json_schema"
    assert chat.response_format.json_schema.name == "city" and chat.response_format.json_schema.strict
    assert chat.reasoning_effort == "none"
    assert chat.output_limit() == 7
    assert chat.stop_list() == ["END"]
    assert chat.return_thinking


def test_verbosity_is_a_line_of_the_instructions():
    def system_text(**fields):
        messages = translate(request(input="x", **fields), secret=SECRET).chat.messages
        return messages[0].content if messages[0].role == "system" else None

    assert system_text(instructions="Be a shell.", text={"verbosity": "low"}) == \
        "Be a shell.\n\n" + VERBOSITY_INSTRUCTIONS["low"]
    assert system_text(text={"verbosity": "high"}) == VERBOSITY_INSTRUCTIONS["high"]
    assert system_text(instructions="Be a shell.", text={"verbosity": "medium"}) == "Be a shell."
    assert system_text(text={"verbosity": "medium"}) is None
    with pytest.raises(ValidationError):
        request(input="x", text={"verbosity": "terse"})


def shell(**fields) -> ResponseShell:
    body = request(input="x", **fields)
    return ResponseShell(body, translate(body, secret=SECRET), "m", SECRET)


CHAT_USAGE = {"prompt_tokens": 10, "completion_tokens": 6, "total_tokens": 16, "prompt_tokens_details": {"cached_tokens": 4}}


def test_final_response_items_and_usage():
    message = {"role": "assistant", "content": None, "reasoning_content": "hmm",
               "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}
    response = shell(tools=[WEATHER]).final(message, "tool_calls", CHAT_USAGE, lambda text: 2)
    assert [item["type"] for item in response["output"]] == ["reasoning", "function_call"]
    assert response["output"][0]["content"] == [{"type": "reasoning_text", "text": "hmm"}]
    assert response["output"][1]["call_id"] == "call_1"
    assert response["status"] == "completed"
    assert response["usage"] == {"input_tokens": 10, "input_tokens_details": {"cached_tokens": 4}, "output_tokens": 6,
                                 "output_tokens_details": {"reasoning_tokens": 2}, "total_tokens": 16}


def test_length_is_incomplete():
    response = shell().final({"role": "assistant", "content": "abc"}, "length", CHAT_USAGE, len)
    assert response["status"] == "incomplete"
    assert response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete"


def test_custom_tool_calls_come_back_as_custom_tool_call_items():
    custom = {"type": "custom", "name": "apply_patch", "description": "Patch files."}
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "apply_patch", "arguments": "diff"}}]}
    response = shell(tools=[custom]).final(message, "tool_calls", CHAT_USAGE, len)
    assert response["output"][0]["type"] == "custom_tool_call"
    assert response["output"][0]["input"] == "diff"


def chunk(delta=None, finish=None, usage=None):
    choices = [] if delta is None and finish is None else [{"index": 0, "delta": delta or {}, "finish_reason": finish}]
    return {"choices": choices, "usage": usage}


def test_event_stream_of_reasoning_text_and_a_call():
    events = EventStream(shell(tools=[WEATHER], include=["reasoning.encrypted_content"]), lambda text: 1)
    out = events.start()
    for piece in [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "th"}),
                  chunk({"reasoning_content": "ink"}), chunk({"content": "Hello"}),
                  chunk({"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                                         "function": {"name": "get_weather", "arguments": ""}}]}),
                  chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{\"city\":"}}]}),
                  chunk({"tool_calls": [{"index": 0, "function": {"arguments": " \"Oslo\"}"}}]}),
                  chunk({}, "tool_calls"), chunk(usage=CHAT_USAGE)]:
        out += events.feed(piece)
    out += events.finish()
    assert [e["sequence_number"] for e in out] == list(range(len(out)))
    assert [e["type"] for e in out] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.delta", "response.reasoning_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done", "response.completed"]
    reasoning_done = out[8]["item"]
    assert open_reasoning(reasoning_done["encrypted_content"], SECRET) == "think"
    call_done = out[19]["item"]
    assert call_done["arguments"] == "{\"city\": \"Oslo\"}" and call_done["status"] == "completed"
    final = out[-1]["response"]
    assert [item["type"] for item in final["output"]] == ["reasoning", "message", "function_call"]
    assert final["usage"]["output_tokens_details"]["reasoning_tokens"] == 1
    assert out[2]["output_index"] == 0 and out[9]["output_index"] == 1 and out[15]["output_index"] == 2


def test_event_stream_failure_ends_with_response_failed():
    events = EventStream(shell(), len)
    events.start()
    events.feed(chunk({"content": "Hel"}))
    out = events.fail(RequestTimedOut(5, 3))
    assert [e["type"] for e in out] == ["error", "response.failed"]
    assert out[0]["code"] == "request_timeout"
    failed = out[1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "request_timeout"
    assert failed["output"][0]["status"] == "incomplete"


def test_custom_tool_input_streams_as_written():
    events = EventStream(shell(tools=[{"type": "custom", "name": "apply_patch"}]), len)
    events.start()
    out = events.feed(chunk({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "apply_patch", "arguments": ""}}]}))
    patch = "*** Begin Patch\n\"quoted\" \\ caf\u00e9 \U0001F600\n*** End Patch"
    for start in range(0, len(patch), 3):  # the chat core passes a custom call's raw input on as its arguments
        out += events.feed(chunk({"tool_calls": [{"index": 0, "function": {"arguments": patch[start:start + 3]}}]}))
    out += events.finish()
    assert out[0]["item"]["type"] == "custom_tool_call" and out[0]["item"]["input"] == ""
    deltas = [e["delta"] for e in out if e["type"] == "response.custom_tool_call_input.delta"]
    done = next(e for e in out if e["type"] == "response.custom_tool_call_input.done")
    assert len(deltas) > 5 and "".join(deltas) == done["input"] == patch
    assert out[-1]["response"]["output"][0]["input"] == patch


def test_output_item_added_carries_the_item_as_announced():
    events = EventStream(shell(), len)
    events.start()
    added = events.feed(chunk({"content": "Hello"}))[0]
    assert added["type"] == "response.output_item.added" and added["item"]["content"][0]["text"] == ""


def test_sealed_reasoning_round_trip_and_tampering():
    sealed = seal_reasoning("secret thoughts", SECRET)
    assert "secret" not in sealed
    assert open_reasoning(sealed, SECRET) == "secret thoughts"
    with pytest.raises(ValueError):
        open_reasoning(sealed, bytes(32))  # another server's key
    with pytest.raises(ValueError):
        open_reasoning(sealed[:-4] + ("AAAA" if not sealed.endswith("AAAA") else "BBBB"), SECRET)
    with pytest.raises(ValueError):
        open_reasoning("plain text", SECRET)


def test_replayed_reasoning_is_checked():
    sealed = seal_reasoning("t", SECRET)
    ok = [{"type": "reasoning", "summary": [], "encrypted_content": sealed}, {"role": "user", "content": "x"}]
    assert messages(input=ok) == [{"role": "user", "content": "x"}]
    with pytest.raises(InvalidRequest):
        translate(request(input=ok), secret=bytes(32))


def test_store_bounds_and_sharing(tmp_path):
    path = str(tmp_path / "store.sqlite3")
    store = ResponsesStore(path, max_responses=2)
    for n in range(3):
        store.put({"id": f"resp_{n}", "output": []}, [{"n": n}])
    assert store.ids() == ["resp_1", "resp_2"]  # the oldest went first
    other = ResponsesStore(path)  # another process's view of the same file
    assert other.get("resp_2") == {"id": "resp_2", "output": []}
    assert other.conversation("resp_1") == [{"n": 1}]
    assert other.secret() == store.secret()
    assert other.delete("resp_1") and not store.delete("resp_1")
    assert store.get("resp_1") is None


def test_store_bounds_bytes(tmp_path):
    store = ResponsesStore(str(tmp_path / "s.sqlite3"), max_bytes=300)
    store.put({"id": "a", "pad": "x" * 100}, [])
    store.put({"id": "b", "pad": "x" * 100}, [])
    store.put({"id": "c", "pad": "x" * 100}, [])
    assert store.ids() == ["b", "c"]
    store.put({"id": "huge", "pad": "x" * 1000}, [])  # could never fit: not kept, nothing evicted for it
    assert store.ids() == ["b", "c"]


def test_custom_tools_keep_their_input_format_for_the_chat_core():
    regex = {"type": "custom", "name": "code", "format": {"type": "grammar", "syntax": "regex", "definition": "[0-9]+"}}
    lark = {"type": "custom", "name": "patch", "format": {"type": "grammar", "syntax": "lark", "definition": "start: \"x\""}}
    translation = translate(request(input="x", tools=[regex, lark, {"type": "custom", "name": "free"}],
                                    tool_choice={"type": "custom", "name": "code"}), secret=SECRET)
    assert translation.custom == {"code": CustomInput("regex", "[0-9]+"), "patch": CustomInput("lark", 'start: "x"'),
                                  "free": CustomInput()}
    assert translation.chat.tools[0].function.parameters["properties"]["input"] == {"type": "string"}
    assert translation.chat.tool_choice.function.name == "code"


@pytest.mark.parametrize(("fmt", "param"), [
    ({"type": "grammar", "syntax": "lark", "definition": "start: undefined_rule"}, "tools[0].format.definition"),
    ({"type": "grammar", "syntax": "regex", "definition": "a("}, "tools[0].format.definition"),
    ({"type": "grammar", "syntax": "ebnf", "definition": "x"}, "tools[0].format.syntax"),
    ({"type": "grammar", "syntax": "lark"}, "tools[0].format.definition"),
])
def test_a_custom_format_that_cannot_be_enforced_is_a_400_naming_it(fmt, param):
    with pytest.raises(InvalidRequest) as caught:
        translate(request(input="x", tools=[{"type": "custom", "name": "t", "format": fmt}]))
    assert caught.value.param == param


def test_namespace_tools_are_called_back_with_their_namespace():
    namespace = {"type": "namespace", "name": "agents", "description": "Sub-agents.",
                 "tools": [{"type": "function", "name": "spawn", "parameters": {"type": "object", "properties": {}}}]}
    body = request(input=[{"role": "user", "content": "x"},
                          {"type": "function_call", "call_id": "c0", "name": "spawn", "namespace": "agents",
                           "arguments": "{}"},
                          {"type": "function_call_output", "call_id": "c0", "output": "done"}], tools=[namespace])
    translation = translate(body, secret=SECRET)
    assert [t.function.name for t in translation.chat.tools] == ["agents__spawn"]
    assert translation.chat.messages[1].tool_calls[0].function.name == "agents__spawn"
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "agents__spawn", "arguments": "{}"}}]}
    item = ResponseShell(body, translation, "m", SECRET).final(message, "tool_calls", CHAT_USAGE, len)["output"][0]
    assert (item["type"], item["name"], item["namespace"]) == ("function_call", "spawn", "agents")


def test_a_stream_that_fails_mid_way_still_ends_with_response_failed():
    import asyncio

    from gallama.server.routes.responses import stream_events

    kept = []

    async def chunks():
        yield chunk({"content": "Hel"})
        raise RequestTimedOut(5, 1)

    async def keep(response):
        kept.append(response)

    async def run():
        return [event async for event in stream_events(chunks(), EventStream(shell(), len), keep)]

    events = asyncio.run(run())
    assert [e["type"] for e in events][-2:] == ["error", "response.failed"]
    assert events[-1]["response"]["error"]["code"] == "request_timeout"
    assert kept == []  # a failed response is not stored


def test_metrics_label_ids_as_one_endpoint():
    from gallama.server.guard import _endpoint

    assert _endpoint("/v1/responses/resp_123") == "/v1/responses/{id}"
    assert _endpoint("/v1/models/SmolLM2") == "/v1/models/{id}"
    assert _endpoint("/v1/responses") == "/v1/responses"
    assert _endpoint("/health") == "other"


def test_truncation_auto_drops_the_oldest_whole_turn():
    items = [{"role": "user", "content": "one"}, {"role": "assistant", "content": "1"},
             {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
             {"type": "function_call_output", "call_id": "c", "output": "r"},
             {"role": "user", "content": "two"}, {"role": "assistant", "content": "2"},
             {"role": "user", "content": "three"}]
    translation = translate(request(input=items, instructions="Sys", truncation="auto"), secret=SECRET)
    assert translation.truncate
    shorter, dropped = drop_oldest_turn(translation.chat)
    assert dropped == 3  # the user message, the assistant's call, its output
    assert [m.text() for m in shorter.messages] == ["Sys", "two", "2", "three"]
    shorter, dropped = drop_oldest_turn(shorter)
    assert [m.text() for m in shorter.messages] == ["Sys", "three"] and dropped == 2
    assert drop_oldest_turn(shorter) is None  # the last turn always stays


def test_xhigh_effort_is_the_chat_core_high():
    chat = translate(request(input="x", reasoning={"effort": "xhigh"}), secret=SECRET).chat
    assert chat.reasoning_effort == "high"
    assert translate(request(input="x"), secret=SECRET).chat.reasoning_effort is None


def test_a_long_string_input_is_one_message_and_the_item_list_is_bounded():
    assert request(input="x" * 10_000).input == "x" * 10_000
    with pytest.raises(ValueError, match="at most 4096 items"):
        request(input=[{"role": "user", "content": "x"}] * 4097)


def test_input_items_are_the_conversation_without_the_output(tmp_path):
    from gallama.server.responses_store import input_items_page

    store = ResponsesStore(str(tmp_path / "s.sqlite3"))
    conversation = [{"type": "message", "role": "user", "content": "a"}, {"id": "msg_b", "type": "message"},
                    {"id": "msg_out", "type": "message", "role": "assistant"}]
    store.put({"id": "r", "output": [conversation[-1]]}, conversation)
    items = store.input_items("r")
    assert [item["id"] for item in items] == ["r_item_0", "msg_b"]
    assert store.input_items("nope") is None
    page = input_items_page(items, 1, "desc", None)
    assert [i["id"] for i in page["data"]] == ["msg_b"] and page["has_more"]
    page = input_items_page(items, 1, "desc", "msg_b")
    assert [i["id"] for i in page["data"]] == ["r_item_0"] and not page["has_more"]
    with pytest.raises(InvalidRequest):
        input_items_page(items, 1, "sideways", None)


def test_the_front_ends_a_lost_stream_as_the_same_response():
    identity = ResponseIdentity.new()
    chosen = ResponseIdentity.from_headers(identity.headers())
    assert chosen == identity
    body = request(input="x")
    assert ResponseShell(body, translate(body), "m", SECRET, chosen).response("in_progress", [])["id"] == identity.id
    assert ResponseIdentity.from_headers({}).id.startswith("resp_")  # no front: its own
    error, failed = lost_stream_events(identity, "m", 40, ServiceUnavailable("gone", code="worker_unavailable"))
    assert (error["type"], error["sequence_number"], error["code"]) == ("error", 40, "worker_unavailable")
    assert failed["type"] == "response.failed" and failed["sequence_number"] == 41
    response = failed["response"]
    assert (response["id"], response["created_at"], response["status"]) == (identity.id, identity.created_at, "failed")
    assert response["error"] == {"code": "worker_unavailable", "message": "gone"} and "output" not in response
