"""The transformers engine behind `gallama serve`: the bundled SmolLM2 GGUF, dequantized by transformers.

Short answers: on 2 shared cores the model's forward pass through torch costs far more than llama.cpp's.
"""

from __future__ import annotations

import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import anthropic
import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import DEFAULT_MODEL, start_server, stop_server

MISSING = [name for name in ("torch", "transformers", "gguf", "accelerate") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"the transformers extra is not installed (missing: {', '.join(MISSING)})")

BESIDE = "smollm2-llama-cpp"  # the same GGUF on the llama.cpp engine, behind the same front
PROMPTS = ["What is the capital of France?", "Name three colors.", "Count from one to five."]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(
        str(tmp_path_factory.mktemp("transformers")), "-id", f"model_id={DEFAULT_MODEL} backend=transformers",
        "-id", f"model_id={DEFAULT_MODEL} model_name={BESIDE}", "--max-sequences", "4", timeout_s=600,
    )
    yield server
    stop_server(server)


@pytest.fixture(scope="module")
def api(server):
    return openai.OpenAI(base_url=server.api_url, api_key="none", max_retries=0, timeout=600)


def greedy(api, prompt: str, max_tokens: int = 12) -> str:
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=max_tokens)
    return answer.choices[0].message.content


def test_chat_answers(api):
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0, max_tokens=12)
    assert "Paris" in answer.choices[0].message.content
    assert answer.usage.completion_tokens <= 12


def test_a_stream_gives_the_greedy_answer(api):
    chunks = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPTS[1]}], temperature=0, max_tokens=12,
        stream=True)
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert streamed and streamed == greedy(api, PROMPTS[1])


def test_greedy_answers_are_the_same_alone_and_batched(api):
    alone = [greedy(api, prompt) for prompt in PROMPTS]
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda prompt: greedy(api, prompt), PROMPTS))
    assert together == alone


def test_a_required_tool_call_follows_the_schema(api):
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "What is the weather in Paris?"}],
        tools=[WEATHER], tool_choice="required", temperature=0, max_tokens=40)
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    assert isinstance(json.loads(calls[0].function.arguments)["city"], str)


def test_json_schema_output_is_valid(api):
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"}},
              "required": ["name", "age"], "additionalProperties": False}
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Describe a person as JSON."}], temperature=0,
        max_tokens=40, response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": schema}})
    person = json.loads(answer.choices[0].message.content)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)


def model_metrics(server) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=60).text
    return {sample.name: sample.value for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.labels.get("model") == DEFAULT_MODEL and "le" not in sample.labels}


def test_metrics_count_its_tokens_and_report_its_engine_gauges(server, api):
    before = model_metrics(server)
    answer = api.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": PROMPTS[2]}], temperature=0, max_tokens=6)
    after = model_metrics(server)
    generated = after["gallama_generated_tokens_total"] - before.get("gallama_generated_tokens_total", 0)
    assert generated == answer.usage.completion_tokens
    assert after["gallama_queue_depth"] == 0 and after["gallama_running_sequences"] == 0


def test_a_llama_cpp_instance_serves_beside_it_behind_one_front(server, api):
    assert {DEFAULT_MODEL, BESIDE} <= {model.id for model in api.models.list()}
    health = {model["id"]: model for model in httpx.get(f"{server.base_url}/health", timeout=60).json()["models"]}

    def maps_torch(model: str) -> bool:
        pid = health[model]["instances"][0]["pid"]
        return "libtorch" in open(f"/proc/{pid}/maps").read()

    assert maps_torch(DEFAULT_MODEL) and not maps_torch(BESIDE)  # one worker per engine
    beside = api.chat.completions.create(
        model=BESIDE, messages=[{"role": "user", "content": PROMPTS[0]}], temperature=0, max_tokens=12)
    assert beside.choices[0].message.content and beside.usage.completion_tokens <= 12


def test_legacy_completions_stop_at_a_stop_string(api):
    answer = api.completions.create(model=DEFAULT_MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=12, stop=["7"])
    text = answer.choices[0].text
    assert "5" in text and "7" not in text and answer.choices[0].finish_reason == "stop"


def test_the_responses_api_streams_a_thinking_template_apart_from_the_answer(api):
    thinking = "<thinking><step>{first step}</step></thinking>"
    with api.responses.stream(model=DEFAULT_MODEL, input="What is 2 + 3?", temperature=0, max_output_tokens=30,
                              extra_body={"thinking_template": thinking, "thinking_max_tokens": 60}) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert "response.reasoning_text.delta" in kinds and "response.output_text.delta" in kinds
    assert final.output[0].type == "reasoning" and "<step>" in final.output[0].content[0].text
    assert "<step>" not in final.output_text


def test_anthropic_messages_call_a_tool(server):
    claude = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    city = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    tool = {"name": "get_weather", "description": WEATHER["function"]["description"], "input_schema": city}
    reply = claude.messages.create(model=DEFAULT_MODEL, max_tokens=40, tools=[tool],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                   messages=[{"role": "user", "content": "What is the weather in Paris?"}],
                                   extra_body={"temperature": 0})
    calls = [block for block in reply.content if block.type == "tool_use"]
    assert reply.stop_reason == "tool_use" and calls[0].name == "get_weather"
    assert isinstance(calls[0].input["city"], str)
