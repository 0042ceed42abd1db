"""The models this server serves, by name."""

from __future__ import annotations

from gallama.protocol.errors import InvalidRequest, ModelNotFound
from gallama.serving.served_embedding_model import ServedEmbeddingModel
from gallama.serving.served_model import ServedModel


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, ServedModel | ServedEmbeddingModel] = {}

    def add(self, model: ServedModel | ServedEmbeddingModel) -> None:
        self._models[model.name] = model

    def find(self, name: str) -> ServedModel | ServedEmbeddingModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def get(self, name: str) -> ServedModel:
        """A model that generates text; an embedding model is a 400."""
        model = self.find(name)
        if isinstance(model, ServedEmbeddingModel):
            raise InvalidRequest(
                f"'{name}' is an embedding model: it serves /v1/embeddings only", param="model", code="model_not_supported"
            )
        return model

    def get_embedding(self, name: str) -> ServedEmbeddingModel:
        """A model that embeds; a chat model is a 400."""
        model = self.find(name)
        if not isinstance(model, ServedEmbeddingModel):
            raise InvalidRequest(
                f"'{name}' is a chat model and does not serve embeddings; use an embedding model "
                "(one loaded with model_type=embedding)",
                param="model", code="model_not_supported",
            )
        return model

    def all(self) -> list[ServedModel | ServedEmbeddingModel]:
        return list(self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()
