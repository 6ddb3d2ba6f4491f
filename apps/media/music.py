"""The studio's music bed: a quiet synthesised backing track whose mood follows the picture style.

Each style has a chord progression, a tempo and an instrumentation (``MOODS``): soft pads that swell in and
fade out slowly, a bass on each chord's root, and for the lighter moods an arpeggio of bell-like notes. A small
room reverb (noise with a decaying envelope, convolved) blends them, and the bed fades in and out. The seed
transposes the key and picks the arpeggio's pattern, so a job's music is the same every time it is made.
Also: WAV writing (atomic) and reading, as the video assembly reads narrations and music.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import fftconvolve

from services.audio.audio_io import to_model_rate

TARGET_RMS = 0.1          # -20 dBFS: the video mixes the bed relative to the narration anyway
PEAK_LIMIT = 0.9
MAX_SECONDS = 3600.0


@dataclass(frozen=True)
class Mood:
    chords: tuple[tuple[int, ...], ...]   # semitones above the key's root (MIDI note ``root``) per chord
    root: int                             # MIDI note of the key, before the seed's transposition
    beats_per_minute: float
    beats_per_chord: int
    arpeggio: bool
    brightness: float                     # weight of the pads' upper partials: 0 dark .. 1 bright
    wobble_hz: float = 0.0                # a slow pitch wobble, like a worn tape


# Voicings written out, so each progression moves by small steps (the way a pianist would play it).
MOODS = {
    "natural": Mood(((0, 4, 7, 11), (5, 9, 12, 16), (-3, 4, 7, 12), (7, 11, 14, 17)), 55, 76, 4, True, 0.5),
    "storybook": Mood(((0, 4, 7, 12), (-5, 2, 7, 11), (-3, 4, 9, 12), (-7, 5, 9, 12)), 60, 72, 4, True, 0.6),
    "watercolor": Mood(((0, 4, 7, 11), (2, 5, 9, 12), (-2, 5, 9, 14), (0, 4, 7, 14)), 53, 66, 4, True, 0.45),
    "sketch": Mood(((0, 4, 7, 12), (5, 9, 12, 17), (0, 4, 7, 12), (7, 11, 14, 19)), 62, 92, 4, True, 0.7),
    "cinematic": Mood(((0, 3, 7, 12), (-4, 3, 8, 12), (3, 7, 10, 15), (-2, 5, 10, 14)), 50, 56, 8, False, 0.35),
    "vintage": Mood(((2, 5, 9, 12), (7, 11, 14, 17), (0, 4, 7, 11), (-3, 4, 7, 12)), 58, 80, 4, True, 0.3, 0.5),
    "noir": Mood(((0, 3, 7, 10), (5, 8, 12, 15), (-1, 2, 5, 7), (0, 3, 7, 12)), 57, 60, 8, False, 0.25, 0.2),
}
DEFAULT_MOOD = "natural"   # the unstyled picture, and any style without a mood of its own
ARPEGGIO_PATTERNS = ((0, 1, 2, 3, 2, 1, 0, 1), (0, 2, 1, 3, 0, 2, 1, 3), (3, 2, 1, 0, 1, 2, 3, 2),
                     (0, 1, 2, 1, 3, 1, 2, 1))


def music_bed(duration_s: float, style: str, seed: int, sample_rate: int = 22050) -> np.ndarray:
    """``duration_s`` of music in the mood of ``style`` (float32 mono at ``sample_rate``, RMS -20 dBFS);
    the same seed gives the same samples."""
    if not (np.isfinite(duration_s) and 0 < duration_s <= MAX_SECONDS):
        raise ValueError(f"a music bed lasts more than 0 and at most {MAX_SECONDS:.0f} s, not {duration_s}")
    if not 8000 <= sample_rate <= 192_000:
        raise ValueError(f"sample_rate {sample_rate} Hz is outside 8000 to 192000 Hz")
    mood = MOODS.get(style, MOODS[DEFAULT_MOOD])
    rng = np.random.default_rng(seed)
    root = mood.root + int(rng.integers(-3, 4))
    pattern = ARPEGGIO_PATTERNS[int(rng.integers(len(ARPEGGIO_PATTERNS)))]
    total = int(round(duration_s * sample_rate))
    beat_s = 60.0 / mood.beats_per_minute
    chord_s = beat_s * mood.beats_per_chord
    track = np.zeros(total + 3 * sample_rate, np.float64)   # room for the last notes' release, cut below
    for index in range(int(np.ceil(duration_s / chord_s))):
        chord = [root + step for step in mood.chords[index % len(mood.chords)]]
        start = index * chord_s
        for note in chord:
            _add(track, _pad(note, chord_s, mood, sample_rate), start, sample_rate, 0.16)
        _add(track, _bass(_bass_note(chord[0]), chord_s, sample_rate), start, sample_rate, 0.32)
        if mood.arpeggio:
            for step in range(2 * mood.beats_per_chord):     # eighth notes
                note = chord[pattern[step % len(pattern)]] + 12
                _add(track, _bell(note, 2 * beat_s, sample_rate), start + step * beat_s / 2, sample_rate, 0.07)
    track = track[:total]
    track = track + 0.22 * _reverb(track, rng, sample_rate)
    return _finish(track * _fades(total, sample_rate), sample_rate)


def write_wav(path: Path, samples: np.ndarray, sample_rate: int) -> None:
    """16-bit PCM WAV, written under a temporary name, flushed to disk and renamed: a WAV that exists is whole."""
    samples = np.asarray(samples, dtype=np.float32)
    if not np.isfinite(samples).all():
        raise ValueError("samples must be finite")
    path = Path(path)
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        with open(partial, "wb") as file:
            soundfile.write(file, np.clip(samples, -1.0, 1.0), sample_rate, format="WAV", subtype="PCM_16")
            file.flush()
            os.fsync(file.fileno())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def read_wav(path: Path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """A WAV (or FLAC) file as float32 mono samples (channels averaged) and their rate, resampled to
    ``sample_rate`` when one is given. ValueError, naming the file, when it cannot be read or holds nothing."""
    try:
        frames, rate = soundfile.read(path, dtype="float32", always_2d=True)
    except (soundfile.LibsndfileError, RuntimeError, ValueError, OSError) as error:
        raise ValueError(f"{Path(path).name}: not a readable WAV file ({error})") from None
    if not len(frames):
        raise ValueError(f"{Path(path).name}: the WAV file holds no samples")
    samples = frames.mean(axis=1)
    if not np.isfinite(samples).all():
        raise ValueError(f"{Path(path).name}: the WAV file holds samples that are not finite")
    if sample_rate and sample_rate != rate:
        return to_model_rate(samples, rate, sample_rate), sample_rate
    return np.ascontiguousarray(samples, dtype=np.float32), rate


def midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69) / 12)


def _pad(note: int, length_s: float, mood: Mood, rate: int) -> np.ndarray:
    """A soft pad note: two slightly detuned voices of a few partials, a slow attack and a long release
    that overlaps the next chord, so chords melt into each other."""
    attack, release = min(1.2, length_s / 3), 1.6
    t = np.arange(int((length_s + release) * rate)) / rate
    hz = midi_hz(note) * (1 + 0.004 * np.sin(2 * np.pi * mood.wobble_hz * t)) if mood.wobble_hz else midi_hz(note)
    phase = 2 * np.pi * np.cumsum(np.broadcast_to(hz, t.shape)) / rate
    partials = ((1, 1.0), (2, 0.35 * mood.brightness), (3, 0.15 * mood.brightness), (4, 0.06 * mood.brightness))
    tone = sum(weight * (np.sin(k * phase * 1.002) + np.sin(k * phase * 0.998)) for k, weight in partials) / 2
    envelope = np.clip(t / attack, 0, 1) * np.clip((length_s + release - t) / release, 0, 1)
    return tone * envelope ** 2      # squared: the swell starts and ends gently


def _bass_note(note: int) -> int:
    """Two octaves under the chord's lowest note, but no lower than C2 (65 Hz), which small speakers still play."""
    note -= 24
    while note < 36:
        note += 12
    return note


def _bass(note: int, length_s: float, rate: int) -> np.ndarray:
    t = np.arange(int((length_s + 0.4) * rate)) / rate
    phase = 2 * np.pi * midi_hz(note) * t
    tone = np.sin(phase) + 0.25 * np.sin(2 * phase)
    envelope = np.clip(t / 0.03, 0, 1) * (0.55 + 0.45 * np.exp(-t / 0.6)) * np.clip((length_s + 0.4 - t) / 0.4, 0, 1)
    return tone * envelope


def _bell(note: int, length_s: float, rate: int) -> np.ndarray:
    t = np.arange(int(length_s * rate)) / rate
    phase = 2 * np.pi * midi_hz(note) * t
    tone = np.sin(phase) + 0.3 * np.sin(2 * phase) * np.exp(-t / 0.15)
    return tone * np.clip(t / 0.008, 0, 1) * np.exp(-t / 0.45) * np.clip((length_s - t) / 0.05, 0, 1)


def _add(track: np.ndarray, sound: np.ndarray, start_s: float, rate: int, gain: float) -> None:
    start = int(round(start_s * rate))
    end = min(len(track), start + len(sound))
    if end > start:
        track[start:end] += gain * sound[:end - start]


def _reverb(track: np.ndarray, rng: np.random.Generator, rate: int) -> np.ndarray:
    """A small room: the track convolved with 0.9 s of noise decaying by 60 dB, after a 20 ms pre-delay."""
    t = np.arange(int(0.9 * rate)) / rate
    impulse = rng.standard_normal(len(t)) * np.exp(-6.9 * t / 0.9)
    impulse = np.concatenate([np.zeros(int(0.02 * rate)), impulse / np.sqrt(np.sum(impulse ** 2))])
    return fftconvolve(track, impulse)[:len(track)]


def _fades(total: int, rate: int) -> np.ndarray:
    fade_in, fade_out = min(int(2.0 * rate), total // 4), min(int(3.0 * rate), total // 3)
    gain = np.ones(total)
    if fade_in:
        gain[:fade_in] = np.linspace(0, 1, fade_in) ** 2
    if fade_out:
        gain[total - fade_out:] *= np.linspace(1, 0, fade_out) ** 2
    return gain


def _finish(track: np.ndarray, rate: int) -> np.ndarray:
    """Normalised to TARGET_RMS over the part past the fade-in, then held under PEAK_LIMIT."""
    body = track[min(len(track) - 1, int(2.0 * rate)):]
    rms = float(np.sqrt(np.mean(body ** 2))) if len(body) else 0.0
    if rms > 0:
        track = track * (TARGET_RMS / rms)
    peak = float(np.max(np.abs(track))) if len(track) else 0.0
    if peak > PEAK_LIMIT:
        track = track * (PEAK_LIMIT / peak)
    return track.astype(np.float32)
