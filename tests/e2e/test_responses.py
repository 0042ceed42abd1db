"""/v1/responses against the real server and model, through the official openai client."""

from __future__ import annotations

import json
import re
import sqlite3
from pathlib import Path

import httpx
import llguidance
import openai
import pytest
from pydantic import BaseModel, Field

from tests.byte_tokenizer import byte_tokenizer
from tests.conftest import DEFAULT_MODEL, start_server, stop_server

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                   "additionalProperties": False},
    "strict": True,
}


def create(client, **kwargs):
    return client.responses.create(model=DEFAULT_MODEL, temperature=0, **kwargs)


def test_text_answer_and_usage(client):
    response = create(client, input="Write one sentence about the sea.", instructions="Answer briefly.",
                      max_output_tokens=32, metadata={"run": "e2e"}, user="tester", store=False,
                      prompt_cache_key="k1", truncation="disabled")
    assert response.object == "response"
    assert response.id.startswith("resp_")
    assert response.status in ("completed", "incomplete")
    assert response.metadata == {"run": "e2e"}
    assert response.instructions == "Answer briefly."
    message = response.output[-1]
    assert message.type == "message" and message.role == "assistant"
    assert message.content[0].type == "output_text"
    assert response.output_text == message.content[0].text and response.output_text.strip()
    usage = response.usage
    assert usage.input_tokens > 10
    assert 0 < usage.output_tokens <= 32
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens >= 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_max_output_tokens_makes_it_incomplete(client):
    response = create(client, input="Count from one to one hundred in words.", max_output_tokens=5, store=False)
    assert response.status == "incomplete"
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 5


def test_function_call_then_its_output(client):
    first = create(client, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
                   max_output_tokens=64)
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls, first.output
    call = calls[0]
    assert call.name == "get_weather" and call.call_id and call.id.startswith("fc_")
    assert set(json.loads(call.arguments)) == {"city"}
    # The follow-up turn sends the whole conversation back, as clients without server state do.
    follow = create(client, tools=[WEATHER], max_output_tokens=48, tool_choice="none", store=False, input=[
        {"role": "user", "content": "What is the weather in Paris?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments,
         "id": call.id},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 24 degrees Celsius"},
    ])
    assert follow.status in ("completed", "incomplete")
    assert follow.output[-1].type == "message" and follow.output_text.strip()
    plain = create(client, tools=[WEATHER], max_output_tokens=1, tool_choice="none", store=False,
                   input=[{"role": "user", "content": "What is the weather in Paris?"}])
    # The call and its result are in the prompt.
    assert follow.usage.input_tokens > plain.usage.input_tokens + 10


def test_named_tool_choice_forces_that_tool(client):
    other = {**WEATHER, "name": "get_time", "parameters": {"type": "object", "properties": {"zone": {"type": "string"}},
                                                           "required": ["zone"]}}
    response = create(client, input="Hello!", tools=[WEATHER, other], max_output_tokens=64, store=False,
                      tool_choice={"type": "function", "name": "get_time"}, parallel_tool_calls=False)
    calls = [item for item in response.output if item.type == "function_call"]
    assert [c.name for c in calls] == ["get_time"]
    assert "zone" in json.loads(calls[0].arguments)


def test_hosted_tools_are_not_offered_under_auto(client, server):
    response = create(client, input="What is the weather in Paris?", max_output_tokens=48, store=False,
                      tools=[{"type": "web_search", "external_web_access": False}, WEATHER], tool_choice="required")
    assert [item.type for item in response.output if item.type.endswith("call")] == ["function_call"]
    assert response.model_extra["tools_not_offered"] == ["web_search"]
    assert "web_search" in open(server.log_path).read()


def test_stream_with_a_function_tool(client):
    with client.responses.stream(model=DEFAULT_MODEL, input="What is the weather in Paris?", tools=[WEATHER],
                                 tool_choice="required", temperature=0, max_output_tokens=64) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    assert "response.function_call_arguments.delta" in kinds
    done = [event.item for event in events if event.type == "response.output_item.done"]
    call = next(item for item in done if item.type == "function_call")
    assert call.name == "get_weather" and "city" in json.loads(call.arguments)
    arguments = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert arguments == call.arguments
    assert final.output[0].call_id == call.call_id
    assert final.usage.output_tokens > 0
    # Stored: the front answers GET from the store the worker wrote.
    assert client.responses.retrieve(final.id).output[0].call_id == call.call_id


def test_stream_of_text_has_the_part_events(client):
    with client.responses.stream(model=DEFAULT_MODEL, input="Say hello.", temperature=0, max_output_tokens=12,
                                 store=False) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    order = ["response.output_item.added", "response.content_part.added", "response.output_text.delta",
             "response.output_text.done", "response.content_part.done", "response.output_item.done",
             "response.completed"]
    positions = [kinds.index(k) for k in order]
    assert positions == sorted(positions)
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert next(e for e in events if e.type == "response.output_text.done").text == text
    assert events[-1].response.status == "incomplete"  # 12 tokens cannot finish; still completed as an event


def test_parse_with_a_pydantic_text_format(client):
    class City(BaseModel):
        name: str = Field(max_length=24)
        country: str = Field(max_length=24)
        is_capital: bool

    response = client.responses.parse(model=DEFAULT_MODEL, input="Describe Paris.", text_format=City,
                                      temperature=0, max_output_tokens=80, store=False)
    parsed = response.output_parsed
    assert isinstance(parsed, City)
    assert isinstance(parsed.is_capital, bool) and parsed.name


def test_json_object_format(client):
    response = create(client, input="Give a JSON object describing a cat.", text={"format": {"type": "json_object"}},
                      max_output_tokens=60, store=False)
    if response.status == "completed":
        assert isinstance(json.loads(response.output_text), dict)
    else:
        assert response.output_text.lstrip().startswith("{")


def test_previous_response_id_continues_the_conversation(client):
    first = create(client, input="My name is Zorblax. Remember it.", max_output_tokens=16)
    second = create(client, input="What is my name?", previous_response_id=first.id, max_output_tokens=16)
    alone = create(client, input="What is my name?", max_output_tokens=16, store=False)
    assert second.previous_response_id == first.id
    # The stored turn (its input and output) is in the prompt before the new input.
    assert second.usage.input_tokens >= alone.usage.input_tokens + first.usage.output_tokens
    # Two hops: the third turn holds both earlier ones.
    third = create(client, input="And again?", previous_response_id=second.id, max_output_tokens=4, store=False)
    assert third.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens


def test_retrieve_and_delete(client):
    response = create(client, input="Hi", max_output_tokens=4)
    got = client.responses.retrieve(response.id)
    assert got.id == response.id and got.output_text == response.output_text
    items = client.responses.input_items.list(response.id, order="asc")
    assert [item.content[0].text for item in items.data] == ["Hi"] and items.data[0].role == "user"
    client.responses.delete(response.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.retrieve(response.id)
    assert caught.value.body["code"] == "not_found"
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(response.id)


def test_store_false_is_not_kept(client):
    response = create(client, input="Hi", max_output_tokens=4, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_unknown_ids_are_404_in_openai_shape(client, http):
    reply = http.get("/v1/responses/resp_nope")
    assert reply.status_code == 404
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error" and "resp_nope" in error["message"]
    with pytest.raises(openai.NotFoundError) as caught:
        create(client, input="Hi", previous_response_id="resp_missing", max_output_tokens=4)
    assert caught.value.body["param"] == "previous_response_id"


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"include": ["file_search_call.results"]}, "include"),
        ({"background": True}, "background"),
        ({"tools": [{"type": "web_search"}], "tool_choice": {"type": "web_search"}}, "tool_choice"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AA"}]}]},
         "input[0].content[0]"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
    ],
)
def test_what_is_not_honoured_is_a_400_naming_it(client, extra, param):
    body = {"input": "Hi", "max_output_tokens": 4, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, **body) if "background" not in extra else client.responses.create(
            model=DEFAULT_MODEL, input="Hi", extra_body={"background": True})
    assert caught.value.status_code == 400
    assert caught.value.body["param"] == param
    assert caught.value.body["type"] == "invalid_request_error"


def test_reasoning_encrypted_content_is_accepted_and_checked(client):
    # Codex's stateless turn: store false, include encrypted reasoning.
    response = create(client, input="Hi", max_output_tokens=4, store=False, include=["reasoning.encrypted_content"],
                      reasoning={"summary": "auto"})
    assert response.status in ("completed", "incomplete")
    forged = {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "g1.AAAA"}
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input=[forged, {"role": "user", "content": "Hi"}], max_output_tokens=4, store=False)
    assert caught.value.body["param"] == "input[0].encrypted_content"


def test_store_file_survives_a_restart(tmp_path):
    path = tmp_path / "responses.sqlite3"
    args = ("-id", f"model_id={DEFAULT_MODEL}", "--max-sequences", "1", "--cache-size", "2048",
            "--responses-store", str(path))
    running = start_server(str(tmp_path), *args)
    try:
        body = {"model": DEFAULT_MODEL, "input": "Hi", "max_output_tokens": 4}
        stored = httpx.post(f"{running.api_url}/responses", json=body, timeout=60).json()
    finally:
        stop_server(running)
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id FROM responses").fetchall() == [(stored["id"],)]
    running = start_server(str(tmp_path), *args)
    try:
        again = httpx.get(f"{running.api_url}/responses/{stored['id']}", timeout=10)
        assert again.status_code == 200 and again.json()["output"] == stored["output"]
    finally:
        stop_server(running)


def test_stream_with_a_custom_regex_grammar_tool(client):
    tool = {"type": "custom", "name": "set_code", "description": "Set the door code.",
            "format": {"type": "grammar", "syntax": "regex", "definition": "[0-9]{3}-[A-Z]{2}"}}
    with client.responses.stream(model=DEFAULT_MODEL, input="Set the door code.", tools=[tool], temperature=0,
                                 tool_choice={"type": "custom", "name": "set_code"}, max_output_tokens=48,
                                 store=False) as stream:
        events = list(stream)
    kinds = [event.type for event in events]
    assert kinds[-1] == "response.completed"
    done = next(e for e in events if e.type == "response.custom_tool_call_input.done")
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "custom_tool_call" and item.name == "set_code"
    assert re.fullmatch(r"[0-9]{3}-[A-Z]{2}", item.input) and done.input == item.input
    assert "".join(e.delta for e in events if e.type == "response.custom_tool_call_input.delta") == item.input


# Codex's apply_patch tool (its grammar: codex-rs/core/src/tools/handlers/tool_apply_patch.lark in openai/codex).
APPLY_PATCH = {
    "type": "custom", "name": "apply_patch",
    # An example input for the 135M model to copy; the grammar alone leaves it free to write lines forever.
    "description": "Edits files. Example input:\n*** Begin Patch\n*** Add File: notes.txt\n+first line\n*** End Patch",
    "format": {"type": "grammar", "syntax": "lark",
               "definition": (Path(__file__).parent.parent / "data" / "codex_apply_patch.lark").read_text()},
}


def is_a_patch(text: str) -> bool:
    """Checked by llguidance's own matcher on bytes, outside gallama."""
    matcher = llguidance.LLMatcher(byte_tokenizer(), APPLY_PATCH["format"]["definition"], log_level=0)
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


def test_stream_with_codex_apply_patch_lark_grammar(client):
    with client.responses.stream(model=DEFAULT_MODEL, input="Create the file hello.txt with the line hello.",
                                 tools=[APPLY_PATCH], tool_choice={"type": "custom", "name": "apply_patch"},
                                 temperature=0.7, max_output_tokens=150, store=False, extra_body={"seed": 1}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert kinds[-1] == "response.completed" and final.status == "completed"
    item = next(e.item for e in events if e.type == "response.output_item.done")
    assert item.type == "custom_tool_call" and item.name == "apply_patch" and item.status == "completed"
    assert is_a_patch(item.input), item.input
    deltas = [e.delta for e in events if e.type == "response.custom_tool_call_input.delta"]
    assert len(deltas) > 3 and "".join(deltas) == item.input  # streamed as written, raw
    assert next(e for e in events if e.type == "response.custom_tool_call_input.done").input == item.input


def test_create_with_codex_apply_patch_then_its_output(client):
    first = create(client, input="Create the file hello.txt with the line hello.", tools=[APPLY_PATCH],
                   tool_choice="required", max_output_tokens=150, store=False)
    call = next(item for item in first.output if item.type == "custom_tool_call")
    assert is_a_patch(call.input), call.input
    # The call and its output sent back, as Codex does: the patch goes into the prompt raw.
    follow = create(client, tools=[APPLY_PATCH], max_output_tokens=16, store=False, input=[
        {"role": "user", "content": "Create the file hello.txt with the line hello."},
        {"type": "custom_tool_call", "call_id": call.call_id, "name": "apply_patch", "input": call.input},
        {"type": "custom_tool_call_output", "call_id": call.call_id, "output": "Success. Updated: A hello.txt"},
    ])
    assert follow.status in ("completed", "incomplete")
    assert follow.usage.input_tokens > first.usage.input_tokens + 10


def test_a_custom_grammar_that_does_not_compile_is_a_400_naming_it(client):
    tool = {"type": "custom", "name": "patch", "format": {"type": "grammar", "syntax": "lark", "definition": "start: x"}}
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input="Hi", tools=[tool], max_output_tokens=4, store=False)
    assert caught.value.body["param"] == "tools[0].format.definition"
    assert caught.value.body["code"] == "invalid_grammar"


THINKING = "<thinking><step>{first step}</step><step>{second step}</step></thinking>"


def test_thinking_comes_back_as_a_reasoning_item_sealed_and_replayable(client):
    # Codex's stateless turn: store false, the reasoning sealed in encrypted_content, replayed next turn.
    with client.responses.stream(model=DEFAULT_MODEL, input="I have 3 apples and eat 1. How many are left?",
                                 temperature=0, max_output_tokens=40, store=False,
                                 include=["reasoning.encrypted_content"], reasoning={"summary": "auto"},
                                 extra_body={"thinking_template": THINKING, "thinking_max_tokens": 120}) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [event.type for event in events]
    assert "response.reasoning_text.delta" in kinds and "response.reasoning_text.done" in kinds
    assert kinds.index("response.reasoning_text.done") < kinds.index("response.output_text.delta")
    reasoning = final.output[0]
    assert reasoning.type == "reasoning" and "<step>" in reasoning.content[0].text
    assert reasoning.encrypted_content and "<step>" not in reasoning.encrypted_content
    assert final.output[1].type == "message" and "<step>" not in final.output_text
    assert final.usage.output_tokens_details.reasoning_tokens > 0
    replay = [{"role": "user", "content": "I have 3 apples and eat 1. How many are left?"},
              reasoning.model_dump(exclude_none=True), final.output[1].model_dump(exclude_none=True),
              {"role": "user", "content": "And if I eat one more?"}]
    follow = create(client, input=replay, max_output_tokens=8, store=False)
    assert follow.status in ("completed", "incomplete")
    tampered = {**replay[1], "encrypted_content": reasoning.encrypted_content[:-6] + "AAAAAA"}
    with pytest.raises(openai.BadRequestError):
        create(client, input=[replay[0], tampered, replay[3]], max_output_tokens=8, store=False)


def test_truncation_auto_drops_the_oldest_turns_and_says_so(client):
    long_turn = "Tell me about the sea. " * 400  # some 2,400 tokens a turn; the context holds 2,048 a sequence
    items = [{"role": "user", "content": long_turn}, {"role": "assistant", "content": "The sea is wide."},
             {"role": "user", "content": long_turn}, {"role": "assistant", "content": "It is deep."},
             {"role": "user", "content": "Thanks!"}]
    with pytest.raises(openai.BadRequestError) as caught:
        create(client, input=items, max_output_tokens=4, store=False)
    assert caught.value.body["code"] == "context_length_exceeded"
    response = create(client, input=items, max_output_tokens=4, store=False, truncation="auto")
    assert response.truncation == "auto"
    assert response.model_extra["truncated_messages"] == 4
    assert response.usage.input_tokens < 100
