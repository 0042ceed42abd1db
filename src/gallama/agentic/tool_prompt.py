"""Putting tools and tool-call history into the prompt.

Native formats hand `tools`, assistant `tool_calls` and `tool` messages to the
model's own chat template (Hugging Face conventions). The generic format writes
the tool schemas and the call syntax into the system prompt itself and turns
the history into plain turns that any template renders.
"""

from __future__ import annotations

import json
from typing import Any, Collection

from gallama.agentic.custom_input import CustomInput
from gallama.agentic.tool_formats import ToolCallFormat


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # a client's malformed history is rendered as it was sent


def _render_call(syntax: ToolCallFormat, call: dict[str, Any], custom: Collection[str]) -> str:
    name, arguments = call["function"]["name"], _arguments_object(call["function"]["arguments"])
    if name in custom:  # its input, raw: {"input": text} in the history's arguments
        text = arguments.get("input", "") if isinstance(arguments, dict) else str(arguments)
        return syntax.custom_prefix(name) + str(text) + syntax.custom_suffix()
    return syntax.call_prefix(name) + json.dumps(arguments, ensure_ascii=False) + syntax.call_suffix()


def render_calls(syntax: ToolCallFormat, calls: list[dict[str, Any]], custom: Collection[str] = ()) -> str:
    """Calls written the way the model writes them (for the generic history); `custom` names the custom tools."""
    parts = [_render_call(syntax, call, custom) for call in calls]
    return syntax.section_open + syntax.separator.join(parts) + syntax.section_close


def native_history(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Tool-call arguments as objects, as Hugging Face templates expect them."""
    out = []
    for message in messages:
        if message.get("tool_calls"):
            message = {
                **message,
                "tool_calls": [
                    {**call, "function": {**call["function"], "arguments": _arguments_object(call["function"]["arguments"])}}
                    for call in message["tool_calls"]
                ],
            }
        out.append(message)
    return out


def _example(syntax: ToolCallFormat, tools: list[dict[str, Any]], forced: str | None,
             custom: dict[str, CustomInput]) -> str:
    """A call of a given tool (the forced one, else the first) with placeholder values.

    Small models copy a real name and real parameter names far better than a made-up one, and copy
    every parameter they are shown: the example shows the required ones (else the first two).
    """
    function = next((t["function"] for t in tools if t["function"]["name"] == forced), tools[0]["function"])
    if function["name"] in custom:
        return _custom_example(syntax, function["name"], custom[function["name"]])
    parameters = function.get("parameters") or {}
    names = list(parameters.get("properties") or {})
    names = [name for name in names if name in (parameters.get("required") or [])][:2] or names[:2]
    return syntax.call_prefix(function["name"]) + json.dumps({name: "..." for name in names}) + syntax.call_suffix()


def _custom_example(syntax: ToolCallFormat, name: str, form: CustomInput) -> str:
    return syntax.custom_prefix(name) + "..." + ("" if form.runs_to_the_end else syntax.custom_suffix())


def _listed(function: dict[str, Any], custom: dict[str, CustomInput]) -> str:
    """A tool as the prompt lists it: its function object, or a custom tool's name, description and input format."""
    if function["name"] not in custom:
        return json.dumps(function, ensure_ascii=False)
    entry = {key: function[key] for key in ("name", "description") if function.get(key)}
    form = custom[function["name"]]
    entry["input"] = "freeform text" if form.syntax == "text" else {"syntax": form.syntax, "definition": form.definition}
    return json.dumps(entry, ensure_ascii=False)


def _instructions(syntax: ToolCallFormat, tools: list[dict[str, Any]], mode: str, forced: str | None,
                  custom: dict[str, CustomInput]) -> str:
    listing = "\n".join(_listed(tool["function"], custom) for tool in tools)
    if forced is not None:
        rule = f"You must answer by calling the function {forced}."
    elif mode == "required":
        rule = "You must answer with one or more function calls."
    elif syntax.text_open:
        rule = f"If no function fits, reply with {syntax.text_open} followed by your answer."
    else:
        rule = "If a function helps answer the user, call it; otherwise answer in plain text."
    freeform = ""
    if custom:
        name = next(iter(custom))
        freeform = f"A function with an input takes raw text, not JSON: {_custom_example(syntax, name, custom[name])}\n"
    return (
        "You are a function calling AI model. You are given these functions:\n"
        f"<tools>\n{listing}\n</tools>\n"
        f"To call a function, reply with one {syntax.call_open} per call, for example:\n"
        f"{_example(syntax, tools, forced, custom)}\n{freeform}{rule}"
    )


def generic_history(
    messages: list[dict[str, Any]], syntax: ToolCallFormat, tools: list[dict[str, Any]], mode: str,
    forced: str | None = None, custom: dict[str, CustomInput] | None = None,
) -> list[dict[str, Any]]:
    """Messages for a template that knows nothing of tools (mode, forced and custom as in ToolPlan)."""
    custom = custom or {}
    instructions = _instructions(syntax, tools, mode, forced, custom) if tools and mode != "none" else ""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if message.get("tool_calls"):
            content = (content + "\n" if content else "") + render_calls(syntax, message["tool_calls"], custom)
        if role == "tool":
            role = "user"
            content = f"<tool_response>\n{content}\n</tool_response>"
        if out and out[-1]["role"] == role:  # many templates insist that roles alternate
            out[-1]["content"] += "\n\n" + content
        else:
            out.append({"role": role, "content": content})
    if instructions:
        if out and out[0]["role"] == "system":
            out[0]["content"] = out[0]["content"] + "\n\n" + instructions
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out
