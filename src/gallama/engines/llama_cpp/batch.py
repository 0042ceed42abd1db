"""A llama_batch backed by numpy arrays, so that filling it is a few slice writes.

`llama_batch_init` allocates one small array per row for sequence ids, which
forces a Python loop over ctypes pointers for every token; here every field is
one contiguous numpy array (sequence ids included, one per row) that the
llama_batch struct points into.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

import llama_cpp
import numpy as np

_INT_POINTER = ctypes.POINTER(ctypes.c_int32)


class TokenBatch:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self.size = 0
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.n_seq_id = np.ones(capacity, dtype=np.int32)
        self.seq_id = np.zeros(capacity, dtype=np.int32)
        self.logits = np.zeros(capacity, dtype=np.int8)
        row_bytes = self.seq_id.itemsize
        self._seq_id_rows = (_INT_POINTER * capacity)(
            *(ctypes.cast(self.seq_id.ctypes.data + i * row_bytes, _INT_POINTER) for i in range(capacity))
        )
        self._struct = llama_cpp.llama_batch(
            n_tokens=0,
            token=self.token.ctypes.data_as(_INT_POINTER),
            embd=None,
            pos=self.pos.ctypes.data_as(_INT_POINTER),
            n_seq_id=self.n_seq_id.ctypes.data_as(_INT_POINTER),
            seq_id=self._seq_id_rows,
            logits=self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8)),
        )

    @property
    def room(self) -> int:
        return self.capacity - self.size

    def clear(self) -> None:
        self.size = 0

    def add(self, tokens: Sequence[int], first_pos: int, seq_id: int, logits: str = "last") -> range:
        """Appends tokens of one sequence at consecutive positions; returns their rows.

        `logits`: which rows llama.cpp computes logits for: "last" (the next
        token), "all" (drafts to verify) or "none" (a chunk of a longer prompt).
        """
        start, end = self.size, self.size + len(tokens)
        if end > self.capacity:
            raise ValueError(f"batch overflow: {end} rows > {self.capacity}")
        self.token[start:end] = tokens
        self.pos[start:end] = np.arange(first_pos, first_pos + len(tokens), dtype=np.int32)
        self.seq_id[start:end] = seq_id
        self.logits[start:end] = 1 if logits == "all" else 0
        if logits == "last":
            self.logits[end - 1] = 1
        self.size = end
        return range(start, end)

    def decode(self, ctx) -> int:
        """Runs llama_decode over the rows added so far; returns its status."""
        self._struct.n_tokens = self.size
        return llama_cpp.llama_decode(ctx, self._struct)
