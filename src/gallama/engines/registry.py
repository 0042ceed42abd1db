"""The backends by the name a spec's `backend` key gives.

Adding one: a subpackage with a `Backend` (gallama.engines.backend) whose loader builds an
engine that implements gallama.engines.base.Engine (or embedding.base.EmbeddingEngine),
listed here. Backend modules import their engine library only when they load a model.
"""

from __future__ import annotations

from gallama.engines.backend import Backend, UnsupportedSpec
from gallama.engines.embedding.backend import EMBEDDING
from gallama.engines.llama_cpp.backend import LLAMA_CPP
from gallama.engines.transformers.backend import TRANSFORMERS

BACKENDS: dict[str, Backend] = {backend.name: backend for backend in (LLAMA_CPP, TRANSFORMERS, EMBEDDING)}
# Backends of the spec format that this gallama has no engine for yet: the package each would need.
PLANNED = {"exllama": "exllamav2"}
BACKEND_NAMES = (*BACKENDS, *PLANNED)


def backend_named(name: str) -> Backend:
    backend = BACKENDS.get(name)
    if backend is None:
        raise UnsupportedSpec(
            f"backend '{name}' is not available: gallama has no {name} engine yet "
            f"(it would need the package '{PLANNED.get(name, name)}'); the backends this install has: "
            f"{', '.join(BACKENDS)} (a GGUF file with backend=llama_cpp)"
        )
    return backend
