"""One KV buffer per layer for every sequence of the engine: a slot (a row of the buffer) per sequence.

A forward pass names the rows it runs (`SlotCache.plan`): each row's slot and the position of
its first new token. The layers write the new keys and values into those slots in place and
attend over the rows' slots as they are, so a step copies no sequence's cache (stacking
per-sequence caches copied every sequence's whole KV twice a step, which made 8 streams slower
than running them one after another). Rows of unequal length share one attention width: the
mask (`attention_masks`) hides what lies past each row's own tokens, including what an earlier
occupant of the slot left there (zeros at first: never NaN, which a masked product would spread).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

GROWTH = 256  # buffer positions added at a time: reallocation is rare, memory follows the longest sequence


@dataclass(frozen=True)
class StepPlan:
    slots: torch.Tensor  # each row's slot
    starts: torch.Tensor  # the position of each row's first new token
    new_tokens: int  # tokens each row adds in this pass
    contiguous: bool  # the slots are consecutive and ascending, so a row range is a view
    width: int  # the attention's key length: up to the furthest row's last new token
    _placed: dict = field(default_factory=dict, compare=False, repr=False)

    def on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """`slots` and `starts` on `device`, copied there once a step: every layer's keys and values
        index with them, and a copy from host memory to a GPU waits for the GPU's queued work."""
        placed = self._placed.get(device)
        if placed is None:
            placed = self._placed[device] = (self.slots.to(device), self.starts.to(device))
        return placed


class SlotCache(Cache):
    def __init__(self, num_layers: int, slots: int, max_length: int):
        self.slots = slots
        self.max_length = max_length
        self.step: StepPlan | None = None
        super().__init__(layers=[_SlotLayer(self) for _ in range(num_layers)])

    def plan(self, slots: list[int], starts: list[int], new_tokens: int) -> StepPlan:
        """Sets the rows of the next forward pass."""
        if new_tokens > 1 and len(slots) > 1:
            raise ValueError("several new tokens per row: one row at a time")
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        # the width once a step: every layer asks for it several times
        self.step = StepPlan(torch.tensor(slots), torch.tensor(starts), new_tokens, contiguous,
                             width=max(starts) + new_tokens)
        return self.step

    def copy_slot(self, source: int, target: int, length: int) -> None:
        """Moves a sequence's first `length` positions to another slot."""
        for layer in self.layers:
            if layer.is_initialized:
                layer.keys[target, :, :length] = layer.keys[source, :, :length]
                layer.values[target, :, :length] = layer.values[source, :, :length]

    def release_memory(self) -> None:
        """Drops the buffers (no sequence left); the next pass allocates them anew."""
        for layer in self.layers:
            layer.is_initialized = False
            layer.keys = layer.values = None

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return 0 if self.step is None else self.step.width - self.step.new_tokens


class _SlotLayer(CacheLayerMixin):
    is_sliding = False  # the buffer keeps every position; a sliding window is the mask's job

    def __init__(self, cache: SlotCache):
        super().__init__()
        self._cache = cache

    def lazy_initialization(self, key_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        self.keys = self.values = None
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor,
               cache_kwargs: dict[str, Any] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states)
        step = self._cache.step
        self._reserve(key_states, step.width)
        _write(self.keys, key_states, step)
        _write(self.values, value_states, step)
        return _read(self.keys, step), _read(self.values, step)

    def _reserve(self, like: torch.Tensor, width: int) -> None:
        capacity = 0 if self.keys is None else self.keys.shape[2]
        if width <= capacity:
            return
        grown = min(max(width, capacity + GROWTH), self._cache.max_length)
        shape = (self._cache.slots, like.shape[1], grown, like.shape[3])
        keys, values = (torch.zeros(shape, dtype=like.dtype, device=like.device) for _ in range(2))
        if capacity:
            keys[:, :, :capacity] = self.keys
            values[:, :, :capacity] = self.values
        self.keys, self.values = keys, values

    def get_mask_sizes(self, cache_position: torch.Tensor) -> tuple[int, int]:
        return self._cache.step.width, 0

    def get_seq_length(self) -> int:
        return self._cache.get_seq_length()

    def get_max_cache_shape(self) -> int:
        return self._cache.max_length


def _write(buffer: torch.Tensor, new: torch.Tensor, step: StepPlan) -> None:
    if step.new_tokens == 1:
        slots, starts = step.on(buffer.device)
        buffer[slots, :, starts] = new[:, :, 0]
    else:
        start = int(step.starts[0])
        buffer[int(step.slots[0]), :, start : start + step.new_tokens] = new[0]


def _read(buffer: torch.Tensor, step: StepPlan) -> torch.Tensor:
    if step.contiguous:
        first = int(step.slots[0])
        return buffer[first : first + len(step.slots), :, : step.width]
    return buffer[step.on(buffer.device)[0], :, : step.width]


def attention_mask(step: StepPlan, config: Any, dtype: torch.dtype,
                   device: torch.device | str = "cpu") -> torch.Tensor | dict[str, torch.Tensor]:
    """The model's attention mask for a step, additive, [rows, 1, new tokens, width]: each new token sees
    its own row's positions up to itself, and within the window on sliding-window layers. A model with
    `layer_types` takes a mask per kind of layer; another one mask, sliding if all its layers are."""
    positions = (step.starts[:, None] + torch.arange(step.new_tokens)[None, :])[:, :, None]
    keys = torch.arange(step.width)[None, None, :]
    full = keys <= positions
    window = getattr(config, "sliding_window", None)
    sliding = full & (keys > positions - window) if window else full
    if "sliding_attention" in (getattr(config, "layer_types", None) or []):
        return {"full_attention": _additive(full, dtype, device), "sliding_attention": _additive(sliding, dtype, device)}
    return _additive(sliding, dtype, device)


def _additive(visible: torch.Tensor, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    return torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)[:, None].to(device)
