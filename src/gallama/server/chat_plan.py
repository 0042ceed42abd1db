"""A chat request's plan: its tools, its answer's grammar and checks, and its prompt, rendered and tokenized once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gallama.agentic.chat_template import TemplateError
from gallama.agentic.custom_input import CustomInput
from gallama.agentic.schema_check import AnswerCheck
from gallama.agentic.tools import ToolPlan, ToolRequestError, plan_tools
from gallama.protocol.errors import InvalidRequest
from gallama.protocol.requests import ChatCompletionRequest
from gallama.server.planning import constraint_grammar, requested_constraints, schema_check
from gallama.server.verification import Verification
from gallama.serving.served_model import ServedModel


@dataclass
class ChatPlan:
    tools: ToolPlan | None
    grammar: str | None  # the answer's grammar: tool calls, or the request's one constraint
    verification: Verification | None  # the exact schemas a finished answer is checked against
    prompt_text: str  # rendered up to the assistant's answer, without the leading prompt
    prompt_tokens: list[int]  # the prompt and the leading prompt, tokenized
    top_logprobs: int | None  # None: no logprobs


def plan_chat(model: ServedModel, body: ChatCompletionRequest, custom: dict[str, CustomInput] | None = None) -> ChatPlan:
    tools = tool_plan(model, body, custom)
    grammar = answer_grammar(model, body, tools)
    verification = answer_verification(body, tools)
    text = chat_prompt_text(model, body, tools)
    return ChatPlan(
        tools, grammar, verification, text, model.tokenize_prompt(text + (body.leading_prompt or "")),
        top_logprobs=(body.top_logprobs or 0) if body.logprobs else None,
    )


def tool_plan(model: ServedModel, body: ChatCompletionRequest, custom: dict[str, CustomInput] | None = None) -> ToolPlan | None:
    tools = [tool.model_dump() for tool in body.tools] if body.tools else None
    choice = body.tool_choice.model_dump() if hasattr(body.tool_choice, "model_dump") else body.tool_choice
    try:
        return plan_tools(tools, choice, body.parallel_tool_calls, model.tool_format, custom)
    except ToolRequestError as error:
        raise InvalidRequest(str(error), param=error.param) from error


def answer_grammar(model: ServedModel, body: ChatCompletionRequest, plan: ToolPlan | None) -> str | None:
    """The request's grammar: tool calls (with a schema for a text answer), or its one constraint."""
    if plan is None:
        return constraint_grammar(model, body)
    others = [name for name, _ in requested_constraints(body) if name != "response_format"]
    if others:
        raise InvalidRequest(f"tools and {others[0]} cannot be combined in one request", param=others[0])
    text_schema = None
    if body.response_format is not None and body.response_format.type != "text":
        text_schema = (
            body.response_format.json_schema.schema_ if body.response_format.type == "json_schema" else {"type": "object"}
        )
    return constraint_grammar(model, body, grammar_override=plan.grammar(text_schema), param="tools")


def answer_verification(body: ChatCompletionRequest, plan: ToolPlan | None) -> Verification | None:
    """The schemas a finished answer is checked against: the text's, and each tool's parameters."""
    found = schema_check(body)
    param, text = found if found is not None else ("response_format", None)
    if plan is not None:
        return Verification(plan.answer_check(text), "tools" if text is None else param)
    return Verification(AnswerCheck(text=text), param) if text is not None else None


def with_system_note(messages: list[dict[str, Any]], note: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        return [{**messages[0], "content": messages[0]["content"] + "\n\n" + note}, *messages[1:]]
    return [{"role": "system", "content": note}, *messages]


def chat_prompt_text(
    model: ServedModel, body: ChatCompletionRequest, plan: ToolPlan | None, note: str | None = None
) -> str:
    """The rendered prompt up to the assistant's answer (without the leading prompt)."""
    messages = [message.template_entry() for message in body.messages]
    extra: dict[str, Any] = {}
    if plan is not None:
        messages, extra = plan.template_messages(messages)
    if note is not None:
        messages = with_system_note(messages, note)
    if body.reasoning_effort is not None:  # templates of reasoning models read this switch
        extra["enable_thinking"] = body.reasoning_effort != "none"
    try:
        return model.render_chat(messages, **extra)
    except TemplateError as error:
        raise InvalidRequest(str(error), param="messages") from error
