"""Loading a model with transformers: a folder with config.json, or a GGUF file (dequantized)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gallama.engines.transformers import attention
from gallama.engines.transformers.placement import device_map_options, dtype_name

# Control tokens that end a turn in common chat templates: llama.cpp treats them as end of
# generation too, so both backends stop at the same place.
END_OF_TURN_TEXTS = frozenset({"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>"})


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    add_bos: bool  # whether a prompt starts with the BOS token, as the model was trained


def load(path: str, threads: int | None, gpus: list[float] | None = None, dtype: str | None = None) -> LoadedModel:
    if threads:
        torch.set_num_threads(threads)
    folder, gguf_file = (os.path.dirname(path), os.path.basename(path)) if path.endswith(".gguf") else (path, None)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    if gguf_file:
        _plain_byte_level_decoder(tokenizer)
    placement = device_map_options(gpus, _available_host_memory())
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=getattr(torch, dtype_name(dtype, on_gpu=bool(placement))),
        # on CUDA transformers' own SDPA (its kernels take a mask without the GQA copy's cost there)
        attn_implementation="sdpa" if placement else attention.register(), **placement)
    model.eval()
    add_bos = _gguf_add_bos(path) if gguf_file else _tokenizer_adds_bos(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, add_bos=add_bos)


def _available_host_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def _plain_byte_level_decoder(tokenizer: PreTrainedTokenizerBase) -> None:
    """transformers converts a GGUF's byte-level BPE with a SentencePiece-style decoder chain, in
    which llguidance does not recognize byte-level tokens (a space came out as 'Ġ'): a byte-level
    pre-tokenizer gets the byte-level decoder that belongs with it."""
    from tokenizers import decoders

    backend = tokenizer.backend_tokenizer
    if json.loads(backend.to_str()).get("pre_tokenizer", {}).get("type") == "ByteLevel":
        backend.decoder = decoders.ByteLevel()


def _tokenizer_adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a", add_special_tokens=True)["input_ids"][:1] == [bos]


def _gguf_add_bos(path: str) -> bool:
    """The GGUF's own flag (transformers' converted tokenizer always adds BOS, llama.cpp follows the flag)."""
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get("tokenizer.ggml.add_bos_token")
    return bool(field is not None and field.parts[field.data[0]][0])


def end_of_generation_ids(loaded: LoadedModel) -> frozenset[int]:
    tokenizer = loaded.tokenizer
    ids = {tokenizer.eos_token_id}
    configured = loaded.model.generation_config.eos_token_id
    ids.update(configured if isinstance(configured, list) else [configured])
    ids.update(tokenizer.convert_tokens_to_ids(text) for text in END_OF_TURN_TEXTS if text in tokenizer.get_vocab())
    return frozenset(i for i in ids if i is not None)


def weights_bytes(model: PreTrainedModel) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def placement_text(model: PreTrainedModel) -> str:
    """Where the weights are: "CPU", a device, or the devices accelerate spread the modules over."""
    devices = getattr(model, "hf_device_map", None)
    if not devices:
        return "CPU" if model.device.type == "cpu" else str(model.device)
    counts: dict[str, int] = {}
    for device in devices.values():
        name = f"cuda:{device}" if isinstance(device, int) else str(device)
        counts[name] = counts.get(name, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{name}: {count} modules" for name, count in counts.items())
