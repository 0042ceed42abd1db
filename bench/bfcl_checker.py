"""BFCL's AST correctness rules, reimplemented: pure logic, no I/O.

The rules follow the Berkeley Function Calling Leaderboard's AST checker
(gorilla, `bfcl_eval/eval_checker/ast_eval/ast_checker.py`):

- the call names the expected function;
- every required parameter is present;
- no parameter is absent from the function doc or from the ground truth;
- every value has the documented type (ints are accepted for Python floats; a
  value of the ground truth's own type passes as a "variable") and equals one of
  the allowed values; an empty string among the allowed values means the
  parameter may be omitted;
- strings compare case-insensitively, ignoring spaces and `,./-_*^`, with
  single quotes read as double quotes; lists and dicts compare element-wise with
  the same string normalisation;
- Java and JavaScript parameters must be strings in the language's own syntax,
  converted (`"3.5f"` -> 3.5, `"new int[]{1, 2}"` -> [1, 2], ...) before checking;
- `parallel` categories match calls to answers in any order, `multiple` and
  simple categories expect exactly one call, `irrelevance` categories are right
  when no call is made and `relevance` categories when at least one is.

Also here: the BFCL function doc -> OpenAI tool conversion (dict->object,
float->number, tuple->array, any->string, unknown->string, `.` -> `_` in names).
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- categories


def language_of(category: str) -> str:
    if category.endswith("java"):
        return "java"
    if category.endswith("javascript"):
        return "javascript"
    return "python"


def is_irrelevance(category: str) -> bool:
    return "irrelevance" in category


def is_relevance(category: str) -> bool:
    return "relevance" in category and not is_irrelevance(category)


# ---------------------------------------------------------------- tool conversion

OPENAPI_TYPES = {
    "integer": "integer", "number": "number", "float": "number", "double": "number",
    "string": "string", "String": "string", "char": "string", "any": "string", "Any": "string",
    "boolean": "boolean", "bool": "boolean", "Boolean": "boolean",
    "array": "array", "list": "array", "tuple": "array", "ArrayList": "array", "Array": "array",
    "Queue": "array", "Stack": "array",
    "dict": "object", "object": "object", "HashMap": "object", "Hashtable": "object",
    "byte": "integer", "short": "integer", "long": "integer", "Bigint": "integer",
}

NAME_RE = re.compile(r"[^a-zA-Z0-9_-]")


def tool_name(name: str) -> str:
    """OpenAI tool names match ^[a-zA-Z0-9_-]{1,64}$: BFCL's `.` becomes `_`."""
    return NAME_RE.sub("_", name)[:64]


def _language_hints(functions: list[dict], language: str) -> list[dict]:
    """BFCL's own pre-processing for Java/JavaScript: every parameter is sent as a string
    in the language's syntax, its real type told in the description."""
    if language == "python":
        return functions
    lang = "Java" if language == "java" else "JavaScript"
    for function in functions:
        function["description"] = function.get("description", "") + f" Note that the provided function is in {'Java 8 SDK' if language == 'java' else 'JavaScript'} syntax."
        for prop in function.get("parameters", {}).get("properties", {}).values():
            kind = prop.get("type", "any")
            desc = prop.get("description", "")
            if kind == "any":
                desc += f" This parameter can be of any type of {lang} object in string representation."
            else:
                desc += f" This is {lang} {kind} type parameter in string representation."
            if kind in ("ArrayList", "Array", "array") and "items" in prop:
                desc += f" The list elements are of type {prop['items'].get('type')}; they are not in string representation."
                del prop["items"]
            if language == "javascript" and kind == "dict" and "properties" in prop:
                desc += f" The dictionary entries have the following schema; they are not in string representation. {json.dumps(prop['properties'])}"
                del prop["properties"]
            prop["description"] = desc
            prop["type"] = "string"
    return functions


def _convert_schema(node: Any) -> Any:
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            if key == "type" and isinstance(value, str):
                out[key] = OPENAPI_TYPES.get(value, "string")
            elif key == "properties" and isinstance(value, dict):
                out[key] = {name: _convert_schema(sub) for name, sub in value.items()}
            elif key in ("items", "additionalProperties") and isinstance(value, dict):
                out[key] = _convert_schema(value)
            elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
                out[key] = [_convert_schema(sub) for sub in value]
            else:
                out[key] = value
        if "properties" in out and "type" not in out:
            out["type"] = "object"
        return out
    return node


def to_openai_tools(functions: list[dict], category: str) -> tuple[list[dict], dict[str, str]]:
    """BFCL function docs -> OpenAI `tools`, plus the map from tool name back to BFCL name."""
    docs = _language_hints(copy.deepcopy(functions), language_of(category))
    tools, names = [], {}
    for doc in docs:
        name = tool_name(doc["name"])
        names.setdefault(name, doc["name"])
        params = _convert_schema(doc.get("parameters") or {"type": "object", "properties": {}})
        params["type"] = "object"
        params.setdefault("properties", {})
        for prop_name, prop in list(params["properties"].items()):
            if not isinstance(prop, dict) or "type" not in prop:
                params["properties"][prop_name] = {**(prop if isinstance(prop, dict) else {}), "type": "string"}
        tools.append({"type": "function", "function": {
            "name": name, "description": doc.get("description", ""), "parameters": params}})
    return tools, names


# ---------------------------------------------------------------- Java / JavaScript values

JAVA_TYPES = {
    "byte": int, "short": int, "integer": int, "long": int, "float": float, "double": float,
    "boolean": bool, "char": str, "Array": list, "ArrayList": list, "Set": set, "HashMap": dict,
    "Hashtable": dict, "Queue": list, "Stack": list, "String": str, "any": str,
}
JS_TYPES = {
    "String": str, "integer": int, "float": float, "Bigint": int, "Boolean": bool,
    "dict": dict, "array": list, "any": str,
}
PYTHON_TYPES = {
    "string": str, "integer": int, "float": float, "number": float, "boolean": bool,
    "array": list, "tuple": list, "dict": dict, "object": dict, "any": str,
}
NESTED_TYPES = {"array", "tuple", "Array", "ArrayList"}

_INT = re.compile(r"^-?\d+$")


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets, braces, parentheses or quotes."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
            continue
        if ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _literal(text: str) -> Any:
    """A Java/JavaScript literal whose type is not documented."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if re.match(r"^-?\d+[lLn]$", text):
        return int(text[:-1])
    if re.match(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]$", text):
        return float(text[:-1])
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def java_value(value: str, kind: str, item_kind: str | None = None) -> Any:
    """A Java literal as BFCL reads it; anything unparseable stays the string itself."""
    if kind in ("byte", "short", "integer"):
        return int(value) if _INT.match(value) else value
    if kind == "long":
        return int(value[:-1]) if re.match(r"^-?\d+[lL]$", value) else value
    if kind == "float":
        return float(value[:-1]) if re.match(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?[fF]$", value) else value
    if kind == "double":
        return float(value) if re.match(r"^-?\d+(\.\d+)?([eE][+-]?\d+)?$", value) else value
    if kind == "boolean":
        return value == "true" if value in ("true", "false") else value
    if kind in ("Array", "ArrayList"):
        match = (re.search(r"new\s+\w+(?:<[^>]*>)?\[\]\s*\{(.*)\}", value, re.DOTALL)
                 or re.search(r"new\s+ArrayList<[^>]*>\(\s*Arrays\.asList\((.*)\)\s*\)\s*$", value, re.DOTALL)
                 or re.search(r"Arrays\.asList\((.*)\)\s*$", value, re.DOTALL))
        if match:
            items = _split_top_level(match.group(1))
        else:
            adds = re.search(r"new\s+ArrayList<[^>]*>\(\)\s*\{\{(.*)\}\}", value, re.DOTALL)
            if adds:
                items = [m.strip() for m in re.findall(r"add\((.+?)\)\s*;", adds.group(1))]
            elif re.search(r"new\s+ArrayList<[^>]*>\(\)", value):
                return []
            else:
                return value
        out = []
        for item in items:
            if item_kind in ("String", "char") and len(item) >= 2 and item[0] in "\"'":
                out.append(item[1:-1])
            elif item_kind in JAVA_TYPES and item_kind not in ("String", "char", "any"):
                out.append(java_value(item, item_kind))
            else:
                out.append(_literal(item))
        return out
    if kind in ("HashMap", "Hashtable"):
        match = re.search(r"new\s+HashMap<.*?>\s*\(\)\s*\{\s*\{?(.*?)\}?\s*\}", value, re.DOTALL)
        if match:
            return {key: _literal(val) for key, val in re.findall(r"put\(\"(.*?)\",\s*(.*?)\)\s*;", match.group(1))}
        return {} if re.search(r"new\s+HashMap<.*?>\s*\(\)", value) else value
    return value  # String, char, any and the rest stay strings


def js_value(value: str, kind: str, item_kind: str | None = None) -> Any:
    """A JavaScript literal as BFCL reads it; anything unparseable stays the string itself."""
    if kind == "String":
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'" else value
    if kind == "integer":
        return int(value) if _INT.match(value) else value
    if kind == "float":
        return float(value) if re.match(r"^-?\d+(\.\d+)?$", value) else value
    if kind == "Bigint":
        return int(value[:-1]) if re.match(r"^-?\d+n$", value) else value
    if kind == "Boolean":
        return value == "true" if value in ("true", "false") else value
    if kind == "array":
        text = value.strip()
        match = re.match(r"^\[(.*)\]$", text, re.DOTALL) or re.match(r"^new\s+Array\((.*)\)$", text, re.DOTALL)
        if not match:
            return value
        out = []
        for item in _split_top_level(match.group(1)):
            if item.startswith("["):
                out.append(js_value(item, "array"))
            elif item.startswith("{"):
                out.append(js_value(item, "dict"))
            elif item_kind in JS_TYPES and item_kind not in ("any", "dict", "array"):
                out.append(js_value(item, item_kind))
            else:
                out.append(_literal(item))
        return out
    if kind == "dict":
        text = value.strip()
        if not (text.startswith("{") and text.endswith("}")):
            return value
        out = {}
        for pair in _split_top_level(text[1:-1]):
            if ":" not in pair:
                return value
            key, val = pair.split(":", 1)
            key, val = key.strip().strip("'\""), val.strip()
            if val.startswith("["):
                out[key] = js_value(val, "array")
            elif val.startswith("{"):
                out[key] = js_value(val, "dict")
            else:
                out[key] = _literal(val)
        return out
    return value  # any


# ---------------------------------------------------------------- checking


@dataclass
class Verdict:
    valid: bool
    error_type: str = ""
    error: str = ""

    @staticmethod
    def ok() -> "Verdict":
        return Verdict(True)


def standardize(text: str) -> str:
    """BFCL's string normalisation: no spaces or `,./-_*^`, lower case, ' read as "."""
    return re.sub(r"[ ,./\-_*^]", "", text).lower().replace("'", '"')


def _std(value: Any) -> Any:
    return standardize(value) if isinstance(value, str) else value


def _answer_type(allowed: list) -> type | None:
    for option in allowed:
        if option != "":
            return type(option)
    return None


def _type_check(param: str, value: Any, allowed: list, expected: type, nested: type | None) -> tuple[Verdict, bool]:
    """Returns (verdict, is_variable). A value of the ground truth's own type counts as a
    variable reference (BFCL's leniency for answers written as variable names)."""
    answer_type = _answer_type(allowed)
    is_variable = answer_type is not None and answer_type is not expected
    if type(value) is expected:
        if nested is None:
            return Verdict.ok(), is_variable
        # as in BFCL, an option that is not a list (the "" of an optional parameter) passes
        for option in allowed:
            if not isinstance(option, list) or all(
                _type_check(param, item, option, nested, None)[0].valid for item in value
            ):
                return Verdict.ok(), is_variable
        return Verdict(False, "type_error:nested", f"{param}: items of {value!r} are not {nested.__name__}"), is_variable
    if answer_type is not None and type(value) is answer_type:
        return Verdict.ok(), True
    return Verdict(False, "type_error:simple", f"{param}: expected {expected.__name__}, got {type(value).__name__} {value!r}"), is_variable


def _dict_check(param: str, value: dict, allowed: list) -> Verdict:
    verdict = Verdict(False, "value_error:dict", f"{param}: no allowed dict")
    for option in allowed:
        if option == "" or not isinstance(option, dict):
            continue
        bad = None
        for key, item in value.items():
            if key not in option:
                bad = Verdict(False, "value_error:dict_key", f"{param}: unexpected key {key!r}")
                break
            if _std(item) not in [_std(o) for o in option[key]]:
                bad = Verdict(False, "value_error:dict_value", f"{param}.{key}: {item!r} not in {option[key]!r}")
                break
        if bad is None:
            for key, options in option.items():
                if key not in value and "" not in options:
                    bad = Verdict(False, "value_error:dict_key", f"{param}: missing key {key!r}")
                    break
        if bad is None:
            return Verdict.ok()
        verdict = bad
    return verdict


def _list_of_dicts_check(param: str, value: list, allowed: list) -> Verdict:
    verdict = Verdict(False, "value_error:list_dict_count", f"{param}: wrong number of dicts")
    for option in allowed:
        if not isinstance(option, list) or len(option) != len(value):
            continue
        results = [_dict_check(param, item, [expected]) if isinstance(item, dict)
                   else Verdict(False, "type_error:nested", f"{param}: {item!r} is not a dict")
                   for item, expected in zip(value, option)]
        failed = [r for r in results if not r.valid]
        if not failed:
            return Verdict.ok()
        verdict = failed[0]
    return verdict


def check_call(doc: dict, args: dict, answer: dict, language: str = "python") -> Verdict:
    """One call's arguments against one function doc and one ground-truth entry
    (`answer` maps each parameter to its allowed values)."""
    params = doc.get("parameters", {}) or {}
    properties = params.get("properties", {}) or {}
    for name in params.get("required", []) or []:
        if name not in args:
            return Verdict(False, "missing_required", f"missing required parameter {name!r}")
    for name, value in args.items():
        if name not in properties or name not in answer:
            return Verdict(False, "unexpected_param", f"unexpected parameter {name!r}")
        allowed = answer[name]
        kind = properties[name].get("type", "any")
        item_kind = (properties[name].get("items") or {}).get("type")
        nested = None
        if language in ("java", "javascript"):
            table = JAVA_TYPES if language == "java" else JS_TYPES
            expected = table.get(kind, str)
            if not isinstance(value, str):
                return Verdict(False, f"type_error:{language}", f"{name}: expected a {language} literal string, got {value!r}")
            if kind in NESTED_TYPES and item_kind is not None:
                nested = table.get(item_kind, str)
            value = (java_value if language == "java" else js_value)(value, kind, item_kind)
        else:
            expected = PYTHON_TYPES.get(kind, str)
            if kind in NESTED_TYPES and item_kind is not None:
                nested = PYTHON_TYPES.get(item_kind, str)
            if kind == "float" and type(value) is int:
                value = float(value)
        verdict, is_variable = _type_check(name, value, allowed, expected, nested)
        if not verdict.valid:
            return verdict
        if not is_variable:
            if expected is dict:
                verdict = _dict_check(name, value, allowed)
            elif expected is list and nested is dict:
                verdict = _list_of_dicts_check(name, value, allowed)
            elif expected is str:
                if _std(value) not in [standardize(o) for o in allowed if isinstance(o, str)]:
                    verdict = Verdict(False, "value_error:string", f"{name}: {value!r} not in {allowed!r}")
            elif expected is list:
                options = [[_std(item) for item in option] for option in allowed if isinstance(option, list)]
                if [_std(item) for item in value] not in options:
                    verdict = Verdict(False, "value_error:list", f"{name}: {value!r} not in {allowed!r}")
            elif value not in allowed:
                verdict = Verdict(False, "value_error:others", f"{name}: {value!r} not in {allowed!r}")
            if not verdict.valid:
                return verdict
        elif value not in allowed:
            return Verdict(False, "value_error:others", f"{name}: {value!r} not in {allowed!r}")
    for name, allowed in answer.items():
        if name not in args and "" not in allowed:
            return Verdict(False, "missing_optional", f"parameter {name!r} not given and not optional")
    return Verdict.ok()


def _check_one(docs: dict[str, dict], call: dict, expected: dict, language: str) -> Verdict:
    (name, answer), = expected.items()
    (called, args), = call.items()
    if called != name:
        return Verdict(False, "wrong_func_name", f"called {called!r}, expected {name!r}")
    doc = docs.get(name)
    if doc is None:
        return Verdict(False, "wrong_func_name", f"{name!r} is not among the functions")
    if not isinstance(args, dict):
        return Verdict(False, "bad_arguments", f"arguments of {name!r} are not an object")
    return check_call(doc, args, answer, language)


def check(category: str, functions: list[dict], calls: list[dict], ground_truth: list[dict] | None) -> Verdict:
    """One question. `calls` is the model's output as BFCL decodes it: a list of
    `{function_name: {argument: value}}` with the original (dotted) names."""
    if is_irrelevance(category):
        return Verdict.ok() if not calls else Verdict(False, "irrelevance:called", f"{len(calls)} call(s) made")
    if is_relevance(category):
        return Verdict.ok() if calls else Verdict(False, "relevance:no_call", "no call made")
    if not calls:
        return Verdict(False, "no_call", "no function call in the answer")
    ground_truth = ground_truth or []
    if len(calls) != len(ground_truth):
        return Verdict(False, "wrong_count", f"{len(calls)} call(s), expected {len(ground_truth)}")
    docs = {doc["name"]: doc for doc in functions}
    language = language_of(category)
    if "parallel" in category:
        used: set[int] = set()
        for expected in ground_truth:
            last = Verdict(False, "cannot_find_match", "")
            for index, call in enumerate(calls):
                if index in used:
                    continue
                last = _check_one(docs, call, expected, language)
                if last.valid:
                    used.add(index)
                    break
            if not last.valid:
                name = next(iter(expected))
                return Verdict(False, "parallel:cannot_find_match", f"no call matches {name!r}: {last.error}")
        return Verdict.ok()
    return _check_one(docs, calls[0], ground_truth[0], language)


@dataclass
class CallShape:
    """Whether one emitted call is well-formed: JSON arguments, a given tool, schema-valid."""
    name: str
    arguments: str
    parsed: Any = None
    problems: list[str] = field(default_factory=list)

    @property
    def well_formed(self) -> bool:
        return not self.problems


def inspect_call(name: str, arguments: str, tools: list[dict]) -> CallShape:
    import jsonschema

    shape = CallShape(name, arguments)
    try:
        shape.parsed = json.loads(arguments) if arguments else None
    except (json.JSONDecodeError, TypeError):
        shape.problems.append("arguments_not_json")
        return shape
    if not isinstance(shape.parsed, dict):
        shape.problems.append("arguments_not_object")
    schema = next((t["function"]["parameters"] for t in tools if t["function"]["name"] == name), None)
    if schema is None:
        shape.problems.append("unknown_tool")
        return shape
    if isinstance(shape.parsed, dict):
        validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)(schema)
        error = jsonschema.exceptions.best_match(validator.iter_errors(shape.parsed))
        if error is not None:
            shape.problems.append(f"schema_invalid: {error.message[:160]}")
    return shape
