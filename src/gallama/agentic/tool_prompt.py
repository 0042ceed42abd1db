"""Putting tools and tool-call history into the prompt.

Native formats hand `tools`, assistant `tool_calls` and `tool` messages to the
model's own chat template (Hugging Face conventions). The generic format writes
the tool schemas and the call syntax into the system prompt itself and turns
the history into plain turns that any template renders.
"""

from __future__ import annotations

import json
from typing import Any

from gallama.agentic.tool_formats import ToolCallFormat


def _arguments_object(arguments: str) -> Any:
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments  # a client's malformed history is rendered as it was sent


def render_calls(syntax: ToolCallFormat, calls: list[dict[str, Any]]) -> str:
    """Calls written the way the model writes them (for the generic history)."""
    parts = [
        syntax.call_prefix(call["function"]["name"])
        + json.dumps(_arguments_object(call["function"]["arguments"]), ensure_ascii=False)
        + syntax.call_suffix()
        for call in calls
    ]
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


def _example(syntax: ToolCallFormat, tools: list[dict[str, Any]], forced: str | None) -> str:
    """A call of a given tool (the forced one, else the first) with placeholder values.

    Small models copy a real name and real parameter names far better than a made-up one.
    """
    function = next((t["function"] for t in tools if t["function"]["name"] == forced), tools[0]["function"])
    names = list((function.get("parameters") or {}).get("properties") or {})[:2]
    return syntax.call_prefix(function["name"]) + json.dumps({name: "..." for name in names}) + syntax.call_suffix()


def _instructions(syntax: ToolCallFormat, tools: list[dict[str, Any]], mode: str, forced: str | None) -> str:
    listing = "\n".join(json.dumps(tool["function"], ensure_ascii=False) for tool in tools)
    if forced is not None:
        rule = f"You must answer by calling the function {forced}."
    elif mode == "required":
        rule = "You must answer with one or more function calls."
    elif syntax.text_open:
        rule = f"If no function fits, reply with {syntax.text_open} followed by your answer."
    else:
        rule = "If a function helps answer the user, call it; otherwise answer in plain text."
    return (
        "You are a function calling AI model. You are given these functions:\n"
        f"<tools>\n{listing}\n</tools>\n"
        f"To call a function, reply with one {syntax.call_open} per call, for example:\n"
        f"{_example(syntax, tools, forced)}\n{rule}"
    )


def generic_history(
    messages: list[dict[str, Any]], syntax: ToolCallFormat, tools: list[dict[str, Any]], mode: str,
    forced: str | None = None,
) -> list[dict[str, Any]]:
    """Messages for a template that knows nothing of tools (mode and forced as in ToolPlan)."""
    instructions = _instructions(syntax, tools, mode, forced) if tools and mode != "none" else ""
    out: list[dict[str, Any]] = []
    for message in messages:
        role, content = message["role"], message.get("content") or ""
        if message.get("tool_calls"):
            content = (content + "\n" if content else "") + render_calls(syntax, message["tool_calls"])
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
