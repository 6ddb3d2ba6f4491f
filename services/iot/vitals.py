"""Bedside vital signs (the patient-vitals asset type) and a simulator of one patient's vitals minute by minute.

`PATIENT_VITALS` (defined with the other types in services/iot/asset_types.py) is what the healthcare
app registers per patient: six vital signs, one row per minute, anomaly windows of half an hour. Its
anomaly model is services/iot/vitals_anomaly.py; remaining life does not apply.

`simulate_vitals` draws a patient from a seed: a personal baseline within normal adult ranges, a
circadian rhythm (temperature lowest before dawn, heart rate and pressure lowest at night), a shared
slow activity process that moves heart rate, breathing and pressure together, measurement noise at
monitor resolution, and artefacts a monitor really shows that are not clinical events (a motion
spike of heart rate for a minute or two, a one-minute SpO2 probe-off dropout, a cuff reading off by
tens of mmHg). Episodes are physiologically coherent and ramp in and out:

- tachycardia: heart rate to 108-140/min, breathing a little faster;
- desaturation: SpO2 down to 84-91%, breathing much faster and heart rate up;
- hypotension: both pressures down (systolic to 75-92 mmHg), heart rate up to compensate;
- fever: temperature to 38.2-39.5 degC over half an hour or more, heart rate about 10/min per degree up.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from services.iot.asset_types import PATIENT_VITALS

__all__ = ["PATIENT_VITALS", "EPISODE_KINDS", "ADULT_NORMAL", "Episode", "episode_intensity", "simulate_vitals"]

HR, RR, SPO2, SBP, DBP, TEMP = range(len(PATIENT_VITALS.sensors))
EPISODE_KINDS = ("tachycardia", "desaturation", "hypotension", "fever")
# Normal adult resting ranges (low, high) per sensor: what the anomaly model reads levels against.
ADULT_NORMAL = np.array([(50.0, 100.0), (10.0, 20.0), (94.0, 100.0), (95.0, 140.0), (55.0, 90.0), (36.0, 37.6)])
# Measurement noise per sensor (one standard deviation), before rounding to monitor resolution.
NOISE = np.array([1.5, 0.7, 0.5, 3.0, 2.0, 0.04])
_DAY_MS = 24 * 3_600_000


@dataclass(frozen=True)
class Episode:
    kind: str            # one of EPISODE_KINDS
    start_minute: int
    minutes: int

    def __post_init__(self):
        if self.kind not in EPISODE_KINDS:
            raise ValueError(f"unknown episode kind {self.kind!r}; known: {list(EPISODE_KINDS)}")
        if self.minutes < 1 or self.start_minute < 0:
            raise ValueError(f"an episode starts at minute 0 or later and lasts a minute or more, not {self}")

    def intensity(self, minutes: int) -> np.ndarray:
        """[minutes] from 0 (not on) to 1 (full): a smooth ramp in, a plateau, a ramp out, within `minutes`."""
        ramp = max(1, min(40 if self.kind == "fever" else 10, self.minutes // 3))
        t = np.arange(minutes) - self.start_minute
        rising = np.clip((t + 1) / ramp, 0.0, 1.0)
        falling = np.clip((self.minutes - t) / ramp, 0.0, 1.0)
        level = np.minimum(rising, falling)
        return level * level * (3 - 2 * level)                    # smoothstep


def episode_intensity(minutes: int, episodes: Sequence[Episode]) -> np.ndarray:
    """[minutes]: the strongest episode's intensity each minute (0 where none is on)."""
    return np.max([e.intensity(minutes) for e in episodes], axis=0) if episodes else np.zeros(minutes)


def simulate_vitals(seed: int, start_ms: int, minutes: int,
                    episodes: Sequence[Episode] = ()) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps_ms int64 [minutes], values float32 [minutes, 6]) of one patient, in PATIENT_VITALS's
    sensor order. The same seed is the same patient (baseline, rhythm, noise and artefacts); `episodes`
    (minutes counted from `start_ms`) are laid on top."""
    rng = np.random.default_rng([seed, 0x7174A1])
    timestamps = start_ms + PATIENT_VITALS.sample_period_ms * np.arange(minutes, dtype=np.int64)
    values = _baseline(rng, timestamps)
    episode_rng = np.random.default_rng([seed, 0xE915])
    for episode in episodes:
        _apply_episode(values, episode, episode_rng)
    values += rng.standard_normal(values.shape) * NOISE
    _add_artefacts(values, rng)
    return timestamps, _as_monitor_reads(values)


def _baseline(rng: np.random.Generator, timestamps: np.ndarray) -> np.ndarray:
    """[minutes, 6]: personal resting levels, circadian rhythm and the shared activity process."""
    minutes = len(timestamps)
    resting = np.array([rng.uniform(58, 88), rng.uniform(12, 17), rng.uniform(95.5, 98.5),
                        rng.uniform(108, 134), 0.0, rng.uniform(36.5, 37.0)])
    resting[DBP] = rng.uniform(0.55, 0.65) * resting[SBP]
    # Hours since midnight; the body's rhythm peaks late afternoon and is lowest before dawn.
    hours = (timestamps % _DAY_MS) / 3_600_000.0
    phase = np.cos(2 * np.pi * (hours - 17.0) / 24.0)
    amplitude = np.array([rng.uniform(3, 7), rng.uniform(0.4, 1.0), 0.3, rng.uniform(4, 8), rng.uniform(2, 5),
                          rng.uniform(0.2, 0.35)])
    values = resting + phase[:, None] * amplitude
    # A slow activity process (AR(1), about 20 minutes): moving raises heart rate, breathing and pressure together.
    activity = _ar1(rng, minutes, tau_minutes=20.0)
    coupling = np.array([4.0, 0.6, 0.0, 3.0, 1.5, 0.0])
    values += activity[:, None] * coupling
    # Breathing and heart rate share a faster component too (respiratory sinus arrhythmia and effort).
    breath = _ar1(rng, minutes, tau_minutes=3.0)
    values[:, HR] += 1.2 * breath
    values[:, RR] += 0.5 * breath
    return values


def _ar1(rng: np.random.Generator, minutes: int, tau_minutes: float) -> np.ndarray:
    """Unit-variance AR(1) noise with correlation time `tau_minutes`."""
    a = np.exp(-1.0 / tau_minutes)
    shocks = rng.standard_normal(minutes) * np.sqrt(1 - a * a)
    out = np.empty(minutes)
    level = rng.standard_normal()
    for i in range(minutes):
        level = a * level + shocks[i]
        out[i] = level
    return out


def _apply_episode(values: np.ndarray, episode: Episode, rng: np.random.Generator) -> None:
    """Moves the episode's signals towards its drawn targets, each row by the episode's intensity there."""
    w = episode.intensity(len(values))[:, None]
    rest = np.median(values, axis=0)
    delta = np.zeros(values.shape[1])
    if episode.kind == "tachycardia":
        delta[HR] = rng.uniform(108, 140) - rest[HR]
        delta[RR] = rng.uniform(2, 5)
    elif episode.kind == "desaturation":
        delta[SPO2] = rng.uniform(84, 91) - rest[SPO2]
        delta[RR] = rng.uniform(8, 14)
        delta[HR] = rng.uniform(15, 28)
    elif episode.kind == "hypotension":
        delta[SBP] = rng.uniform(75, 92) - rest[SBP]
        delta[DBP] = rng.uniform(0.5, 0.7) * delta[SBP]
        delta[HR] = rng.uniform(18, 30)
    else:  # fever
        delta[TEMP] = rng.uniform(38.2, 39.5) - rest[TEMP]
        delta[HR] = 10.0 * delta[TEMP]
        delta[RR] = rng.uniform(2, 4)
    values += w * delta


def _add_artefacts(values: np.ndarray, rng: np.random.Generator) -> None:
    """Artefacts that are not clinical events: motion (heart rate up for a minute or two, about every
    2 h), a probe-off SpO2 dropout (one minute, about every 4 h), a cuff misread (one minute, about every 6 h)."""
    minutes = len(values)
    for start in np.flatnonzero(rng.random(minutes) < 1 / 120):
        length = int(rng.integers(1, 3))
        values[start:start + length, HR] += rng.uniform(15, 35)
    for start in np.flatnonzero(rng.random(minutes) < 1 / 240):
        values[start, SPO2] = rng.uniform(60, 85)
    for start in np.flatnonzero(rng.random(minutes) < 1 / 360):
        shift = rng.choice([-1.0, 1.0]) * rng.uniform(20, 40)
        values[start, SBP] += shift
        values[start, DBP] += 0.6 * shift


def _as_monitor_reads(values: np.ndarray) -> np.ndarray:
    """Whole numbers for rates, saturation and pressures, tenths of a degree; SpO2 at most 100%."""
    reads = np.round(values)
    reads[:, SPO2] = np.minimum(reads[:, SPO2], 100.0)
    reads[:, TEMP] = np.round(values[:, TEMP], 1)
    return reads.astype(np.float32)
