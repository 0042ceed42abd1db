"""`gallama download` through huggingface_hub, offline against a pre-filled local hub cache."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _fill_cache(hub: Path, repo: str, files: dict[str, bytes]) -> Path:
    """The layout huggingface_hub writes: refs/main names a snapshot folder holding the files."""
    root = hub / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(COMMIT)
    snapshot = root / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        (snapshot / name).write_bytes(data)
    return snapshot


def _download(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub"), "GALLAMA_HOME": str(tmp_path / "home"),
           "COLUMNS": "500"}  # rich would wrap the error panel
    return subprocess.run([sys.executable, "-m", "gallama", "download", *args], env=env, capture_output=True, text=True, timeout=120)


def test_download_writes_a_config_entry(tmp_path):
    snapshot = _fill_cache(tmp_path / "hub", "someone/Tiny-GGUF", {"tiny.Q4_K_M.gguf": b"GGUF", "README.md": b"hi"})
    done = _download(tmp_path, "someone/Tiny-GGUF")
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load((tmp_path / "home" / "model_config.yaml").read_text())
    assert config == {"Tiny-GGUF": {"model_id": str(snapshot)}}
    again = _download(tmp_path, "someone/Tiny-GGUF", "--file", "tiny.Q4_K_M.gguf", "--name", "tiny-q4")
    assert again.returncode == 0, again.stderr
    config = yaml.safe_load((tmp_path / "home" / "model_config.yaml").read_text())
    assert config["tiny-q4"] == {"model_id": str(snapshot / "tiny.Q4_K_M.gguf")}


def test_download_of_nothing_loadable_writes_no_entry(tmp_path):
    _fill_cache(tmp_path / "hub", "someone/just-docs", {"README.md": b"hi"})
    done = _download(tmp_path, "someone/just-docs")
    assert done.returncode != 0 and "holds no GGUF file" in done.stderr
    config_file = tmp_path / "home" / "model_config.yaml"
    assert not config_file.exists() or yaml.safe_load(config_file.read_text()) is None


def test_download_unreachable_repo_is_a_clear_error(tmp_path):
    done = _download(tmp_path, "someone/not-cached")
    assert done.returncode != 0 and "cannot download someone/not-cached" in done.stderr
