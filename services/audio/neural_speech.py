"""Neural speech synthesis with a VITS model (the architecture of facebook/mms-tts-eng and
kakao-enterprise/vits-ljs) by Hugging Face id (from the local cache) or local path, loaded with
transformers' own from_pretrained (never downloaded at run time).

VITS goes from characters straight to a waveform at the model's own rate (config.sampling_rate): no
separate vocoder. Its duration predictor is stochastic; every request is synthesised with the same
fixed seed, so one text, voice and rate always give the same audio, whatever else is in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from services.audio.speech_synthesis import DEFAULT_WORDS_PER_MINUTE, Speech, SpeechRequest, speech_violations
from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads, pick_device, pick_dtype
from services.runtime.errors import InvalidArgument
from services.runtime.pretrained import quiet_transformers, weights_digest

SYNTHESIS_SEED = 0
SPEAKER_PREFIX = "speaker-"


class VitsSynthesizer(ModelAdapter):
    """Rows are SpeechRequests, results Speech (the same contract as the espeak-ng synthesizer).

    Voices are the model's speakers, ``speaker-0`` to ``speaker-<n-1>`` (one, ``speaker-0``, for a
    single-speaker model such as mms-tts-eng). ``words_per_minute`` scales the predicted durations:
    160 is the model's own pace, 320 half as long, 80 twice as long.
    """

    def __init__(self, source: str, device: str = "auto", precision: str = "auto", threads: int = 0,
                 instances: int = 1):
        self.source = source
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, precision)
        self.threads = threads
        self.instances = instances
        self.tokenizer = None
        self.model = None
        self.sample_rate = 0
        self.voices: tuple[str, ...] = ()
        self._description: ModelDescription | None = None

    @property
    def default_voice(self) -> str:
        return self.voices[0]

    def load(self) -> None:
        from transformers import AutoTokenizer, VitsModel

        quiet_transformers()
        configure_threads(self.threads, self.instances)
        path, provenance = _resolve(self.source)
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = VitsModel.from_pretrained(path, dtype=self.dtype, local_files_only=True).to(self.device).eval()
        self.sample_rate = int(self.model.config.sampling_rate)
        self.voices = tuple(f"{SPEAKER_PREFIX}{i}" for i in range(max(1, self.model.config.num_speakers)))
        self._description = ModelDescription(
            name=Path(self.source.rstrip("/")).name, version=weights_digest(path), provenance=provenance,
            device=str(self.device), dtype=str(self.dtype).removeprefix("torch."))

    def warm_up(self) -> None:
        self.run_batch([SpeechRequest("ready", self.default_voice)])

    def describe(self) -> ModelDescription:
        return self._description

    def close(self) -> None:
        self.model = None

    def check(self, request: SpeechRequest) -> None:
        violations = speech_violations(request, self.voices,
                                       f"{request.voice[:64]!r} is not a voice of {self._description.name}; "
                                       f"give {self._voice_range()} or leave it empty")
        if not any(field == "text" for field, _ in violations) and not self._spoken_characters(request.text):
            violations.insert(0, ("text", "no character of the text is in the model's vocabulary"))
        if violations:
            raise InvalidArgument(violations)

    def _voice_range(self) -> str:
        return self.voices[0] if len(self.voices) == 1 else f"{self.voices[0]} to {self.voices[-1]}"

    def _spoken_characters(self, text: str) -> int:
        """How many tokens of the text the model reads, besides the blanks the tokenizer puts between them."""
        ids = self.tokenizer(text).input_ids
        return sum(1 for i in ids if i != self.tokenizer.pad_token_id)

    def run_batch(self, rows: Sequence[SpeechRequest]) -> list[Speech]:
        # One forward per row: the duration predictor's noise is drawn for the whole padded batch, so
        # batching would make a request's audio depend on its neighbours.
        return [self._speak(row) for row in rows]

    @torch.inference_mode()
    def _speak(self, request: SpeechRequest) -> Speech:
        inputs = self.tokenizer(request.text, return_tensors="pt").to(self.device)
        speaker = int(request.voice.removeprefix(SPEAKER_PREFIX)) if len(self.voices) > 1 else None
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(SYNTHESIS_SEED)
            waveform = self.model(**inputs, speaker_id=speaker,
                                  speaking_rate=request.words_per_minute / DEFAULT_WORDS_PER_MINUTE).waveform
        return Speech(waveform[0].float().cpu().numpy(), self.sample_rate)


def _resolve(source: str) -> tuple[Path, str]:
    """(local folder, provenance) of a local path or a Hugging Face id already in the local cache."""
    if Path(source).expanduser().is_dir():
        path = Path(source).expanduser().resolve()
        return path, f"local path {path}"
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(source, local_files_only=True))
    return path, f"Hugging Face {source} revision {path.name} (from the local cache)"
