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
import re
import urllib.parse
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
DEFINITION_KEYWORDS = ("definitions", "$defs")
COUNT_KEYWORDS = ("minItems", "maxItems", "minLength", "maxLength", "minProperties", "maxProperties",
                  "minContains", "maxContains")
NUMERIC_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
HUGE_BOUND = 2.0**63  # past it llguidance's range regexes fail ("Failed to generate regex for float range")
# llguidance's error for a definition no value satisfies, and where it is.
UNSATISFIABLE = re.compile(r"^Unsatisfiable schema:[^\n]*\n\s*while processing json-schema:///(#[^\s']*)")
MAX_UNSATISFIABLE = 16  # definitions read as `false`, one compile each, before giving up


def relaxed(schema: Any, widen: bool = False) -> Any:
    """The schema without the keywords that `UNSOUND_WHEN_LENIENT` names; with `widen`, also
    without what llguidance cannot compile even when lenient: string `pattern`s (look-arounds),
    the constraints beside a `$ref` (recursive references with siblings; its definitions and
    identifiers stay), numeric bounds past `HUGE_BOUND` (its range regexes fail on them), and
    overlapping `patternProperties` (merged into one that admits any value). Each only drops
    constraints: every valid instance still matches."""
    if isinstance(schema, list):
        return [relaxed(item, widen) for item in schema]
    if not isinstance(schema, dict):
        return schema

    def kept(key: str) -> bool:
        if widen and isinstance(schema.get("$ref"), str):
            return key.startswith("$") or key == "definitions"
        if widen and key == "pattern" and isinstance(schema[key], str):
            return False
        if widen and key in NUMERIC_BOUNDS and isinstance(schema[key], (int, float)) and abs(schema[key]) > HUGE_BOUND:
            return False
        return key not in UNSOUND_WHEN_LENIENT or not isinstance(schema[key], (int, float))

    def value(key: str, value: Any) -> Any:
        if key in COUNT_KEYWORDS and isinstance(value, float) and value.is_integer():
            return int(value)  # `2.0` is a count too, which llguidance refuses
        return value if key in DATA_KEYWORDS else relaxed(value, widen)

    result = {key: value(key, item) for key, item in schema.items() if kept(key)}
    patterns = result.get("patternProperties")
    if widen and isinstance(patterns, dict) and len(patterns) > 1:
        # llguidance needs the patterns disjoint; a property that matches any of them may hold any value.
        result["patternProperties"] = {"|".join(f"(?:{pattern})" for pattern in patterns): {}}
    return result


def local_target(schema: Any, ref: str) -> Any:
    """What a `#...` reference points to inside the schema (a JSON pointer), or None."""
    node = schema
    for part in ref[1:].split("/")[1:] if ref != "#" else []:
        part = urllib.parse.unquote(part).replace("~1", "/").replace("~0", "~")
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def _refs(node: Any, applied: bool = False) -> set[str]:
    """The local references in a subschema; with `applied`, only those it applies (its own
    `definitions` are not applied where they sit)."""
    if isinstance(node, list):
        return set().union(*(_refs(item, applied) for item in node))
    if not isinstance(node, dict):
        return set()
    found = {node["$ref"]} if isinstance(node.get("$ref"), str) and node["$ref"].startswith("#") else set()
    for key, value in node.items():
        if key not in DATA_KEYWORDS and not (applied and key in DEFINITION_KEYWORDS):
            found |= _refs(value, applied)
    return found


def _replaced_refs(node: Any, refs: set[str], replace: Any) -> Any:
    """Every subschema whose `$ref` is one of refs given to `replace` (the subschema -> its stand-in)."""
    if isinstance(node, list):
        return [_replaced_refs(item, refs, replace) for item in node]
    if not isinstance(node, dict):
        return node
    if isinstance(node.get("$ref"), str) and node["$ref"] in refs:
        node = replace(node)
        if not isinstance(node, dict):
            return node
    return {key: value if key in DATA_KEYWORDS else _replaced_refs(value, refs, replace) for key, value in node.items()}


def without_cycles(schema: Any) -> Any:
    """The schema with every recursive reference dropped (a subschema of only a `$ref` admits any
    value then): llguidance cannot intersect a recursive definition with sibling constraints, and
    dropping a reference only widens."""
    edges = {ref: _refs(local_target(schema, ref), applied=True) for ref in _refs(schema)}

    def reaches_itself(ref: str) -> bool:
        seen, todo = set(), list(edges[ref])
        while todo:
            current = todo.pop()
            if current == ref:
                return True
            if current not in seen and current in edges:
                seen.add(current)
                todo.extend(edges[current])
        return False

    cyclic = {ref for ref in edges if reaches_itself(ref)}
    return _replaced_refs(schema, cyclic, lambda node: {k: v for k, v in node.items() if k != "$ref"})


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


def _compile_error(schema: Any, options: llguidance.JsonCompileOptions) -> str | None:
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=options)
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, _byte_tokenizer())
    except (ValueError, TypeError, RuntimeError) as error:
        return str(error)
    return ("; ".join(messages) or "error") if is_error else None


def _compiling(schema: Any, options: llguidance.JsonCompileOptions) -> Any | None:
    """The schema, or the equal one where each definition llguidance finds unsatisfiable is read as
    `false` at its references (it takes `false` in place but not behind a `$ref`), if that compiles."""
    for _ in range(MAX_UNSATISFIABLE):
        error = _compile_error(schema, options)
        if error is None:
            return schema
        found = UNSATISFIABLE.match(error)
        if found is None or found.group(1) == "#":
            return None
        ref = found.group(1)
        if ref not in _refs(schema):
            return None
        schema = _replaced_refs(schema, {ref}, lambda node: False)
    return None


def grammar_schema(
    schema: dict[str, Any], exact: llguidance.JsonCompileOptions
) -> tuple[dict[str, Any], llguidance.JsonCompileOptions]:
    """(schema, options) for the closest grammar that compiles: the exact schema under `exact`
    when it does; else the keywords the grammar cannot express left out (`relaxed`), then
    also the ones it cannot compile (`relaxed(widen=True)`), then also its recursive references
    (`without_cycles`). In each, a definition llguidance finds unsatisfiable is read as `false`.

    A schema that compiles under none is returned relaxed, so that the compiler's error names
    what not even the relaxed grammar can do.
    """
    candidate, options = _closest_grammar(json.dumps(schema), json.dumps(exact))
    return json.loads(candidate), json.loads(options)


@functools.lru_cache(maxsize=256)  # by JSON text: a schema sent again is not compiled again to decide
def _closest_grammar(schema_text: str, exact_text: str) -> tuple[str, str]:
    schema, exact = json.loads(schema_text), json.loads(exact_text)
    lenient = {**exact, **RELAXED_OPTIONS}
    lenient_schema, widened = relaxed(schema), relaxed(schema, widen=True)
    for candidate, options in ((schema, exact), (lenient_schema, lenient), (widened, lenient),
                               (without_cycles(widened), lenient)):
        if (compiling := _compiling(candidate, options)) is not None:
            return json.dumps(compiling), json.dumps(options)
    return json.dumps(lenient_schema), json.dumps(lenient)


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
