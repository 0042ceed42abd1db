"""What a backend is to the rest of gallama: a name, the spec keys it takes, their checks and its loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

if TYPE_CHECKING:
    from gallama.config import ModelSpec

# Keys every backend takes: which model, under which name, served how.
# ray_resources places an instance on a Ray node (the front reads it), whatever its backend.
COMMON_KEYS = frozenset({"model_id", "model_name", "model_type", "backend", "ray_resources"})


class UnsupportedSpec(ValueError):
    """A spec a backend cannot serve as given; the message names the key and the backend."""


@dataclass(frozen=True)
class Backend:
    name: str  # as a spec's `backend` key names it
    kind: str  # "llm" (chat, completions) or "embedding" (/v1/embeddings)
    keys: frozenset[str]  # the spec keys it takes besides COMMON_KEYS
    # Checks a resolved spec's values and fills in what follows from them; raises UnsupportedSpec.
    check: Callable[["ModelSpec"], "ModelSpec"]
    # Whether this machine's build can run the spec (its GPUs); raises UnsupportedSpec.
    check_devices: Callable[["ModelSpec"], None]
    # Loads the model (in a worker): an Engine for kind "llm", an EmbeddingEngine for kind "embedding".
    load: Callable[["ModelSpec"], Any]

    def refuse_foreign_keys(self, keys: Iterable[str]) -> None:
        """A key this backend does not take is an error, never ignored."""
        foreign = sorted(key for key in keys if key not in COMMON_KEYS and key not in self.keys)
        if foreign:
            raise UnsupportedSpec(
                f"the {self.name} backend does not take {', '.join(repr(key) for key in foreign)}; "
                f"its settings: {', '.join(sorted(self.keys))}"
            )
