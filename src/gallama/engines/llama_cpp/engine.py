"""llama.cpp backend: one model, one context, continuous batching.

A single engine thread owns the llama.cpp context. Each step it builds one batch
holding the next token of every decoding sequence plus a chunk of prompt for
sequences still prefilling, runs one `llama_decode`, and samples a token for
each sequence that produced logits. Requests join and leave between steps.
ctypes releases the GIL inside `llama_decode`, so the HTTP loop keeps serving.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import llama_cpp
import llguidance
import numpy as np
from llguidance.llamacpp import lltokenizer_from_vocab

from gallama.engines.base import (
    EngineCounters, EngineError, GenerationRequest, ModelFacts, SpecialTokens, TokenEvent,
)
from gallama.engines.engine_thread import EngineThread
from gallama.engines.draft_budget import AcceptanceRate, StepCost, draft_lengths
from gallama.engines.llama_cpp.batch import TokenBatch
from gallama.engines.llama_cpp.draft_model import DraftModel
from gallama.engines.llama_cpp.gpu_split import describe_placement
from gallama.engines.llama_cpp.prompt_cache import KeptLogits, PromptCache, default_prompt_cache_mb
from gallama.engines.llama_cpp.setup import (
    copies_by_stream, copy_sequence, describe_kv, flash_attention_for, load_model, load_sequence, new_context, plan_gpus,
    save_sequence, token_pieces,
)
from gallama.engines.llama_cpp.slot_choice import MIN_COPIED_PREFIX, SlotChoice, choose_slot, reusable_prefix
from gallama.engines.ngram import NgramDrafter
from gallama.engines.stream import SequenceStream
from gallama.engines.prefix import common_prefix_length, starts_with
from gallama.engines.sampling import SequenceSampler
from gallama.engines.token_events import allowed_tokens

log = logging.getLogger(__name__)

DEFAULT_SEQUENCE_CONTEXT = 4096
# A prompt is fed in chunks of at least two tokens: llama.cpp computes a one-row chunk with
# other kernels, and the prompt's cache and first token would depend on how it was chunked
# (see slot_choice.DECODED_PROMPT_TAIL).
MIN_PROMPT_CHUNK = 2


@dataclass
class _Slot:
    """A llama.cpp sequence id and the tokens its KV cache holds."""

    seq_id: int
    cached: list[int] = field(default_factory=list)
    # The logits that followed the last prompt prefilled here (a retry, a regenerated answer decodes nothing).
    kept: KeptLogits | None = field(default=None, compare=False)

    def keep(self, length: int) -> None:
        """Forgets the cached tokens past `length`."""
        del self.cached[length:]
        if self.kept is not None and length < self.kept.prompt_length:
            self.kept = None

    def hold(self, tokens: list[int]) -> None:
        """The cache holds these tokens now (copied or restored into it)."""
        self.cached = tokens
        self.kept = None

    def holds_prompt_logits(self, prompt: list[int]) -> bool:
        return self.kept is not None and self.kept.serve(self.cached, prompt)


@dataclass
class _Sequence:
    request: GenerationRequest
    emit: Callable[[TokenEvent | Exception], None]
    sampler: SequenceSampler
    reservation: int
    slot: _Slot | None = None
    pending: list[int] = field(default_factory=list)  # tokens not yet in the KV cache
    generated: int = 0
    cancelled: bool = False
    drafter: NgramDrafter | None = None
    acceptance: AcceptanceRate | None = None  # with speculation: how often its drafts were kept lately
    drafts: list[int] = field(default_factory=list)  # drafted tokens in this step's batch
    drafted: int = 0
    accepted: int = 0
    reused: int = 0  # prompt tokens found in the KV cache


class LlamaCppEngine(EngineThread):
    """An `Engine` (gallama.engines.base) on llama.cpp."""

    def __init__(
        self,
        model_path: str,
        *,
        cache_size: int | None = None,
        max_sequences: int = 8,
        queue_size: int = 64,
        n_threads: int | None = None,
        n_batch: int = 512,
        cache_quant: str | None = None,
        cache_quant_v: str | None = None,
        gpus: list[float] | None = None,
        unified_kv: bool = False,
        flash_attention: bool | None = None,
        draft_mode: str | None = None,
        num_draft_tokens: int = 5,
        draft_model_path: str | None = None,
        draft_cache_size: int | None = None,
        draft_cache_quant: str | None = None,
        draft_gpus: list[float] | None = None,
        prompt_cache_mb: float | None = None,
    ):
        if n_batch < MIN_PROMPT_CHUNK:
            raise ValueError(f"n_batch must be at least {MIN_PROMPT_CHUNK}: prompts are fed in chunks of that many tokens")
        if draft_mode not in (None, "ngram"):
            raise ValueError(f"unknown draft_mode {draft_mode!r}; this engine drafts with 'ngram' (prompt lookup)")
        if draft_mode and draft_model_path:
            raise ValueError("give either a draft model or draft_mode='ngram', not both")
        self.draft_mode = "model" if draft_model_path else draft_mode
        self.num_draft_tokens = num_draft_tokens
        self.drafted_total = 0
        self.accepted_total = 0
        self.forced_total = 0  # tokens a constraint forced, emitted without sampling
        self._step_cost = StepCost()
        # New sequences start from what drafts have been worth lately on this instance.
        self._recent_acceptance = AcceptanceRate(prior=0.6, decay=0.99)
        self.model_path = model_path
        self.placement = plan_gpus(model_path, gpus, cache_size, cache_quant, cache_quant_v)
        self._model = load_model(model_path, self.placement)
        self._vocab = llama_cpp.llama_model_get_vocab(self._model.model)
        self.vocab_size = self._model.n_vocab()
        self._pieces = token_pieces(self._model, special=False)
        metadata = self._model.metadata()
        self.chat_template = metadata.get("tokenizer.chat_template")
        bos, eos = self._model.token_bos(), self._model.token_eos()
        self.special_tokens = SpecialTokens(
            bos=bos if bos >= 0 else None, eos=eos if eos >= 0 else None,
            add_bos=metadata.get("tokenizer.ggml.add_bos_token", "false") == "true",
        )

        threads = n_threads or os.cpu_count() or 1
        per_sequence = min(self._model.n_ctx_train(), DEFAULT_SEQUENCE_CONTEXT)
        self._ctx = new_context(
            self._model, n_ctx=cache_size or per_sequence * (1 if unified_kv else max_sequences),
            max_sequences=max_sequences, n_threads=threads, n_batch=n_batch, unified_kv=unified_kv,
            cache_quant=cache_quant, cache_quant_v=cache_quant_v, flash_attention=flash_attention,
            on_gpu=self.placement is not None,
        )
        # What the load line reports: the cache's types and whether flash attention runs.
        self._kv_description = describe_kv(cache_quant, cache_quant_v, flash_attention_for(
            flash_attention, cache_quant_v or cache_quant, self.placement is not None))
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self.cache_size = llama_cpp.llama_n_ctx(self._ctx.ctx)
        self.context_length = llama_cpp.llama_n_ctx_seq(self._ctx.ctx)
        self._unified_kv = unified_kv
        self._copies_by_stream = copies_by_stream(unified_kv, self.placement is not None)
        self._copy_pending = False  # a copy between slots made in this admission pass waits for the next decode
        self._batch = TokenBatch(n_batch)
        self._draft_model = None
        if draft_model_path:
            self._draft_model = DraftModel(
                draft_model_path, main_pieces=self._special_pieces, max_sequences=max_sequences,
                context_length=self.context_length, cache_size=draft_cache_size, cache_quant=draft_cache_quant,
                n_threads=threads, n_batch=n_batch, gpus=draft_gpus, flash_attention=flash_attention,
            )

        self._slots = [_Slot(seq_id=i) for i in range(max_sequences)]
        if prompt_cache_mb is None:
            prompt_cache_mb = default_prompt_cache_mb(unified_kv, self.placement is not None)
        self._prompt_cache = PromptCache(int(prompt_cache_mb * 2**20))
        self._free_slots: deque[_Slot] = deque(self._slots)  # least recently used first
        self._start_thread(queue_size, model_path)

    # -- model facts -------------------------------------------------------

    def tokenize(self, text: str, add_special: bool = False, parse_special: bool = True) -> list[int]:
        return self._model.tokenize(text.encode("utf-8"), add_bos=add_special, special=parse_special)

    def detokenize(self, tokens: list[int]) -> str:
        return b"".join(self._pieces[token] for token in tokens).decode("utf-8", errors="replace")

    def token_bytes(self, token: int) -> bytes:
        """The token's bytes as output text; control tokens are empty."""
        return self._pieces[token]

    @cached_property
    def _special_pieces(self) -> list[bytes]:
        """Every token's text, control tokens included: for template variables and the draft's vocabulary check."""
        return token_pieces(self._model, special=True)

    def token_text(self, token: int) -> str:
        """The token's text including control tokens (for chat template variables)."""
        return self._special_pieces[token].decode("utf-8", errors="replace")

    def is_end_of_generation(self, token: int) -> bool:
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    @cached_property
    def constraint_tokenizer(self) -> llguidance.LLTokenizer:
        """llguidance's view of this vocabulary (built once; takes about a second)."""
        eog = [t for t in range(self.vocab_size) if self.is_end_of_generation(t)]
        with warnings.catch_warnings():
            # llguidance reads each token's attributes through a llama_cpp alias that warns once per token.
            warnings.simplefilter("ignore", DeprecationWarning)
            return lltokenizer_from_vocab(self._vocab, eos_token=eog or None)

    def facts(self) -> ModelFacts:
        return ModelFacts(
            context_length=self.context_length, weights_bytes=self._model.size(), cache_size=self.cache_size,
            kv_description=self._kv_description, placement=describe_placement(self.placement),
        )

    # -- requests ----------------------------------------------------------

    def generate(self, request: GenerationRequest) -> SequenceStream:
        """Queues the request now (raising EngineOverloaded if the queue is full)."""
        events, emit = self._new_events()
        sequence = _Sequence(
            request=request,
            emit=emit,
            sampler=SequenceSampler(request.sampling, self.vocab_size),
            reservation=len(request.prompt_tokens) + request.max_tokens,
            drafter=NgramDrafter(request.prompt_tokens) if self.draft_mode == "ngram" else None,
            acceptance=AcceptanceRate(prior=self._recent_acceptance.value) if self.draft_mode else None,
        )
        self._submit(sequence)
        return SequenceStream(self, sequence, events)

    def _submit(self, sequence: _Sequence) -> None:
        if sequence.reservation > self.context_length:
            raise ValueError("prompt plus max_tokens exceed the context length")
        self._enqueue(sequence)

    def counters(self) -> EngineCounters:
        return EngineCounters(
            queue_depth=len(self._waiting), running_sequences=len(self._running), drafted=self.drafted_total,
            accepted=self.accepted_total, forced=self.forced_total,
        )

    def close(self) -> None:
        self._stop_thread()
        if self._draft_model is not None:
            self._draft_model.close()
        self._ctx.close()
        self._model.close()

    # -- the engine thread -------------------------------------------------

    def _release_failed(self, sequence: _Sequence) -> None:
        self._release(sequence, keep_cache=False)

    def _drop_cancelled(self) -> None:
        for sequence in [s for s in self._running if s.cancelled]:
            self._release(sequence, keep_cache=True)
        self._waiting = deque(s for s in self._waiting if not s.cancelled)

    def _fits(self, sequence: _Sequence, slot: _Slot) -> bool:
        """Whether the sequence's reservation fits next to running work and idle caches."""
        if not self._unified_kv:
            return True  # each slot owns context_length cells
        running = sum(s.reservation for s in self._running)
        idle = sum(len(s.cached) for s in self._free_slots if s is not slot)
        return running + idle + sequence.reservation <= self.cache_size

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            sequence = self._waiting[0]
            prompt = sequence.request.prompt_tokens
            choice = choose_slot(
                self._free_slots, {s.slot.seq_id for s in self._running}, prompt, contiguous=not self._unified_kv,
            )
            slot = choice.slot
            # Evict idle caches, least recently used first, until the reservation fits.
            for victim in [s for s in self._free_slots if s is not slot and s is not choice.copy_from]:
                if self._fits(sequence, slot):
                    break
                self._save_before_losing(victim, [])
                self._truncate_slot(victim, 0)
            if not self._fits(sequence, slot):
                return  # wait for running sequences to finish
            self._waiting.popleft()
            self._free_slots.remove(slot)
            try:
                reused = self._fill_slot(slot, choice, prompt)
            except Exception as error:  # this request fails; the engine thread, and every other request, go on
                log.exception("starting a request failed")
                self._truncate_slot(slot, 0)  # what the slot holds now is unknown
                self._free_slots.append(slot)
                sequence.emit(EngineError(f"could not start the request: {error}"))
                continue
            sequence.slot = slot
            sequence.reused = reused
            sequence.pending = list(prompt[reused:])  # none: the slot kept this very prompt's logits
            self._running.append(sequence)
            if self._copy_pending:
                # Its cells move at this step's decode: a later admission of this pass could restore into
                # the copy's source (or save its target) first, and the copy would carry that conversation.
                self._copy_pending = False
                return

    def _fill_slot(self, slot: _Slot, choice: SlotChoice, prompt: list[int]) -> int:
        """Gives the slot the longest cached prefix of the prompt at hand (its own, another slot's or a
        saved one), saving a conversation it would lose first; returns the prefix's length."""
        # Logits kept for this very prompt (by the slot, a saved state or the slot copied from) spare even
        # the tail that reusable_prefix leaves to decode: the whole prompt is reused, none of it decoded.
        saved = self._prompt_cache.longest_match(prompt)
        restorable = reusable_prefix(saved.tokens, prompt) if saved else 0
        if restorable >= choice.reused + MIN_COPIED_PREFIX:
            kept = saved.holds_prompt_logits(prompt)
            length = len(prompt) if kept else restorable
            self._save_before_losing(slot, saved.tokens[:length])
            load_sequence(self._ctx, saved.state, slot.seq_id, length)
            slot.hold(saved.tokens[:length])
            if kept:
                slot.kept = saved.kept
            self._prompt_cache.take(saved, length)
            if self._draft_model is not None:
                self._draft_model.truncate(slot.seq_id, 0)  # it catches up from the tokens kept
            return length
        if choice.copy_from is not None:
            source = choice.copy_from
            # A copy made at the next decode needs one: a prompt that decoded nothing could leave it pending
            # while a later pass restores into the source.
            kept = not self._copies_at_next_decode and source.holds_prompt_logits(prompt)
            length = len(prompt) if kept else choice.reused
            self._save_before_losing(slot, source.cached[:length])
            self._copy_slot(source, slot, length)
            if kept:
                slot.kept = source.kept
            return length
        reused = len(prompt) if slot.holds_prompt_logits(prompt) else choice.reused
        self._save_before_losing(slot, slot.cached[:reused])
        self._truncate_slot(slot, reused)
        return reused

    def _save_before_losing(self, slot: _Slot, kept: list[int]) -> None:
        """Saves the slot's conversation to host memory when what it keeps (`kept`) leaves a part of it
        that no other slot and no saved state holds."""
        lost = len(slot.cached) - common_prefix_length(slot.cached, kept)
        if lost < MIN_COPIED_PREFIX or any(starts_with(s.cached, slot.cached) for s in self._slots if s is not slot):
            return
        try:
            self._prompt_cache.add(slot.cached, lambda: save_sequence(self._ctx, slot.seq_id), slot.kept)
        except Exception:  # noqa: BLE001 (unsaved, the conversation is prefilled again: no request fails for it)
            log.exception("could not save a conversation to host memory")

    @property
    def _copies_at_next_decode(self) -> bool:
        """Whether a copy between slots is llama.cpp's copy across per-sequence streams (a GPU's way), which
        moves the cells at the next llama_decode; a saved state's copy, or one in a unified cache, is done at once."""
        return self._copies_by_stream and not self._unified_kv

    def _copy_slot(self, source: _Slot, target: _Slot, length: int) -> None:
        """Gives `target` the first `length` cached tokens of `source` (whose cache stays)."""
        copy_sequence(self._ctx, source.seq_id, target.seq_id, length, by_stream=self._copies_by_stream)
        self._copy_pending = self._copies_at_next_decode
        target.hold(source.cached[:length])
        if self._draft_model is not None:
            self._draft_model.copy(source.seq_id, target.seq_id, target.cached)

    def _truncate_slot(self, slot: _Slot, length: int) -> None:
        """Keeps the first `length` cached tokens of a slot (0: forgets them), in the draft model too."""
        llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, length, -1)
        slot.keep(length)
        if self._draft_model is not None:
            # The draft reuses what the main model reuses and no more, so that a
            # repeated request drafts (and so samples) the same way each time.
            self._draft_model.truncate(slot.seq_id, length)

    def _release(self, sequence: _Sequence, keep_cache: bool) -> None:
        if sequence not in self._running:
            return
        self._running.remove(sequence)
        slot = sequence.slot
        if not keep_cache:
            self._truncate_slot(slot, 0)
        self._free_slots.append(slot)

    def _step(self, members: list[_Sequence]) -> None:
        # Decoding sequences and prompt prefills go in separate llama_decode calls:
        # llama.cpp's numerics depend on a batch's shape, and keeping a decode batch
        # free of prompt chunks makes a greedy answer the same alone and in a batch.
        # Rows in sequence-id order: with per-sequence KV streams, llama.cpp splits a
        # batch whose sequences come out of order into slower micro-batches (a
        # batch of 8 decoded 15% slower in arrival order than sorted).
        members = sorted(members, key=lambda s: s.slot.seq_id)
        unstarted = [s for s in members if not s.pending]
        if unstarted:
            for sequence in unstarted:
                self._sample_from_kept_logits(sequence)
            self._outbox.flush()  # their first tokens go out now, not after this step's decode
        decoding = [s for s in members if len(s.pending) == 1]
        prefilling = [s for s in members if len(s.pending) > 1]
        if decoding and self.draft_mode:
            self._draft(decoding)
        if decoding:
            seconds = self._decode(decoding)
            if self.draft_mode:
                self._step_cost.observe(self._batch.size, seconds)  # the rows that step decoded
        if prefilling:
            self._decode(prefilling)

    def _draft(self, decoding: list[_Sequence]) -> None:
        """Appends drafted tokens after each sequence's next token, to be verified in the same decode."""
        rooms = [
            min(
                self.num_draft_tokens,
                sequence.request.max_tokens - sequence.generated - 1,
                self.context_length - len(sequence.slot.cached) - 2,
            )
            for sequence in decoding
        ]
        rooms = draft_lengths([s.acceptance.value for s in decoding], rooms, self._step_cost)
        if self._draft_model is not None:
            proposals = self._draft_model.propose(
                [(s.slot.seq_id, s.slot.cached + s.pending, room) for s, room in zip(decoding, rooms)]
            )
        else:
            proposals = [s.drafter.propose(room) for s, room in zip(decoding, rooms)]
        for sequence, drafts in zip(decoding, proposals):
            sequence.drafts = drafts
            sequence.pending.extend(drafts)

    def _decode(self, members: list[_Sequence]) -> float:
        """Decodes the members' pending tokens and samples those that are due; returns llama_decode's seconds."""
        batch = self._batch
        batch.clear()
        outputs: list[tuple[_Sequence, list[int]]] = []  # a sequence and the batch rows of its logits
        fed: list[tuple[_Sequence, int]] = []
        for sequence in members:
            take = min(batch.room, len(sequence.pending))
            if 1 < take < len(sequence.pending) < take + MIN_PROMPT_CHUNK:
                take = len(sequence.pending) - MIN_PROMPT_CHUNK  # leave a tail the next step can take whole
            if take < min(MIN_PROMPT_CHUNK, len(sequence.pending)):
                break  # the batch is full
            chunk = sequence.pending[:take]
            whole = len(chunk) == len(sequence.pending)
            logits = "none" if not whole else "all" if sequence.drafts else "last"  # "all": verify each draft
            rows = batch.add(chunk, len(sequence.slot.cached), sequence.slot.seq_id, logits)
            fed.append((sequence, len(chunk)))
            if whole:
                outputs.append((sequence, list(rows) if sequence.drafts else [rows[-1]]))
        def forward() -> tuple[int, float]:
            started = time.perf_counter()
            status = batch.decode(self._ctx.ctx)
            # On a GPU llama_decode returns before the work is done (one row timed 0.15 ms of a 1.4 ms
            # step on an H200): the draft budget needs the whole step. On a CPU it has finished already.
            llama_cpp.llama_synchronize(self._ctx.ctx)
            return status, time.perf_counter() - started

        (status, seconds), mask_rows = self._with_masks([s for s, _ in outputs], forward)
        if status != 0:
            raise EngineError(f"llama_decode returned {status}")
        for sequence, count in fed:
            sequence.slot.cached.extend(sequence.pending[:count])
            del sequence.pending[:count]
        for sequence, rows in outputs:
            logits = [self._logits(row) for row in rows]
            if sequence.generated == 0:  # the prompt's own: kept for the same prompt again
                sequence.slot.kept = KeptLogits.of(logits[0], len(sequence.request.prompt_tokens))  # drafts may follow
            self._sample(sequence, logits, mask_rows.get(id(sequence)))
        self._outbox.flush()  # now, not after the step's other decode: these tokens are ready
        return seconds

    def _allowed(self, sequence: _Sequence, mask_row: np.ndarray | None, first: bool) -> np.ndarray | None:
        constraint = sequence.request.constraint
        if constraint is None:
            return None
        if not first:  # past a verified draft the matcher has moved on: a fresh mask
            mask_row = np.frombuffer(constraint.compute_bitmask(), dtype=np.uint8)
        return allowed_tokens(mask_row, self.vocab_size)

    def _logits(self, row: int) -> np.ndarray:
        """The last decode's logits of a batch row (a view, valid until the next decode)."""
        return np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(self._ctx.ctx, row), shape=(self.vocab_size,))

    def _sample_from_kept_logits(self, sequence: _Sequence) -> None:
        """Samples the first token of a prompt whose slot kept its logits: no decode at all."""
        constraint = sequence.request.constraint
        mask_row = None if constraint is None else np.frombuffer(constraint.compute_bitmask(), dtype=np.uint8)
        self._sample(sequence, [sequence.slot.kept.logits], mask_row)

    def _sample(self, sequence: _Sequence, rows: list[np.ndarray], mask_row: np.ndarray | None) -> None:
        """Samples the next token from the logits of its rows; with drafts, keeps each draft the model
        agrees with, then one more."""
        drafts, sequence.drafts = sequence.drafts, []
        valid = len(sequence.slot.cached) - len(drafts)  # KV cells that hold the sequence's real tokens
        verified_before, accepted_before = sequence.drafted, sequence.accepted
        for position, logits in enumerate(rows):
            allowed = self._allowed(sequence, mask_row, first=position == 0)
            if allowed is not None and not allowed.any():
                error = sequence.request.constraint.get_error()
                self._fail(sequence, EngineError(f"the constraint allows no token: {error}"))
                return
            adjusted = sequence.sampler.adjusted_logits(logits, allowed)
            if position < len(drafts):
                token, kept = sequence.sampler.verify_draft(adjusted, drafts[position])
                sequence.drafted += 1
                sequence.accepted += kept
            else:
                token, kept = sequence.sampler.choose(adjusted), False
            if not self._emit(sequence, token, logits):
                self._trim(sequence.slot, valid)
                return
            if not kept:
                break
            valid += 1
        self._learn_acceptance(sequence, sequence.drafted - verified_before, sequence.accepted - accepted_before)
        self._trim(sequence.slot, valid)  # drop the cells of drafts the model did not keep
        sequence.pending = [token]
        self._fast_forward(sequence)

    def _learn_acceptance(self, sequence: _Sequence, verified: int, kept: int) -> None:
        if sequence.acceptance is None:
            return
        sequence.acceptance.step(verified, kept)
        if verified:
            self._recent_acceptance.step(verified, kept)

    def _trim(self, slot: _Slot, length: int) -> None:
        if len(slot.cached) > length:
            llama_cpp.llama_memory_seq_rm(self._memory, slot.seq_id, length, -1)
            slot.keep(length)

    def _emit(self, sequence: _Sequence, token: int, logits: np.ndarray | None) -> bool:
        """Sends one generated token; False when the sequence ended (and was released)."""
        sequence.sampler.accept(token)
        sequence.generated += 1
        if sequence.drafter is not None:
            sequence.drafter.append(token)
        finished = self.is_end_of_generation(token)
        event = TokenEvent(token=token, piece=b"" if finished else self._pieces[token],
                           cached_prompt_tokens=sequence.reused if sequence.generated == 1 else 0)
        if not self._settle(sequence, event, finished, logits):
            return False
        if event.finish_reason is not None:
            event.drafted, event.accepted = sequence.drafted, sequence.accepted
            with self._lock:
                self.drafted_total += sequence.drafted
                self.accepted_total += sequence.accepted
                self._release(sequence, keep_cache=True)
            sequence.emit(event)
            return False
        sequence.emit(event)
        return True
