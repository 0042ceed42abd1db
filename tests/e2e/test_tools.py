"""Function calling on the default model (no tool template: gallama's generic format), enforced by grammar."""

from __future__ import annotations

import json

import jsonschema
import pytest

from tests.conftest import DEFAULT_MODEL

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 30}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two integers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
            "required": ["a", "b"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, ADD]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]


def ask(client, **kwargs):
    kwargs = {"messages": ASK, "tools": TOOLS, "max_tokens": 120, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=DEFAULT_MODEL, **kwargs)


def assert_valid_calls(calls):
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in SCHEMAS
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def test_required_makes_a_valid_call(client):
    response = ask(client, tool_choice="required")
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert_valid_calls(choice.message.tool_calls)
    assert len({c.id for c in choice.message.tool_calls}) == len(choice.message.tool_calls)


def test_named_choice_calls_exactly_that_function(client):
    response = ask(client, tool_choice={"type": "function", "function": {"name": "add"}})
    calls = response.choices[0].message.tool_calls
    assert_valid_calls(calls)
    assert [c.function.name for c in calls] == ["add"]


def test_none_never_calls(client):
    response = ask(client, tool_choice="none")
    message = response.choices[0].message
    assert not message.tool_calls
    assert message.content
    assert "<tool_call>" not in message.content.lstrip()[:11]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_is_text_or_valid_calls(client, seed):
    response = ask(client, tool_choice="auto", temperature=0.8, seed=seed)
    choice = response.choices[0]
    if choice.message.tool_calls:
        assert_valid_calls(choice.message.tool_calls)
        assert choice.finish_reason in ("tool_calls", "length")
    else:
        assert choice.message.content


def test_auto_calls_for_a_request_a_tool_serves(client):
    # The choice is one token, "<tool_call>" against "<response>", so a plain request gets its call.
    response = ask(client, tool_choice="auto", messages=[{"role": "user", "content": "What is the weather in Paris?"}])
    choice = response.choices[0]
    assert_valid_calls(choice.message.tool_calls)
    assert choice.message.tool_calls[0].function.name == "get_weather"
    assert choice.finish_reason == "tool_calls"


def no_calls_bias(http) -> dict[str, int]:
    """A logit_bias that bans the token after "<" in "<tool_call>", so auto must answer in text."""
    tokens = http.post("/tokenize", json={"model": DEFAULT_MODEL, "content": "<tool_call>"}).json()["tokens"]
    return {str(tokens[1]): -100}


def test_auto_text_answer_is_content_without_its_tag(client, http):
    bias = no_calls_bias(http)
    # A first run leaves the prompt cached, so the two runs compared start alike
    # (a full prefill and a cached one differ in the last bits of the logits).
    ask(client, tool_choice="auto", logit_bias=bias, max_tokens=1)
    response = ask(client, tool_choice="auto", logit_bias=bias, max_tokens=30)
    message = response.choices[0].message
    assert not message.tool_calls and message.content
    assert "<response>" not in message.content and not message.content[0].isspace()
    chunks = list(ask(client, tool_choice="auto", logit_bias=bias, max_tokens=30, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == message.content


def test_parallel_false_allows_one_call(client):
    for seed in (1, 2):
        response = ask(client, tool_choice="required", parallel_tool_calls=False, temperature=0.9, seed=seed)
        assert len(response.choices[0].message.tool_calls) == 1


def test_streamed_deltas_as_openai(client):
    expected = ask(client, tool_choice="required")
    chunks = list(ask(client, tool_choice="required", stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas
    first_of_each = {}
    for delta in deltas:
        for call in delta.tool_calls:
            if call.index not in first_of_each:
                first_of_each[call.index] = call
                assert call.id and call.type == "function" and call.function.name
            else:
                assert call.id is None and call.function.name is None
    assembled: dict[int, str] = {}
    for delta in deltas:
        for call in delta.tool_calls:
            assembled[call.index] = assembled.get(call.index, "") + (call.function.arguments or "")
    expected_calls = expected.choices[0].message.tool_calls
    assert [assembled[i] for i in sorted(assembled)] == [c.function.arguments for c in expected_calls]
    assert [first_of_each[i].function.name for i in sorted(first_of_each)] == [c.function.name for c in expected_calls]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_stream_helper_assembles_calls(client):
    expected = ask(client, tool_choice="required").choices[0].message.tool_calls
    with client.beta.chat.completions.stream(
        model=DEFAULT_MODEL, messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=120, temperature=0
    ) as stream:
        final = stream.get_final_completion()
    calls = final.choices[0].message.tool_calls
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in expected
    ]


def test_history_with_tool_results(client):
    result = "The weather in Paris is sunny, 24 degrees, with a light breeze from the west."
    history = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": result},
    ]
    with_result = ask(client, messages=history, tool_choice="none", max_tokens=30)
    without = ask(client, messages=history[:1], tool_choice="none", max_tokens=30)
    assert with_result.choices[0].message.content
    # The call and its result are in the prompt.
    assert with_result.usage.prompt_tokens >= without.usage.prompt_tokens + len(result.split())


def test_tools_with_response_format_text_follows_schema(client, http):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 40}}, "required": ["answer"],
              "additionalProperties": False}
    response = ask(
        client, tool_choice="auto", max_tokens=80, logit_bias=no_calls_bias(http),
        messages=[{"role": "user", "content": "Say hello."}],
        response_format={"type": "json_schema", "json_schema": {"name": "reply", "schema": schema}},
    )
    message = response.choices[0].message
    assert not message.tool_calls
    jsonschema.validate(json.loads(message.content), schema)


def test_legacy_functions_are_mapped(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=80, temperature=0,
        functions=[WEATHER["function"]], function_call={"name": "get_weather"},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "function_call"
    assert choice.message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(choice.message.function_call.arguments), SCHEMAS["get_weather"])


@pytest.mark.parametrize(
    "tools, tool_choice, param",
    [
        ([{"type": "function", "function": {"name": "bad name!", "parameters": {}}}], None, "tools.0.function.name"),
        ([WEATHER, WEATHER], None, "tools.1.function.name"),
        ([{"type": "function", "function": {"name": "f", "parameters": {"type": "nonsense"}}}], None,
         "tools.0.function.parameters"),
        ([WEATHER], {"type": "function", "function": {"name": "missing"}}, "tool_choice"),
        (None, "required", "tool_choice"),
    ],
)
def test_bad_tools_are_400(http, tools, tool_choice, param):
    body = {"model": DEFAULT_MODEL, "messages": ASK}
    if tools is not None:
        body["tools"] = tools
    if tool_choice is not None:
        body["tool_choice"] = tool_choice
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_tool_with_one_of_parameters_is_served_and_verified(client):
    lookup = {"type": "function", "function": {"name": "lookup", "description": "Look up a record by id or by name",
              "parameters": {"type": "object", "properties": {"key": {"oneOf": [
                  {"type": "integer", "minimum": 0}, {"type": "string", "maxLength": 20}]}},
                  "required": ["key"], "additionalProperties": False}}}
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Look up the record of Alice."}], tools=[lookup],
        tool_choice="required", max_tokens=60, temperature=0,
    )
    call = reply.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), lookup["function"]["parameters"])
