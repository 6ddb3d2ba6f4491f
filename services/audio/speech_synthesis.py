"""Speech synthesis with espeak-ng (Debian package `espeak-ng`), run as a subprocess per request.

The text goes to espeak-ng on stdin, never on its command line, so no text is read as an option.
"""

from __future__ import annotations

import io
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import soundfile

from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.errors import InvalidArgument

ENGINE = "espeak-ng"
DEFAULT_VOICE = "en-us"
DEFAULT_WORDS_PER_MINUTE = 160
MIN_WORDS_PER_MINUTE, MAX_WORDS_PER_MINUTE = 80, 450
MAX_TEXT_CHARS = 2000
TIMEOUT_S = 60


@dataclass(frozen=True)
class SpeechRequest:
    text: str
    voice: str = DEFAULT_VOICE
    words_per_minute: int = DEFAULT_WORDS_PER_MINUTE


@dataclass(frozen=True)
class Speech:
    samples: np.ndarray   # mono float32
    sample_rate: int


class EspeakSynthesizer(ModelAdapter):
    """Rows are SpeechRequests, results Speech."""

    default_voice = DEFAULT_VOICE

    def __init__(self):
        self.binary = ""
        self.voices: frozenset[str] = frozenset()
        self.version = ""

    def load(self) -> None:
        self.binary = shutil.which(ENGINE) or ""
        if not self.binary:
            raise RuntimeError("espeak-ng is not installed (Debian package espeak-ng)")
        self.version = subprocess.run([self.binary, "--version"], capture_output=True, text=True,
                                      check=True).stdout.split(":")[0].strip()
        self.voices = frozenset(self._voice_names())

    def _voice_names(self) -> set[str]:
        listing = subprocess.run([self.binary, "--voices"], capture_output=True, text=True, check=True).stdout
        names = set()
        for line in listing.splitlines()[1:]:
            columns = line.split()
            if len(columns) >= 5:
                names.add(columns[1])                    # language, e.g. en-us
                names.add(columns[4])                    # file, e.g. gmw/en-US
                names.add(columns[4].rsplit("/", 1)[-1])
        return names

    def warm_up(self) -> None:
        self.run_batch([SpeechRequest("ready")])

    def describe(self) -> ModelDescription:
        return ModelDescription(name=ENGINE, version=self.version, provenance=f"Debian package espeak-ng ({self.version}), "
                                "formant synthesis", device="cpu", dtype="int16")

    def check(self, request: SpeechRequest) -> None:
        violations = speech_violations(request, self.voices,
                                       f"unknown voice {request.voice[:64]!r}; e.g. en-us, en-gb, de, fr")
        if violations:
            raise InvalidArgument(violations)

    def run_batch(self, rows: Sequence[SpeechRequest]) -> list[Speech]:
        return [self._speak(row) for row in rows]

    def _speak(self, request: SpeechRequest) -> Speech:
        wav = subprocess.run([self.binary, "-v", request.voice, "-s", str(request.words_per_minute), "--stdout"],
                             input=request.text.encode(), capture_output=True, check=True, timeout=TIMEOUT_S).stdout
        samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
        return Speech(samples.reshape(-1), rate)


def speech_violations(request: SpeechRequest, voices, unknown_voice: str) -> list[tuple[str, str]]:
    """What every synthesizer refuses: empty or over-long text, a voice it lacks, a rate out of range."""
    violations = []
    if not request.text.strip():
        violations.append(("text", "empty text"))
    elif len(request.text) > MAX_TEXT_CHARS:
        violations.append(("text", f"{len(request.text)} characters exceed the limit of {MAX_TEXT_CHARS}"))
    if request.voice not in voices:
        violations.append(("voice", unknown_voice))
    if not MIN_WORDS_PER_MINUTE <= request.words_per_minute <= MAX_WORDS_PER_MINUTE:
        violations.append(("words_per_minute", f"{request.words_per_minute}; give {MIN_WORDS_PER_MINUTE} to "
                                               f"{MAX_WORDS_PER_MINUTE}"))
    return violations
