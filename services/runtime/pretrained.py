"""What every Hugging Face model of the services shares: quiet library logs, where its weights come
from, and the version a response reports. Loading is always local (`local_files_only=True`)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def quiet_transformers() -> None:
    """No progress bars and no handler of the library's own: its records join the JSON log stream."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.disable_default_handler()
    hf_logging.enable_propagation()


def weights_digest(path: Path) -> str:
    """A short content hash of the weights, so two different checkpoints never share a version."""
    weights = next((path / n for n in ("model.safetensors", "pytorch_model.bin") if (path / n).exists()), None)
    if weights is None:
        return "unknown"
    digest = hashlib.sha256()
    with open(weights, "rb") as f:
        digest.update(f.read(1 << 20))
    digest.update(str(weights.stat().st_size).encode())
    return digest.hexdigest()[:12]


def local_source(source: str) -> tuple[str, str, str]:
    """(path or id for from_pretrained, provenance, version) of a local folder or a cached Hugging Face id."""
    if Path(source).expanduser().is_dir():
        path = Path(source).expanduser().resolve()
        return str(path), f"local path {path}", weights_digest(path)
    return source, f"Hugging Face {source} (from the local cache)", "hub-cache"
