"""One token per byte, for llguidance matchers in tests: grammar checks independent of any model's vocabulary."""

from __future__ import annotations

import llguidance


class ByteTokenizer:
    eos_token_id = 256
    bos_token_id = None
    tokens = [bytes([i]) for i in range(256)] + [b"<eos>"]

    def __call__(self, text):
        return list(text)


def byte_tokenizer() -> llguidance.LLTokenizer:
    return llguidance.LLTokenizer(llguidance.TokenizerWrapper(ByteTokenizer()))
