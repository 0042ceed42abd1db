"""The attention function the engine runs on the CPU: transformers' SDPA, but with grouped-query heads
shared inside torch's kernel under a mask too.

transformers repeats a GQA model's key and value heads (a copy of the whole KV, every layer, every
step) whenever a mask is given, for CUDA's sake; the engine always gives one (its rows have unequal
lengths), and torch's CPU kernel takes the mask with `enable_gqa` exactly as with the copies, in
less than half the time (SmolLM2, 8 rows, 200 positions).
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, AttentionMaskInterface
from transformers.masking_utils import sdpa_mask

NAME = "gallama_sdpa_gqa"


def register() -> str:
    """Makes the function available to `from_pretrained(attn_implementation=NAME)`; returns NAME."""
    AttentionInterface.register(NAME, sdpa_gqa)
    AttentionMaskInterface.register(NAME, sdpa_mask)  # masks built by transformers (generate) stay SDPA's
    return NAME


def sdpa_gqa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
             attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
             is_causal: bool | None = None, **kwargs) -> tuple[torch.Tensor, None]:
    if attention_mask is not None:
        attention_mask = attention_mask[:, :, :, : key.shape[-2]]
    if is_causal is None:
        is_causal = query.shape[2] > 1 and attention_mask is None and getattr(module, "is_causal", True)
    output = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.transpose(1, 2).contiguous(), None
