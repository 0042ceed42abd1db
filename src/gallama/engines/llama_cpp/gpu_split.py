"""`gpus=` (GB of VRAM per GPU) turned into llama.cpp's placement: which GPUs, in what proportions, how many layers.

The original gallama gave ExLlama a GB budget per GPU. llama.cpp instead takes the share of
the offloaded layers each GPU gets (tensor_split), the GPU that holds a model not split at
all (main_gpu), and how many layers leave the CPU (n_gpu_layers). Each GPU's GB is its
share; the budget in all decides how many layers go: every one when the weights and the KV
cache of the offloaded layers fit, else as many whole layers as fit, the rest on the CPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

GIB = 2**30
# Kept free of the budget for what is neither weights nor KV cache: the compute buffers and the
# driver's context (a few hundred MB on CUDA), so that a budget the weights just fit is not overrun.
HEADROOM = 0.9


@dataclass(frozen=True)
class ModelSize:
    weights_bytes: int
    n_layer: int
    kv_bytes: int  # the KV cache of every layer, at the context size the model will get


@dataclass(frozen=True)
class GpuPlacement:
    n_gpu_layers: int  # llama.cpp's count: n_layer + 1 also moves the output layer, i.e. all of it
    n_layer: int
    tensor_split: tuple[float, ...]  # per GPU index, the share of the offloaded layers
    main_gpu: int
    split: bool  # layers spread over several GPUs (llama.cpp's layer split), else all on main_gpu


def place(gpus: list[float], size: ModelSize) -> GpuPlacement | None:
    """Where the model goes for `gpus` (GB per GPU); None when no GPU gets any (the CPU alone)."""
    used = [index for index, gb in enumerate(gpus) if gb > 0]
    if not used:
        return None
    budget = sum(gpus) * GIB * HEADROOM
    whole = size.weights_bytes + size.kv_bytes
    if whole <= budget:
        layers = size.n_layer + 1
    else:
        per_layer = whole / max(size.n_layer, 1)
        layers = min(size.n_layer, math.floor(budget / per_layer))
    share = sum(gpus)
    return GpuPlacement(
        n_gpu_layers=layers,
        n_layer=size.n_layer,
        tensor_split=tuple(gb / share for gb in gpus),
        main_gpu=used[0],
        split=len(used) > 1,
    )


def describe_placement(placement: GpuPlacement | None) -> str:
    if placement is None:
        return "CPU"
    gpus = ", ".join(f"GPU {i}: {share:.0%}" for i, share in enumerate(placement.tensor_split) if share > 0)
    layers = "every layer" if placement.n_gpu_layers > placement.n_layer else f"{placement.n_gpu_layers} of {placement.n_layer} layers"
    return f"{layers} on GPUs ({gpus})"
