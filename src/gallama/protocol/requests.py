"""OpenAI request bodies, as pydantic models.

Every model forbids unknown fields: a parameter is either honoured or rejected
with a 400 that names it, never accepted and ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

MAX_N = 16
MAX_STOP_STRINGS = 16


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(StrictModel):
    type: Literal["text"]
    text: str


class StreamOptions(StrictModel):
    include_usage: bool = False


TOOL_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"
MAX_TOOLS = 128
MAX_MESSAGES = 4096
LEGACY_MAX_TOKENS = 16  # OpenAI's default max_tokens for /v1/completions
# A schema is compiled into a grammar for every request that sends it; beyond this
# size compiling becomes a way to keep the server busy.
MAX_SCHEMA_BYTES = 256 * 1024


def _bounded_schema(value: Any) -> Any:
    if value is not None and not isinstance(value, bool):
        size = len(value) if isinstance(value, str) else len(json.dumps(value, separators=(",", ":")))
        if size > MAX_SCHEMA_BYTES:
            raise ValueError(f"a JSON schema may take at most {MAX_SCHEMA_BYTES} bytes; this one takes {size}")
    return value


BoundedSchema = AfterValidator(_bounded_schema)


class FunctionCall(StrictModel):
    name: str
    arguments: str  # a JSON string, as OpenAI sends it


class ToolCall(StrictModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(StrictModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None  # legacy form of one tool call
    refusal: str | None = None

    @model_validator(mode="after")
    def _content_required(self) -> "ChatMessage":
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs content")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)

    def template_entry(self) -> dict[str, Any]:
        """The message as chat templates read it (Hugging Face's keys)."""
        # Few templates know the developer role; it means what system meant before it.
        role = {"developer": "system", "function": "tool"}.get(self.role, self.role)
        entry: dict[str, Any] = {"role": role, "content": self.text()}
        if self.name is not None:
            entry["name"] = self.name
        if self.tool_call_id is not None:
            entry["tool_call_id"] = self.tool_call_id
        calls = [call.model_dump() for call in self.tool_calls or []]
        if self.function_call is not None:
            calls = [{"id": "call_0", "type": "function", "function": self.function_call.model_dump()}]
        if calls:
            entry["tool_calls"] = calls
        return entry


class FunctionDefinition(StrictModel):
    name: str = Field(pattern=TOOL_NAME_PATTERN)
    description: str | None = None
    parameters: Annotated[dict[str, Any], BoundedSchema] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class Tool(StrictModel):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(StrictModel):
    name: str


class NamedToolChoice(StrictModel):
    type: Literal["function"]
    function: NamedFunction


class JsonSchemaFormat(StrictModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    schema_: Annotated[dict[str, Any] | bool, BoundedSchema] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(StrictModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> "ResponseFormat":
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type json_schema needs a json_schema object")
        if self.type != "json_schema" and self.json_schema is not None:
            raise ValueError(f"json_schema is only allowed with type json_schema, not {self.type}")
        return self


Temperature = Annotated[float, Field(ge=0.0, le=2.0)]
Penalty = Annotated[float, Field(ge=-2.0, le=2.0)]


class SamplingFields(StrictModel):
    """Parameters shared by chat and legacy completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: Temperature | None = None
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)  # OpenAI's range: any 64-bit integer
    presence_penalty: Penalty = 0.0
    frequency_penalty: Penalty = 0.0
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    user: str | None = None
    # Extras that llama.cpp, vLLM and TabbyAPI clients send.
    top_k: int = Field(default=0, ge=0)
    min_p: float = Field(default=0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(default=1.0, gt=0.0, le=10.0)
    # Structured output: OpenAI's response_format, gallama's extras, vLLM's guided_* names.
    response_format: ResponseFormat | None = None
    regex_pattern: str | None = None
    regex_prefix_pattern: str | None = None
    grammar: str | None = None
    guided_json: Annotated[dict[str, Any] | str | None, BoundedSchema] = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    leading_prompt: str | None = None
    stop_words: list[str] | None = Field(default=None, max_length=MAX_STOP_STRINGS)
    return_stop_word: bool = False

    @field_validator("stop")
    @classmethod
    def _bounded_stops(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings are allowed")
        return value

    @field_validator("logit_bias")
    @classmethod
    def _token_ids(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key in value or {}:
            if not key.lstrip("-").isdigit() or int(key) < 0:
                raise ValueError(f"logit_bias keys must be token ids, got '{key}'")
        return value

    @model_validator(mode="after")
    def _stream_options_need_stream(self):
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    def stop_list(self) -> list[str]:
        stops = [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return stops + list(self.stop_words or [])


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=MAX_TOOLS)
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # The legacy names, mapped onto tools and tool_choice.
    functions: list[FunctionDefinition] | None = Field(default=None, max_length=MAX_TOOLS)
    function_call: Literal["none", "auto"] | NamedFunction | None = None
    # Thinking: a guided XML thinking template, or a native reasoning model's thinking.
    thinking_template: str | None = None
    return_thinking: bool = False
    thinking_max_tokens: int | None = Field(default=None, ge=1)
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    _legacy_functions: bool = PrivateAttr(default=False)  # answer in the legacy function_call shape

    @property
    def legacy_functions(self) -> bool:
        return self._legacy_functions

    @model_validator(mode="after")
    def _map_legacy_functions(self) -> "ChatCompletionRequest":
        if self.functions is not None:
            if self.tools is not None:
                raise ValueError("give tools or the legacy functions, not both")
            self.tools = [Tool(type="function", function=f) for f in self.functions]
            self.functions = None
            self.parallel_tool_calls = False  # a legacy answer holds one function_call
            self._legacy_functions = True
        if self.function_call is not None:
            if self.tool_choice is not None:
                raise ValueError("give tool_choice or the legacy function_call, not both")
            call = self.function_call
            self.tool_choice = (
                call if isinstance(call, str) else NamedToolChoice(type="function", function=NamedFunction(name=call.name))
            )
            self.function_call = None
        return self

    @model_validator(mode="after")
    def _logprobs_consistent(self) -> "ChatCompletionRequest":
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            raise ValueError("give max_tokens or max_completion_tokens, not both")
        return self

    def output_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    max_tokens: int | None = Field(default=LEGACY_MAX_TOKENS, ge=1)

    @field_validator("max_tokens")
    @classmethod
    def _null_is_the_default(cls, value):
        return LEGACY_MAX_TOKENS if value is None else value  # also for an explicit null

    @model_validator(mode="after")
    def _best_of_is_n(self) -> "CompletionRequest":
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of other than n is not supported: every generated choice is returned")
        return self

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, value):
        if isinstance(value, list) and len(value) == 0:
            raise ValueError("prompt must not be an empty list")
        if isinstance(value, list) and any(isinstance(v, list) and not v for v in value):
            raise ValueError("a token prompt must not be empty")
        return value

    def prompts(self) -> list[str | list[int]]:
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [list(self.prompt)]
        return list(self.prompt)
