"""Grammars for constrained decoding, with llguidance.

Every constraint becomes an llguidance grammar string. A grammar is validated
and compiled once per tokenizer (cached by content); each request then gets a
cheap deep copy of the compiled matcher. Invalid grammars raise ConstraintError
with the compiler's reason, before any token is generated: a constrained request
never falls back to free text.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from typing import Any

import llguidance
from llguidance.gbnf_to_lark import gbnf_to_lark

from gallama.agentic.schema_check import grammar_schema

# Compact JSON: free whitespace lets a small model ramble where no content goes.
JSON_OPTIONS: llguidance.JsonCompileOptions = {
    "whitespace_flexible": False,
    "item_separator": ", ",
    "key_separator": ": ",
}


class ConstraintError(ValueError):
    """The grammar, schema or regex does not compile."""


def _checked(build, *args) -> str:
    try:
        return build(*args)
    except (ValueError, TypeError, RuntimeError) as error:
        raise ConstraintError(str(error)) from error


def json_schema_grammar(schema: dict[str, Any] | bool) -> str:
    if schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise ConstraintError("the schema must be a JSON object")
    schema, options = grammar_schema(schema, JSON_OPTIONS)
    return _checked(lambda s: llguidance.LLMatcher.grammar_from_json_schema(s, defaults=options), schema)


def json_object_grammar() -> str:
    return json_schema_grammar({"type": "object"})


def regex_grammar(pattern: str) -> str:
    return _checked(llguidance.LLMatcher.grammar_from_regex, pattern)


def regex_prefix_grammar(pattern: str) -> str:
    """The output starts with a match of the pattern; free text may follow."""
    return regex_grammar(f"(?:{pattern})[\\s\\S]*")


def choice_grammar(choices: list[str]) -> str:
    if not choices:
        raise ConstraintError("guided_choice needs at least one choice")
    return regex_grammar("|".join(f"(?:{re.escape(c)})" for c in choices))


GBNF_RULE = re.compile(r"^\s*[A-Za-z][A-Za-z0-9_-]*\s*::=", re.MULTILINE)


def user_grammar(text: str) -> str:
    """A Lark grammar (llguidance's dialect), or a GBNF one converted to it."""
    if GBNF_RULE.search(text):
        text = _checked(gbnf_to_lark, text)
    return _checked(llguidance.LLMatcher.grammar_from_lark, text)


class ConstraintCompiler:
    """Compiles grammars for one tokenizer and hands out a fresh matcher per request."""

    def __init__(self, tokenizer: llguidance.LLTokenizer, cache_size: int = 128):
        self.tokenizer = tokenizer
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def matcher(self, grammar: str) -> llguidance.LLMatcher:
        with self._lock:
            compiled = self._compiled.get(grammar)
            if compiled is not None:
                self._compiled.move_to_end(grammar)
        if compiled is None:
            compiled = self._compile(grammar)
            with self._lock:
                self._compiled[grammar] = compiled
                while len(self._compiled) > self._cache_size:
                    self._compiled.popitem(last=False)
        return compiled.deep_copy()

    def _compile(self, grammar: str) -> llguidance.LLMatcher:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self.tokenizer)
        if is_error:
            raise ConstraintError(messages[0] if messages else "the grammar does not compile")
        matcher = llguidance.LLMatcher(self.tokenizer, grammar, log_level=0)
        if matcher.is_error():
            raise ConstraintError(matcher.get_error())
        return matcher

