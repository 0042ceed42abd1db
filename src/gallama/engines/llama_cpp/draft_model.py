"""Speculative decoding with a draft model: a smaller model of the same vocabulary proposes tokens.

The draft keeps its own KV cache per sequence id. Before proposing, it catches
up with the tokens the main model has kept, dropping whatever it drafted past
them, then proposes greedily (one batched decode per drafted position for all
sequences). A greedy proposal is a sure one, which is what the main model's
verification rule (`SequenceSampler.verify_draft`) assumes.
"""

from __future__ import annotations

import llama_cpp
import numpy as np

from gallama.engines.llama_cpp.setup import (
    copies_by_stream, copy_sequence, load_model, new_context, plan_gpus, token_pieces,
)
from gallama.engines.prefix import common_prefix_length
from gallama.engines.llama_cpp.batch import TokenBatch

# Models of one family often pad their vocabularies to different sizes; llama.cpp's
# own speculative decoding tolerates this much difference too.
MAX_VOCAB_SIZE_DIFFERENCE = 128


class VocabularyMismatch(ValueError):
    """The draft model tokenizes differently from the main model, so its tokens mean nothing to it."""


def vocabulary_mismatch(main: list[bytes], draft: list[bytes]) -> str | None:
    """Why a draft with token texts `draft` cannot serve a main model with `main`, or None."""
    if abs(len(main) - len(draft)) > MAX_VOCAB_SIZE_DIFFERENCE:
        return f"the main model has {len(main)} tokens and the draft model {len(draft)}"
    for token, (ours, theirs) in enumerate(zip(main, draft)):
        if ours != theirs:
            return f"token {token} is {ours!r} in the main model but {theirs!r} in the draft model"
    return None


class DraftModel:
    def __init__(
        self,
        path: str,
        *,
        main_pieces: list[bytes],
        max_sequences: int,
        context_length: int,
        cache_size: int | None,
        cache_quant: str | None,
        n_threads: int,
        n_batch: int,
        gpus: list[float] | None = None,
        flash_attention: bool | None = None,
    ):
        placement = plan_gpus(path, gpus, cache_size or context_length * max_sequences, cache_quant)
        self._model = load_model(path, placement)
        reason = vocabulary_mismatch(main_pieces, token_pieces(self._model, special=True))
        if reason:
            self._model.close()
            raise VocabularyMismatch(f"the draft model {path} does not share the main model's vocabulary: {reason}")
        self.vocab_size = self._model.n_vocab()
        self._main_vocab_size = len(main_pieces)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self._ctx = new_context(
            self._model, n_ctx=cache_size or context_length * max_sequences, max_sequences=max_sequences,
            n_threads=n_threads, n_batch=n_batch, unified_kv=False, cache_quant=cache_quant,
            flash_attention=flash_attention, on_gpu=placement is not None,
        )
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._copies_by_stream = copies_by_stream(unified_kv=False, on_gpu=placement is not None)
        self.context_length = llama_cpp.llama_n_ctx_seq(self._ctx.ctx)
        self._batch = TokenBatch(n_batch)
        self._cached: dict[int, list[int]] = {}

    def truncate(self, seq_id: int, length: int) -> None:
        """Keeps the first `length` cached tokens of a sequence (0: forgets it)."""
        llama_cpp.llama_memory_seq_rm(self._memory, seq_id, length, -1)
        del self._cached.setdefault(seq_id, [])[length:]

    def copy(self, source: int, target: int, tokens: list[int]) -> None:
        """Gives `target` the cached prefix of `source` that matches `tokens` (what the main model copied)."""
        keep = common_prefix_length(self._cached.get(source, []), tokens)
        copy_sequence(self._ctx, source, target, keep, by_stream=self._copies_by_stream)
        self._cached[target] = tokens[:keep]

    def propose(self, wanted: list[tuple[int, list[int], int]]) -> list[list[int]]:
        """For each (seq_id, tokens so far, count): up to `count` greedy tokens to follow."""
        counts = [min(count, self.context_length - len(tokens) - 1) for _, tokens, count in wanted]
        drafts: list[list[int]] = [[] for _ in wanted]
        active = [i for i, count in enumerate(counts) if count > 0]
        best = self._catch_up([wanted[i] for i in active])
        while active:
            still = []
            for i, token in zip(active, best):
                if token >= self._main_vocab_size:
                    continue  # a padding token the main model cannot verify
                drafts[i].append(token)
                if len(drafts[i]) < counts[i] and not llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    still.append(i)
            active = still
            self._batch.clear()
            rows = []
            for i in active:
                seq_id = wanted[i][0]
                cached = self._cached[seq_id]
                rows.append(self._batch.add([drafts[i][-1]], len(cached), seq_id)[-1])
                cached.append(drafts[i][-1])
            if active:
                self._decode()
            best = [self._best(row) for row in rows]
        return drafts

    def _catch_up(self, wanted: list[tuple[int, list[int], int]]) -> list[int]:
        """Brings each sequence's cache up to its tokens; returns each one's greedy next token."""
        remaining = []
        for seq_id, tokens, _ in wanted:
            cached = self._cached.setdefault(seq_id, [])
            keep = min(common_prefix_length(cached, tokens), len(tokens) - 1)  # the last token must be fed for logits
            llama_cpp.llama_memory_seq_rm(self._memory, seq_id, keep, -1)
            del cached[keep:]
            remaining.append(tokens[keep:])
        best = [-1] * len(wanted)
        while any(remaining):
            self._batch.clear()
            finishing = []
            for i, (seq_id, _, _) in enumerate(wanted):
                chunk = remaining[i][: self._batch.room]
                if not chunk:
                    continue
                finished = len(chunk) == len(remaining[i])
                rows = self._batch.add(chunk, len(self._cached[seq_id]), seq_id, "last" if finished else "none")
                if finished:
                    finishing.append((i, rows[-1]))
                self._cached[seq_id].extend(chunk)
                remaining[i] = remaining[i][len(chunk):]
            self._decode()
            for i, row in finishing:  # read now: the next chunk's decode overwrites the logits
                best[i] = self._best(row)
        return best

    def _decode(self) -> None:
        status = self._batch.decode(self._ctx.ctx)
        if status != 0:
            raise RuntimeError(f"the draft model's llama_decode returned {status}")

    def _best(self, row: int) -> int:
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, row), shape=(self.vocab_size,))
        return int(np.argmax(logits))

    def close(self) -> None:
        self._ctx.close()
        self._model.close()
