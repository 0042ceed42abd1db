"""What every batching engine does with a token it generated: its event's logprobs and finish reason."""

from __future__ import annotations

import numpy as np

from gallama.engines.base import EngineError, GenerationRequest, TokenEvent
from gallama.engines.sampling import log_softmax, top_logprobs


def settle(request: GenerationRequest, event: TokenEvent, end_of_generation: bool, generated: int,
           logits: np.ndarray | None) -> None:
    """Fills in the event's logprobs and finish reason, moving the request's constraint past its token.

    Raises EngineError when the constraint rejects the token."""
    if request.top_logprobs is not None:
        logprobs = log_softmax(logits)
        event.logprob = float(logprobs[event.token])
        event.top_logprobs = top_logprobs(logprobs, request.top_logprobs)
    finished = end_of_generation
    if request.constraint is not None and not finished:
        if not request.constraint.consume_token(event.token):
            raise EngineError(f"the constraint rejected a token: {request.constraint.get_error()}")
        finished = request.constraint.is_stopped()
    if finished:
        event.finish_reason = "stop"
    elif generated >= request.max_tokens:
        event.finish_reason = "length"


def allowed_tokens(mask_row: np.ndarray, vocab_size: int) -> np.ndarray:
    """An llguidance bitmask row as one bool per token."""
    return np.unpackbits(mask_row.view(np.uint8), bitorder="little")[:vocab_size].astype(bool)
