"""Machine-sound anomaly scores: a log-mel spectrogram, and how badly an autoencoder trained only on
healthy machines reconstructs it.

The approach of the DCASE machine-condition-monitoring baseline: the autoencoder sees windows of
consecutive log-mel frames; a healthy machine's windows are what it learned to rebuild, a faulty
one's (bearing strikes, knocks, rubbing) are not, and the reconstruction error is the score. The
weights are trained by scripts/train_machine_sound_model.py on services/audio/machine_sounds.py and
committed in services/audio/models/machine-sound-autoencoder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads

MODEL_NAME = "machine-sound-autoencoder"
MODEL_DIR = Path(__file__).resolve().parent / "models" / MODEL_NAME
SAMPLE_RATE = 16_000


@dataclass(frozen=True)
class LogMelSpec:
    """How audio becomes the model's input: a power spectrogram on the mel scale, in decibels."""

    sample_rate: int = SAMPLE_RATE
    n_fft: int = 1024
    hop: int = 512
    mels: int = 64
    f_min: float = 50.0
    f_max: float = 8000.0
    context: int = 5          # frames per autoencoder window
    top_fraction: float = 0.1  # a clip's score: mean error of its worst tenth of windows (faults can be brief)

    @property
    def min_samples(self) -> int:
        return self.n_fft + (self.context - 1) * self.hop


class LogMel:
    def __init__(self, spec: LogMelSpec):
        self.spec = spec
        self.window = torch.hann_window(spec.n_fft)
        self.filters = torch.from_numpy(mel_filters(spec)).float()

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        """float32 [mels, frames] in dB, relative to the clip's median level (microphone gain drops out)."""
        power = torch.stft(torch.from_numpy(samples), self.spec.n_fft, self.spec.hop, window=self.window,
                           center=False, return_complex=True).abs() ** 2
        db = 10 * torch.log10(self.filters @ power + 1e-10)
        return (db - db.median()).numpy()


def mel_filters(spec: LogMelSpec) -> np.ndarray:
    """Triangular filters evenly spaced on the HTK mel scale, [mels, n_fft/2 + 1]."""
    def to_mel(hz):
        return 2595 * np.log10(1 + np.asarray(hz) / 700)

    def to_hz(mel):
        return 700 * (10 ** (np.asarray(mel) / 2595) - 1)

    edges = to_hz(np.linspace(to_mel(spec.f_min), to_mel(spec.f_max), spec.mels + 2))
    bins = np.fft.rfftfreq(spec.n_fft, 1 / spec.sample_rate)
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return np.clip(np.minimum(rising, falling), 0, None)


def windows(log_mel: np.ndarray, context: int) -> np.ndarray:
    """Overlapping windows of ``context`` frames, flattened: [frames - context + 1, mels * context]."""
    mels, frames = log_mel.shape
    view = np.lib.stride_tricks.sliding_window_view(log_mel, context, axis=1)   # [mels, n, context]
    return np.ascontiguousarray(view.transpose(1, 2, 0).reshape(frames - context + 1, context * mels))


class Autoencoder(nn.Module):
    """Dense autoencoder over standardised windows, with a narrow bottleneck."""

    def __init__(self, inputs: int, hidden: int = 128, bottleneck: int = 16):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, hidden // 2), nn.ReLU(),
                                     nn.Linear(hidden // 2, bottleneck))
        self.decoder = nn.Sequential(nn.Linear(bottleneck, hidden // 2), nn.ReLU(), nn.Linear(hidden // 2, hidden),
                                     nn.ReLU(), nn.Linear(hidden, inputs))
        self.register_buffer("mean", torch.zeros(inputs))
        self.register_buffer("std", torch.ones(inputs))

    def window_errors(self, raw_windows: torch.Tensor) -> torch.Tensor:
        """Mean squared reconstruction error per window, in standardised units."""
        x = (raw_windows - self.mean) / self.std
        return ((self.decoder(self.encoder(x)) - x) ** 2).mean(dim=1)


def clip_score(window_errors: np.ndarray, top_fraction: float) -> float:
    worst = np.sort(window_errors)[::-1][:max(1, int(round(top_fraction * len(window_errors))))]
    return float(worst.mean())


@dataclass(frozen=True)
class SoundScore:
    score: float
    log_mel: np.ndarray        # [mels, frames], dB relative to the clip's median
    window_errors: np.ndarray  # [frames - context + 1]


class MachineSoundScorer(ModelAdapter):
    """The trained autoencoder as a served model: rows are 16 kHz mono clips, results SoundScores.

    Every row's windows go through the network in one forward pass, so batched requests share it.
    """

    def __init__(self, model_dir: Path = MODEL_DIR, threads: int = 0, instances: int = 1):
        self.model_dir = Path(model_dir)
        self.threads = threads
        self.instances = instances
        self.network: Autoencoder | None = None
        self.spec = LogMelSpec()
        self.log_mel: LogMel | None = None
        self.threshold = 0.0
        self.provenance: dict = {}

    def load(self) -> None:
        from safetensors.torch import load_file

        configure_threads(self.threads, self.instances)
        self.provenance = json.loads((self.model_dir / "provenance.json").read_text())
        self.spec = LogMelSpec(**self.provenance["log_mel"])
        self.threshold = float(self.provenance["threshold"])
        state = load_file(str(self.model_dir / "model.safetensors"))
        self.network = Autoencoder(self.spec.mels * self.spec.context, **self.provenance["architecture"])
        self.network.load_state_dict(state)
        self.network.eval()
        self.log_mel = LogMel(self.spec)

    def warm_up(self) -> None:
        from services.audio.machine_sounds import machine_sound

        self.run_batch([machine_sound(0, 1.0, SAMPLE_RATE)] * 2)

    @torch.inference_mode()
    def run_batch(self, rows: Sequence[np.ndarray]) -> list[SoundScore]:
        spectrograms = [self.log_mel(np.asarray(row, dtype=np.float32)) for row in rows]
        stacked = [windows(s, self.spec.context) for s in spectrograms]
        errors = self.network.window_errors(torch.from_numpy(np.concatenate(stacked))).numpy()
        splits = np.cumsum([len(w) for w in stacked])[:-1]
        return [SoundScore(clip_score(e, self.spec.top_fraction), s, e)
                for s, e in zip(spectrograms, np.split(errors, splits))]

    def describe(self) -> ModelDescription:
        p = self.provenance
        return ModelDescription(
            name=MODEL_NAME, version=p.get("version", "unknown"),
            provenance=(f"trained by scripts/train_machine_sound_model.py (seed {p.get('seed')}) on synthetic machine "
                        f"sounds; held-out AUC {p.get('held_out', {}).get('auc_all', 'n/a')}"),
            device="cpu", dtype="float32")
