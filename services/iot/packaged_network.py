"""What the IoT models share: a small PyTorch network shipped as <file>.safetensors beside its card
<file>.json (shape, feature scaling, threshold or margins, provenance, held-out metrics), written by
`save_packaged` and read by `PackagedNetwork`."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads, pick_device

MODELS_DIR = Path(__file__).resolve().parent / "models"


class PackagedNetwork(ModelAdapter):
    """Loads the packaged weights (or a user's file and its card, or a folder holding a file of the packaged
    file's name and its card) onto the device; a subclass builds the network from the card and reads what
    else it needs from it."""

    name: str
    weights_file: str

    def __init__(self, weights: str | Path | None = None, device: str = "auto", threads: int = 0,
                 instances: int = 1):
        self.path = Path(weights).expanduser() if weights else MODELS_DIR / self.weights_file
        if self.path.is_dir():
            self.path = self.path / Path(self.weights_file).name
        self.device = pick_device(device)
        self.threads, self.instances = threads, instances
        self.net: nn.Module | None = None
        self.card: dict = {}
        self._description: ModelDescription | None = None

    def build_network(self, card: dict) -> nn.Module:
        raise NotImplementedError

    def read_card(self, card: dict) -> None:
        """The card's other fields the model uses (threshold, margins, ...)."""

    def load(self) -> None:
        from safetensors.torch import load_file

        configure_threads(self.threads, self.instances)
        self.card = json.loads(self.path.with_suffix(".json").read_text())
        self.net = self.build_network(self.card)
        self.net.load_state_dict(load_file(self.path))
        self.net.to(self.device).eval()
        self._mean = torch.tensor(self.card["feature_mean"], device=self.device)
        self._std = torch.tensor(self.card["feature_std"], device=self.device)
        self.read_card(self.card)
        self._description = ModelDescription(
            name=self.card.get("name", self.name), version=file_digest(self.path),
            provenance=self.card["provenance"] if self.path == MODELS_DIR / self.weights_file
            else f"local path {self.path.resolve()} ({self.card['provenance']})",
            device=str(self.device), dtype="float32")

    def describe(self) -> ModelDescription:
        return self._description


def file_digest(path: Path) -> str:
    """Short content hash of a weights file: the version every response reports."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def save_packaged(net: nn.Module, card: dict, path: Path) -> None:
    """Weights to `path` (.safetensors) and the card beside them (.json): what `PackagedNetwork` loads."""
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    path.chmod(0o644)                       # safetensors writes 0600; images run the service as another user
    path.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
