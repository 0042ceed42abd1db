"""Structured output enforced token by token: JSON schema, regex, grammars, leading prompt, stop words."""

from __future__ import annotations

import json
import re

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import DEFAULT_MODEL
from tests.e2e.test_metrics import scrape

ASK = [{"role": "user", "content": "Describe a person as JSON."}]

SCHEMAS = {
    "scalar_types": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 20},
            "age": {"type": "integer"},
            "height": {"type": "number"},
            "member": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
        "required": ["name", "age", "height", "member", "nothing"],
        "additionalProperties": False,
    },
    "enum_and_const": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "kind": {"const": "person"},
            "level": {"enum": [1, 2, 3]},
        },
        "required": ["colour", "kind", "level"],
        "additionalProperties": False,
    },
    "nested_with_bounded_arrays": {
        "type": "object",
        "properties": {
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 15}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                "required": ["city", "zip"],
                "additionalProperties": False,
            },
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "minItems": 2, "maxItems": 3},
        },
        "required": ["address", "tags"],
        "additionalProperties": False,
    },
    "optional_properties": {
        "type": "object",
        "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}, "nickname": {"type": "string", "maxLength": 10}},
        "required": ["id"],
        "additionalProperties": False,
    },
    "formats": {
        "type": "object",
        "properties": {
            "born": {"type": "string", "format": "date"},
            "email": {"type": "string", "format": "email", "maxLength": 30},
            "id": {"type": "string", "format": "uuid"},
        },
        "required": ["born", "email", "id"],
        "additionalProperties": False,
    },
    "any_of_and_one_of": {
        "type": "object",
        "properties": {
            "value": {"anyOf": [{"type": "integer"}, {"type": "string", "maxLength": 10}]},
            "shape": {
                "oneOf": [
                    {"type": "object", "properties": {"circle": {"type": "number"}}, "required": ["circle"], "additionalProperties": False},
                    {"type": "object", "properties": {"square": {"type": "integer"}}, "required": ["square"], "additionalProperties": False},
                ]
            },
        },
        "required": ["value", "shape"],
        "additionalProperties": False,
    },
    "refs_and_defs": {
        "$defs": {
            "point": {
                "type": "object",
                # Bounded: at temperature 0.7 an unbounded integer can run on digit by digit past max_tokens.
                "properties": {"x": {"type": "integer", "minimum": -1000, "maximum": 1000},
                               "y": {"type": "integer", "minimum": -1000, "maximum": 1000}},
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    },
    "top_level_array": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 1, "maxItems": 4},
}


def schema_format(schema, name="answer"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_json_schema_output_validates(client, name):
    schema = SCHEMAS[name]
    for seed in (1, 2):
        response = client.chat.completions.create(
            model=DEFAULT_MODEL, messages=ASK, max_tokens=200, temperature=0.7, seed=seed,
            response_format=schema_format(schema),
        )
        choice = response.choices[0]
        assert choice.finish_reason == "stop", choice.message.content
        jsonschema.validate(json.loads(choice.message.content), schema, format_checker=jsonschema.FormatChecker())


def test_json_object_mode(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=150, temperature=0, response_format={"type": "json_object"}
    )
    if response.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(response.choices[0].message.content), dict)
    else:  # cut off: the prefix must still be the start of an object
        assert response.choices[0].message.content.startswith("{")


def test_text_format_is_free(client):
    free = client.chat.completions.create(model=DEFAULT_MODEL, messages=ASK, max_tokens=10, temperature=0)
    text = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=10, temperature=0, response_format={"type": "text"}
    )
    assert free.choices[0].message.content == text.choices[0].message.content


def test_openai_parse_helper_with_pydantic(client):
    from pydantic import BaseModel, Field

    class City(BaseModel):
        name: str = Field(max_length=20)
        population: int

    completion = client.beta.chat.completions.parse(
        model=DEFAULT_MODEL,
        messages=[{"role": "user", "content": "Name a big city and its population."}],
        response_format=City,
        max_tokens=80,
        temperature=0,
    )
    assert isinstance(completion.choices[0].message.parsed, City)


def test_regex_pattern_whole_output(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Give a phone number."}], max_tokens=30,
        temperature=0.8, seed=4, extra_body={"regex_pattern": r"\(\d{3}\) \d{3}-\d{4}"},
    )
    assert re.fullmatch(r"\(\d{3}\) \d{3}-\d{4}", response.choices[0].message.content)
    assert response.choices[0].finish_reason == "stop"


def test_regex_prefix_then_free_text(client):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "Is water wet? Explain."}], max_tokens=30,
        temperature=0, extra_body={"regex_prefix_pattern": r"(Yes|No)\."},
    )
    text = response.choices[0].message.content
    assert re.match(r"(Yes|No)\.", text)
    assert len(text) > 4  # generation went on past the prefix


def test_guided_choice_and_grammars(client):
    ask = [{"role": "user", "content": "Is the sky blue?"}]
    choice = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=10, extra_body={"guided_choice": ["yes", "no", "maybe"]}
    )
    assert choice.choices[0].message.content in {"yes", "no", "maybe"}
    lark = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=10, extra_body={"grammar": 'start: "Answer: " ("yes" | "no")'}
    )
    assert lark.choices[0].message.content in {"Answer: yes", "Answer: no"}
    gbnf = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=10, extra_body={"guided_grammar": 'root ::= "A" [0-9] [0-9]'}
    )
    assert re.fullmatch(r"A\d\d", gbnf.choices[0].message.content)
    regex = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=10, extra_body={"guided_regex": "[A-Z]{3}"}
    )
    assert re.fullmatch("[A-Z]{3}", regex.choices[0].message.content)


def test_guided_json_vllm_name(client):
    schema = SCHEMAS["enum_and_const"]
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=60, extra_body={"guided_json": schema}
    )
    jsonschema.validate(json.loads(response.choices[0].message.content), schema)


def test_leading_prompt_is_continued_not_returned(client):
    ask = [{"role": "user", "content": "What is the capital of France?"}]
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=10, temperature=0,
        extra_body={"leading_prompt": "The capital of France is"},
    )
    text = response.choices[0].message.content
    assert not text.startswith("The capital of France is")
    assert "Paris" in text


def test_stop_words_and_return_stop_word(client):
    ask = [{"role": "user", "content": "Count from 1 to 10 separated by commas."}]
    full = client.chat.completions.create(model=DEFAULT_MODEL, messages=ask, max_tokens=40, temperature=0)
    assert "5" in full.choices[0].message.content
    cut = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=40, temperature=0, extra_body={"stop_words": ["5"]}
    )
    kept = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ask, max_tokens=40, temperature=0,
        extra_body={"stop_words": ["5"], "return_stop_word": True},
    )
    assert "5" not in cut.choices[0].message.content
    assert kept.choices[0].message.content == cut.choices[0].message.content + "5"


def test_completions_endpoint_constrained(client):
    response = client.completions.create(
        model=DEFAULT_MODEL, prompt="My favourite number is", max_tokens=10, extra_body={"regex_pattern": " [0-9]{2}"}
    )
    assert re.fullmatch(" [0-9]{2}", response.choices[0].text)


def test_streaming_and_non_streaming_agree_under_a_seed(client):
    kwargs = dict(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=120, temperature=0.9, seed=11,
        response_format=schema_format(SCHEMAS["nested_with_bounded_arrays"]),
    )
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kwargs) if c.choices)
    assert streamed == whole


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"regex_pattern": "(unclosed"}, "regex_pattern"),
        ({"grammar": "start: undefined_rule"}, "grammar"),
        ({"response_format": schema_format({"type": "no-such-type"})}, "response_format"),
        ({"guided_json": "{not json"}, "guided_json"),
        ({"guided_choice": []}, "guided_choice"),
        ({"regex_pattern": "a", "response_format": {"type": "json_object"}}, None),
        ({"response_format": {"type": "json_schema"}}, None),
    ],
)
def test_bad_constraints_fail_closed(http, extra, param):
    body = {"model": DEFAULT_MODEL, "messages": ASK, "max_tokens": 5, **extra}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    if param is not None:
        assert error["param"] == param
    if len([k for k in extra if k in ("regex_pattern", "response_format")]) == 2:
        assert "regex_pattern" in error["message"] and "response_format" in error["message"]


# -- property-based: generated schemas and regexes ---------------------------------

leaf_schemas = st.one_of(
    st.just({"type": "integer"}),
    st.just({"type": "boolean"}),
    st.builds(lambda n: {"type": "string", "maxLength": n}, st.integers(1, 12)),
    st.builds(lambda lo, span: {"type": "integer", "minimum": lo, "maximum": lo + span}, st.integers(-50, 50), st.integers(0, 100)),
    st.lists(st.sampled_from(["a", "b", "c", "dd", "eee"]), min_size=1, max_size=4, unique=True).map(lambda v: {"enum": v}),
)
keys = st.text(alphabet="abcdefghij", min_size=1, max_size=6)


def object_of(children):
    return st.dictionaries(keys, children, min_size=1, max_size=3).flatmap(
        lambda props: st.lists(st.sampled_from(sorted(props)), unique=True).map(
            lambda required: {"type": "object", "properties": props, "required": required, "additionalProperties": False}
        )
    )


schemas = st.recursive(
    leaf_schemas,
    lambda children: st.one_of(
        object_of(children),
        st.builds(lambda items, n: {"type": "array", "items": items, "maxItems": n}, children, st.integers(0, 3)),
    ),
    max_leaves=6,
)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(schema=schemas, seed=st.integers(0, 1000))
def test_generated_schemas_always_validate(client, schema, seed):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=150, temperature=1.0, seed=seed,
        response_format=schema_format(schema),
    )
    choice = response.choices[0]
    if choice.finish_reason == "stop":
        jsonschema.validate(json.loads(choice.message.content), schema)


regexes = st.lists(
    st.sampled_from([r"[a-z]{1,4}", r"\d{2}", r"(yes|no)", r"-", r"[A-F0-9]{3}", r" ", r"x?y{1,5}z{0,2}"]), min_size=1, max_size=4
).map("".join)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(pattern=regexes, seed=st.integers(0, 1000))
def test_generated_regexes_always_match(client, pattern, seed):
    response = client.chat.completions.create(
        model=DEFAULT_MODEL, messages=ASK, max_tokens=40, temperature=1.0, seed=seed,
        extra_body={"regex_pattern": pattern},
    )
    choice = response.choices[0]
    assert choice.finish_reason == "stop"  # every pattern here matches in far fewer than 40 tokens
    assert re.fullmatch(pattern, choice.message.content), (pattern, choice.message.content)


# -- schemas the grammar cannot express exactly: relaxed grammar, answers verified ---------

RELAXED_SCHEMAS = {
    "oneOf": {"type": "object", "properties": {"id": {"oneOf": [{"type": "integer"}, {"type": "string", "maxLength": 8}]}},
              "required": ["id"], "additionalProperties": False},
    "not": {"type": "object", "properties": {"n": {"type": "integer", "not": {"const": 0}}}, "required": ["n"],
            "additionalProperties": False},
    "uniqueItems": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 2, "maxItems": 3,
                    "uniqueItems": True},
    "if_then": {"type": "object", "properties": {"big": {"type": "boolean"}, "n": {"type": "integer"}},
                "required": ["big", "n"], "additionalProperties": False,
                "if": {"properties": {"big": {"const": True}}}, "then": {"properties": {"n": {"minimum": 100}}}},
}


@pytest.mark.parametrize("name", RELAXED_SCHEMAS)
def test_relaxed_schemas_are_served_and_verified(http, name):
    """Accepted, and either a valid answer or, when no try validates, a 422 naming the keyword: never invalid."""
    schema = RELAXED_SCHEMAS[name]
    body = {"model": DEFAULT_MODEL, "messages": ASK, "max_tokens": 60, "temperature": 0, "seed": 1,
            "response_format": schema_format(schema)}
    response = http.post("/v1/chat/completions", json=body)
    if response.status_code == 422:  # SmolLM2 repeats itself: uniqueItems may defeat every try
        assert response.json()["error"]["code"] == "schema_not_met"
        broken = re.search(r"breaks '(\w+)' at '/", response.json()["error"]["message"])
        assert broken and f'"{broken[1]}"' in json.dumps(schema), response.text  # a keyword of this schema
        return
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop"
    jsonschema.validate(json.loads(choice["message"]["content"]), schema,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


# The grammar admits only [1, 1, ...]; uniqueItems, left to the check, refuses every try.
NEVER_UNIQUE = {"type": "array", "items": {"const": 1}, "minItems": 2, "maxItems": 2, "uniqueItems": True}


def test_answer_that_never_validates_is_an_error_naming_keyword_and_path(http):
    body = {"model": DEFAULT_MODEL, "messages": ASK, "max_tokens": 20, "temperature": 0,
            "response_format": schema_format(NEVER_UNIQUE)}
    before = scrape(http, DEFAULT_MODEL).get("gallama_schema_retries_total", 0)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 422, response.text
    assert scrape(http, DEFAULT_MODEL)["gallama_schema_retries_total"] - before == 3  # 4 tries: 3 retries
    error = response.json()["error"]
    assert error["code"] == "schema_not_met" and error["param"] == "response_format"
    assert "4 tries" in error["message"] and "'uniqueItems' at '/'" in error["message"]


def test_stream_that_breaks_the_schema_ends_with_an_error_event(http):
    body = {"model": DEFAULT_MODEL, "messages": ASK, "max_tokens": 20, "temperature": 0, "stream": True,
            "response_format": schema_format(NEVER_UNIQUE)}
    events = [line[6:] for line in http.post("/v1/chat/completions", json=body).text.splitlines()
              if line.startswith("data: ")]
    chunks = [json.loads(e) for e in events[:-1]]
    assert events[-1] == "[DONE]"
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")) == "[1, 1]"
    assert not any(c["choices"][0]["finish_reason"] for c in chunks if c.get("choices"))
    assert "uniqueItems" in chunks[-1]["error"]["message"] and chunks[-1]["error"]["code"] == "schema_not_met"


def test_schema_jsonschema_cannot_read_is_400(http):
    body = {"model": DEFAULT_MODEL, "messages": ASK, "max_tokens": 5,
            "response_format": schema_format({"type": "object", "properties": {"a": {"minimum": "zero"}}})}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "response_format"
