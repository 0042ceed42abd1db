"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API over the chat core.

A Messages request becomes a chat completions request (the same plan, templates, tool grammar
and constraints), and the chat core's answer or chunks become Anthropic's content blocks and
stream events. Nothing of the generation is done twice.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from typing import Any, AsyncIterator

from fastapi import APIRouter, Request
from pydantic import ValidationError

from gallama.protocol.anthropic import ContentBlock, CountTokensRequest, MessagesRequest, TextBlock
from gallama.protocol.errors import InvalidRequest
from gallama.protocol.requests import ChatCompletionRequest
from gallama.serving.served_model import ServedModel
from gallama.server.chat_plan import chat_prompt_text, tool_plan
from gallama.server.routes.chat import ChatStart, complete, start_chat, stream_chunks
from gallama.server.sse import sse_response

router = APIRouter()

# Claude Code's first system line changes with every request (its `cch=` nonce); at the top of the
# prompt it would defeat the prefix cache. It is for Anthropic's billing alone: dropped here.
BILLING_LINE = "x-anthropic-billing-header:"
# Thinking blocks carry a signature that clients must send back unchanged. Earlier turns' thinking
# is not put into the prompt again (as Anthropic drops it for most models), so nothing a client
# writes into one reaches the model, and the signature only has to be stable within this server.
SIGNING_KEY = secrets.token_bytes(32)
STOP_REASONS = {"tool_calls": "tool_use", "length": "max_tokens"}


def sign(thinking: str) -> str:
    return base64.b64encode(hmac.new(SIGNING_KEY, thinking.encode(), hashlib.sha256).digest()).decode()


def system_text(system: str | list[TextBlock] | None) -> str:
    if system is None:
        return ""
    if isinstance(system, str):
        first, _, rest = system.partition("\n")
        return rest if first.lstrip().startswith(BILLING_LINE) else system
    return "\n\n".join(block.text for block in system if not block.text.lstrip().startswith(BILLING_LINE))


def _blocks(content: str | list[ContentBlock]) -> list[ContentBlock]:
    return [TextBlock(type="text", text=content)] if isinstance(content, str) else content


def _no_vision(param: str, kind: str) -> InvalidRequest:
    return InvalidRequest(f"This model has no vision: {kind} blocks cannot be read ({param}).", param=param)


def _result_text(block, param: str) -> str:
    if block.content is None or isinstance(block.content, str):
        text = block.content or ""
    else:
        parts = []
        for number, part in enumerate(block.content):
            if part.type != "text":
                raise _no_vision(f"{param}.content.{number}", part.type)
            parts.append(part.text)
        text = "\n".join(parts)
    return f"Error: {text}" if block.is_error else text


def chat_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """Anthropic's system and messages as chat messages: tool results become tool messages, tool uses tool calls."""
    messages: list[dict[str, Any]] = []
    system = system_text(body.system)
    if system:
        messages.append({"role": "system", "content": system})
    for index, message in enumerate(body.messages):
        texts, calls = [], []
        for number, block in enumerate(_blocks(message.content)):
            param = f"messages.{index}.content.{number}"
            if block.type in ("image", "document"):
                raise _no_vision(param, block.type)
            if block.type in ("thinking", "redacted_thinking"):
                continue  # earlier turns' thinking is not read again (see SIGNING_KEY)
            if block.type == "text":
                texts.append(block.text)
            elif block.type == "tool_result" and message.role == "user":
                messages.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": _result_text(block, param)})
            elif block.type == "tool_use" and message.role == "assistant":
                calls.append({"id": block.id, "type": "function",
                              "function": {"name": block.name, "arguments": json.dumps(block.input)}})
            else:
                raise InvalidRequest(f"A {message.role} message cannot hold a {block.type} block.", param=param)
        if texts or calls:
            entry: dict[str, Any] = {"role": message.role, "content": "\n\n".join(texts) if texts else None}
            if calls:
                entry["tool_calls"] = calls
            messages.append(entry)
    return messages


def chat_tools(body: CountTokensRequest) -> list[dict[str, Any]] | None:
    if not body.tools:
        return None
    tools = []
    for index, tool in enumerate(body.tools):
        if tool.type not in (None, "custom"):
            raise InvalidRequest(
                f"tools.{index}: '{tool.name}' is Anthropic's server tool '{tool.type}', which runs on Anthropic's "
                "side; this server cannot run it. Give it as a custom tool with an input_schema instead.",
                param=f"tools.{index}.type",
            )
        if tool.input_schema is None:
            raise InvalidRequest(f"tools.{index}: '{tool.name}' needs an input_schema.", param=f"tools.{index}.input_schema")
        if tool.model_extra:
            unknown = ", ".join(sorted(tool.model_extra))
            raise InvalidRequest(f"Unrecognized tool field(s) in tools.{index}: {unknown}", param=f"tools.{index}")
        function = {"name": tool.name, "parameters": tool.input_schema}
        if tool.description is not None:
            function["description"] = tool.description
        tools.append({"type": "function", "function": function})
    return tools


def chat_tool_choice(body: CountTokensRequest) -> tuple[Any, bool]:
    """tool_choice and parallel_tool_calls in chat's terms."""
    choice = body.tool_choice
    if choice is None:
        return None, True
    if choice.type == "tool":
        if not choice.name:
            raise InvalidRequest("tool_choice of type 'tool' needs the tool's name.", param="tool_choice.name")
        mapped: Any = {"type": "function", "function": {"name": choice.name}}
    else:
        mapped = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
    return mapped, not choice.disable_parallel_tool_use


def chat_request(body: CountTokensRequest) -> ChatCompletionRequest:
    tool_choice, parallel = chat_tool_choice(body)
    fields: dict[str, Any] = {
        "model": body.model, "messages": chat_messages(body), "tools": chat_tools(body),
        "tool_choice": tool_choice, "parallel_tool_calls": parallel,
    }
    thinking = body.thinking
    if thinking is not None:
        fields["return_thinking"] = thinking.type != "disabled"
        if thinking.type == "disabled":
            fields["reasoning_effort"] = "none"  # a native reasoning model's template turns its thinking off
    config = body.output_config
    if config is not None and config.format is not None:
        fields["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": config.format.schema_}}
    if config is not None and config.effort is not None and fields.get("reasoning_effort") is None:
        fields["reasoning_effort"] = {"xhigh": "high", "max": "high"}.get(config.effort, config.effort)
    if isinstance(body, MessagesRequest):
        fields.update(max_tokens=body.max_tokens, temperature=body.temperature, top_p=body.top_p,
                      top_k=body.top_k or 0, stop=body.stop_sequences, stream=body.stream)
        if body.thinking_template is not None:
            fields["thinking_template"] = body.thinking_template
            if thinking is not None and thinking.budget_tokens:
                fields["thinking_max_tokens"] = thinking.budget_tokens
    try:
        return ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        problem = error.errors()[0]
        where = ".".join(str(part) for part in problem["loc"])
        raise InvalidRequest(f"{where}: {problem['msg']}", param=where) from None


def tool_use_id(call_id: str) -> str:
    return "toolu_" + call_id.removeprefix("call_")


def _usage(chat_usage: dict[str, Any]) -> dict[str, int]:
    cached = chat_usage["prompt_tokens_details"]["cached_tokens"]
    return {"input_tokens": chat_usage["prompt_tokens"] - cached, "output_tokens": chat_usage["completion_tokens"],
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def _stop(finish_reason: str | None, stop_string: str | None) -> tuple[str, str | None]:
    if finish_reason in STOP_REASONS:
        return STOP_REASONS[finish_reason], None
    return ("stop_sequence", stop_string) if stop_string else ("end_turn", None)


def _served(request: Request, model_name: str) -> ServedModel:
    return request.app.state.registry.get(model_name)


@router.post("/v1/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, request: Request):
    model = _served(request, body.model)
    chat = chat_request(body)
    return {"input_tokens": len(model.tokenize_prompt(chat_prompt_text(model, chat, tool_plan(model, chat))))}


@router.post("/v1/messages")
async def create_message(body: MessagesRequest, request: Request):
    model = _served(request, body.model)
    chat = start_chat(model, chat_request(body))
    message_id = f"msg_{secrets.token_hex(12)}"
    if body.stream:
        return sse_response(stream_events(chat, body, message_id), chat.runs, request)
    result = await complete(chat.runs, chat.outputs, chat.header, chat.n_prompt, False, chat.verification)
    choice, output = result["choices"][0], chat.outputs[0]
    content: list[dict[str, Any]] = []
    if output.reasoning and output.return_thinking:
        content.append({"type": "thinking", "thinking": output.reasoning, "signature": sign(output.reasoning)})
    if choice["message"]["content"]:
        content.append({"type": "text", "text": choice["message"]["content"]})
    for call in choice["message"].get("tool_calls") or []:
        content.append({"type": "tool_use", "id": tool_use_id(call["id"]), "name": call["function"]["name"],
                        "input": json.loads(call["function"]["arguments"])})
    stop_reason, stop_sequence = _stop(choice["finish_reason"], output.stop_string)
    return {"id": message_id, "type": "message", "role": "assistant", "model": body.model, "content": content,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": _usage(result["usage"])}


class BlockWriter:
    """Anthropic's content-block events from chat deltas: one block open at a time, each closed before the next."""

    def __init__(self) -> None:
        self.index = -1
        self.kind: str | None = None
        self.thinking = ""

    def open(self, kind: str, block: dict[str, Any]) -> list[dict[str, Any]]:
        events = self.close()
        self.index += 1
        self.kind = kind
        return events + [{"type": "content_block_start", "index": self.index, "content_block": block}]

    def close(self) -> list[dict[str, Any]]:
        if self.kind is None:
            return []
        events = []
        if self.kind == "thinking":
            events.append(self._delta({"type": "signature_delta", "signature": sign(self.thinking)}))
            self.thinking = ""
        self.kind = None
        return events + [{"type": "content_block_stop", "index": self.index}]

    def _delta(self, delta: dict[str, Any]) -> dict[str, Any]:
        return {"type": "content_block_delta", "index": self.index, "delta": delta}

    def feed(self, delta: dict[str, Any]) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        if delta.get("reasoning_content"):
            if self.kind != "thinking":
                events += self.open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            self.thinking += delta["reasoning_content"]
            events.append(self._delta({"type": "thinking_delta", "thinking": delta["reasoning_content"]}))
        if delta.get("content"):
            if self.kind != "text":
                events += self.open("text", {"type": "text", "text": ""})
            events.append(self._delta({"type": "text_delta", "text": delta["content"]}))
        for call in delta.get("tool_calls") or []:
            if "id" in call:  # a call's first delta
                events += self.open("tool_use", {"type": "tool_use", "id": tool_use_id(call["id"]),
                                                 "name": call["function"]["name"], "input": {}})
            if call["function"].get("arguments"):
                events.append(self._delta({"type": "input_json_delta", "partial_json": call["function"]["arguments"]}))
        return events


async def stream_events(chat: ChatStart, body: MessagesRequest, message_id: str) -> AsyncIterator[dict[str, Any]]:
    yield {"type": "message_start", "message": {
        "id": message_id, "type": "message", "role": "assistant", "model": body.model, "content": [],
        "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": chat.n_prompt, "output_tokens": 0, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0},
    }}
    yield {"type": "ping"}
    blocks = BlockWriter()
    finish_reason, usage = None, None
    async for chunk in stream_chunks(chat.runs, chat.outputs, chat.header, chat.n_prompt, True, False, chat.verification):
        usage = chunk.get("usage") or usage
        for choice in chunk["choices"]:
            for event in blocks.feed(choice["delta"]):
                yield event
            finish_reason = choice["finish_reason"] or finish_reason
    for event in blocks.close():
        yield event
    stop_reason, stop_sequence = _stop(finish_reason, chat.outputs[0].stop_string)
    yield {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
           "usage": _usage(usage)}
    yield {"type": "message_stop"}
