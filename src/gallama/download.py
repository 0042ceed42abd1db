"""`gallama download`: fetch a model with huggingface_hub and write its model_config.yaml entry."""

from __future__ import annotations

from pathlib import Path

from gallama.config import ModelSpec, SpecError, add_config_entry, ensure_config, resolve


def download_model(repo: str, *, file: str | None = None, name: str | None = None,
                   revision: str | None = None) -> tuple[str, Path, Path]:
    """Returns (entry name, local path, config file); huggingface_hub shows the progress bars."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        if file:
            path = Path(huggingface_hub.hf_hub_download(repo, file, revision=revision))
        else:
            path = Path(huggingface_hub.snapshot_download(repo, revision=revision))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as error:
        raise SpecError(f"cannot download {repo}: {error}") from None
    entry_name = name or repo.rstrip("/").split("/")[-1]
    spec = ModelSpec(model_id=str(path))
    resolve(spec, {})  # refuses a download that holds nothing gallama can load, before writing the entry
    return entry_name, path, add_config_entry(entry_name, spec, ensure_config())
