"""The pure parts of bench/schema_coverage.py: compile checks, draft choice, validation, tallies."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.schema_coverage import (  # noqa: E402
    Result,
    Schema,
    gallama_compiles,
    jsonschema_checker,
    llguidance_compiles,
    load,
    summarize,
    validate,
)

PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
          "required": ["name"]}


def schema(value, category="c", name="s") -> Schema:
    item = Schema(category, name, json.dumps(value), value)
    item.llguidance_error = llguidance_compiles(item.text, None)
    item.gallama_error, item.compile_ms = gallama_compiles(value, None)
    item.checker, item.draft, item.checker_error = jsonschema_checker(value)
    return item


def test_llguidance_compiles_or_says_why():
    assert llguidance_compiles(json.dumps(PERSON), None) is None
    assert llguidance_compiles(json.dumps({"type": "string", "format": "no-such-format"}), None)
    assert llguidance_compiles("{not json", None)


def test_draft_from_dollar_schema_or_first_that_accepts():
    assert jsonschema_checker({**PERSON, "$schema": "http://json-schema.org/draft-04/schema#"})[1] == "Draft4Validator"
    assert jsonschema_checker(PERSON)[1] == "Draft202012Validator"
    tuple_items = {"type": "array", "items": [{"type": "string"}], "additionalItems": False}
    assert jsonschema_checker(tuple_items)[1] in ("Draft7Validator", "Draft4Validator")
    checker, draft, error = jsonschema_checker({"type": 12})
    assert checker is None and error


def test_validate():
    item = schema(PERSON)
    assert validate(item, '{"name": "Ann", "age": 3}') == ("valid", "")
    assert validate(item, '{"age": 3}')[0] == "invalid"
    assert validate(item, '{"name": "Ann", "age": -1}')[0] == "invalid"
    assert validate(item, '{"name": ')[0] == "invalid"
    assert validate(schema({"type": 12}), "{}")[0] == "unchecked"


def test_formats_are_checked():
    item = schema({"type": "string", "format": "date"})
    assert validate(item, '"2024-02-30"')[0] == "invalid"
    assert validate(item, '"2024-02-28"')[0] == "valid"


def test_summary_counts():
    schemas = [schema(PERSON, name=str(i)) for i in range(5)]
    results = [Result("c", "0", "valid", finish_reason="stop"), Result("c", "1", "invalid", finish_reason="stop"),
               Result("c", "2", "length", finish_reason="length"), Result("c", "3", "rejected"),
               Result("c", "4", "error")]
    row = summarize(schemas, results)["c"]
    assert row["n"] == 5 and row["llguidance"] == 5
    assert row["accepted"] == 3 and row["stop_checked"] == 2 and row["valid"] == 1 and row["length"] == 1


def test_load_by_category_with_limit(tmp_path):
    for category in ("a", "b"):
        (tmp_path / category).mkdir()
        for index in range(3):
            (tmp_path / category / f"{index}.json").write_text(json.dumps(PERSON))
    (tmp_path / "b" / "bad.json").write_text("{")
    loaded = load(tmp_path, None, 2, None)
    assert [(s.category, s.name) for s in loaded] == [("a", "0"), ("a", "1"), ("b", "0"), ("b", "1")]
    everything = load(tmp_path, ["b"], None, None)
    assert [s.name for s in everything if s.read_error] == ["bad"]


def test_gallama_compiles_what_llguidance_needs_relaxed_for():
    unique = {"type": "array", "uniqueItems": True}
    error, milliseconds = gallama_compiles(unique, None)
    assert error is None and milliseconds > 0
    assert gallama_compiles({"type": "no-such-type"}, None)[0]
