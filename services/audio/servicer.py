"""modalmesh.v1.AudioService: DetectVoice, Transcribe (streaming), ScoreAnomaly and Synthesize, each on its
own served model (adapter + dynamic batcher)."""

from __future__ import annotations

import asyncio

import numpy as np

from modalmesh.v1 import audio_pb2, audio_pb2_grpc, common_pb2
from services.audio import audio_io
from services.audio.sound_anomaly import MachineSoundScorer
from services.audio.speech_recognition import RecognitionStep, grammar_from_phrases, MAX_GRAMMAR_BYTES
from services.audio.speech_synthesis import DEFAULT_WORDS_PER_MINUTE, SpeechRequest
from services.audio.voice_activity import VoiceQuery
from services.runtime.settings import DEFAULT_MAX_MESSAGE_BYTES
from services.runtime.errors import InvalidArgument
from services.runtime.served_model import ServedModel
from services.runtime.tensors import encode_tensor

MAX_VOICE_SECONDS = 600.0
MAX_SOUND_SECONDS = 60.0
MIN_SOUND_SECONDS = 0.25
CONTAINER_STEP_S = 1.0
MAX_CONTAINER_BYTES = 128 << 20   # a buffered WAV/FLAC stream is fed to the recogniser a second at a time
SYNTHESIS_RATES = (8_000, 48_000)
REPLY_OVERHEAD_BYTES = 4096        # a SynthesizeResponse's fields besides its audio bytes
ENCODINGS = set(audio_pb2.AudioEncoding.values()) - {audio_pb2.AUDIO_ENCODING_UNSPECIFIED}


class AudioServicer(audio_pb2_grpc.AudioServiceServicer):
    def __init__(self, voice: ServedModel, recognizer: ServedModel, sounds: ServedModel, speech: ServedModel,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES):
        self.voice = voice
        self.recognizer = recognizer
        self.sounds = sounds
        self.speech = speech
        # A reply past the gRPC limit would fail only after the synthesis, as a bare transport error.
        self.max_audio_bytes = max_message_bytes - REPLY_OVERHEAD_BYTES

    async def DetectVoice(self, request: audio_pb2.DetectVoiceRequest, context) -> audio_pb2.DetectVoiceResponse:
        query = _voice_settings(request)
        clip = await asyncio.to_thread(audio_io.decode, request.audio, "audio", MAX_VOICE_SECONDS)
        [segments] = await self.voice.infer([VoiceQuery(clip.samples, *query)], context)
        speech_s = sum(end - start for start, end in segments)
        return audio_pb2.DetectVoiceResponse(
            segments=[audio_pb2.SpeechSegment(start_s=start, end_s=end) for start, end in segments],
            duration_s=clip.seconds, speech_fraction=speech_s / clip.seconds if clip.seconds else 0.0,
            model=self.voice.model_info)

    async def Transcribe(self, request_iterator, context):
        config = await _first_config(request_iterator)
        self.recognizer.require_ready()
        adapter = self.recognizer.adapter
        stream = adapter.open_stream(_grammar(config))
        try:
            first = True
            async for hypothesis, final in self._recognize(stream, config.format, request_iterator, context):
                response = audio_pb2.TranscribeResponse(text=hypothesis.text, is_final=final,
                                                        audio_s=hypothesis.audio_s)
                if final:
                    response.words.extend(audio_pb2.RecognizedWord(word=w.word, start_s=w.start_s, end_s=w.end_s)
                                          for w in hypothesis.words)
                if first or final:
                    response.model.CopyFrom(self.recognizer.model_info)
                first = False
                yield response
        finally:
            await asyncio.to_thread(adapter.close_stream, stream)

    async def _recognize(self, stream, fmt, request_iterator, context):
        """(hypothesis, final): partial ones as the audio arrives (when the text changes), then the final one."""
        limit = self.recognizer.adapter.max_stream_seconds
        feed = _RawFeed(fmt, limit) if audio_io.is_raw(fmt.encoding) else _ContainerFeed(fmt, limit)
        last_text = None
        async for request in request_iterator:
            if request.WhichOneof("request") != "audio":
                raise InvalidArgument(("config", "only the first message of a stream may be a config"))
            for samples in feed.add(request.audio):
                hypothesis = await self._step(stream, samples, False, context)
                if hypothesis.text != last_text:
                    last_text = hypothesis.text
                    yield hypothesis, False
        pieces = await asyncio.to_thread(feed.finish)
        for samples in pieces[:-1]:
            await self._step(stream, samples, False, context)
        yield await self._step(stream, pieces[-1], True, context), True

    async def _step(self, stream, samples: np.ndarray, final: bool, context):
        [hypothesis] = await self.recognizer.infer([RecognitionStep(stream, samples, final)], context)
        if hypothesis.error is not None:
            raise hypothesis.error
        return hypothesis

    async def ScoreAnomaly(self, request: audio_pb2.ScoreAnomalyRequest, context) -> audio_pb2.ScoreAnomalyResponse:
        clip = await asyncio.to_thread(audio_io.decode, request.audio, "audio", MAX_SOUND_SECONDS, MIN_SOUND_SECONDS)
        [result] = await self.sounds.infer([clip.samples], context)
        scorer: MachineSoundScorer = self.sounds.adapter
        spec = scorer.spec
        return audio_pb2.ScoreAnomalyResponse(
            score=result.score, threshold=scorer.threshold, anomalous=result.score > scorer.threshold,
            log_mel=encode_tensor(result.log_mel, common_pb2.DATA_TYPE_FP32),
            window_scores=encode_tensor(result.window_errors, common_pb2.DATA_TYPE_FP32),
            frame_hop_s=spec.hop / spec.sample_rate, min_frequency_hz=spec.f_min, max_frequency_hz=spec.f_max,
            model=self.sounds.model_info)

    async def Synthesize(self, request: audio_pb2.SynthesizeRequest, context) -> audio_pb2.SynthesizeResponse:
        _check_output(request)
        self.speech.require_ready()
        row = SpeechRequest(request.text, request.voice or self.speech.adapter.default_voice,
                            request.words_per_minute or DEFAULT_WORDS_PER_MINUTE)
        self.speech.adapter.check(row)
        [speech] = await self.speech.infer([row], context)
        rate = request.sample_rate_hz or speech.sample_rate
        samples = audio_io.to_model_rate(speech.samples, speech.sample_rate, rate)
        audio = await asyncio.to_thread(audio_io.encode, samples, rate, request.encoding)
        if len(audio.data) > self.max_audio_bytes:
            raise InvalidArgument(("text", f"its speech ({len(samples) / rate:.0f} s at {rate} Hz) takes "
                                           f"{len(audio.data) / 2**20:.1f} MiB, past the message limit of "
                                           f"{self.max_audio_bytes / 2**20:.1f} MiB; send a shorter text, a lower "
                                           "rate or FLAC"))
        return audio_pb2.SynthesizeResponse(audio=audio, duration_s=len(samples) / rate, model=self.speech.model_info)


def _voice_settings(request: audio_pb2.DetectVoiceRequest) -> tuple[float, int, int]:
    threshold = request.threshold or 0.5
    if not 0.0 < threshold < 1.0:
        raise InvalidArgument(("threshold", f"{request.threshold}; give a probability in (0, 1)"))
    return threshold, request.min_speech_ms or 250, request.min_silence_ms or 100


async def _first_config(request_iterator) -> audio_pb2.TranscriptionConfig:
    async for request in request_iterator:
        if request.WhichOneof("request") != "config":
            raise InvalidArgument(("config", "the first message of a stream must be its config, before any audio"))
        return request.config
    raise InvalidArgument(("config", "the stream ended before its config"))


def _grammar(config: audio_pb2.TranscriptionConfig) -> str | None:
    if config.phrases and config.jsgf_grammar:
        raise InvalidArgument(("config", "give phrases or a JSGF grammar, not both"))
    if config.jsgf_grammar:
        if len(config.jsgf_grammar.encode()) > MAX_GRAMMAR_BYTES:
            raise InvalidArgument(("config.jsgf_grammar", f"larger than {MAX_GRAMMAR_BYTES} bytes"))
        return config.jsgf_grammar
    return grammar_from_phrases(list(config.phrases)) if config.phrases else None


class _RawFeed:
    """Raw PCM chunks to 16 kHz samples as they come; a frame split across chunks waits for its rest.

    Each chunk is resampled on its own, so a rate other than 16 kHz has small edge effects at chunk
    boundaries (inaudible to the recogniser); 16 kHz input passes through untouched.
    """

    def __init__(self, fmt: audio_pb2.AudioFormat, max_seconds: float):
        self.encoding = fmt.encoding
        self.rate, self.channels = audio_io.check_raw_format(fmt, "config.format")
        self.frame_bytes = audio_io.RAW_DTYPES[fmt.encoding].itemsize * self.channels
        self.max_frames = int(max_seconds * self.rate)
        self.max_seconds = max_seconds
        self.frames = 0
        self.pending = b""

    def add(self, data: bytes) -> list[np.ndarray]:
        data = self.pending + data
        whole = len(data) - len(data) % self.frame_bytes
        self.pending = data[whole:]
        if not whole:
            return []
        frames = audio_io.raw_frames(data[:whole], self.encoding, self.channels, "audio")
        self.frames += len(frames)
        if self.frames > self.max_frames:
            raise InvalidArgument(("audio", f"the stream exceeds the limit of {self.max_seconds:g} s"))
        return [audio_io.to_model_rate(frames.mean(axis=1), self.rate)]

    def finish(self) -> list[np.ndarray]:
        if self.pending:
            raise InvalidArgument(("audio", f"the stream ends inside a frame ({len(self.pending)} stray bytes)"))
        if not self.frames:
            raise InvalidArgument(("audio", "the stream carried no audio"))
        return [np.zeros(0, dtype=np.float32)]


class _ContainerFeed:
    """A WAV or FLAC file sent in chunks: gathered, then decoded whole when the stream ends."""

    def __init__(self, fmt: audio_pb2.AudioFormat, max_seconds: float):
        self.format = fmt
        self.max_seconds = max_seconds
        self.parts: list[bytes] = []
        self.size = 0

    def add(self, data: bytes) -> list[np.ndarray]:
        self.size += len(data)
        if self.size > MAX_CONTAINER_BYTES:
            raise InvalidArgument(("audio", f"the file exceeds {MAX_CONTAINER_BYTES >> 20} MiB"))
        self.parts.append(data)
        return []

    def finish(self) -> list[np.ndarray]:
        clip = audio_io.decode(audio_pb2.Audio(data=b"".join(self.parts), format=self.format), "audio",
                               self.max_seconds)
        step = int(CONTAINER_STEP_S * audio_io.MODEL_RATE)
        return [clip.samples[i:i + step] for i in range(0, len(clip.samples), step)] or [clip.samples]


def _check_output(request: audio_pb2.SynthesizeRequest) -> None:
    violations = []
    if request.encoding not in ENCODINGS | {audio_pb2.AUDIO_ENCODING_UNSPECIFIED}:
        violations.append(("encoding", f"unknown encoding {request.encoding}"))
    if request.sample_rate_hz and not SYNTHESIS_RATES[0] <= request.sample_rate_hz <= SYNTHESIS_RATES[1]:
        violations.append(("sample_rate_hz", f"{request.sample_rate_hz} Hz; give {SYNTHESIS_RATES[0]} to "
                                             f"{SYNTHESIS_RATES[1]} Hz, or 0 for the engine's own"))
    if violations:
        raise InvalidArgument(violations)
