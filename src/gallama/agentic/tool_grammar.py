"""The decoding grammar for tool calls: tool_choice and parallel_tool_calls, enforced.

The grammar is Lark in llguidance's dialect: each call is the format's fixed
text around a `%json` block holding the tool's parameter schema, so every
emitted call names a given tool and its arguments validate against its schema.
A custom tool's call holds its raw input between tags instead (custom_input.py).
"""

from __future__ import annotations

import json
import re
from typing import Any

import llguidance

from gallama.agentic.custom_input import CustomInput
from gallama.agentic.constraints import JSON_OPTIONS, ConstraintError, json_schema_grammar
from gallama.agentic.schema_check import grammar_schema
from gallama.agentic.tool_formats import ToolCallFormat


def _literal(text: str) -> str:
    return json.dumps(text)  # Lark string literals share JSON's escapes


def _regex_literal(text: str) -> str:
    """The text as a regex inside Lark's /.../ (one line, slashes escaped)."""
    controls = {"\n": "\\n", "\t": "\\t", "\r": "\\r", "/": "\\/"}
    return "".join(controls.get(c) or (re.escape(c) if c != " " else " ") for c in text)


def _json_block(schema: dict[str, Any]) -> str:
    schema, options = grammar_schema(schema, JSON_OPTIONS)
    return "%json " + json.dumps({**schema, "x-guidance": dict(options)})


OPEN_OBJECT_KEYS = ("additionalProperties", "patternProperties", "unevaluatedProperties")


def arguments_schema(parameters: dict[str, Any]) -> dict[str, Any]:
    """The schema a call's arguments are generated under.

    Tool parameters always describe an object; a schema that omits the type gets
    it. A schema that lists its properties and says nothing about others gets
    only those: small models otherwise invent parameters (a "description", a
    copy of another one), and arguments that use only listed properties still
    validate against the schema as given.
    """
    if not any(key in parameters for key in ("type", "anyOf", "oneOf", "allOf", "$ref", "enum", "const")):
        parameters = {**parameters, "type": "object"}
    if parameters.get("properties") and not any(key in parameters for key in OPEN_OBJECT_KEYS):
        parameters = {**parameters, "additionalProperties": False}
    return parameters


def check_parameters(name: str, parameters: dict[str, Any]) -> None:
    """Compiles the schema alone, so that an error names the tool rather than the whole grammar."""
    try:
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(
            json_schema_grammar(arguments_schema(parameters))
        )
        if is_error:
            raise ConstraintError(messages[0] if messages else "it does not compile")
    except ConstraintError as error:
        raise ConstraintError(f"the parameters of tool '{name}' are not a valid JSON schema: {error}") from error


def tool_grammar(
    tools: dict[str, dict[str, Any]],
    syntax: ToolCallFormat,
    mode: str,
    parallel: bool,
    text_schema: dict[str, Any] | None = None,
    custom: dict[str, CustomInput] | None = None,
    *,
    forced: str | None = None,
) -> str:
    """A Lark grammar for the whole answer (llguidance's JSON list of grammars when a custom tool's
    input is a Lark grammar of its own).

    tools: name -> parameters schema. mode: "none", "auto" or "required"; forced: the one
    tool a "required" answer calls. text_schema: when the answer may be text, the schema it follows.
    custom: the custom tools among them, whose freeform input is raw text (custom_input.py).
    """
    custom = custom or {}
    rules = []
    subgrammars: dict[str, str] = {}
    closed, last = [], []  # calls that end with their closing text; calls whose input runs to the end
    callable_names = [forced] if forced is not None else list(tools)
    for index, name in enumerate(callable_names):
        if name not in custom:
            closed.append(f"call_{index}")
            rules.append(f"call_{index}: {_literal(syntax.call_prefix(name))} "
                         f"{_json_block(arguments_schema(tools[name]))} {_literal(syntax.call_suffix())}")
            continue
        input_rules, inner = custom[name].rules(index)
        rules += input_rules
        subgrammars.update(inner)
        if custom[name].runs_to_the_end:
            last.append(f"call_{index}")
            rules.append(f"call_{index}: {_literal(syntax.custom_prefix(name))} input_{index}")
        else:
            closed.append(f"call_{index}")
            close = f" {_literal(syntax.call_close)}" if syntax.call_close else ""
            rules.append(f"call_{index}: {_literal(syntax.custom_prefix(name))} input_{index}{close}")
    parallel = parallel and forced is None
    section_open = _literal(syntax.section_open) if syntax.section_open else ""
    section_close = _literal(syntax.section_close) if syntax.section_close else ""
    separator = _literal(syntax.separator)
    alternatives = []
    if closed:
        rules.append("call: " + " | ".join(closed))
        repeat = f" ({separator} call)*" if parallel else ""
        alternatives.append(f"{section_open} call{repeat} {section_close}")
    if last:  # after any closed calls, and nothing after it: not even the section's closing text
        rules.append("last_call: " + " | ".join(last))
        before = f" (call {separator})*" if parallel and closed else ""
        alternatives.append(f"{section_open}{before} last_call")
    rules.append("calls: " + " | ".join(f"({alternative})" for alternative in alternatives))
    if text_schema is not None:
        rules.append(f"text: {_json_block(text_schema)}")
    else:
        # Free text that does not open a tool call, so "none" can never call.
        start = _regex_literal(syntax.start)
        rules.append(f"text: TEXT\nTEXT: /(?s:.+)/ & ~/(?s:\\s*){start}(?s:.*)/")
    if mode == "none":
        top = "text"
    elif mode == "auto" and syntax.text_open:
        top = f"calls | {_literal(syntax.text_open)} text"
    elif mode == "auto":
        top = "calls | text"
    else:
        top = "calls"
    grammar = f"start: {top}\n" + "\n".join(rules) + "\n"
    if not subgrammars:
        return grammar
    return json.dumps({"grammars": [{"lark_grammar": grammar},
                                    *({"name": name, "lark_grammar": text} for name, text in subgrammars.items())]})
