"""Guided thinking with an XML template, kept apart from the answer."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import jsonschema
import pytest

from tests.conftest import DEFAULT_MODEL

TEMPLATE = """<chain_of_thought>
  <problem>{problem_statement}</problem>
  <initial_state>{initial_state}</initial_state>
  <steps>
    <step>{action1}</step>
    <step>{action2}</step>
    <!-- Add more steps as needed -->
  </steps>
  <answer>Provide the answer</answer>
  <final_answer>Only the final answer, no need to provide the step by step problem solving</final_answer>
</chain_of_thought>"""
APPLES = [{"role": "user", "content": "I have 3 apples and buy 2 more, then eat 1. How many apples do I have?"}]
TAGS = {"chain_of_thought", "problem", "initial_state", "steps", "step", "answer", "final_answer"}


def think(client, **kwargs):
    extra = {"thinking_template": TEMPLATE, **kwargs.pop("extra", {})}
    kwargs = {"messages": APPLES, "max_tokens": 60, "temperature": 0, **kwargs}
    return client.chat.completions.create(model=DEFAULT_MODEL, extra_body=extra, **kwargs)


def assert_template_structure(reasoning: str):
    root = ET.fromstring(reasoning)
    assert root.tag == "chain_of_thought"
    assert [child.tag for child in root] == ["problem", "initial_state", "steps", "answer", "final_answer"]
    steps = root.find("steps")
    assert len(steps) >= 2 and all(step.tag == "step" for step in steps)


def test_answer_has_no_template_tags(client):
    response = think(client, extra={"thinking_max_tokens": 300})
    message = response.choices[0].message
    assert message.content
    assert not any(f"<{tag}>" in message.content for tag in TAGS)
    assert getattr(message, "reasoning_content", None) is None  # not asked for


def test_return_thinking_parses_as_the_template(client):
    response = think(client, extra={"return_thinking": True, "thinking_max_tokens": 300})
    message = response.choices[0].message
    assert_template_structure(message.reasoning_content)
    assert message.reasoning == message.reasoning_content
    assert message.content and "<chain_of_thought>" not in message.content
    # Usage counts the thinking and the answer.
    assert response.usage.completion_tokens > len(message.reasoning_content) // 10


def test_thinking_max_tokens_closes_the_thinking(client):
    response = think(client, extra={"return_thinking": True, "thinking_max_tokens": 20})
    message = response.choices[0].message
    assert message.reasoning_content.endswith("</chain_of_thought>")
    ET.fromstring(message.reasoning_content)  # closed tags make it well-formed again
    assert message.content


def test_streaming_agrees_and_sends_reasoning_first(client):
    extra = {"return_thinking": True, "thinking_max_tokens": 200}
    whole = think(client, extra=extra).choices[0].message
    chunks = list(think(client, extra=extra, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    content = "".join(d.content or "" for d in deltas)
    assert reasoning == whole.reasoning_content
    assert content == whole.content
    first_content = next(i for i, d in enumerate(deltas) if d.content)
    last_reasoning = max(i for i, d in enumerate(deltas) if getattr(d, "reasoning_content", None))
    assert last_reasoning < first_content


def test_repeated_steps_template(client):
    template = "<plan>\n<step>first</step>\n<!-- add more steps as needed -->\n</plan>"
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=APPLES, max_tokens=30, temperature=0.7, seed=5,
        extra_body={"thinking_template": template, "return_thinking": True, "thinking_max_tokens": 200},
    )
    root = ET.fromstring(response.choices[0].message.reasoning_content)
    assert root.tag == "plan" and len(root) >= 1 and all(child.tag == "step" for child in root)


def test_thinking_with_tools(client):
    tools = [{"type": "function", "function": {
        "name": "count_apples", "description": "Count apples",
        "parameters": {"type": "object", "properties": {"start": {"type": "integer"}, "bought": {"type": "integer"},
                       "eaten": {"type": "integer"}}, "required": ["start", "bought", "eaten"]}}}]
    response = think(client, tools=tools, tool_choice="required", parallel_tool_calls=False, max_tokens=120,
                     extra={"return_thinking": True, "thinking_max_tokens": 400})
    message = response.choices[0].message
    assert_template_structure(message.reasoning_content)
    assert response.choices[0].finish_reason == "tool_calls"
    call = message.tool_calls[0]
    assert call.function.name == "count_apples"
    assert set(json.loads(call.function.arguments)) == {"start", "bought", "eaten"}
    assert "<tool_call>" not in message.reasoning_content


def test_thinking_with_json_schema(client):
    schema = {"type": "object", "properties": {"apples": {"type": "integer"}}, "required": ["apples"],
              "additionalProperties": False}
    response = think(client, response_format={"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
                     extra={"return_thinking": True, "thinking_max_tokens": 500})
    message = response.choices[0].message
    jsonschema.validate(json.loads(message.content), schema)
    assert "{" not in message.reasoning_content.split("<chain_of_thought>")[0]
    assert_template_structure(message.reasoning_content)


@pytest.mark.parametrize("template", ["<open><unclosed></open>", "just text, no elements", ""])
def test_bad_templates_are_400(http, template):
    body = {"model": DEFAULT_MODEL, "messages": APPLES, "thinking_template": template}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "thinking_template"


def test_thinking_template_on_completions_is_400(http):
    body = {"model": DEFAULT_MODEL, "prompt": "hi", "thinking_template": TEMPLATE}
    response = http.post("/v1/completions", json=body)
    assert response.status_code == 400
    assert "thinking_template" in response.json()["error"]["message"]
