"""Turning a resolved ModelSpec into a served model, inside a worker process."""

from __future__ import annotations

from pathlib import Path

from gallama.config import ModelSpec
from gallama.engines.registry import backend_named
from gallama.serving.served_embedding_model import ServedEmbeddingModel
from gallama.serving.served_model import ServedModel


def load_served(spec: ModelSpec) -> ServedModel | ServedEmbeddingModel:
    """The spec's backend loads the engine; the model's kind decides what serves it."""
    backend = backend_named(spec.backend)
    engine = backend.load(spec)
    if backend.kind == "embedding":
        return ServedEmbeddingModel(name=spec.model_name, engine=engine)
    template = Path(spec.chat_template).read_text() if spec.chat_template else None
    return ServedModel.from_engine(spec.model_name, engine, template_override=template, request_timeout=spec.request_timeout,
                                   default_max_tokens=spec.default_max_tokens)
