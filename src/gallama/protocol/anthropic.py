"""Anthropic Messages request bodies (POST /v1/messages, /v1/messages/count_tokens), as pydantic models.

Unknown fields are refused, as on every gallama API; the fields Anthropic's clients send that
gallama cannot act on are listed and accepted only where doing nothing is what Anthropic's API
does for a model without that feature (see README, "Anthropic Messages").
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import ConfigDict, Field

from gallama.protocol.requests import MAX_MESSAGES, MAX_STOP_STRINGS, MAX_TOOLS, TOOL_NAME_PATTERN, BoundedSchema, StrictModel


class Block(StrictModel):
    # Prompt caching is automatic here (a prefix cache): the marker is accepted and needs nothing.
    cache_control: dict[str, Any] | None = None


class TextBlock(Block):
    type: Literal["text"]
    text: str
    citations: list[dict[str, Any]] | None = None


class ImageBlock(Block):
    type: Literal["image", "document"]
    source: dict[str, Any]
    title: str | None = None
    context: str | None = None
    citations: dict[str, Any] | None = None


class ToolUseBlock(Block):
    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


class ToolResultBlock(Block):
    type: Literal["tool_result"]
    tool_use_id: str
    content: str | list[Union[TextBlock, ImageBlock]] | None = None
    is_error: bool = False


class ThinkingBlock(Block):
    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Block):
    type: Literal["redacted_thinking"]
    data: str


ContentBlock = Annotated[
    Union[TextBlock, ImageBlock, ToolUseBlock, ToolResultBlock, ThinkingBlock, RedactedThinkingBlock],
    Field(discriminator="type"),
]


class Message(StrictModel):
    # "system": Claude Code's mid-conversation system messages (beta mid-conversation-system-2026-04-07).
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlock]


class ToolDefinition(StrictModel):
    # A server tool (web_search_..., code_execution_..., bash_..., text_editor_...) has a type of its own.
    model_config = ConfigDict(extra="allow")

    type: str | None = None
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    input_schema: Annotated[dict[str, Any], BoundedSchema] | None = None
    cache_control: dict[str, Any] | None = None


class ToolChoice(StrictModel):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = None
    disable_parallel_tool_use: bool = False


class ThinkingConfig(StrictModel):
    type: Literal["enabled", "disabled", "adaptive"]
    budget_tokens: int | None = Field(default=None, ge=1)


class OutputFormat(StrictModel):
    type: Literal["json_schema"]
    schema_: Annotated[dict[str, Any], BoundedSchema] = Field(alias="schema")


class OutputConfig(StrictModel):
    format: OutputFormat | None = None
    # How much the model thinks: a native reasoning model's template reads it as chat's reasoning_effort.
    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None


class CountTokensRequest(StrictModel):
    model: str
    messages: list[Message] = Field(min_length=1, max_length=MAX_MESSAGES)
    system: str | list[TextBlock] | None = None
    tools: list[ToolDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    # Automatic prompt caching: a prefix cache does it here for every request.
    cache_control: dict[str, Any] | None = None
    # Claude Code's context editing: Anthropic applies it only past a trigger (by default 100k input
    # tokens), more than any context here holds; below it nothing is edited, as here.
    context_management: dict[str, Any] | None = None


class MessagesRequest(CountTokensRequest):
    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = Field(default=None, max_length=MAX_STOP_STRINGS)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    metadata: dict[str, Any] | None = None  # user_id: for Anthropic's abuse detection; nothing to do here
    stream: bool = False
    # gallama's own: an XML thinking template that guides the thinking (see README, "Thinking").
    thinking_template: str | None = None
