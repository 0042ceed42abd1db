"""OpenAI's Responses API over the chat core: the request, its translation into a chat request, and
the chat answer (or its stream of chunks) translated back into Responses output items and events.

Pure translation: no engine, no HTTP. Everything the chat core does (templates, tool calls enforced
by the grammar, structured output, thinking) it does here too; nothing of it is repeated.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal

from pydantic import Field, ValidationError

from gallama.agentic.constraints import ConstraintError
from gallama.agentic.custom_input import CustomInput
from gallama.protocol.errors import APIError, InvalidRequest, unsupported_parameter
from gallama.protocol.responses_lifecycle import ResponseIdentity, error_event_fields, error_object, new_item_id
from gallama.protocol.requests import MAX_MESSAGES, MAX_STOP_STRINGS, MAX_TOOLS, ChatCompletionRequest, StrictModel

# Tools that OpenAI runs on its side. gallama cannot run them: under `auto` the model is not offered them
# (as if it chose not to call them), and a tool_choice that forces one is a 400.
HOSTED_TOOL_TYPES = frozenset({
    "web_search", "web_search_preview", "web_search_preview_2025_03_11", "web_search_2025_08_26", "file_search",
    "code_interpreter", "computer_use", "computer_use_preview", "image_generation", "mcp", "local_shell", "shell",
    "apply_patch",
})
ENCRYPTED_REASONING = "reasoning.encrypted_content"
INCLUDABLE = frozenset({ENCRYPTED_REASONING})


class TextFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(StrictModel):
    format: TextFormat | None = None
    # OpenAI's knob for how long an answer runs; honoured as one line of the instructions (medium: none).
    verbosity: Literal["low", "medium", "high"] | None = None


VERBOSITY_INSTRUCTIONS = {
    "low": "Keep your answers short: say only what is needed, without preamble or repetition.",
    "high": "Give thorough, detailed answers: explain your reasoning and cover the relevant details.",
}


def instructions_with_verbosity(instructions: str | None, text: TextConfig | None) -> str | None:
    line = VERBOSITY_INSTRUCTIONS.get(text.verbosity) if text else None
    if not line:
        return instructions
    return f"{instructions}\n\n{line}" if instructions else line


class ReasoningConfig(StrictModel):
    # Beyond none (thinking off) an effort is the chat core's switch on, as in chat; Codex also sends xhigh.
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    # The model's own thinking comes back as the reasoning item's text; there is no separate summary.
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(StrictModel):
    model: str
    input: str | Annotated[list[dict[str, Any]], Field(max_length=MAX_MESSAGES)] = Field(default_factory=list)
    instructions: str | None = None
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    stop: str | list[str] | None = Field(default=None)
    metadata: dict[str, str] | None = Field(default=None, max_length=16)
    user: str | None = None
    truncation: Literal["disabled", "auto"] | None = None
    store: bool = True
    previous_response_id: str | None = None
    include: list[str] | None = None
    prompt_cache_key: str | None = None
    client_metadata: dict[str, Any] | None = None
    stream: bool = False
    # gallama's own, as on chat completions.
    thinking_template: str | None = None
    thinking_max_tokens: int | None = Field(default=None, ge=1)
    seed: int | None = None


# --- reasoning.encrypted_content: the reasoning text, sealed with the store's secret -----------------


def seal_reasoning(text: str, secret: bytes) -> str:
    """Opaque to the client and integrity-protected: AES-GCM when `cryptography` is there, else an HMAC."""
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        payload = base64.urlsafe_b64encode(text.encode()).decode()
        tag = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
        return f"h1.{payload}.{tag}"
    nonce = secrets.token_bytes(12)
    sealed = AESGCM(secret[:32]).encrypt(nonce, text.encode(), b"gallama-reasoning")
    return "g1." + base64.urlsafe_b64encode(nonce + sealed).decode()


def open_reasoning(token: str, secret: bytes) -> str:
    """The text of a sealed reasoning item; a ValueError when it was not sealed here (or was altered)."""
    kind, _, rest = token.partition(".")
    if kind == "h1":
        payload, _, tag = rest.rpartition(".")
        if not hmac.compare_digest(hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest(), tag):
            raise ValueError("its integrity check failed")
        return base64.urlsafe_b64decode(payload).decode()
    if kind == "g1":
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        try:
            raw = base64.urlsafe_b64decode(rest)
            return AESGCM(secret[:32]).decrypt(raw[:12], raw[12:], b"gallama-reasoning").decode()
        except (InvalidTag, ValueError) as error:
            raise ValueError("its integrity check failed") from error
    raise ValueError("it was not made by this server")


# --- request -> chat request ---------------------------------------------------------------------------


@dataclass
class Translation:
    chat: ChatCompletionRequest
    input_items: list[dict[str, Any]]  # this request's input, as items (a string input becomes a user message)
    not_offered: list[str]  # hosted tool types the model was not offered
    tool_names: dict[str, "ToolName"] = field(default_factory=dict)  # chat tool name -> what the client calls it
    custom: dict[str, CustomInput] = field(default_factory=dict)  # chat tool name -> a custom tool's input format
    truncate: bool = False  # truncation "auto": the oldest turns may go to fit the context
    dropped_messages: int = 0  # how many chat messages that left out


@dataclass(frozen=True)
class ToolName:
    """A tool as the client names it: a namespace's tools reach the chat core as `namespace__name`."""

    name: str
    namespace: str | None = None
    custom: bool = False  # freeform input: the call's arguments are that text, answered as a custom_tool_call


def chat_tool_name(name: str, namespace: str | None) -> str:
    return f"{namespace}__{name}" if namespace else name


def input_items(value: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": value}]}]
    return value


def _part_text(part: Any, where: str) -> str:
    if isinstance(part, str):
        return part
    if not isinstance(part, dict):
        raise InvalidRequest(f"'{where}' must be a content part object.", param=where)
    kind = part.get("type")
    if kind in ("input_text", "output_text", "text", "summary_text", "reasoning_text"):
        text = part.get("text")
        if not isinstance(text, str):
            raise InvalidRequest(f"'{where}.text' must be a string.", param=f"{where}.text")
        return text
    if kind == "refusal":
        return str(part.get("refusal", ""))
    if kind == "input_image":
        raise InvalidRequest(f"'{where}' is an image, and this model has no vision: send text only.", param=where,
                             code="unsupported_content")
    raise InvalidRequest(f"'{where}' has content type '{kind}', which is not supported here; send input_text.",
                         param=where, code="unsupported_content")


def _content_text(content: Any, where: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(f"'{where}' must be a string or a list of content parts.", param=where)
    return "".join(_part_text(part, f"{where}[{i}]") for i, part in enumerate(content))


def _string_field(item: dict[str, Any], key: str, where: str) -> str:
    value = item.get(key)
    if not isinstance(value, str):
        raise InvalidRequest(f"Missing or invalid '{where}.{key}': a string is required.", param=f"{where}.{key}")
    return value


def chat_messages(items: list[dict[str, Any]], where: str = "input", secret: bytes | None = None) -> list[dict[str, Any]]:
    """Responses items as chat messages: calls join the assistant message before them, outputs are tool messages."""
    messages: list[dict[str, Any]] = []

    def add_call(call: dict[str, Any]) -> None:
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})

    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{at}' must be an item object.", param=at)
        kind = item.get("type", "message")  # an "easy" message has no type
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "system", "developer", "assistant"):
                raise InvalidRequest(f"'{at}.role' must be user, system, developer or assistant, not {role!r}.",
                                     param=f"{at}.role")
            messages.append({"role": role, "content": _content_text(item.get("content"), f"{at}.content")})
        elif kind in ("function_call", "custom_tool_call"):
            call_id = _string_field(item, "call_id", at)
            name = chat_tool_name(_string_field(item, "name", at), item.get("namespace"))
            if kind == "function_call":
                arguments = _string_field(item, "arguments", at)
            else:
                arguments = json.dumps({"input": _string_field(item, "input", at)}, ensure_ascii=False)
            add_call({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        elif kind in ("function_call_output", "custom_tool_call_output"):
            call_id = _string_field(item, "call_id", at)
            messages.append({"role": "tool", "tool_call_id": call_id,
                             "content": _content_text(item.get("output"), f"{at}.output")})
        elif kind == "reasoning":
            # Prior thinking is accepted (and a sealed one checked) but not rendered: chat templates drop
            # the thinking of earlier turns too.
            sealed = item.get("encrypted_content")
            if sealed is not None:
                try:
                    open_reasoning(str(sealed), secret or b"")
                except ValueError as error:
                    raise InvalidRequest(f"'{at}.encrypted_content' cannot be read back: {error}.",
                                         param=f"{at}.encrypted_content", code="invalid_encrypted_content") from None
        else:
            raise InvalidRequest(f"'{at}' has type '{kind}', which is not supported here.", param=f"{at}.type",
                                 code="unsupported_item")
    return messages


def _function_tool(tool: dict[str, Any], at: str, namespace: str | None = None) -> dict[str, Any]:
    name = chat_tool_name(_string_field(tool, "name", at), namespace)
    function: dict[str, Any] = {"name": name}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    unknown = set(tool) - {"type", "name", "description", "parameters", "strict"}
    if unknown:
        raise InvalidRequest(f"Unrecognized argument '{at}.{sorted(unknown)[0]}'.", param=f"{at}.{sorted(unknown)[0]}")
    return {"type": "function", "function": function}


def _custom_tool(tool: dict[str, Any], at: str, namespace: str | None = None) -> tuple[dict[str, Any], CustomInput]:
    """The chat tool a custom tool is offered as (for templates: one string parameter), and its input's format."""
    name = chat_tool_name(_string_field(tool, "name", at), namespace)
    fmt = tool.get("format") or {"type": "text"}
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "grammar"):
        raise InvalidRequest(f"'{at}.format' must be of type text or grammar.", param=f"{at}.format")
    custom = CustomInput()
    if fmt["type"] == "grammar":
        if fmt.get("syntax") not in ("lark", "regex"):
            raise InvalidRequest(f"'{at}.format.syntax' must be lark or regex, not {fmt.get('syntax')!r}.",
                                 param=f"{at}.format.syntax")
        custom = CustomInput(fmt["syntax"], _string_field(fmt, "definition", f"{at}.format"))
        try:
            custom.check()  # enforced token by token in the tool-call grammar; compiled here so a 400 names it
        except ConstraintError as error:
            raise InvalidRequest(f"'{at}.format.definition' does not compile: {error}", param=f"{at}.format.definition",
                                 code="invalid_grammar") from None
    function = {"name": name, "parameters": {"type": "object", "properties": {"input": {"type": "string"}},
                                             "required": ["input"], "additionalProperties": False}}
    if tool.get("description") is not None:
        function["description"] = tool["description"]
    return {"type": "function", "function": function}, custom


@dataclass
class ChatTools:
    """A Responses request's tools as the chat core takes them."""

    offered: list[dict[str, Any]] = field(default_factory=list)  # chat tools
    not_offered: list[str] = field(default_factory=list)  # the hosted tool types left out
    names: dict[str, ToolName] = field(default_factory=dict)  # chat tool name -> the client's name of it
    custom: dict[str, CustomInput] = field(default_factory=dict)  # chat tool name -> a custom tool's input format


def chat_tools(tools: list[dict[str, Any]] | None) -> ChatTools:
    found = ChatTools()

    def add(tool: dict[str, Any], at: str, namespace: str | None = None) -> None:
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind == "function":
            chat_tool = _function_tool(tool, at, namespace)
        elif kind == "custom":
            chat_tool, custom = _custom_tool(tool, at, namespace)
            found.custom[chat_tool["function"]["name"]] = custom
        else:
            raise InvalidRequest(f"'{at}.type' must be function or custom inside a namespace.", param=f"{at}.type")
        found.offered.append(chat_tool)
        found.names[chat_tool["function"]["name"]] = ToolName(tool["name"], namespace, kind == "custom")

    for index, tool in enumerate(tools or []):
        at = f"tools[{index}]"
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind in ("function", "custom"):
            add(tool, at)
        elif kind == "namespace":
            namespace = _string_field(tool, "name", at)
            inner = tool.get("tools")
            if not isinstance(inner, list) or not inner:
                raise InvalidRequest(f"'{at}.tools' must list the namespace's tools.", param=f"{at}.tools")
            for number, member in enumerate(inner):
                add(member, f"{at}.tools[{number}]", namespace)
                if tool.get("description"):  # the namespace's description, shown to the model with each tool
                    function = found.offered[-1]["function"]
                    function["description"] = f"({namespace}: {tool['description']}) {function.get('description', '')}".strip()
        elif kind in HOSTED_TOOL_TYPES:
            found.not_offered.append(kind)
        else:
            raise InvalidRequest(f"'{at}.type' {kind!r} is not a tool type this server knows.", param=f"{at}.type",
                                 code="unsupported_tool")
    return found


def chat_tool_choice(choice: str | dict[str, Any] | None, names: dict[str, ToolName]) -> str | dict[str, Any] | None:
    if choice is None or isinstance(choice, str):
        if choice not in (None, "none", "auto", "required"):
            raise InvalidRequest(f"'tool_choice' must be none, auto, required or a tool, not {choice!r}.",
                                 param="tool_choice")
        return choice
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = choice.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("'tool_choice.name' is required.", param="tool_choice.name")
        name = chat_tool_name(name, choice.get("namespace"))
        if kind == "custom" and not (name in names and names[name].custom):
            raise InvalidRequest(f"tool_choice names the custom tool '{name}', which is not among the given tools.",
                                 param="tool_choice")
        return {"type": "function", "function": {"name": name}}
    if kind in HOSTED_TOOL_TYPES:
        raise InvalidRequest(f"tool_choice forces the hosted tool '{kind}', which this server cannot run.",
                             param="tool_choice", code="unsupported_tool")
    raise unsupported_parameter("tool_choice", f"of type {kind!r} is not supported here")


def chat_response_format(text: TextConfig | None) -> dict[str, Any] | None:
    fmt = text.format if text else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.name is None or fmt.schema_ is None:
        raise InvalidRequest("text.format of type json_schema needs a name and a schema.", param="text.format")
    schema = {"name": fmt.name, "schema": fmt.schema_, "strict": fmt.strict, "description": fmt.description}
    return {"type": "json_schema", "json_schema": {k: v for k, v in schema.items() if v is not None}}


def drop_oldest_turn(chat: ChatCompletionRequest) -> tuple[ChatCompletionRequest, int] | None:
    """truncation "auto": the request without its oldest turn (a user message and what answered it), and how many
    messages that dropped; None when only the last turn is left. System messages at the start stay."""
    messages = chat.messages
    start = next((i for i, m in enumerate(messages) if m.role not in ("system", "developer")), len(messages))
    following_user = next((i for i in range(start + 1, len(messages)) if messages[i].role == "user"), None)
    if following_user is None:
        return None
    kept = messages[:start] + messages[following_user:]
    return chat.model_copy(update={"messages": kept}), following_user - start


def check_honoured(body: ResponsesRequest) -> None:
    """A 400 naming any accepted parameter whose value this server cannot honour."""
    for value in body.include or []:
        if value not in INCLUDABLE:
            raise InvalidRequest(f"include value '{value}' is not supported; this server can include: "
                                 f"{', '.join(sorted(INCLUDABLE))}.", param="include", code="unsupported_parameter")
    if isinstance(body.stop, list) and len(body.stop) > MAX_STOP_STRINGS:
        raise InvalidRequest(f"at most {MAX_STOP_STRINGS} stop strings are allowed", param="stop")
    if body.reasoning and body.reasoning.summary and body.reasoning.generate_summary:
        raise InvalidRequest("give reasoning.summary or reasoning.generate_summary, not both", param="reasoning")


def translate(body: ResponsesRequest, history: list[dict[str, Any]] | None = None,
              secret: bytes | None = None) -> Translation:
    """The chat request that answers this Responses request (after `history`, a stored conversation)."""
    check_honoured(body)
    items = input_items(body.input)
    if not items and not history:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input")
    messages = chat_messages(history or [], "previous_response", secret) + chat_messages(items, "input", secret)
    instructions = instructions_with_verbosity(body.instructions, body.text)
    if instructions:
        messages.insert(0, {"role": "system", "content": instructions})
    if not messages:
        raise InvalidRequest("The input holds no message to answer.", param="input")
    tools = chat_tools(body.tools)
    effort = body.reasoning.effort if body.reasoning else None
    fields: dict[str, Any] = {
        "model": body.model,
        "messages": messages,
        "tools": tools.offered or None,
        "tool_choice": chat_tool_choice(body.tool_choice, tools.names),
        "parallel_tool_calls": body.parallel_tool_calls,
        "response_format": chat_response_format(body.text),
        "max_completion_tokens": body.max_output_tokens,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stop,
        "user": body.user,
        "seed": body.seed,
        "reasoning_effort": {"xhigh": "high"}.get(effort, effort),
        "thinking_template": body.thinking_template,
        "thinking_max_tokens": body.thinking_max_tokens,
        "return_thinking": True,
        "stream": body.stream,
    }
    try:
        chat = ChatCompletionRequest.model_validate({k: v for k, v in fields.items() if v is not None})
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()))
        raise InvalidRequest(f"Invalid request ({where}): {first.get('msg')}", param=where or None) from None
    return Translation(chat, items, tools.not_offered, tools.names, tools.custom, truncate=body.truncation == "auto")


# --- chat answer -> Responses output -----------------------------------------------------------------


def reasoning_item(text: str, sealed: str | None = None, item_id: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id or new_item_id("rs"), "type": "reasoning", "summary": [],
                            "content": [{"type": "reasoning_text", "text": text}]}
    if sealed is not None:
        item["encrypted_content"] = sealed
    return item


def message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_item_id("msg"), "type": "message", "role": "assistant", "status": status,
            "content": [output_text_part(text)]}


def output_text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def call_item(call_id: str, chat_name: str, arguments: str, names: dict[str, ToolName], item_id: str | None = None,
              status: str = "completed") -> dict[str, Any]:
    tool = names.get(chat_name, ToolName(chat_name))
    namespace = {"namespace": tool.namespace} if tool.namespace else {}
    if tool.custom:
        return {"id": item_id or new_item_id("ctc"), "type": "custom_tool_call", "status": status, "call_id": call_id,
                "name": tool.name, **namespace, "input": arguments}
    return {"id": item_id or new_item_id("fc"), "type": "function_call", "status": status, "call_id": call_id,
            "name": tool.name, **namespace, "arguments": arguments}


def response_usage(chat_usage: dict[str, Any] | None, reasoning_tokens: int) -> dict[str, Any] | None:
    if chat_usage is None:
        return None
    output_tokens = chat_usage["completion_tokens"]
    return {
        "input_tokens": chat_usage["prompt_tokens"],
        "input_tokens_details": {"cached_tokens": chat_usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": min(reasoning_tokens, output_tokens)},
        "total_tokens": chat_usage["total_tokens"],
    }


class ResponseShell:
    """The fields of one response object that do not depend on what the model wrote."""

    def __init__(self, body: ResponsesRequest, translation: Translation, model: str, secret: bytes | None = None,
                 identity: ResponseIdentity | None = None):
        self.body = body
        self.translation = translation
        identity = identity or ResponseIdentity.new()
        self.id = identity.id
        self.created_at = identity.created_at
        self.model = model
        self.secret = secret
        self.seal = ENCRYPTED_REASONING in (body.include or [])

    def sealed(self, text: str) -> str | None:
        return seal_reasoning(text, self.secret or b"") if self.seal else None

    def response(self, status: str, output: list[dict[str, Any]], usage: dict[str, Any] | None = None,
                 error: dict[str, Any] | None = None, incomplete_reason: str | None = None) -> dict[str, Any]:
        body = self.body
        fmt = body.text.format.model_dump(by_alias=True, exclude_none=True) if body.text and body.text.format else {"type": "text"}
        response = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": error,
            "incomplete_details": {"reason": incomplete_reason} if incomplete_reason else None,
            "instructions": body.instructions,
            "max_output_tokens": body.max_output_tokens,
            "model": self.model,
            "output": output,
            "parallel_tool_calls": body.parallel_tool_calls,
            "previous_response_id": body.previous_response_id,
            "reasoning": body.reasoning.model_dump() if body.reasoning else {"effort": None, "summary": None},
            "store": body.store,
            "temperature": body.temperature if body.temperature is not None else 1.0,
            "text": {"format": fmt, "verbosity": (body.text.verbosity if body.text else None) or "medium"},
            "tool_choice": body.tool_choice or "auto",
            "tools": body.tools or [],
            "top_p": body.top_p if body.top_p is not None else 1.0,
            "truncation": body.truncation or "disabled",
            "usage": usage,
            "user": body.user,
            "metadata": body.metadata or {},
        }
        if self.translation.not_offered:
            response["tools_not_offered"] = self.translation.not_offered
        if self.translation.dropped_messages:
            response["truncated_messages"] = self.translation.dropped_messages
        return response

    def final(self, message: dict[str, Any], finish_reason: str | None, chat_usage: dict[str, Any],
              count_tokens: Callable[[str], int]) -> dict[str, Any]:
        """The response to a finished (non-streamed) chat answer."""
        incomplete = finish_reason == "length"
        output: list[dict[str, Any]] = []
        reasoning = message.get("reasoning_content") or ""
        if reasoning:
            output.append(reasoning_item(reasoning, self.sealed(reasoning)))
        calls = message.get("tool_calls") or []
        if message.get("content") or not calls:
            output.append(message_item(message.get("content") or "", "incomplete" if incomplete else "completed"))
        for call in calls:
            function = call["function"]
            output.append(call_item(call["id"], function["name"], function["arguments"], self.translation.tool_names))
        usage = response_usage(chat_usage, count_tokens(reasoning) if reasoning else 0)
        return self.response("incomplete" if incomplete else "completed", output, usage,
                             incomplete_reason="max_output_tokens" if incomplete else None)


class EventStream:
    """Chat completion chunks in, Responses stream events out (each with its sequence number)."""

    def __init__(self, shell: ResponseShell, count_tokens: Callable[[str], int]):
        self.shell = shell
        self.count_tokens = count_tokens
        self.sequence = 0
        self.output: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # the item being written
        self.calls: dict[int, dict[str, Any]] = {}  # chat tool-call index -> its item
        self.reasoning = ""
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, kind: str, **fields: Any) -> dict[str, Any]:
        event = {"type": kind, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return event

    def start(self) -> list[dict[str, Any]]:
        response = self.shell.response("in_progress", [])
        return [self.event("response.created", response=response), self.event("response.in_progress", response=response)]

    def _add(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        events = self.close()
        self.output.append(item)
        self.open = item
        # The item as announced: what is written into it later goes out in the delta events.
        return events + [self.event("response.output_item.added", output_index=len(self.output) - 1,
                                    item=copy.deepcopy(item))]

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.open["id"], "output_index": len(self.output) - 1}

    def close(self) -> list[dict[str, Any]]:
        """Ends the item being written: its done events, then the whole item."""
        item, self.open = self.open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": self.output.index(item)}
        status = "incomplete" if self.finish_reason == "length" else "completed"  # a call, too, may be cut
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events.append(self.event("response.output_text.done", **where, content_index=0, text=part["text"],
                                     logprobs=[]))
            events.append(self.event("response.content_part.done", **where, content_index=0, part=part))
            item["status"] = status
        elif item["type"] == "reasoning":
            part = item["content"][0]
            events.append(self.event("response.reasoning_text.done", **where, content_index=0, text=part["text"]))
            events.append(self.event("response.content_part.done", **where, content_index=0, part=part))
            sealed = self.shell.sealed(part["text"])
            if sealed is not None:
                item["encrypted_content"] = sealed
        elif item["type"] == "function_call":
            events.append(self.event("response.function_call_arguments.done", **where, name=item["name"],
                                     arguments=item["arguments"]))
            item["status"] = status
        elif item["type"] == "custom_tool_call":
            events.append(self.event("response.custom_tool_call_input.done", **where, input=item["input"]))
            item["status"] = status
        return events + [self.event("response.output_item.done", output_index=where["output_index"], item=item)]

    def feed(self, chunk: dict[str, Any]) -> list[dict[str, Any]]:
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        events: list[dict[str, Any]] = []
        for choice in chunk.get("choices", []):
            delta = choice.get("delta") or {}
            if delta.get("reasoning_content"):
                events += self._reasoning(delta["reasoning_content"])
            if delta.get("content"):
                events += self._text(delta["content"])
            for call in delta.get("tool_calls") or []:
                events += self._call(call)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return events

    def _reasoning(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self.open is None or self.open["type"] != "reasoning":
            item = reasoning_item("")
            events += self._add(item)
            events.append(self.event("response.content_part.added", **self._where(), content_index=0,
                                     part=dict(item["content"][0])))
        self.open["content"][0]["text"] += text
        self.reasoning += text
        return events + [self.event("response.reasoning_text.delta", **self._where(), content_index=0, delta=text)]

    def _text(self, text: str) -> list[dict[str, Any]]:
        events = []
        if self.open is None or self.open["type"] != "message":
            item = message_item("", status="in_progress")
            events += self._add(item)
            events.append(self.event("response.content_part.added", **self._where(), content_index=0,
                                     part=output_text_part("")))
        self.open["content"][0]["text"] += text
        return events + [self.event("response.output_text.delta", **self._where(), content_index=0, delta=text,
                                    logprobs=[])]

    def _call(self, call: dict[str, Any]) -> list[dict[str, Any]]:
        events = []
        function = call.get("function") or {}
        if call.get("id"):
            item = call_item(call["id"], function.get("name", ""), "", self.shell.translation.tool_names,
                             status="in_progress")
            self.calls[call["index"]] = item
            events += self._add(item)
        item = self.calls[call["index"]]
        piece = function.get("arguments") or ""
        if piece and item is self.open:
            # A custom call's arguments are its raw input.
            key, kind = ("arguments", "function_call_arguments") if item["type"] == "function_call" else \
                ("input", "custom_tool_call_input")
            item[key] += piece
            events.append(self.event(f"response.{kind}.delta", **self._where(), delta=piece))
        return events

    def finish(self) -> list[dict[str, Any]]:
        """Closes what is open and ends the stream with response.completed (status incomplete on max tokens)."""
        events = self.close()
        incomplete = self.finish_reason == "length"
        usage = response_usage(self.usage, self.count_tokens(self.reasoning) if self.reasoning else 0)
        self.final = self.shell.response("incomplete" if incomplete else "completed", self.output, usage,
                                         incomplete_reason="max_output_tokens" if incomplete else None)
        return events + [self.event("response.completed", response=self.final)]

    def fail(self, error: APIError) -> list[dict[str, Any]]:
        """Ends the stream with the error event and response.failed."""
        for item in self.output:
            if item.get("status") == "in_progress":
                item["status"] = "incomplete"
        self.final = self.shell.response("failed", self.output, error=error_object(error))
        return [self.event("error", **error_event_fields(error)), self.event("response.failed", response=self.final)]
