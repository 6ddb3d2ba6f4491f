"""AudioService over a real socket with mutual TLS: voice activity, streaming transcription, machine-sound
anomalies and synthesis, with audio as WAV, FLAC and raw PCM at the common sample rates."""

from __future__ import annotations

import io
import subprocess

import grpc
import numpy as np
import pytest
import soundfile
from scipy.signal import resample_poly

from modalmesh.v1 import audio_pb2, audio_pb2_grpc, common_pb2
from services.audio.machine_sounds import FAULTS, machine_character, machine_sound
from tests.support import start_service

PCM16 = audio_pb2.AUDIO_ENCODING_PCM_S16LE
PCMF32 = audio_pb2.AUDIO_ENCODING_PCM_F32LE
WAV, FLAC = audio_pb2.AUDIO_ENCODING_WAV, audio_pb2.AUDIO_ENCODING_FLAC
COMMANDS = ["start the pump", "stop the motor", "open the valve", "close the valve",
            "check the bearing temperature", "start the pump and check the bearing temperature",
            "open the valve and stop the motor", "the motor is running hot"]


@pytest.fixture(scope="module")
def audio_service(pki, tmp_path_factory):
    service = start_service("services.audio", pki, tmp_path_factory.mktemp("audio"), "audio", model_threads=1)
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def audio(audio_service):
    channel = audio_service.channel()
    yield audio_pb2_grpc.AudioServiceStub(channel)
    channel.close()


def espeak(text: str, words_per_minute: int = 150) -> tuple[np.ndarray, int]:
    """Speech made by espeak-ng itself, outside the service (22,050 Hz mono float32)."""
    wav = subprocess.run(["espeak-ng", "-v", "en-us", "-s", str(words_per_minute), "--stdout", text],
                         capture_output=True, check=True).stdout
    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    return samples, rate


def padded(samples: np.ndarray, rate: int, before_s: float, after_s: float, noise: float = 0.003, seed: int = 0):
    """Speech with quiet room noise before and after."""
    rng = np.random.default_rng(seed)
    out = np.concatenate([np.zeros(int(before_s * rate)), samples, np.zeros(int(after_s * rate))])
    return (out + rng.normal(0, noise, len(out))).astype(np.float32)


def resampled(samples: np.ndarray, rate: int, target: int) -> np.ndarray:
    from math import gcd

    g = gcd(rate, target)
    return resample_poly(samples, target // g, rate // g).astype(np.float32)


def encoded(samples: np.ndarray, rate: int, encoding: int, channels: int = 1) -> audio_pb2.Audio:
    frames = np.repeat(samples[:, None], channels, axis=1) if channels > 1 else samples
    if encoding == PCM16:
        data = (np.clip(frames, -1, 1) * 32767).astype("<i2").tobytes()
    elif encoding == PCMF32:
        data = frames.astype("<f4").tobytes()
    else:
        buffer = io.BytesIO()
        soundfile.write(buffer, frames, rate, format="WAV" if encoding == WAV else "FLAC", subtype="PCM_16")
        data = buffer.getvalue()
    fmt = audio_pb2.AudioFormat(encoding=encoding, sample_rate_hz=rate, channels=channels)
    if encoding in (WAV, FLAC):
        fmt = audio_pb2.AudioFormat(encoding=encoding)   # the file says its own rate
    return audio_pb2.Audio(data=data, format=fmt)


def transcribe(audio, config: audio_pb2.TranscriptionConfig, data: bytes, chunk_bytes: int = 3200):
    def requests():
        yield audio_pb2.TranscribeRequest(config=config)
        for i in range(0, len(data), chunk_bytes):
            yield audio_pb2.TranscribeRequest(audio=data[i:i + chunk_bytes])
    return list(audio.Transcribe(requests(), timeout=60))


def fp32(tensor: common_pb2.Tensor) -> np.ndarray:
    assert tensor.dtype == common_pb2.DATA_TYPE_FP32
    return np.frombuffer(tensor.data, dtype="<f4").reshape(tuple(tensor.shape))


# -- voice activity -----------------------------------------------------------------------------------


def test_voice_activity_finds_espeak_speech_where_it_is(audio):
    speech, rate = espeak("The radial bearing of pump seven is running hot.")
    clip = padded(speech, rate, 1.5, 1.0)
    reply = audio.DetectVoice(audio_pb2.DetectVoiceRequest(audio=encoded(clip, rate, WAV)))
    assert reply.segments, "no speech found in espeak-ng speech"
    speech_s = len(speech) / rate
    assert abs(reply.segments[0].start_s - 1.5) < 0.3, reply.segments
    assert abs(reply.segments[-1].end_s - (1.5 + speech_s)) < 0.4, reply.segments
    assert reply.duration_s == pytest.approx(len(clip) / rate, abs=0.01)
    assert 0.4 < reply.speech_fraction < 0.9
    assert reply.model.name == "silero-vad" and "silero-vad" in reply.model.provenance


@pytest.mark.parametrize("kind", ["white", "machine", "silence"])
def test_voice_activity_finds_no_speech_in_noise(audio, kind):
    rng = np.random.default_rng(7)
    clip = {"white": lambda: rng.normal(0, 0.1, 16000 * 4),
            "machine": lambda: machine_sound(3, 4.0, 16000, "bearing", 0.7),
            "silence": lambda: np.zeros(16000 * 4)}[kind]().astype(np.float32)
    reply = audio.DetectVoice(audio_pb2.DetectVoiceRequest(audio=encoded(clip, 16000, PCMF32)))
    assert list(reply.segments) == [] and reply.speech_fraction == 0.0


@pytest.mark.parametrize("rate", [8000, 16000, 44100, 48000])
@pytest.mark.parametrize("encoding", [WAV, FLAC, PCM16, PCMF32])
def test_every_encoding_and_rate_reads_the_same_speech(audio, rate, encoding):
    speech, native = espeak("Open the valve and stop the motor.")
    clip = resampled(padded(speech, native, 1.0, 0.5), native, rate)
    channels = 2 if encoding == PCM16 and rate == 44100 else 1   # interleaved stereo is averaged
    reply = audio.DetectVoice(audio_pb2.DetectVoiceRequest(audio=encoded(clip, rate, encoding, channels)))
    assert reply.segments, (rate, encoding)
    assert abs(reply.segments[0].start_s - 1.0) < 0.3
    assert abs(reply.segments[-1].end_s - (1.0 + len(speech) / native)) < 0.4
    assert reply.duration_s == pytest.approx(len(clip) / rate, abs=0.01)


# -- transcription ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sentence", COMMANDS)
def test_transcription_with_phrases_recovers_espeak_speech(audio, sentence):
    speech, rate = espeak(sentence)
    clip = resampled(speech, rate, 16000)
    config = audio_pb2.TranscriptionConfig(format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000),
                                           phrases=COMMANDS)
    replies = transcribe(audio, config, encoded(clip, 16000, PCM16).data)
    final = replies[-1]
    assert final.is_final and final.text == sentence
    assert [w.word for w in final.words] == sentence.split()
    assert all(0 <= w.start_s < w.end_s <= final.audio_s + 0.05 for w in final.words)
    assert final.audio_s == pytest.approx(len(clip) / 16000, abs=0.01)


def test_transcription_streams_partial_hypotheses_as_audio_arrives(audio):
    sentence = "start the pump and check the bearing temperature"
    speech, rate = espeak(sentence)
    data = encoded(resampled(speech, rate, 16000), 16000, PCM16).data
    config = audio_pb2.TranscriptionConfig(format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000),
                                           phrases=COMMANDS)
    replies = transcribe(audio, config, data, chunk_bytes=3201)   # odd sizes: frames split across chunks
    partials, final = replies[:-1], replies[-1]
    assert len([p for p in partials if p.text]) >= 3, [p.text for p in partials]
    assert not any(p.is_final for p in partials) and final.is_final
    assert [p.audio_s for p in partials] == sorted(p.audio_s for p in partials)
    assert partials[-1].audio_s < final.audio_s or partials[-1].text != final.text
    assert final.text == sentence
    assert replies[0].model.name == "pocketsphinx-en-us" and "pocketsphinx" in replies[0].model.provenance
    assert final.model.name == "pocketsphinx-en-us" and not replies[1].HasField("model")


def test_transcription_of_a_wav_file_at_its_own_rate_and_a_jsgf_grammar(audio):
    speech, rate = espeak("close the valve")
    buffer = io.BytesIO()
    soundfile.write(buffer, speech, rate, format="WAV", subtype="PCM_16")
    grammar = ("#JSGF V1.0;\ngrammar valves;\n<action> = open | close;\n"
               "public <command> = <action> the (valve | pump);\n")
    config = audio_pb2.TranscriptionConfig(format=audio_pb2.AudioFormat(encoding=WAV), jsgf_grammar=grammar)
    final = transcribe(audio, config, buffer.getvalue(), chunk_bytes=10_000)[-1]
    assert rate == 22050 and final.is_final and final.text == "close the valve"


def test_streams_are_independent_of_what_the_decoder_heard_before(audio):
    speech, rate = espeak("open the valve")
    data = encoded(resampled(speech, rate, 16000), 16000, PCM16).data
    config = audio_pb2.TranscriptionConfig(format=audio_pb2.AudioFormat(encoding=PCM16, sample_rate_hz=16000),
                                           phrases=COMMANDS)
    finals = [transcribe(audio, config, data)[-1] for _ in range(3)]
    assert {f.text for f in finals} == {"open the valve"}
    assert len({tuple((w.word, w.start_s, w.end_s) for w in f.words) for f in finals}) == 1


# -- machine sounds -----------------------------------------------------------------------------------


def score(audio, clip: np.ndarray, rate: int = 16000) -> audio_pb2.ScoreAnomalyResponse:
    return audio.ScoreAnomaly(audio_pb2.ScoreAnomalyRequest(audio=encoded(clip, rate, PCMF32)))


def test_sound_anomaly_scores_separate_healthy_and_faulty_machines(audio):
    rng = np.random.default_rng(424242)   # machines of a seed the model never heard
    healthy, faulty = [], {fault: [] for fault in FAULTS}
    for _ in range(6):
        character = machine_character(rng)
        healthy.append(score(audio, machine_sound(rng, 2.0, 16000, machine=character)).score)
        for fault in FAULTS:
            faulty[fault].append(score(audio, machine_sound(rng, 2.0, 16000, fault, 0.8, machine=character)).score)
    for fault, scores in faulty.items():
        assert min(scores) > max(healthy), (fault, scores, healthy)
    reply = score(audio, machine_sound(5, 2.0, 16000, "bearing", 0.8))
    assert reply.anomalous and reply.score > reply.threshold > 0
    assert sum(s > reply.threshold for s in healthy) <= 1


def test_sound_anomaly_returns_the_spectrogram_it_read(audio):
    reply = score(audio, machine_sound(11, 3.0, 48000), rate=48000)   # resampled to 16 kHz
    log_mel = fp32(reply.log_mel)
    assert log_mel.shape[0] == 64 and log_mel.shape[1] == (3 * 16000 - 1024) // 512 + 1
    assert np.isfinite(log_mel).all() and log_mel.std() > 1
    windows = fp32(reply.window_scores)
    assert windows.shape == (log_mel.shape[1] - 4,)
    assert reply.frame_hop_s == pytest.approx(0.032) and reply.max_frequency_hz == 8000
    assert reply.model.name == "machine-sound-autoencoder"
    assert "scripts/train_machine_sound_model.py" in reply.model.provenance and reply.model.version


# -- synthesis ----------------------------------------------------------------------------------------


def test_synthesized_speech_is_heard_and_understood(audio):
    reply = audio.Synthesize(audio_pb2.SynthesizeRequest(text="Check the bearing temperature.",
                                                         sample_rate_hz=16000))
    assert reply.model.name == "espeak-ng" and reply.audio.format.encoding == WAV
    samples, rate = soundfile.read(io.BytesIO(reply.audio.data), dtype="float32")
    assert rate == 16000 and reply.duration_s == pytest.approx(len(samples) / rate, abs=1e-3) and reply.duration_s > 1
    voice = audio.DetectVoice(audio_pb2.DetectVoiceRequest(audio=reply.audio))
    assert voice.speech_fraction > 0.5
    config = audio_pb2.TranscriptionConfig(format=audio_pb2.AudioFormat(encoding=WAV), phrases=COMMANDS)
    assert transcribe(audio, config, reply.audio.data)[-1].text == "check the bearing temperature"


@pytest.mark.parametrize("encoding", [FLAC, PCM16, PCMF32])
def test_synthesis_in_other_encodings_and_options(audio, encoding):
    slow = audio.Synthesize(audio_pb2.SynthesizeRequest(text="open the valve", encoding=encoding,
                                                        words_per_minute=100, voice="en-gb"))
    fast = audio.Synthesize(audio_pb2.SynthesizeRequest(text="open the valve", encoding=encoding,
                                                        words_per_minute=300, voice="en-gb"))
    assert slow.audio.format.encoding == encoding and slow.audio.format.sample_rate_hz == 22050
    assert slow.duration_s > 1.5 * fast.duration_s
    voice = audio.DetectVoice(audio_pb2.DetectVoiceRequest(audio=slow.audio))
    assert voice.segments
