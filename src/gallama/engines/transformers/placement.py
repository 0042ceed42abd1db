"""`gpus=` (GB per GPU) and `dtype=` turned into transformers' `from_pretrained` placement.

As for the llama.cpp backend (README "GPUs"): the GPUs with a non-zero entry hold the model, each
up to its GB less a tenth (compute buffers, the CUDA context, the KV cache's start); layers that do
not fit go to the CPU. accelerate places whole layers within those limits (`device_map="auto"`,
`max_memory`). No GPU given: everything on the CPU.
"""

from __future__ import annotations

GIB = 2**30  # gallama's "GB", as the llama.cpp backend's gpu_split reads it
WEIGHTS_SHARE = 0.9
DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def gpu_indices(gpus: list[float] | None) -> list[int]:
    return [index for index, gb in enumerate(gpus or []) if gb > 0]


def device_map_options(gpus: list[float] | None, host_bytes: int) -> dict:
    """`from_pretrained` keyword arguments: none for the CPU, else accelerate's placement within
    each GPU's budget and the host's memory (`host_bytes`) for the layers that do not fit."""
    used = gpu_indices(gpus)
    if not used:
        return {}
    max_memory: dict[int | str, int] = {index: int(gpus[index] * WEIGHTS_SHARE * GIB) for index in used}
    max_memory["cpu"] = host_bytes
    return {"device_map": "auto", "max_memory": max_memory}


def dtype_name(dtype: str | None, on_gpu: bool) -> str:
    """auto (or none): bfloat16 on a GPU, float32 on a CPU (its bf16 matrix kernels are no faster
    without AMX, and fp32 keeps greedy output close to llama.cpp's); else the named type."""
    if dtype in (None, "auto"):
        return "bfloat16" if on_gpu else "float32"
    return DTYPES[dtype]
