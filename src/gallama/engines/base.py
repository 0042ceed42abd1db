"""The interface every text-generating backend implements, and the serving side is typed against.

The engine knows nothing about OpenAI, tools or thinking: it turns prompt tokens
into generated tokens under a sampling config and an optional constraint, and says
what the layers above need to know of its model (vocabulary, special tokens, chat
template, context, memory) and of its work (the counters /metrics reports).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, AsyncIterator, Protocol

if TYPE_CHECKING:  # only named in annotations: the front imports this module and needs no llguidance
    from llguidance import LLMatcher, LLTokenizer


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
    # The token's bytes as output text: empty for an end-of-generation or control token.
    piece: bytes = b""
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


class EngineError(RuntimeError):
    """The engine failed while decoding; the request cannot be completed."""


@dataclass(frozen=True)
class SpecialTokens:
    bos: int | None  # None: the model has no such token
    eos: int | None
    add_bos: bool  # the model expects a BOS token before every prompt


@dataclass(frozen=True)
class ModelFacts:
    """What the front logs about a loaded instance; None where the engine does not know it."""

    context_length: int  # the most tokens one sequence (or one embedding input) may hold
    weights_bytes: int | None = None
    cache_size: int | None = None  # KV cache tokens in all
    kv_description: str | None = None  # the KV cache's types and attention kernel, in words
    placement: str | None = None  # where the weights are: "CPU", or the GPUs' shares

    def as_dict(self) -> dict[str, int | str]:
        return {key: value for key, value in asdict(self).items() if value is not None}


@dataclass(frozen=True)
class EngineCounters:
    """The engine's side of /metrics and /health, read when asked."""

    queue_depth: int  # requests waiting for a sequence
    running_sequences: int
    drafted: int = 0  # speculative decoding: tokens drafted, and those the model kept
    accepted: int = 0
    forced: int = 0  # tokens a constraint forced, emitted without sampling


class TokenStream(Protocol):
    """The tokens of one queued request, as an async iterator."""

    def __aiter__(self) -> AsyncIterator[TokenEvent]: ...

    async def __anext__(self) -> TokenEvent: ...

    def ready(self) -> bool:
        """Whether the next event is already here (no wait)."""
        ...

    def cancel(self) -> None:
        """Stops generating for this request; its sequence is dropped at the engine's next step."""
        ...


class Engine(Protocol):
    context_length: int  # the most tokens one sequence may hold (prompt + output)
    vocab_size: int
    special_tokens: SpecialTokens
    chat_template: str | None  # the model's own chat template (Jinja source); None: it has none

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]: ...

    def detokenize(self, tokens: list[int]) -> str:
        """The tokens' output text (control tokens are empty; broken UTF-8 is replaced)."""
        ...

    def token_bytes(self, token: int) -> bytes:
        """The token's bytes as output text; control tokens are empty."""
        ...

    def token_text(self, token: int) -> str:
        """The token's text including control tokens (for chat template variables)."""
        ...

    def is_end_of_generation(self, token: int) -> bool: ...

    @property
    def constraint_tokenizer(self) -> LLTokenizer:
        """llguidance's view of the vocabulary, for grammars compiled for this model."""
        ...

    def facts(self) -> ModelFacts: ...

    def generate(self, request: GenerationRequest) -> TokenStream:
        """Queues the request now; raises EngineOverloaded if the queue is full."""
        ...

    def counters(self) -> EngineCounters: ...

    def close(self) -> None: ...
