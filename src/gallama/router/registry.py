"""The models this server serves, by name."""

from __future__ import annotations

from gallama.protocol.errors import ModelNotFound
from gallama.router.served_model import ServedModel


class ModelRegistry:
    def __init__(self) -> None:
        self._models: dict[str, ServedModel] = {}

    def add(self, model: ServedModel) -> None:
        self._models[model.name] = model

    def get(self, name: str) -> ServedModel:
        try:
            return self._models[name]
        except KeyError:
            raise ModelNotFound(name) from None

    def all(self) -> list[ServedModel]:
        return list(self._models.values())

    def close(self) -> None:
        for model in self._models.values():
            model.close()
        self._models.clear()
