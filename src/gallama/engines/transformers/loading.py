"""Loading a model with transformers: a folder with config.json, or a GGUF file (dequantized)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from gallama.engines.transformers import attention

# Control tokens that end a turn in common chat templates: llama.cpp treats them as end of
# generation too, so both backends stop at the same place.
END_OF_TURN_TEXTS = frozenset({"<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<end_of_turn>", "<|end|>"})


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    add_bos: bool  # whether a prompt starts with the BOS token, as the model was trained


def load(path: str, threads: int | None) -> LoadedModel:
    if threads:
        torch.set_num_threads(threads)
    folder, gguf_file = (os.path.dirname(path), os.path.basename(path)) if path.endswith(".gguf") else (path, None)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    if gguf_file:
        _plain_byte_level_decoder(tokenizer)
    # fp32 on a CPU: its bf16 matrix kernels are no faster without AMX, and fp32 keeps argmax close to llama.cpp's.
    model = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=gguf_file, dtype=torch.float32, attn_implementation=attention.register())
    model.eval()
    add_bos = _gguf_add_bos(path) if gguf_file else _tokenizer_adds_bos(tokenizer)
    return LoadedModel(model=model, tokenizer=tokenizer, add_bos=add_bos)


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
