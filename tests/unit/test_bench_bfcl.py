"""BFCL's AST rules as bench/bfcl_checker.py implements them, on small hand-made cases."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.bfcl_checker import (  # noqa: E402
    check,
    check_call,
    inspect_call,
    java_value,
    js_value,
    standardize,
    to_openai_tools,
)

AREA = {
    "name": "geometry.area",
    "description": "Area of a shape.",
    "parameters": {
        "type": "dict",
        "properties": {
            "shape": {"type": "string", "description": "The shape."},
            "size": {"type": "float", "description": "Its size."},
            "count": {"type": "integer", "description": "How many."},
            "units": {"type": "string", "description": "Units."},
            "dims": {"type": "array", "items": {"type": "integer"}, "description": "Dimensions."},
            "options": {"type": "dict", "properties": {"round": {"type": "boolean"}}, "description": "Options."},
        },
        "required": ["shape", "size"],
    },
}
ANSWER = {"shape": ["circle"], "size": [2.0], "count": [1, ""], "units": ["", "cm"],
          "dims": [[1, 2], ""], "options": [{"round": [True]}, ""]}
TRUTH = [{"geometry.area": ANSWER}]


def test_exact_call_is_right():
    assert check("simple_python", [AREA], [{"geometry.area": {"shape": "circle", "size": 2.0}}], TRUTH).valid


def test_wrong_function_name():
    verdict = check("simple_python", [AREA], [{"geometry.volume": {"shape": "circle", "size": 2.0}}], TRUTH)
    assert not verdict.valid and verdict.error_type == "wrong_func_name"


def test_missing_required_parameter():
    verdict = check_call(AREA, {"shape": "circle"}, ANSWER)
    assert not verdict.valid and verdict.error_type == "missing_required"


def test_parameter_absent_from_doc_or_truth():
    assert check_call(AREA, {"shape": "circle", "size": 2.0, "colour": "red"}, ANSWER).error_type == "unexpected_param"
    answer = {k: v for k, v in ANSWER.items() if k != "units"}
    assert check_call(AREA, {"shape": "circle", "size": 2.0, "units": "cm"}, answer).error_type == "unexpected_param"


def test_optional_marked_by_empty_string():
    assert check_call(AREA, {"shape": "circle", "size": 2.0, "units": "cm", "count": 1}, ANSWER).valid
    answer = dict(ANSWER, units=["cm"])  # no "" : must be given
    verdict = check_call(AREA, {"shape": "circle", "size": 2.0}, answer)
    assert not verdict.valid and verdict.error_type == "missing_optional"


def test_int_accepted_for_float_but_not_float_for_int():
    assert check_call(AREA, {"shape": "circle", "size": 2}, ANSWER).valid
    verdict = check_call(AREA, {"shape": "circle", "size": 2.0, "count": 1.0}, ANSWER)
    assert not verdict.valid and verdict.error_type.startswith("type_error")


def test_bool_is_not_an_int():
    verdict = check_call(AREA, {"shape": "circle", "size": 2.0, "count": True}, ANSWER)
    assert not verdict.valid


def test_wrong_value():
    verdict = check_call(AREA, {"shape": "square", "size": 2.0}, ANSWER)
    assert not verdict.valid and verdict.error_type == "value_error:string"
    assert check_call(AREA, {"shape": "circle", "size": 3.0}, ANSWER).error_type == "value_error:others"


def test_string_normalisation():
    assert standardize("April 1, 2024") == standardize("april 1 2024")
    assert check_call(AREA, {"shape": "Circle.", "size": 2.0}, ANSWER).valid
    assert check_call(AREA, {"shape": "CIR-CLE", "size": 2.0}, ANSWER).valid


def test_lists_and_nested_types():
    assert check_call(AREA, {"shape": "circle", "size": 2.0, "dims": [1, 2]}, ANSWER).valid
    assert not check_call(AREA, {"shape": "circle", "size": 2.0, "dims": [2, 1]}, ANSWER).valid
    assert not check_call(AREA, {"shape": "circle", "size": 2.0, "dims": ["1", "2"]}, ANSWER).valid


def test_dict_values():
    assert check_call(AREA, {"shape": "circle", "size": 2.0, "options": {"round": True}}, ANSWER).valid
    assert not check_call(AREA, {"shape": "circle", "size": 2.0, "options": {"round": False}}, ANSWER).valid
    assert not check_call(AREA, {"shape": "circle", "size": 2.0, "options": {"exact": True}}, ANSWER).valid


def test_variable_of_the_truths_type_is_accepted():
    doc = {"name": "f", "parameters": {"type": "dict", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}
    assert check_call(doc, {"n": "num_items"}, {"n": ["num_items"]}).valid
    assert not check_call(doc, {"n": "other"}, {"n": ["num_items"]}).valid


def test_counts_for_simple_and_multiple():
    two = [{"geometry.area": {"shape": "circle", "size": 2.0}}] * 2
    assert check("simple_python", [AREA], two, TRUTH).error_type == "wrong_count"
    assert check("multiple", [AREA], two, TRUTH).error_type == "wrong_count"
    assert check("multiple", [AREA], [], TRUTH).error_type == "no_call"


def test_parallel_ignores_order():
    truth = [{"geometry.area": dict(ANSWER, shape=["circle"])}, {"geometry.area": dict(ANSWER, shape=["square"])}]
    calls = [{"geometry.area": {"shape": "square", "size": 2.0}}, {"geometry.area": {"shape": "circle", "size": 2.0}}]
    assert check("parallel", [AREA], calls, truth).valid
    assert check("live_parallel_multiple", [AREA], calls, truth).valid
    assert not check("parallel", [AREA], calls[:1], truth).valid
    same = [calls[1], calls[1]]
    assert check("parallel", [AREA], same, truth).error_type == "parallel:cannot_find_match"


def test_irrelevance_and_relevance():
    call = [{"geometry.area": {"shape": "circle", "size": 2.0}}]
    assert check("irrelevance", [AREA], [], None).valid
    assert not check("live_irrelevance", [AREA], call, None).valid
    assert check("live_relevance", [AREA], call, None).valid
    assert not check("live_relevance", [AREA], [], None).valid


def test_java_literals():
    assert java_value("42", "integer") == 42
    assert java_value("42L", "long") == 42
    assert java_value("1.5f", "float") == 1.5
    assert java_value("true", "boolean") is True
    assert java_value("new int[]{1, 2, 3}", "Array", "integer") == [1, 2, 3]
    assert java_value('new ArrayList<>(Arrays.asList("a", "b"))', "ArrayList", "String") == ["a", "b"]
    assert java_value('new HashMap<String, String>() {{ put("k", "v"); }}', "HashMap") == {"k": "v"}
    assert java_value("abc", "integer") == "abc"


def test_java_call_must_use_strings():
    doc = {"name": "Cache.put", "parameters": {"type": "dict", "properties": {
        "size": {"type": "integer"}, "force": {"type": "boolean"}}, "required": ["size"]}}
    truth = [{"Cache.put": {"size": [10], "force": [True, ""]}}]
    assert check("simple_java", [doc], [{"Cache.put": {"size": "10", "force": "true"}}], truth).valid
    assert not check("simple_java", [doc], [{"Cache.put": {"size": 10}}], truth).valid
    assert not check("simple_java", [doc], [{"Cache.put": {"size": "11"}}], truth).valid


def test_javascript_literals():
    assert js_value("'abc'", "String") == "abc"
    assert js_value("123n", "Bigint") == 123
    assert js_value("[1, 2, 3]", "array", "integer") == [1, 2, 3]
    assert js_value("{'a': 1, 'b': [true, 'x']}", "dict") == {"a": 1, "b": [True, "x"]}


def test_tool_conversion():
    tools, names = to_openai_tools([AREA], "simple_python")
    function = tools[0]["function"]
    assert function["name"] == "geometry_area" and names == {"geometry_area": "geometry.area"}
    params = function["parameters"]
    assert params["type"] == "object"
    assert params["properties"]["size"]["type"] == "number"
    assert params["properties"]["options"]["type"] == "object"
    assert AREA["parameters"]["type"] == "dict"  # the input is not modified
    odd = {"name": "f", "description": "", "parameters": {"type": "dict", "properties": {
        "t": {"type": "tuple", "items": {"type": "float"}}, "a": {"type": "any"}, "x": {"type": "Weird"}}}}
    props = to_openai_tools([odd], "simple_python")[0][0]["function"]["parameters"]["properties"]
    assert props["t"] == {"type": "array", "items": {"type": "number"}}
    assert props["a"]["type"] == "string" and props["x"]["type"] == "string"


def test_java_tools_take_strings():
    doc = {"name": "A.b", "description": "d", "parameters": {"type": "dict", "properties": {
        "n": {"type": "Array", "items": {"type": "integer"}, "description": "ns."}}, "required": ["n"]}}
    prop = to_openai_tools([doc], "simple_java")[0][0]["function"]["parameters"]["properties"]["n"]
    assert prop["type"] == "string" and "items" not in prop and "Java Array" in prop["description"]


@pytest.mark.parametrize("arguments, problem", [
    ('{"shape": "circle", "size": 2}', None),
    ('{"shape": "circle"', "arguments_not_json"),
    ('[1]', "arguments_not_object"),
    ('{"shape": 3, "size": 2}', "schema_invalid"),
])
def test_well_formed_calls(arguments, problem):
    tools, _ = to_openai_tools([AREA], "simple_python")
    shape = inspect_call("geometry_area", arguments, tools)
    if problem is None:
        assert shape.well_formed
    else:
        assert not shape.well_formed and shape.problems[0].startswith(problem)


def test_unknown_tool_is_not_well_formed():
    tools, _ = to_openai_tools([AREA], "simple_python")
    assert inspect_call("geometry.area", json.dumps({"shape": "circle", "size": 2}), tools).problems == ["unknown_tool"]
