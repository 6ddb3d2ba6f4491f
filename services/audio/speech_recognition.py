"""Streaming speech recognition with CMU pocketsphinx, its en-us acoustic model, language model and
dictionary as shipped in the `pocketsphinx` package.

A Transcribe stream holds one decoder for its life, taken from a pool (a decoder costs about 0.4 s
to build, so they are kept and reused). Each chunk of audio is one row for the batcher: the worker
thread feeds it to the stream's decoder and returns the hypothesis so far. Free dictation of
clean synthetic speech is poor with the general language model; a small grammar (phrases or JSGF)
makes it exact, so the grammar is part of the stream's config.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import version as package_version

import numpy as np

from services.audio.audio_io import MODEL_RATE
from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.errors import InvalidArgument, ResourceExhausted, ServiceError

PACKAGE = "pocketsphinx"
MAX_PHRASES = 256
MAX_PHRASE_WORDS = 20
MAX_GRAMMAR_BYTES = 64 * 1024
# Digital silence (synthesised speech, gated microphones) drives log-energy features to their
# floor and the live cepstral mean astray; noise at -60 dBFS, seeded per stream, prevents that.
DITHER_RMS = 1e-3
FRAMES_PER_S = 100   # the acoustic model's frame rate
ALTERNATE = re.compile(r"\(\d+\)$")   # "and(2)": the dictionary's second pronunciation of "and"
NOT_WORDS = {"<s>", "</s>", "<sil>", "[NOISE]", "[SPEECH]"}


@dataclass(frozen=True)
class Word:
    word: str
    start_s: float
    end_s: float


@dataclass(frozen=True)
class Hypothesis:
    """The text so far (final: the transcript), or the error that ended the stream."""

    text: str = ""
    audio_s: float = 0.0
    words: tuple[Word, ...] = ()
    error: ServiceError | None = None


@dataclass
class RecognitionStream:
    """One Transcribe call's recogniser state: its grammar, its decoder once started, audio fed so far."""

    grammar: str | None
    decoder: object = None
    samples_fed: int = 0
    finished: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(0))


@dataclass(frozen=True)
class RecognitionStep:
    """One row: a stream and its next chunk (16 kHz mono float32); ``final`` ends the utterance."""

    stream: RecognitionStream
    samples: np.ndarray
    final: bool = False


def grammar_from_phrases(phrases: Sequence[str]) -> str:
    """A JSGF grammar whose public rule is any one of the phrases (lower-cased, words only)."""
    violations = []
    if len(phrases) > MAX_PHRASES:
        violations.append(("config.phrases", f"{len(phrases)} phrases; at most {MAX_PHRASES}"))
    alternatives = []
    for i, phrase in enumerate(phrases[:MAX_PHRASES]):
        words = phrase_words(phrase)
        if not 1 <= len(words) <= MAX_PHRASE_WORDS:
            violations.append((f"config.phrases[{i}]", f"must have 1 to {MAX_PHRASE_WORDS} words"))
        alternatives.append("( " + " ".join(words) + " )")
    if violations:
        raise InvalidArgument(violations[:20])
    return "#JSGF V1.0;\ngrammar phrases;\npublic <phrase> = " + " | ".join(alternatives) + ";\n"


def phrase_words(phrase: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", phrase.lower())


class PocketsphinxRecognizer(ModelAdapter):
    """Rows are RecognitionSteps, results Hypotheses. At most ``max_streams`` streams at once."""

    takes_grammar = True

    def __init__(self, max_streams: int = 8, max_stream_seconds: float = 600.0):
        self.max_streams = max_streams
        self.max_stream_seconds = max_stream_seconds
        self._idle: list = []
        self._open = 0
        self._pool_lock = threading.Lock()
        self._initial_cmn = ""

    # -- ModelAdapter ----------------------------------------------------------------------------

    def load(self) -> None:
        decoder = self._new_decoder()
        self._initial_cmn = decoder.get_cmn()
        self._idle.append(decoder)

    def warm_up(self) -> None:
        stream = self.open_stream(grammar_from_phrases(["modalmesh is ready"]))
        quiet = np.zeros(MODEL_RATE // 2, dtype=np.float32)
        self.run_batch([RecognitionStep(stream, quiet)])
        self.run_batch([RecognitionStep(stream, quiet, final=True)])
        self.close_stream(stream)

    def describe(self) -> ModelDescription:
        v = package_version(PACKAGE)
        return ModelDescription(name="pocketsphinx-en-us", version=v,
                                provenance=f"PyPI package {PACKAGE} {v}: CMU Sphinx en-us acoustic model, "
                                           "en-us language model and cmudict",
                                device="cpu", dtype="float32")

    def run_batch(self, rows: Sequence[RecognitionStep]) -> list[Hypothesis]:
        return [self._step(row) for row in rows]

    # -- streams ---------------------------------------------------------------------------------

    def open_stream(self, grammar: str | None) -> RecognitionStream:
        """Reserve a decoder for a new stream; RESOURCE_EXHAUSTED when every one is in use."""
        with self._pool_lock:
            if self._open >= self.max_streams:
                raise ResourceExhausted(f"{self.max_streams} transcription streams are open; retry later "
                                        "(MODALMESH_TRANSCRIPTION_MAX_STREAMS)")
            self._open += 1
        return RecognitionStream(grammar)

    def close_stream(self, stream: RecognitionStream) -> None:
        """Give the stream's decoder back (a cancelled stream too); runs off the event loop."""
        with stream.lock:
            if stream.decoder is not None:
                if not stream.finished:
                    stream.decoder.end_utt()
                self._release(stream.decoder)
                stream.decoder = None
            stream.finished = True
        with self._pool_lock:
            self._open -= 1

    def _step(self, row: RecognitionStep) -> Hypothesis:
        stream = row.stream
        with stream.lock:
            if stream.decoder is None:
                error = self._start(stream)
                if error:
                    return Hypothesis(error=error)
            pcm = row.samples + stream.rng.normal(0, DITHER_RMS, len(row.samples))
            pcm = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
            if len(pcm):
                stream.decoder.process_raw(pcm.tobytes(), False, False)
            stream.samples_fed += len(pcm)
            audio_s = stream.samples_fed / MODEL_RATE
            if not row.final:
                hyp = stream.decoder.hyp()
                return Hypothesis(hyp.hypstr if hyp else "", audio_s)
            stream.decoder.end_utt()
            stream.finished = True
            hyp = stream.decoder.hyp()
            words = tuple(Word(ALTERNATE.sub("", s.word), s.start_frame / FRAMES_PER_S, (s.end_frame + 1) / FRAMES_PER_S)
                          for s in stream.decoder.seg() or () if s.word not in NOT_WORDS and not s.word.startswith("++"))
            return Hypothesis(hyp.hypstr if hyp else "", audio_s, words)

    def _start(self, stream: RecognitionStream) -> InvalidArgument | None:
        """Take a decoder, set the stream's grammar (or the language model) and start the utterance."""
        decoder = self._take()
        try:
            if stream.grammar:
                unknown = self._unknown_words(decoder, stream.grammar)
                if unknown:
                    raise InvalidArgument(("config", f"not in the recogniser's dictionary: {', '.join(unknown[:20])}"))
                try:
                    decoder.add_jsgf_string("stream", stream.grammar)
                except (ValueError, RuntimeError):
                    raise InvalidArgument(("config.jsgf_grammar", "not a valid JSGF grammar")) from None
                decoder.activate_search("stream")
            else:
                decoder.activate_search("_default")
        except InvalidArgument as error:
            self._release(decoder)
            stream.finished = True
            return error
        decoder.set_cmn(self._initial_cmn)   # each stream starts alike, whatever the decoder heard before
        decoder.start_utt()
        stream.decoder = decoder
        return None

    @staticmethod
    def _unknown_words(decoder, grammar: str) -> list[str]:
        body = re.sub(r"<[^>]*>|#JSGF[^;]*;|grammar[^;]*;|public|import[^;]*;|/[^/]*/", " ", grammar)
        words = dict.fromkeys(re.findall(r"[A-Za-z0-9'_.-]+", body))
        return [w for w in words if decoder.lookup_word(w.lower()) is None]

    def _take(self):
        with self._pool_lock:
            if self._idle:
                return self._idle.pop()
        return self._new_decoder()

    def _release(self, decoder) -> None:
        with self._pool_lock:
            self._idle.append(decoder)

    @staticmethod
    def _new_decoder():
        from pocketsphinx import Decoder

        return Decoder(samprate=MODEL_RATE, loglevel="FATAL")
