"""One forward pass over several sequences that each keep their own KV cache.

Each sequence owns a batch-of-one `DynamicCache`, so requests join and leave between steps
without touching the others. A decode step stacks the caches, padded on the left to the
longest, masks the padding out, and splits the grown cache back into the sequences' own.
Stacking copies every cache once per step; for a small model's short contexts that costs
less than a forward pass per sequence (measured in docs/architecture.md).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache


def cache_from_layers(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
    cache = DynamicCache()
    for index, (keys, values) in enumerate(layers):
        cache.update(keys, values, index)  # a layer's first update stores the tensors as they are
    return cache


def cache_layers(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def stack_caches(caches: list[DynamicCache]) -> tuple[DynamicCache, torch.Tensor, list[int]]:
    """The caches as one batch, left-padded to the longest; the attention mask over cache plus one
    new token per row, and each row's cached length."""
    lengths = [cache.get_seq_length() for cache in caches]
    longest = max(lengths)
    mask = torch.zeros(len(caches), longest + 1, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, longest - length :] = 1
    stacked = []
    for layer in range(len(caches[0].layers)):
        keys = [_pad_left(cache.layers[layer].keys, longest) for cache in caches]
        values = [_pad_left(cache.layers[layer].values, longest) for cache in caches]
        stacked.append((torch.cat(keys), torch.cat(values)))
    return cache_from_layers(stacked), mask, lengths


def split_cache(batch: DynamicCache, lengths: list[int]) -> list[DynamicCache]:
    """Each row's own cache after a step that added one token per row (its padding dropped)."""
    layers = cache_layers(batch)
    total = layers[0][0].shape[2]
    return [
        cache_from_layers([
            (keys[row : row + 1, :, total - length - 1 :].clone(), values[row : row + 1, :, total - length - 1 :].clone())
            for keys, values in layers
        ])
        for row, length in enumerate(lengths)
    ]


def _pad_left(tensor: torch.Tensor, length: int) -> torch.Tensor:
    missing = length - tensor.shape[2]
    if not missing:
        return tensor
    return torch.nn.functional.pad(tensor, (0, 0, missing, 0))
