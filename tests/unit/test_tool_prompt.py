from gallama.agentic.tool_formats import GENERIC
from gallama.agentic.tool_prompt import generic_history

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"type": "string"}}}}}
ADD = {"type": "function", "function": {"name": "add", "parameters": {
    "type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def system_prompt(mode, messages=ASK, forced=None):
    out = generic_history(messages, GENERIC, [WEATHER, ADD], mode, forced)
    assert out[0]["role"] == "system"
    return out[0]["content"]


def test_auto_example_calls_a_real_tool_and_names_the_text_tag():
    prompt = system_prompt("auto")
    assert '<tool_call>{"name": "get_weather", "arguments": {"city": "...", "unit": "..."}}</tool_call>' in prompt
    assert "<response>" in prompt


def test_named_choice_example_calls_that_tool():
    prompt = system_prompt("required", forced="add")
    assert '<tool_call>{"name": "add", "arguments": {"a": "...", "b": "..."}}</tool_call>' in prompt
    assert "<response>" not in prompt


def test_example_shows_the_required_parameters():
    shell = {"type": "function", "function": {"name": "exec_command", "parameters": {
        "type": "object", "properties": {"cmd": {}, "justification": {}, "workdir": {}}, "required": ["cmd"]}}}
    prompt = generic_history(ASK, GENERIC, [shell], "auto")[0]["content"]
    assert '<tool_call>{"name": "exec_command", "arguments": {"cmd": "..."}}</tool_call>' in prompt


def test_instructions_follow_a_given_system_prompt():
    prompt = system_prompt("required", [{"role": "system", "content": "Be brief."}, *ASK])
    assert prompt.startswith("Be brief.\n\n") and "one or more function calls" in prompt


def test_none_adds_no_instructions():
    assert generic_history(ASK, GENERIC, [WEATHER, ADD], "none") == ASK
