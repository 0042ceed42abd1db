"""JSON-schema answers: the grammar enforces what it can express, a validator checks the rest.

llguidance compiles most schemas exactly. One it cannot (`not`, `uniqueItems`,
`min/maxProperties` with optional keys, `if/then/else`, ...) gets the closest
grammar that still admits every valid instance: `oneOf` read as `anyOf` and the
keywords it cannot express left out (its `coerce_one_of` and `lenient` options).
Every finished answer is then checked against the exact schema with jsonschema,
so what the grammar let through is caught before it is returned.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import llguidance
from referencing.exceptions import Unresolvable

# Leaving a keyword out only widens the grammar: every valid instance still matches it.
RELAXED_OPTIONS: llguidance.JsonCompileOptions = {"coerce_one_of": True, "lenient": True}

# Drafts tried, in order, for a schema that does not declare its `$schema`.
UNDECLARED_DRAFTS = (jsonschema.Draft202012Validator, jsonschema.Draft7Validator, jsonschema.Draft4Validator)


class SchemaCheckError(ValueError):
    """The schema is not a JSON schema jsonschema can check answers against."""


# Keywords whose values are data, not schemas: nothing inside them is relaxed.
DATA_KEYWORDS = ("const", "enum", "default", "examples")
# Left to the check outright: llguidance's lenient grammar for these wrongly refuses some valid
# objects (minProperties 1 with optional keys refuses {"a": 1}).
UNSOUND_WHEN_LENIENT = ("minProperties", "maxProperties")


def relaxed(schema: Any, widen: bool = False) -> Any:
    """The schema without the keywords that `UNSOUND_WHEN_LENIENT` names; with `widen`, also
    without what llguidance cannot compile even when lenient: string `pattern`s (look-arounds)
    and the constraints beside a `$ref` (recursive references with siblings; its definitions and
    identifiers stay). Each only drops constraints: every valid instance still matches."""
    if isinstance(schema, list):
        return [relaxed(item, widen) for item in schema]
    if not isinstance(schema, dict):
        return schema

    def kept(key: str) -> bool:
        if widen and isinstance(schema.get("$ref"), str):
            return key.startswith("$") or key == "definitions"
        if widen and key == "pattern" and isinstance(schema[key], str):
            return False
        return key not in UNSOUND_WHEN_LENIENT or not isinstance(schema[key], int)

    return {key: value if key in DATA_KEYWORDS else relaxed(value, widen) for key, value in schema.items() if kept(key)}


class _ByteTokenizer:
    """One token per byte: enough for the compiler to build (and so check) the whole grammar,
    which it does not without a tokenizer."""

    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([b]) for b in range(256)] + [b"<eos>"]

    def __call__(self, text: str | bytes) -> list[int]:
        return list(text.encode() if isinstance(text, str) else text)


@functools.cache
def _byte_tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(_ByteTokenizer()))


def _compiles(schema: dict[str, Any], options: llguidance.JsonCompileOptions) -> bool:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)
        is_error, _ = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, _byte_tokenizer())
    except (ValueError, TypeError, RuntimeError):
        return False
    return not is_error


def grammar_schema(
    schema: dict[str, Any], exact: llguidance.JsonCompileOptions
) -> tuple[dict[str, Any], llguidance.JsonCompileOptions]:
    """(schema, options) for the closest grammar that compiles: the exact schema under `exact`
    when it does; else the keywords the grammar cannot express left out (`relaxed`), then
    also the ones it cannot compile (`relaxed(widen=True)`).

    A schema that compiles under none is returned relaxed, so that the compiler's error names
    what not even the relaxed grammar can do.
    """
    candidate, options = _closest_grammar(json.dumps(schema), json.dumps(exact))
    return json.loads(candidate), json.loads(options)


@functools.lru_cache(maxsize=256)  # by JSON text: a schema sent again is not compiled again to decide
def _closest_grammar(schema_text: str, exact_text: str) -> tuple[str, str]:
    schema, exact = json.loads(schema_text), json.loads(exact_text)
    lenient = {**exact, **RELAXED_OPTIONS}
    for candidate, options in ((schema, exact), (relaxed(schema), lenient), (relaxed(schema, widen=True), lenient)):
        if _compiles(candidate, options):
            return json.dumps(candidate), json.dumps(options)
    return schema_text, json.dumps(lenient)


@dataclass(frozen=True)
class Violation:
    keyword: str
    path: str  # JSON pointer into the answer
    message: str

    def __str__(self) -> str:
        return f"'{self.keyword}' at '{self.path or '/'}': {self.message}"


class SchemaCheck:
    """Checks answers against one schema, under the draft it declares (formats included)."""

    def __init__(self, schema: dict[str, Any] | bool):
        self.validator = self._validator(schema)

    @staticmethod
    def _validator(schema: dict[str, Any] | bool) -> jsonschema.protocols.Validator:
        declared = isinstance(schema, dict) and "$schema" in schema
        drafts = (jsonschema.validators.validator_for(schema),) if declared else UNDECLARED_DRAFTS
        error: jsonschema.SchemaError | None = None
        for draft in drafts:
            try:
                draft.check_schema(schema)
            except jsonschema.SchemaError as problem:
                error = error or problem
                continue
            return draft(schema, format_checker=draft.FORMAT_CHECKER)
        where = "/".join(str(part) for part in error.absolute_path)
        raise SchemaCheckError(f"it is not a valid JSON schema (at '/{where}'): {error.message}")

    def violation(self, text: str) -> Violation | None:
        """None when the text is JSON that validates, else the violation that decides it."""
        try:
            value = json.loads(text)
        except ValueError as error:
            return Violation("type", "", f"the answer is not JSON: {error}")
        try:
            error = jsonschema.exceptions.best_match(self.validator.iter_errors(value))
        except Unresolvable as problem:  # a $ref nothing resolves
            return Violation("$ref", "", str(problem))
        if error is None:
            return None
        return Violation(str(error.validator), "/" + "/".join(str(p) for p in error.absolute_path), error.message)


def check_for(schema: dict[str, Any] | bool) -> SchemaCheck:
    """The schema's check, built once per schema text: reading a large schema's meta-schema takes a while."""
    return _check_for(json.dumps(schema, sort_keys=True))


@functools.lru_cache(maxsize=256)
def _check_for(schema_text: str) -> SchemaCheck:
    return SchemaCheck(json.loads(schema_text))


@dataclass
class AnswerCheck:
    """What a finished answer must satisfy: its text's schema, and each called tool's parameters."""

    text: SchemaCheck | None = None
    tools: dict[str, SchemaCheck] = field(default_factory=dict)

    def violation(self, content: str | None, calls: list[tuple[str, str]]) -> str | None:
        """None when the answer validates; else what breaks which schema. calls: (name, arguments)."""
        for name, arguments in calls:
            check = self.tools.get(name)
            if check is not None and (found := check.violation(arguments)) is not None:
                return f"the arguments of tool '{name}' break {found}"
        if not calls and self.text is not None and (found := self.text.violation(content or "")) is not None:
            return f"the answer breaks {found}"
        return None
