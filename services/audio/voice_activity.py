"""Voice activity detection with Silero VAD, the TorchScript model shipped inside the `silero-vad` package."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version as package_version

import numpy as np
import torch

from services.audio.audio_io import MODEL_RATE
from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads

PACKAGE = "silero-vad"


@dataclass(frozen=True)
class VoiceQuery:
    """One row: a 16 kHz clip and the detection settings of its request."""

    samples: np.ndarray
    threshold: float = 0.5
    min_speech_ms: int = 250
    min_silence_ms: int = 100


class SileroVoiceDetector(ModelAdapter):
    """Rows are VoiceQuery, results lists of (start_s, end_s).

    The model keeps a recurrent state while it walks a clip, so each batch thread has its own copy
    (MODALMESH_MODEL_INSTANCES > 1 runs several clips at once).
    """

    def __init__(self, threads: int = 0, instances: int = 1):
        self.threads = threads
        self.instances = instances
        self._local = threading.local()

    def load(self) -> None:
        import silero_vad  # noqa: F401 - importing it sets torch's threads to 1 for the whole process

        configure_threads(self.threads, self.instances)   # the service's setting holds, whatever the import did
        self._model()

    def _model(self):
        if not hasattr(self._local, "model"):
            from silero_vad import load_silero_vad

            self._local.model = load_silero_vad()   # the packaged TorchScript file: no download
        return self._local.model

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self.run_batch([VoiceQuery(rng.normal(0, 0.05, MODEL_RATE).astype(np.float32))])

    @torch.inference_mode()
    def run_batch(self, rows: Sequence[VoiceQuery]) -> list[list[tuple[float, float]]]:
        from silero_vad import get_speech_timestamps

        model = self._model()
        results = []
        for row in rows:
            stamps = get_speech_timestamps(torch.from_numpy(row.samples), model, threshold=row.threshold,
                                           sampling_rate=MODEL_RATE, min_speech_duration_ms=row.min_speech_ms,
                                           min_silence_duration_ms=row.min_silence_ms)
            results.append([(s["start"] / MODEL_RATE, s["end"] / MODEL_RATE) for s in stamps])
        return results

    def describe(self) -> ModelDescription:
        return ModelDescription(name="silero-vad", version=package_version(PACKAGE),
                                provenance=f"PyPI package {PACKAGE} {package_version(PACKAGE)} (TorchScript model)",
                                device="cpu", dtype="float32")
