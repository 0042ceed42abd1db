"""sentence-transformers models through Infinity's torch engine.

Infinity batches the inputs of concurrent requests dynamically. It runs on an
event loop of its own, in a thread, so that its lifetime does not depend on the
HTTP server's loop (workers run uvicorn without lifespan events).
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from infinity_emb import AsyncEmbeddingEngine, EngineArgs
from transformers import AutoTokenizer

from gallama.engines.base import EngineCounters, EngineOverloaded, ModelFacts
from gallama.engines.embedding.base import EmbeddingInput, l2_normalize

BATCH_SIZE = 32  # Infinity's default: inputs per forward pass


def _max_seq_length(folder: Path, tokenizer) -> int:
    """sentence-transformers' limit (it silently cuts longer inputs), else the tokenizer's."""
    config = folder / "sentence_bert_config.json"
    if config.is_file():
        limit = json.loads(config.read_text()).get("max_seq_length")
        if limit:
            return int(limit)
    return int(min(tokenizer.model_max_length, 8192))


class InfinityEmbeddingEngine:
    """An `EmbeddingEngine` (gallama.engines.embedding.base) on Infinity's torch engine."""

    def __init__(self, model_path: str, *, n_threads: int | None = None, batch_size: int = BATCH_SIZE,
                 gpus: list[float] | None = None):
        self.model_path = model_path
        # A sentence-transformers model is small: it goes whole on the GPUs given any GB (one replica each).
        device_ids = [index for index, gb in enumerate(gpus or []) if gb > 0]
        if device_ids and not torch.cuda.is_available():
            raise ValueError(f"gpus={','.join(f'{gb:g}' for gb in gpus)} asks for a GPU, but this torch sees none "
                             f"(torch {torch.__version__}); leave out gpus or give 0")
        if n_threads:
            torch.set_num_threads(n_threads)
        # A tokenizer of our own counts and cuts inputs; Infinity's copy is private to its batcher.
        self._tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.vocab_size = len(self._tokenizer)
        self.context_length = _max_seq_length(Path(model_path), self._tokenizer)
        self._engine = AsyncEmbeddingEngine.from_args(
            EngineArgs(
                model_name_or_path=model_path, engine="torch", batch_size=batch_size,
                **({"device": "cuda", "device_id": device_ids} if device_ids else {"device": "cpu"}),
                model_warmup=False, bettertransformer=False,
            )
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="infinity", daemon=True)
        self._thread.start()
        self._call(self._engine.astart())
        self.dimensions = int(self._call(self._engine.embed(["dimensions"]))[0][0].shape[0])
        self._in_flight = 0

    def _call(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    # -- inputs ------------------------------------------------------------

    def _text(self, item: EmbeddingInput) -> str:
        """Infinity takes text: token ids are decoded (the model re-tokenizes them)."""
        if isinstance(item, str):
            return item
        return self._tokenizer.decode(item, skip_special_tokens=True)

    def count_tokens(self, items: Sequence[EmbeddingInput]) -> list[int]:
        # One call for the whole list: the fast tokenizer runs it in Rust.
        return [len(ids) for ids in self._tokenizer([self._text(item) for item in items])["input_ids"]]

    def truncate(self, item: EmbeddingInput, max_tokens: int) -> EmbeddingInput:
        """The text up to the end of its last token that fits, so the model sees the original characters."""
        text = self._text(item)
        encoding = self._tokenizer(text, return_offsets_mapping=True, return_special_tokens_mask=True)
        content = [span for span, special in zip(encoding["offset_mapping"], encoding["special_tokens_mask"]) if not special]
        room = max_tokens - (len(encoding["input_ids"]) - len(content))  # the special tokens stay
        if room >= len(content):
            return text
        return text[: content[room - 1][1]] if room > 0 else ""

    # -- requests ----------------------------------------------------------

    async def embed(self, items: Sequence[EmbeddingInput]) -> np.ndarray:
        texts = [self._text(item) for item in items]
        if self._engine.is_overloaded():
            raise EngineOverloaded()
        self._in_flight += len(texts)
        try:
            future = asyncio.run_coroutine_threadsafe(self._engine.embed(sentences=texts), self._loop)
            vectors, _ = await asyncio.wrap_future(future)
        finally:
            self._in_flight -= len(texts)
        return l2_normalize(np.stack(vectors))

    def facts(self) -> ModelFacts:
        return ModelFacts(context_length=self.context_length)

    def counters(self) -> EngineCounters:
        # Infinity queues inside its batcher: the inputs in flight count as running, none as queued.
        return EngineCounters(queue_depth=0, running_sequences=self._in_flight)

    def close(self) -> None:
        self._call(self._engine.astop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()
