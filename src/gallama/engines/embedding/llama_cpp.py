"""Pooled embeddings from a GGUF model through llama.cpp.

A context of its own with `embeddings = true` and a pooling type (the model's,
or mean pooling for a chat model that has none). One engine thread packs the
inputs of every waiting request, as separate sequences, into one `llama_decode`
and reads one pooled vector per sequence.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import llama_cpp
import numpy as np
from llama_cpp import _internals

from gallama.engines.base import EngineCounters, EngineError, EngineOverloaded, ModelFacts
from gallama.engines.embedding.base import EmbeddingInput, l2_normalize
from gallama.engines.llama_cpp.setup import load_model, plan_gpus

log = logging.getLogger(__name__)

MAX_BATCH_TOKENS = 1024  # tokens in one decode: also the longest input
MAX_BATCH_SEQUENCES = 32
MAX_QUEUED_INPUTS = 8192  # beyond this a request is turned away (429) rather than queued


@dataclass
class _Job:
    """One request's inputs; `done` runs on the engine thread once every row is filled."""

    token_lists: list[list[int]]
    done: Callable[[np.ndarray | Exception], None]
    rows: np.ndarray
    next_item: int = 0  # inputs before this one are handed to a decode
    filled: int = 0


@dataclass
class _Batch:
    items: list[tuple[_Job, int]] = field(default_factory=list)
    tokens: int = 0


class LlamaCppEmbeddingEngine:
    """An `EmbeddingEngine` (gallama.engines.embedding.base) on llama.cpp."""

    def __init__(self, model_path: str, *, n_threads: int | None = None, gpus: list[float] | None = None):
        self.model_path = model_path
        self._model = load_model(model_path, plan_gpus(model_path, gpus, MAX_BATCH_TOKENS))
        self.vocab_size = self._model.n_vocab()
        self.dimensions = llama_cpp.llama_model_n_embd(self._model.model)
        self.context_length = min(self._model.n_ctx_train(), MAX_BATCH_TOKENS)

        threads = n_threads or os.cpu_count() or 1
        params = llama_cpp.llama_context_default_params()
        # Every input of a decode must lie whole in one micro-batch for pooling.
        params.n_ctx = params.n_batch = params.n_ubatch = self.context_length
        params.n_seq_max = MAX_BATCH_SEQUENCES
        params.kv_unified = True  # sequences of any length share the cells of one decode
        params.n_threads = params.n_threads_batch = threads
        params.embeddings = True
        params.pooling_type = self._pooling_type()
        params.no_perf = True
        self._ctx = _internals.LlamaContext(model=self._model, params=params, verbose=False)
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(self.context_length, 0, 1)
        self._add_bos = self._model.metadata().get("tokenizer.ggml.add_bos_token", "true") == "true"

        self._jobs: deque[_Job] = deque()
        self._running = 0
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"embed:{os.path.basename(model_path)}", daemon=True)
        self._thread.start()

    def _pooling_type(self) -> int:
        """The model's own pooling if its GGUF names one; else mean pooling (chat models have none)."""
        metadata = self._model.metadata()
        architecture = metadata.get("general.architecture", "")
        if f"{architecture}.pooling_type" in metadata:
            return llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
        return llama_cpp.LLAMA_POOLING_TYPE_MEAN

    # -- inputs ------------------------------------------------------------

    def tokens_of(self, item: EmbeddingInput) -> list[int]:
        if isinstance(item, str):
            return self._model.tokenize(item.encode("utf-8"), add_bos=self._add_bos, special=False)
        return list(item)

    def count_tokens(self, items: Sequence[EmbeddingInput]) -> list[int]:
        return [len(self.tokens_of(item)) for item in items]

    def truncate(self, item: EmbeddingInput, max_tokens: int) -> EmbeddingInput:
        return self.tokens_of(item)[:max_tokens]

    def facts(self) -> ModelFacts:
        return ModelFacts(context_length=self.context_length, weights_bytes=self._model.size())

    # -- requests ----------------------------------------------------------

    async def embed(self, items: Sequence[EmbeddingInput]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        result: asyncio.Future = loop.create_future()

        def done(outcome: np.ndarray | Exception) -> None:
            def settle() -> None:
                if result.done():
                    return
                if isinstance(outcome, Exception):
                    result.set_exception(outcome)
                else:
                    result.set_result(outcome)

            loop.call_soon_threadsafe(settle)

        token_lists = [self.tokens_of(item) for item in items]
        if any(not tokens or len(tokens) > self.context_length for tokens in token_lists):
            raise ValueError(f"every input needs 1 to {self.context_length} tokens")
        job = _Job(token_lists, done, np.zeros((len(token_lists), self.dimensions), dtype=np.float32))
        with self._lock:
            if self._closed:
                raise EngineError("the engine is shut down")
            if self._queued_inputs() + len(token_lists) > MAX_QUEUED_INPUTS:
                raise EngineOverloaded()
            self._jobs.append(job)
            self._lock.notify()
        return l2_normalize(await result)

    def _queued_inputs(self) -> int:
        """Inputs waiting for a decode."""
        return sum(len(job.token_lists) - job.next_item for job in self._jobs)

    def counters(self) -> EngineCounters:
        return EngineCounters(queue_depth=self._queued_inputs(), running_sequences=self._running)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify()
        self._thread.join(timeout=10)
        llama_cpp.llama_batch_free(self._batch)
        self._ctx.close()
        self._model.close()

    # -- the engine thread -------------------------------------------------

    def _next_batch(self) -> _Batch:
        """Inputs of the waiting jobs, first come first served, up to the token and sequence limits."""
        batch = _Batch()
        for job in self._jobs:
            while job.next_item < len(job.token_lists) and len(batch.items) < MAX_BATCH_SEQUENCES:
                size = len(job.token_lists[job.next_item])
                if batch.tokens + size > self.context_length:
                    return batch
                batch.items.append((job, job.next_item))
                batch.tokens += size
                job.next_item += 1
        return batch

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._jobs and not self._closed:
                    self._lock.wait()
                if self._closed:
                    for job in self._jobs:
                        job.done(EngineError("the server is shutting down"))
                    return
                batch = self._next_batch()
                self._running = len(batch.items)
            try:
                self._decode(batch)
            except Exception as error:  # a failed decode ends the requests in it, not the engine
                log.exception("embedding decode failed")
                failed = {id(job): job for job, _ in batch.items}
                with self._lock:
                    self._jobs = deque(j for j in self._jobs if id(j) not in failed)
                for job in failed.values():
                    job.done(EngineError(f"embedding failed: {error}"))
            finally:
                self._running = 0

    def _decode(self, batch: _Batch) -> None:
        if self._memory:  # encoder-only models keep no cache
            llama_cpp.llama_memory_clear(self._memory, True)
        llama_batch = self._batch
        n = 0
        for seq_id, (job, index) in enumerate(batch.items):
            for position, token in enumerate(job.token_lists[index]):
                llama_batch.token[n] = token
                llama_batch.pos[n] = position
                llama_batch.n_seq_id[n] = 1
                llama_batch.seq_id[n][0] = seq_id
                llama_batch.logits[n] = True
                n += 1
        llama_batch.n_tokens = n
        status = llama_cpp.llama_decode(self._ctx.ctx, llama_batch)
        if status != 0:
            raise EngineError(f"llama_decode returned {status}")
        for seq_id, (job, index) in enumerate(batch.items):
            pointer = llama_cpp.llama_get_embeddings_seq(self._ctx.ctx, seq_id)
            if not pointer:
                raise EngineError("llama.cpp returned no pooled embedding")
            job.rows[index] = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(self.dimensions,))
            job.filled += 1
        with self._lock:
            for job in {id(j): j for j, _ in batch.items}.values():
                if job.filled == len(job.token_lists):
                    self._jobs.remove(job)
                    job.done(job.rows)
