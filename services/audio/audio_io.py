"""Audio in and out of the AudioService: WAV, FLAC and raw PCM to 16 kHz mono float32, and back.

Decoding runs on the caller's side of the batcher; each check raises InvalidArgument naming the
field, so bad audio never reaches a model.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from math import gcd

import numpy as np
import soundfile
from scipy.signal import resample_poly

from modalmesh.v1 import audio_pb2
from services.runtime.errors import InvalidArgument

MODEL_RATE = 16_000        # what every model of the service reads
MIN_RATE, MAX_RATE = 8_000, 192_000
MAX_CHANNELS = 8
RAW_DTYPES = {audio_pb2.AUDIO_ENCODING_PCM_S16LE: np.dtype("<i2"), audio_pb2.AUDIO_ENCODING_PCM_F32LE: np.dtype("<f4")}
CONTAINERS = {audio_pb2.AUDIO_ENCODING_WAV: "WAV", audio_pb2.AUDIO_ENCODING_FLAC: "FLAC"}


@dataclass(frozen=True)
class Clip:
    """Mono float32 samples at the model rate, and what the input was."""

    samples: np.ndarray
    source_rate: int
    source_channels: int

    @property
    def seconds(self) -> float:
        return len(self.samples) / MODEL_RATE


def decode(audio: audio_pb2.Audio, field: str = "audio", max_seconds: float = 600.0,
           min_seconds: float = 0.0) -> Clip:
    """The request's audio as a 16 kHz mono clip; INVALID_ARGUMENT for anything it cannot be."""
    fmt = audio.format
    if not audio.data:
        raise InvalidArgument((f"{field}.data", "empty audio"))
    if is_raw(fmt.encoding):
        rate, channels = check_raw_format(fmt, f"{field}.format")
        frames = raw_frames(audio.data, fmt.encoding, channels, f"{field}.data")
    else:
        frames, rate, channels = read_container(audio.data, fmt, field)
    seconds = len(frames) / rate
    if seconds > max_seconds:
        raise InvalidArgument((f"{field}.data", f"{seconds:.1f} s of audio exceed the limit of {max_seconds:g} s"))
    if seconds < min_seconds:
        raise InvalidArgument((f"{field}.data", f"{seconds:.3f} s of audio; at least {min_seconds:g} s is needed"))
    return Clip(to_model_rate(frames.mean(axis=1), rate), rate, channels)


def is_raw(encoding: int) -> bool:
    return encoding in RAW_DTYPES


def check_raw_format(fmt: audio_pb2.AudioFormat, field: str) -> tuple[int, int]:
    violations = []
    if not MIN_RATE <= fmt.sample_rate_hz <= MAX_RATE:
        violations.append((f"{field}.sample_rate_hz", f"{fmt.sample_rate_hz} Hz; raw PCM needs its rate, "
                                                      f"{MIN_RATE} to {MAX_RATE} Hz"))
    channels = fmt.channels or 1
    if channels > MAX_CHANNELS:
        violations.append((f"{field}.channels", f"{channels} channels; at most {MAX_CHANNELS}"))
    if violations:
        raise InvalidArgument(violations)
    return fmt.sample_rate_hz, channels


def raw_frames(data: bytes, encoding: int, channels: int, field: str) -> np.ndarray:
    """Raw interleaved PCM as float32 [frames, channels] in [-1, 1]."""
    dtype = RAW_DTYPES[encoding]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise InvalidArgument((field, f"{len(data)} bytes is not a whole number of {frame_bytes}-byte frames "
                                      f"({channels} channel(s) of {dtype.itemsize}-byte samples)"))
    samples = np.frombuffer(data, dtype=dtype).reshape(-1, channels)
    if dtype.kind == "i":
        return samples.astype(np.float32) / 32768.0
    if not np.isfinite(samples).all():
        raise InvalidArgument((field, "float samples must be finite"))
    return np.clip(samples, -1.0, 1.0).astype(np.float32)


def read_container(data: bytes, fmt: audio_pb2.AudioFormat, field: str) -> tuple[np.ndarray, int, int]:
    """A WAV or FLAC file as float32 [frames, channels], its rate and channel count."""
    kind, declared = sniff(data), CONTAINERS.get(fmt.encoding)
    if kind is None:
        raise InvalidArgument((f"{field}.data", f"not a {declared or 'WAV or FLAC'} file (no header); raw PCM needs "
                                                "format.encoding PCM_S16LE or PCM_F32LE with its sample rate"))
    if declared and declared != kind:
        raise InvalidArgument((f"{field}.format.encoding", f"{declared} given, the bytes are a {kind} file"))
    try:
        frames, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError) as error:
        raise InvalidArgument((f"{field}.data", f"corrupt or unsupported {kind} audio: {error}")) from None
    channels = frames.shape[1]
    violations = []
    if fmt.sample_rate_hz and fmt.sample_rate_hz != rate:
        violations.append((f"{field}.format.sample_rate_hz", f"{fmt.sample_rate_hz} Hz given, the file says {rate} Hz"))
    if fmt.channels and fmt.channels != channels:
        violations.append((f"{field}.format.channels", f"{fmt.channels} given, the file has {channels}"))
    if not MIN_RATE <= rate <= MAX_RATE:
        violations.append((f"{field}.data", f"the file's rate {rate} Hz is outside {MIN_RATE} to {MAX_RATE} Hz"))
    if channels > MAX_CHANNELS:
        violations.append((f"{field}.data", f"{channels} channels; at most {MAX_CHANNELS}"))
    if not len(frames):
        violations.append((f"{field}.data", "the file holds no samples"))
    if violations:
        raise InvalidArgument(violations)
    return frames, rate, channels


def sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        return "WAV"
    if data[:4] == b"fLaC":
        return "FLAC"
    return None


def to_model_rate(samples: np.ndarray, rate: int, target: int = MODEL_RATE) -> np.ndarray:
    """Polyphase resampling (anti-aliased) to ``target`` Hz."""
    if rate == target:
        return np.ascontiguousarray(samples, dtype=np.float32)
    divisor = gcd(rate, target)
    return resample_poly(samples, target // divisor, rate // divisor).astype(np.float32)


def encode(samples: np.ndarray, rate: int, encoding: int) -> audio_pb2.Audio:
    """Mono float32 samples as the requested encoding (WAV when unspecified)."""
    fmt = audio_pb2.AudioFormat(encoding=encoding or audio_pb2.AUDIO_ENCODING_WAV, sample_rate_hz=rate, channels=1)
    if is_raw(fmt.encoding):
        clipped = np.clip(samples, -1.0, 1.0)
        if fmt.encoding == audio_pb2.AUDIO_ENCODING_PCM_S16LE:
            data = (clipped * 32767).round().astype("<i2").tobytes()
        else:
            data = clipped.astype("<f4").tobytes()
        return audio_pb2.Audio(data=data, format=fmt)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format=CONTAINERS[fmt.encoding], subtype="PCM_16")
    return audio_pb2.Audio(data=buffer.getvalue(), format=fmt)
