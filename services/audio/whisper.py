"""Whisper-class speech recognition by Hugging Face id (from the local cache) or local path, loaded with
transformers' own from_pretrained (never downloaded at run time).

Whisper reads 30-second windows, so a stream holds at most 30 s. It re-reads the stream's audio
each time ``partial_every_s`` more seconds have arrived (a partial hypothesis) and once at the end;
the streams whose turn it is in one batch go through one ``generate`` call together.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from services.audio.audio_io import MODEL_RATE
from services.audio.speech_recognition import Hypothesis, RecognitionStep, RecognitionStream
from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads, pick_device, pick_dtype
from services.runtime.errors import InvalidArgument, ResourceExhausted
from services.runtime.pretrained import local_source, quiet_transformers

WINDOW_SECONDS = 30.0


class WhisperRecognizer(ModelAdapter):
    """Rows are RecognitionSteps, results Hypotheses (the same contract as the pocketsphinx recogniser)."""

    takes_grammar = False

    def __init__(self, source: str, device: str = "auto", precision: str = "auto", threads: int = 0,
                 instances: int = 1, max_streams: int = 8, partial_every_s: float = 2.0, max_new_tokens: int = 128,
                 max_stream_seconds: float = WINDOW_SECONDS):
        self.source = source
        self.max_stream_seconds = min(max_stream_seconds, WINDOW_SECONDS)
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.threads = threads
        self.instances = instances
        self.max_streams = max_streams
        self.partial_every_s = partial_every_s
        self.max_new_tokens = max_new_tokens
        self.processor = None
        self.model = None
        self._open = 0
        self._lock = threading.Lock()
        self._description: ModelDescription | None = None

    def load(self) -> None:
        from transformers import AutoModelForSpeechSeq2Seq, AutoProcessor

        quiet_transformers()
        configure_threads(self.threads, self.instances)
        path, provenance, version = local_source(self.source)
        self.processor = AutoProcessor.from_pretrained(path, local_files_only=True)
        self.model = AutoModelForSpeechSeq2Seq.from_pretrained(path, dtype=self.dtype, local_files_only=True)
        self.model = self.model.to(self.device).eval()
        self.max_new_tokens = min(self.max_new_tokens, self.model.config.max_target_positions // 2)
        self._description = ModelDescription(name=Path(self.source.rstrip("/")).name, version=version,
                                             provenance=provenance, device=str(self.device),
                                             dtype=str(self.dtype).removeprefix("torch."))

    def warm_up(self) -> None:
        stream = self.open_stream(None)
        self.run_batch([RecognitionStep(stream, np.zeros(MODEL_RATE, dtype=np.float32), final=True)])
        self.close_stream(stream)

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        self.model = None

    # -- streams ---------------------------------------------------------------------------------

    def open_stream(self, grammar: str | None) -> RecognitionStream:
        if grammar:
            raise InvalidArgument(("config", "the served Whisper model takes no phrases or grammar"))
        with self._lock:
            if self._open >= self.max_streams:
                raise ResourceExhausted(f"{self.max_streams} transcription streams are open; retry later")
            self._open += 1
        stream = RecognitionStream(None)
        stream.decoder = _WhisperState()
        return stream

    def close_stream(self, stream: RecognitionStream) -> None:
        stream.finished = True
        with self._lock:
            self._open -= 1

    def run_batch(self, rows: Sequence[RecognitionStep]) -> list[Hypothesis]:
        due = []
        for row in rows:
            state: _WhisperState = row.stream.decoder
            state.chunks.append(row.samples)
            state.samples += len(row.samples)
            if row.final or state.samples - state.decoded_at >= self.partial_every_s * MODEL_RATE:
                due.append(row)
        if due:
            texts = self._transcribe([np.concatenate(r.stream.decoder.chunks) for r in due])
            for row, text in zip(due, texts):
                row.stream.decoder.text, row.stream.decoder.decoded_at = text, row.stream.decoder.samples
        return [Hypothesis(r.stream.decoder.text, r.stream.decoder.samples / MODEL_RATE) for r in rows]

    @torch.inference_mode()
    def _transcribe(self, clips: list[np.ndarray]) -> list[str]:
        features = self.processor(clips, sampling_rate=MODEL_RATE, return_tensors="pt").input_features
        ids = self.model.generate(features.to(self.device, self.dtype), max_new_tokens=self.max_new_tokens)
        return [t.strip() for t in self.processor.batch_decode(ids, skip_special_tokens=True)]


class _WhisperState:
    """A stream's audio so far and its latest text."""

    def __init__(self):
        self.chunks: list[np.ndarray] = []
        self.samples = 0
        self.decoded_at = 0
        self.text = ""
