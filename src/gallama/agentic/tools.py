"""A request's tools, checked and turned into a prompt, a grammar and a parser mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gallama.agentic.constraints import ConstraintError
from gallama.agentic.custom_input import CustomInput, InputCheck
from gallama.agentic.schema_check import AnswerCheck, SchemaCheck, SchemaCheckError, check_for
from gallama.agentic.tool_formats import ToolCallFormat
from gallama.agentic.tool_grammar import check_parameters, tool_grammar
from gallama.agentic.tool_parser import ToolCallParser
from gallama.agentic.tool_prompt import generic_history, native_history


class ToolRequestError(ValueError):
    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass
class ToolPlan:
    syntax: ToolCallFormat
    tools: list[dict[str, Any]]  # OpenAI tool objects, as sent
    mode: str  # "none", "auto" or "required"
    parallel: bool
    forced: str | None = None  # the tool a named tool_choice forces (mode "required"); a name, never a mode
    checks: dict[str, SchemaCheck | InputCheck] = field(default_factory=dict)  # tool name -> its arguments' check
    custom: dict[str, CustomInput] = field(default_factory=dict)  # the custom tools: raw input between tags

    @property
    def parser_mode(self) -> str:
        return {"none": "text", "auto": "auto"}.get(self.mode, "calls")

    def template_messages(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Messages and extra template variables for the chat template."""
        if self.syntax.native:
            return native_history(messages), {"tools": self.tools or None}
        return generic_history(messages, self.syntax, self.tools, self.mode, self.forced, self.custom), {}

    def grammar(self, text_schema: dict[str, Any] | None) -> str:
        parameters = {tool["function"]["name"]: tool["function"].get("parameters") or {} for tool in self.tools}
        return tool_grammar(parameters, self.syntax, self.mode, self.parallel, text_schema, self.custom,
                            forced=self.forced)

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.syntax, self.parser_mode, {name for name, c in self.custom.items() if c.runs_to_the_end})

    def answer_check(self, text: SchemaCheck | None) -> AnswerCheck:
        return AnswerCheck(text=text, tools=self.checks)


def plan_tools(
    tools: list[dict[str, Any]] | None, tool_choice: str | dict | None, parallel: bool, syntax: ToolCallFormat,
    custom: dict[str, CustomInput] | None = None,
) -> ToolPlan | None:
    """custom: the tools among `tools` whose input is freeform text (a Responses API custom tool), by name."""
    custom = custom or {}
    if not tools:
        # "auto" and "none" without tools mean no tools (clients send them by default); forcing a call cannot.
        if tool_choice not in (None, "none", "auto"):
            wanted = "a call" if tool_choice == "required" else f"a call to '{tool_choice['function']['name']}'"
            raise ToolRequestError(f"tool_choice asks for {wanted}, but no tools are given", "tool_choice")
        return None
    names = [tool["function"]["name"] for tool in tools]
    checks = {}
    for index, name in enumerate(names):
        if name in names[:index]:
            raise ToolRequestError(f"tool names must be unique; '{name}' is given twice", f"tools.{index}.function.name")
        parameters = tools[index]["function"].get("parameters") or {}
        try:
            if name in custom:
                if (check := custom_check(name, custom[name])) is not None:
                    checks[name] = check
                continue
            check_parameters(name, parameters)
            checks[name] = check_for(parameters)
        except ConstraintError as error:
            raise ToolRequestError(str(error), f"tools.{index}.function.parameters") from error
        except SchemaCheckError as error:
            raise ToolRequestError(f"the parameters of tool '{name}': {error}", f"tools.{index}.function.parameters") from error
    if isinstance(tool_choice, dict):
        forced = tool_choice["function"]["name"]
        if forced not in names:
            raise ToolRequestError(f"tool_choice names '{forced}', which is not among the given tools", "tool_choice")
        return ToolPlan(syntax=syntax, tools=tools, mode="required", parallel=parallel, forced=forced, checks=checks,
                        custom=custom)
    return ToolPlan(syntax=syntax, tools=tools, mode=tool_choice or "auto", parallel=parallel, checks=checks,
                    custom=custom)


def custom_check(name: str, custom: CustomInput) -> InputCheck | None:
    try:
        return custom.check()
    except ConstraintError as error:
        raise ConstraintError(f"the input format of tool '{name}' does not compile: {error}") from error
