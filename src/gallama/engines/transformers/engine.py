"""transformers backend: one model, continuous batching on one engine thread.

Each step runs one forward pass over the next token of every decoding sequence (each in its
own slot of one KV buffer: kv_slots.py), then a chunk of prompt for sequences still
prefilling, and samples with the shared numpy pipeline under each row's llguidance mask.
Requests join and leave between steps. torch releases the GIL in its kernels, so the
HTTP loop keeps serving.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import llguidance
import numpy as np
import torch
from llguidance.hf import from_tokenizer

from gallama.engines.base import (
    EngineCounters, EngineError, GenerationRequest, ModelFacts, SpecialTokens, TokenEvent,
)
from gallama.engines.engine_thread import EngineThread
from gallama.engines.sampling import SequenceSampler
from gallama.engines.stream import SequenceStream
from gallama.engines.token_events import allowed_tokens
from gallama.engines.transformers.kv_slots import SlotCache, attention_mask
from gallama.engines.transformers.loading import end_of_generation_ids, load, placement_text, weights_bytes

DEFAULT_SEQUENCE_CONTEXT = 4096
PREFILL_CHUNK = 256  # prompt tokens per step, so that running sequences keep decoding beside a long prompt


@dataclass
class _Sequence:
    request: GenerationRequest
    emit: Callable[[TokenEvent | Exception], None]
    sampler: SequenceSampler
    pending: list[int] = field(default_factory=list)  # tokens not yet in the KV cache
    slot: int = -1  # its row of the KV buffer, while running
    cached: int = 0  # tokens in the KV cache
    generated: int = 0
    cancelled: bool = False


class TransformersEngine(EngineThread):
    """An `Engine` (gallama.engines.base) on a transformers causal LM, on the CPU or GPUs."""

    def __init__(self, model_path: str, *, max_sequences: int = 8, queue_size: int = 64,
                 threads: int | None = None, max_seq_len: int | None = None, gpus: list[float] | None = None,
                 dtype: str | None = None):
        self.model_path = model_path
        loaded = load(model_path, threads, gpus, dtype)
        self._model, self._tokenizer = loaded.model, loaded.tokenizer
        self._device = self._model.get_input_embeddings().weight.device  # where the inputs go
        self.vocab_size = self._model.config.vocab_size  # the logits' width; the tokenizer may hold fewer
        self.chat_template = self._tokenizer.chat_template
        self._eog = end_of_generation_ids(loaded)
        self.special_tokens = SpecialTokens(
            bos=self._tokenizer.bos_token_id, eos=self._tokenizer.eos_token_id, add_bos=loaded.add_bos,
        )
        trained = getattr(self._model.config, "max_position_embeddings", None) or DEFAULT_SEQUENCE_CONTEXT
        self.context_length = max_seq_len or min(trained, DEFAULT_SEQUENCE_CONTEXT)
        self.max_sequences = max_sequences
        self.forced_total = 0
        self._cache = SlotCache(self._model.config.num_hidden_layers, max_sequences, self.context_length)
        self._slots: list[_Sequence | None] = [None] * max_sequences
        self._start_thread(queue_size, model_path)

    # -- model facts -------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        tokens = self._tokenizer(text, add_special_tokens=False, split_special_tokens=not parse_special)["input_ids"]
        if add_special and self.special_tokens.add_bos:
            return [self.special_tokens.bos, *tokens]
        return tokens

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self._pieces[token] for token in tokens).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        return self._pieces[token]

    def token_text(self, token: int) -> str:
        return self.constraint_tokenizer.decode_bytes([token]).decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return token in self._eog

    @cached_property
    def constraint_tokenizer(self) -> llguidance.LLTokenizer:
        return from_tokenizer(self._tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self._eog) or None)

    @cached_property
    def _pieces(self) -> list[bytes]:
        """Every token's bytes as output text; control tokens are empty."""
        lltok = self.constraint_tokenizer
        return [b"" if lltok.is_special_token(t) else lltok.decode_bytes([t]) for t in range(self.vocab_size)]

    def facts(self) -> ModelFacts:
        return ModelFacts(
            context_length=self.context_length, weights_bytes=weights_bytes(self._model),
            cache_size=self.context_length * self.max_sequences,
            kv_description=f"{str(self._model.dtype).removeprefix('torch.')}, a slot per sequence in one buffer a layer",
            placement=placement_text(self._model),
        )

    # -- requests ----------------------------------------------------------

    def generate(self, request: GenerationRequest) -> SequenceStream:
        """Queues the request now (raising EngineOverloaded if the queue is full)."""
        if len(request.prompt_tokens) + request.max_tokens > self.context_length:
            raise ValueError("prompt plus max_tokens exceed the context length")
        events, emit = self._new_events()
        sequence = _Sequence(request=request, emit=emit, sampler=SequenceSampler(request.sampling, self.vocab_size),
                             pending=list(request.prompt_tokens))
        self._enqueue(sequence)
        return SequenceStream(self, sequence, events)

    def counters(self) -> EngineCounters:
        return EngineCounters(queue_depth=len(self._waiting), running_sequences=len(self._running),
                              forced=self.forced_total)

    def close(self) -> None:
        self._stop_thread()

    # -- the engine thread -------------------------------------------------

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._running if s.cancelled]:
            self._release(sequence)
        self._waiting = deque(s for s in self._waiting if not s.cancelled)

    def _admit(self) -> None:
        while self._waiting and len(self._running) < self.max_sequences:
            sequence = self._waiting.popleft()
            sequence.slot = self._slots.index(None)
            self._slots[sequence.slot] = sequence
            self._running.append(sequence)

    def _release_failed(self, sequence: _Sequence) -> None:
        self._release(sequence)

    def _release(self, sequence: _Sequence) -> None:
        if sequence in self._running:
            self._running.remove(sequence)
            self._slots[sequence.slot] = None
        if not self._running:
            self._cache.release_memory()  # idle: the buffers' memory goes back until the next request

    def _compact(self) -> None:
        """Moves the sequences in the highest slots down into free ones, so that a step's rows are
        consecutive slots and read as a view of the buffer (one sequence's copy when one leaves,
        rather than a gather of every row at every step)."""
        while None in self._slots[: len(self._running)]:
            free = self._slots.index(None)
            top = max(self._running, key=lambda s: s.slot)
            self._cache.copy_slot(top.slot, free, top.cached)
            self._slots[top.slot], self._slots[free] = None, top
            top.slot = free

    def _step(self, members: list[_Sequence]) -> None:
        torch.set_grad_enabled(False)  # per thread: the engine thread runs every forward pass
        with self._lock:
            self._compact()
        decoding = sorted((s for s in members if len(s.pending) == 1), key=lambda s: s.slot)
        if decoding:
            self._decode(decoding)
        budget = PREFILL_CHUNK
        for sequence in [s for s in members if len(s.pending) > 1]:
            if budget <= 0:
                break
            take = min(budget, len(sequence.pending))
            self._prefill(sequence, take)
            budget -= take

    def _decode(self, members: list[_Sequence]) -> None:
        """One forward pass for the next token of every member."""
        tokens = torch.tensor([s.pending for s in members])
        logits = self._with_masks(members, lambda: self._logits(self._run_model(members, tokens)))
        for sequence in members:
            sequence.pending = []
        self._sample_rows(members, logits)

    def _prefill(self, sequence: _Sequence, take: int) -> None:
        chunk, sequence.pending = sequence.pending[:take], sequence.pending[take:]
        run = lambda: self._run_model([sequence], torch.tensor([chunk]), logits_to_keep=1)  # noqa: E731
        if sequence.pending:
            run()  # more prompt follows: no token to sample yet
            return
        self._sample_rows([sequence], self._with_masks([sequence], lambda: self._logits(run())))

    def _run_model(self, members: list[_Sequence], tokens: torch.Tensor, **options):
        """A forward pass of `tokens` (one row per member), each row's keys and values written into its slot."""
        new_tokens = tokens.shape[1]
        step = self._cache.plan([s.slot for s in members], [s.cached for s in members], new_tokens)
        positions = step.starts[:, None] + torch.arange(new_tokens)
        output = self._model(
            input_ids=tokens.to(self._device), position_ids=positions.to(self._device),
            cache_position=torch.arange(step.width - new_tokens, step.width, device=self._device),
            attention_mask=attention_mask(step, self._model.config, self._model.dtype, self._device),
            past_key_values=self._cache, use_cache=True, **options,
        )
        for sequence in members:
            sequence.cached += new_tokens
        return output

    @staticmethod
    def _logits(output) -> np.ndarray:
        """The last position's logits of each row, as float32 on the host."""
        return output.logits[:, -1, :].float().cpu().numpy()

    def _sample_rows(self, members: list[_Sequence], forwarded: tuple[np.ndarray, dict[int, np.ndarray]]) -> None:
        logits, masks = forwarded
        for row, sequence in enumerate(members):
            allowed = None
            if sequence.request.constraint is not None:
                allowed = allowed_tokens(masks[id(sequence)], self.vocab_size)
                if not allowed.any():
                    self._fail(sequence, EngineError(
                        f"the constraint allows no token: {sequence.request.constraint.get_error()}"))
                    continue
            token = sequence.sampler.choose(sequence.sampler.adjusted_logits(logits[row], allowed))
            if self._emit(sequence, token, logits[row]):
                sequence.pending = [token]
                self._fast_forward(sequence)
        self._outbox.flush()

    def _emit(self, sequence: _Sequence, token: int, logits: np.ndarray | None) -> bool:
        """Sends one generated token; False when the sequence ended (and was released)."""
        sequence.sampler.accept(token)
        sequence.generated += 1
        finished = self.is_end_of_generation(token)
        event = TokenEvent(token=token, piece=b"" if finished else self._pieces[token])
        if not self._settle(sequence, event, finished, logits):
            return False
        if event.finish_reason is not None:
            with self._lock:
                self._release(sequence)
        sequence.emit(event)
        return event.finish_reason is None
