"""AudioService refuses bad input with INVALID_ARGUMENT (and field details) or RESOURCE_EXHAUSTED, and
keeps serving: corrupt audio, wrong or missing sample rates, empty, too long or too short audio,
streams in the wrong order, bad grammars, bad synthesis requests."""

from __future__ import annotations

import io

import grpc
import numpy as np
import pytest
import soundfile

from modalmesh.v1 import audio_pb2, audio_pb2_grpc
from services.runtime.errors import bad_request_of
from tests.support import start_service, wait_for

PCM16 = audio_pb2.AUDIO_ENCODING_PCM_S16LE
PCMF32 = audio_pb2.AUDIO_ENCODING_PCM_F32LE
WAV, FLAC = audio_pb2.AUDIO_ENCODING_WAV, audio_pb2.AUDIO_ENCODING_FLAC


@pytest.fixture(scope="module")
def audio_service(pki, tmp_path_factory):
    service = start_service("services.audio", pki, tmp_path_factory.mktemp("audio-bad"), "audio", model_threads=1,
                            transcription_max_streams=2, transcription_max_seconds=5)
    yield service
    assert service.health() == "SERVING"
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def audio(audio_service):
    channel = audio_service.channel()
    yield audio_pb2_grpc.AudioServiceStub(channel)
    channel.close()


def wav_bytes(seconds: float, rate: int = 16000, channels: int = 1, format: str = "WAV") -> bytes:
    samples = np.random.default_rng(0).normal(0, 0.1, (int(seconds * rate), channels)).astype(np.float32)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=format, subtype="PCM_16")
    return buffer.getvalue()


def pcm(seconds: float, rate: int = 16000) -> bytes:
    return np.zeros(int(seconds * rate), dtype="<i2").tobytes()


def expect(code, call, *args, field_prefix: str | None = None) -> list[tuple[str, str]]:
    with pytest.raises(grpc.RpcError) as error:
        result = call(*args, timeout=30)
        if not hasattr(result, "DESCRIPTOR"):   # a response stream: read it to the end
            list(result)
    assert error.value.code() == code, error.value.details()
    violations = bad_request_of(error.value)
    if field_prefix is not None:
        assert any(f.startswith(field_prefix) for f, _ in violations), violations
    return violations


def invalid(call, request, field_prefix: str):
    return expect(grpc.StatusCode.INVALID_ARGUMENT, call, request, field_prefix=field_prefix)


def voice(data: bytes, encoding: int = 0, rate: int = 0, channels: int = 0) -> audio_pb2.DetectVoiceRequest:
    return audio_pb2.DetectVoiceRequest(audio=audio_pb2.Audio(
        data=data, format=audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate, channels=channels)))


@pytest.mark.parametrize("name, request_, field", [
    ("empty", voice(b""), "audio.data"),
    ("random bytes", voice(np.random.default_rng(1).bytes(5000)), "audio.data"),
    ("text", voice(b"this is not audio at all"), "audio.data"),
    ("truncated wav header", voice(wav_bytes(1.0)[:30]), "audio.data"),
    ("corrupt flac", voice(b"fLaC" + np.random.default_rng(2).bytes(4000)), "audio.data"),
    ("wav declared flac", voice(wav_bytes(1.0), FLAC), "audio.format.encoding"),
    ("wav rate mismatch", voice(wav_bytes(1.0, 16000), WAV, 44100), "audio.format.sample_rate_hz"),
    ("wav channel mismatch", voice(wav_bytes(1.0, 16000, 2), WAV, 0, 1), "audio.format.channels"),
    ("wav rate too low", voice(wav_bytes(1.0, 4000)), "audio.data"),
    ("pcm without rate", voice(pcm(1.0), PCM16), "audio.format.sample_rate_hz"),
    ("pcm rate too high", voice(pcm(1.0), PCM16, 400_000), "audio.format.sample_rate_hz"),
    ("pcm too many channels", voice(pcm(1.0), PCM16, 16000, 9), "audio.format.channels"),
    ("pcm half frame", voice(pcm(1.0) + b"\x00", PCM16, 16000), "audio.data"),
    ("pcm stereo odd frames", voice(pcm(1.0)[:-2], PCM16, 16000, 2), "audio.data"),
    ("float pcm not finite", voice(np.full(1600, np.nan, "<f4").tobytes(), PCMF32, 16000), "audio.data"),
    ("too long", voice(np.zeros(8000 * 601, "<i2").tobytes(), PCM16, 8000), "audio.data"),
])
def test_detect_voice_refuses_bad_audio(audio, name, request_, field):
    invalid(audio.DetectVoice, request_, field)


def test_detect_voice_refuses_bad_settings(audio):
    request = voice(pcm(1.0), PCM16, 16000)
    request.threshold = 1.5
    invalid(audio.DetectVoice, request, "threshold")


@pytest.mark.parametrize("seconds, field", [(0.1, "audio.data"), (61.0, "audio.data")])
def test_score_anomaly_refuses_too_short_and_too_long_clips(audio, seconds, field):
    request = audio_pb2.ScoreAnomalyRequest(audio=audio_pb2.Audio(
        data=pcm(seconds, 8000), format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=8000)))
    invalid(audio.ScoreAnomaly, request, field)


def test_score_anomaly_refuses_corrupt_audio(audio):
    invalid(audio.ScoreAnomaly, audio_pb2.ScoreAnomalyRequest(audio=audio_pb2.Audio(data=b"RIFF....WAVEfmt junk")),
            "audio.data")


def stream(*messages):
    return iter(messages)


def config(**fields) -> audio_pb2.TranscribeRequest:
    fields.setdefault("format", audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000))
    return audio_pb2.TranscribeRequest(config=audio_pb2.TranscriptionConfig(**fields))


def chunk(data: bytes) -> audio_pb2.TranscribeRequest:
    return audio_pb2.TranscribeRequest(audio=data)


@pytest.mark.parametrize("name, messages, field", [
    ("audio before config", [chunk(pcm(0.5)), config()], "config"),
    ("no messages", [], "config"),
    ("config twice", [config(), chunk(pcm(0.2)), config()], "config"),
    ("no audio", [config()], "audio"),
    ("empty chunks only", [config(), chunk(b""), chunk(b"")], "audio"),
    ("stray byte at the end", [config(), chunk(pcm(0.5) + b"\x01")], "audio"),
    ("raw without rate", [config(format=audio_pb2.AudioFormat(encoding=PCM16)), chunk(pcm(0.5))],
     "config.format.sample_rate_hz"),
    ("corrupt wav", [config(format=audio_pb2.AudioFormat(encoding=WAV)), chunk(b"RIFF" + bytes(100))], "audio"),
    ("too long", [config(), *[chunk(pcm(1.0)) for _ in range(6)]], "audio"),   # this service's limit: 5 s
    ("unknown word", [config(phrases=["start the zorblatt"]), chunk(pcm(0.5))], "config"),
    ("phrase with no words", [config(phrases=["start the pump", "  ...  "]), chunk(pcm(0.5))], "config.phrases[1]"),
    ("bad grammar", [config(jsgf_grammar="this is not jsgf"), chunk(pcm(0.5))], "config"),
    ("phrases and grammar", [config(phrases=["stop"], jsgf_grammar="#JSGF V1.0;"), chunk(pcm(0.5))], "config"),
])
def test_transcribe_refuses_bad_streams(audio, name, messages, field):
    invalid(audio.Transcribe, stream(*messages), field)


def test_transcribe_refuses_streams_past_the_limit_and_frees_them(audio):
    held = []
    try:
        for _ in range(2):   # the service allows two open streams (MODALMESH_TRANSCRIPTION_MAX_STREAMS)
            requests = _Gate([config(), chunk(pcm(0.2))])
            call = audio.Transcribe(iter(requests), timeout=30)
            next(call)   # the stream is open: its first partial came back
            held.append((requests, call))
        expect(grpc.StatusCode.RESOURCE_EXHAUSTED, audio.Transcribe, stream(config(), chunk(pcm(0.2))))
    finally:
        for requests, call in held:
            call.cancel()
            requests.close()
    def transcribes() -> bool:
        try:
            replies = list(audio.Transcribe(stream(config(phrases=["stop the motor"]), chunk(pcm(0.3))), timeout=30))
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False
        return replies[-1].is_final

    wait_for(transcribes, timeout=10, interval=0.2)   # cancellation reaches the server a moment later
    for _ in range(3):   # the cancelled streams gave their decoders back for good
        assert transcribes()


class _Gate:
    """Requests for a stream that stays open (the client has not half-closed) until close()."""

    def __init__(self, first: list):
        import threading

        self.first = list(first)
        self.closed = threading.Event()

    def __iter__(self):
        yield from self.first
        self.closed.wait(30)

    def close(self):
        self.closed.set()


@pytest.mark.parametrize("fields, field", [
    ({"text": ""}, "text"),
    ({"text": "   \n "}, "text"),
    ({"text": "x" * 2001}, "text"),
    ({"text": "hello", "voice": "--help"}, "voice"),
    ({"text": "hello", "voice": "klingon"}, "voice"),
    ({"text": "hello", "words_per_minute": 20}, "words_per_minute"),
    ({"text": "hello", "sample_rate_hz": 1000}, "sample_rate_hz"),
    ({"text": "hello", "encoding": 99}, "encoding"),
])
def test_synthesize_refuses_bad_requests(audio, fields, field):
    invalid(audio.Synthesize, audio_pb2.SynthesizeRequest(**fields), field)


def test_text_that_looks_like_options_is_spoken_not_obeyed(audio):
    reply = audio.Synthesize(audio_pb2.SynthesizeRequest(text="--version -w /tmp/x.wav"))
    assert reply.duration_s > 1.0


def test_service_still_serves_after_bad_input(audio, audio_service):
    assert audio_service.health("modalmesh.v1.AudioService") == "SERVING"
    rng = np.random.default_rng(3)
    reply = audio.DetectVoice(voice(rng.normal(0, 0.1, 16000).astype("<f4").tobytes(), PCMF32, 16000))
    assert reply.duration_s == pytest.approx(1.0)
