"""The small interface every inference backend implements.

The engine knows nothing about OpenAI, tools or thinking: it turns prompt tokens
into generated tokens under a sampling config and an optional constraint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import AsyncIterator, Protocol

from llguidance import LLMatcher


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None


@dataclass
class GenerationRequest:
    prompt_tokens: list[int]
    max_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    # An llguidance matcher, owned by this request: the engine masks every token with it.
    constraint: LLMatcher | None = None
    top_logprobs: int | None = None  # None: no logprobs; 0..20: that many alternatives


@dataclass
class TokenEvent:
    token: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    # Set on the last event of a sequence: "stop" (end of generation token or the
    # constraint finished) or "length" (max_tokens reached).
    finish_reason: str | None = None
    # On the last event: tokens drafted for speculative decoding, and how many the model kept.
    drafted: int = 0
    accepted: int = 0
    # On the first event: prompt tokens found in the KV cache (not computed again).
    cached_prompt_tokens: int = 0


class EngineOverloaded(Exception):
    """The engine's bounded queue is full; the client should retry later."""

    def __init__(self, retry_after_s: int = 1):
        super().__init__("the model is busy: too many requests are waiting")
        self.retry_after_s = retry_after_s


class TokenStream(Protocol):
    """The tokens of one queued request, as an async iterator."""

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...

    def ready(self) -> bool: ...

    def cancel(self) -> None: ...


class Engine(Protocol):
    model_path: str
    context_length: int  # the most tokens one sequence may hold (prompt + output)
    vocab_size: int

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]: ...

    def token_bytes(self, token: int) -> bytes: ...

    def is_end_of_generation(self, token: int) -> bool: ...

    def metadata(self) -> dict[str, str]: ...

    def generate(self, request: GenerationRequest) -> "TokenStream": ...

    def close(self) -> None: ...
