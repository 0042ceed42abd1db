"""Relaxed grammars and the exact check after: what the grammar lets through, the check catches."""

import json

import llguidance
import pytest

from gallama.agentic.constraints import JSON_OPTIONS, json_schema_grammar
from gallama.agentic.schema_check import (
    RELAXED_OPTIONS,
    AnswerCheck,
    SchemaCheck,
    SchemaCheckError,
    _byte_tokenizer,
    grammar_schema,
    relaxed,
)


def grammar_accepts(schema: dict, text: str) -> bool:
    """Whether the compiled (possibly relaxed) grammar admits the text, byte by byte."""
    matcher = llguidance.LLMatcher(_byte_tokenizer(), json_schema_grammar(schema), log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(list(text.encode())) and matcher.is_accepting()


# (schema, the relaxed keyword, an instance the relaxed grammar admits but the schema forbids, a valid one)
RELAXED = [
    ({"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "uniqueItems", "[1, 1]", "[1, 2]"),
    ({"oneOf": [{"type": "integer"}, {"type": "number", "minimum": 0}]}, "oneOf", "3", "-2"),
    ({"type": "integer", "not": {"const": 5}}, "not", "5", "6"),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "maxProperties": 1}, "maxProperties",
     '{"a": 1, "b": 2}', '{"a": 1}'),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "minProperties": 1}, "minProperties",
     '{}', '{"a": 1}'),
    ({"type": "object", "properties": {"a": {"type": "integer"}}, "dependentRequired": {"a": ["b"]}},
     "dependentRequired", '{"a": 1}', '{"a": 1, "b": 2}'),
    ({"type": "object", "properties": {"kind": {"type": "string"}, "n": {"type": "integer"}},
      "if": {"properties": {"kind": {"const": "big"}}}, "then": {"properties": {"n": {"minimum": 100}}}},
     "minimum", '{"kind": "big", "n": 1}', '{"kind": "big", "n": 100}'),
]


@pytest.mark.parametrize("schema, keyword, broken, valid", RELAXED, ids=[r[1] for r in RELAXED])
def test_relaxed_grammar_admits_the_instance_and_the_check_catches_it(schema, keyword, broken, valid):
    assert grammar_accepts(schema, broken)
    assert grammar_accepts(schema, valid)
    check = SchemaCheck(schema)
    violation = check.violation(broken)
    assert violation is not None and violation.keyword == keyword
    assert check.violation(valid) is None


def test_a_schema_the_grammar_expresses_compiles_exactly():
    exact = {"type": "object", "properties": {"a": {"type": "string"}}}
    assert grammar_schema(exact, JSON_OPTIONS) == (exact, JSON_OPTIONS)
    unique = {"type": "array", "uniqueItems": True}
    assert grammar_schema(unique, JSON_OPTIONS) == (unique, {**JSON_OPTIONS, **RELAXED_OPTIONS})


LOOKAROUND = {"type": "object", "properties": {"pattern": {"type": "string", "pattern": "^(?!tmp).*$"},
                                               "kind": {"const": {"pattern": "kept"}}},
              "required": ["pattern"], "additionalProperties": False}


def test_widening_drops_patterns_and_ref_siblings_only():
    assert relaxed(LOOKAROUND, widen=True)["properties"] == {"pattern": {"type": "string"}, "kind": {"const": {"pattern": "kept"}}}
    assert relaxed({"items": {"$ref": "#/$defs/a", "minItems": 2}}, widen=True) == {"items": {"$ref": "#/$defs/a"}}


def test_a_look_around_pattern_is_left_to_the_check():
    schema, _ = grammar_schema(LOOKAROUND, JSON_OPTIONS)
    assert schema == relaxed(LOOKAROUND, widen=True)
    assert grammar_accepts(LOOKAROUND, '{"pattern": "tmp1", "kind": {"pattern": "kept"}}')
    violation = SchemaCheck(LOOKAROUND).violation('{"pattern": "tmp1", "kind": {"pattern": "kept"}}')
    assert (violation.keyword, violation.path) == ("pattern", "/pattern")


RECURSIVE_WITH_SIBLINGS = {"$defs": {"node": {"type": "object", "properties": {
    "kids": {"type": "array", "items": {"$ref": "#/$defs/node", "maxProperties": 1}}}, "additionalProperties": False}},
    "$ref": "#/$defs/node"}


def test_recursive_reference_with_siblings_is_served():
    text = '{"kids": [{"kids": []}]}'
    assert grammar_accepts(RECURSIVE_WITH_SIBLINGS, text)
    assert SchemaCheck(RECURSIVE_WITH_SIBLINGS).violation(text) is None


def test_violation_names_keyword_and_path():
    check = SchemaCheck({"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}})
    violation = check.violation(json.dumps({"tags": ["a", "a"]}))
    assert (violation.keyword, violation.path) == ("uniqueItems", "/tags")
    assert "'uniqueItems' at '/tags'" in str(violation)


def test_formats_are_checked():
    check = SchemaCheck({"type": "string", "format": "ipv4"})
    assert check.violation('"999.1.1.1"').keyword == "format"
    assert check.violation('"10.0.0.1"') is None


def test_declared_draft_is_used():
    # Draft 4: exclusiveMaximum is a boolean beside maximum.
    check = SchemaCheck({"$schema": "http://json-schema.org/draft-04/schema#", "type": "number", "maximum": 3,
                         "exclusiveMaximum": True})
    assert check.violation("3").keyword == "maximum"
    assert check.violation("2") is None


def test_not_json_is_a_violation():
    assert SchemaCheck({"type": "object"}).violation("{").keyword == "type"


def test_invalid_schema_is_refused():
    with pytest.raises(SchemaCheckError, match="not a valid JSON schema"):
        SchemaCheck({"type": "banana"})


def test_answer_check_checks_each_call_and_the_text():
    answers = AnswerCheck(text=SchemaCheck({"type": "array", "uniqueItems": True}),
                          tools={"f": SchemaCheck({"type": "object", "properties": {"x": {"oneOf": [
                              {"type": "integer"}, {"minimum": 0}]}}})})
    assert answers.violation("[1, 2]", []) is None
    assert "uniqueItems" in answers.violation("[1, 1]", [])
    assert answers.violation("", [("f", '{"x": -1}')]) is None
    problem = answers.violation("", [("f", '{"x": 1}')])
    assert "tool 'f'" in problem and "'oneOf' at '/x'" in problem


def test_a_schema_sent_again_reuses_its_check():
    from gallama.agentic.schema_check import check_for

    first = check_for({"type": "array", "uniqueItems": True})
    assert check_for({"uniqueItems": True, "type": "array"}) is first  # same schema, keys in another order
    assert check_for({"type": "array"}) is not first


# Schemas llguidance refuses even relaxed (shapes from JSONSchemaBench's WashingtonPost, Github_hard and
# JsonSchemaStore): (schema, an instance the served grammar admits and the check catches, a valid one)
WIDER = {
    "recursive reference beside an overlapping property": (
        {"type": "object", "properties": {"name": {"type": "string"}},
         "patternProperties": {".*": {"anyOf": [{"$ref": "#"}, {"type": "string"}]}}},
        '{"name": "a", "x": {"name": 5}}', '{"name": "a", "x": {"name": "b"}}'),
    "overlapping patternProperties": (
        {"type": "object", "patternProperties": {".*": {"type": "integer"}, "^_x$": {"minimum": 2}},
         "additionalProperties": False},
        '{"_x": 1}', '{"_x": 3, "y": 1}'),
}


@pytest.mark.parametrize("schema, broken, valid", WIDER.values(), ids=WIDER.keys())
def test_what_llguidance_cannot_compile_relaxed_is_widened_and_checked(schema, broken, valid):
    assert grammar_accepts(schema, valid) and SchemaCheck(schema).violation(valid) is None
    assert grammar_accepts(schema, broken) and SchemaCheck(schema).violation(broken) is not None


def test_a_bound_past_what_a_range_regex_holds_is_left_out_and_the_other_kept():
    schema = {"type": "number", "minimum": 0, "maximum": 1.7976931348623157e308}
    assert grammar_accepts(schema, "12.5")
    assert not grammar_accepts(schema, "-1")


def test_only_the_recursive_references_are_dropped():
    from gallama.agentic.schema_check import without_cycles

    schema = {"definitions": {"leaf": {"type": "integer"}, "node": {"type": "object", "properties": {
        "next": {"$ref": "#/definitions/node"}, "leaf": {"$ref": "#/definitions/leaf"}}}}, "$ref": "#/definitions/node"}
    node = without_cycles(schema)["definitions"]["node"]
    assert node["properties"] == {"next": {}, "leaf": {"$ref": "#/definitions/leaf"}}


UNSATISFIABLE_DEFINITION = {"definitions": {"bad": {"type": "object", "additionalProperties": False,
                                                    "oneOf": [{"$ref": "#/definitions/text"}]},
                                            "text": {"type": "string"}}}


def test_an_optional_property_no_value_satisfies_is_left_out():
    schema = {"type": "object", "properties": {"t": {"$ref": "#/definitions/bad"}, "u": {"type": "integer"}},
              **UNSATISFIABLE_DEFINITION}
    assert grammar_accepts(schema, '{"u": 1}')
    assert not grammar_accepts(schema, '{"t": {}, "u": 1}')
    assert SchemaCheck(schema).violation('{"t": {}, "u": 1}') is not None  # the check agrees


def test_a_schema_no_instance_satisfies_is_refused_with_the_reason():
    from gallama.agentic.constraints import ConstraintError

    schema = {"type": "object", "properties": {"t": {"$ref": "#/definitions/bad"}}, "required": ["t"],
              **UNSATISFIABLE_DEFINITION}
    with pytest.raises(ConstraintError, match="Unsatisfiable"):
        matcher = llguidance.LLMatcher(_byte_tokenizer(), json_schema_grammar(schema), log_level=0)
        if matcher.is_error():
            raise ConstraintError(matcher.get_error())


def test_a_count_written_as_a_decimal_is_still_enforced():
    schema = {"type": "array", "maxItems": 2.0}
    assert grammar_accepts(schema, "[1, 2]")
    assert not grammar_accepts(schema, "[1, 2, 3]")
