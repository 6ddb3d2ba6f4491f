"""Synthetic machine sounds: a pump or motor running, with or without an injected mechanical fault.

The sound-anomaly model is trained on these (scripts/train_machine_sound_model.py) and the
manufacturing app's fleet simulator makes each machine's clip with the same function, so a
machine's wear shows in what its microphone hears.

A healthy machine is an electrical hum (mains frequency and its harmonics), a shaft-rate tone with
harmonics, a blade-pass tone, a slow load variation that moves their levels and pitch a little,
and broadband background noise. Faults add, with a severity in [0, 1]:

- ``bearing``: a rolling-element defect. Each time a ball passes the defect it strikes, and the
  strike rings a structural resonance (2.5-5 kHz) that decays in a few milliseconds; the strikes
  come at the outer-race defect frequency (3-5 times the shaft rate), modulated by the load zone.
- ``impact``: loose parts knocking: sparse, strong broadband transients at random times.
- ``rubbing``: a rotor rubbing its casing: band-limited friction noise (1-6 kHz) that rises and
  falls once per revolution, with stick-slip squeal harmonics.
"""

from __future__ import annotations

import numpy as np

FAULTS = ("bearing", "impact", "rubbing")


def machine_sound(rng: int | np.random.Generator | None, seconds: float = 2.0, sample_rate: int = 16_000,
                  fault: str | None = None, severity: float = 0.0, machine: dict | None = None) -> np.ndarray:
    """A mono float32 clip in [-1, 1] of one machine, ``fault`` (one of FAULTS) at ``severity``.

    ``rng`` is a seed or a numpy Generator; ``machine`` fixes a machine's own character (from
    ``machine_character``) so that successive clips of one machine sound alike; without it each
    clip is a new random machine.
    """
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"unknown fault {fault!r}; known: {', '.join(FAULTS)}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError("severity must be in [0, 1]")
    rng = np.random.default_rng(rng)
    character = machine or machine_character(rng)
    n = int(round(seconds * sample_rate))
    t = np.arange(n) / sample_rate
    load = _load_variation(rng, t)
    clip = _healthy(rng, t, sample_rate, character, load)
    level = np.sqrt(np.mean(clip ** 2)) + 1e-9
    if fault is not None and severity > 0:
        clip = clip + level * _FAULT_SOUNDS[fault](rng, t, sample_rate, character, severity)
    gain = character["gain"] * 10 ** (rng.uniform(-2, 2) / 20)   # microphone placement varies a little
    clip = clip / (np.max(np.abs(clip)) + 1e-9) * gain
    return clip.astype(np.float32)


def machine_character(rng: int | np.random.Generator | None) -> dict:
    """What makes one machine sound like itself: speeds, harmonic levels, noise level, gain."""
    rng = np.random.default_rng(rng)
    return {
        "mains_hz": float(rng.choice([50.0, 60.0])),
        "shaft_hz": float(rng.uniform(24.0, 49.0)),         # 1440-2940 rpm
        "blades": int(rng.integers(5, 9)),
        "hum_harmonics": rng.uniform(0.1, 1.0, size=6).tolist(),
        "shaft_harmonics": rng.uniform(0.1, 0.8, size=8).tolist(),
        "noise_level": float(rng.uniform(0.05, 0.25)),
        "resonance_hz": float(rng.uniform(2500.0, 5000.0)),
        "defect_ratio": float(rng.uniform(3.0, 5.0)),        # outer-race defect frequency / shaft rate
        "gain": float(10 ** (rng.uniform(-12, -3) / 20)),
    }


def _load_variation(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """A slow random walk of the machine's load around 1, a few percent over seconds."""
    period = rng.uniform(1.5, 6.0)
    return 1.0 + rng.uniform(0.01, 0.06) * np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))


def _healthy(rng, t, sample_rate, c, load) -> np.ndarray:
    nyquist = sample_rate / 2
    sound = np.zeros_like(t)
    for k, amplitude in enumerate(c["hum_harmonics"], start=1):   # electrical hum at twice the mains rate
        f = 2 * c["mains_hz"] * k
        if f < nyquist:
            sound += amplitude * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi))
    phase = 2 * np.pi * np.cumsum(c["shaft_hz"] * load) / sample_rate   # speed follows the load
    for k, amplitude in enumerate(c["shaft_harmonics"], start=1):
        if c["shaft_hz"] * k < nyquist:
            sound += amplitude * load * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    blade = c["blades"] * phase
    sound += 0.5 * load * np.sin(blade) + 0.2 * np.sin(2 * blade + rng.uniform(0, 2 * np.pi))
    level = np.sqrt(np.mean(sound ** 2))
    return sound + c["noise_level"] * level * 4 * _pinkish_noise(rng, len(t))


def _pinkish_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """Noise whose power falls with frequency (1/f), unit RMS: machine rooms are not white."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum /= np.sqrt(np.maximum(np.arange(len(spectrum)), 1.0))
    noise = np.fft.irfft(spectrum, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def _ringing(sample_rate: int, frequency: float, decay_s: float) -> np.ndarray:
    """The impulse response of a structural resonance: a decaying sinusoid."""
    t = np.arange(int(6 * decay_s * sample_rate)) / sample_rate
    return np.exp(-t / decay_s) * np.sin(2 * np.pi * min(frequency, 0.45 * sample_rate) * t)


def _bearing(rng, t, sample_rate, c, severity) -> np.ndarray:
    defect_hz = c["shaft_hz"] * c["defect_ratio"]
    strikes = np.zeros_like(t)
    times = np.arange(rng.uniform(0, 1 / defect_hz), t[-1], 1 / defect_hz)
    jitter = rng.normal(0, 0.01 / defect_hz, len(times))   # balls slip a little
    index = np.clip(((times + jitter) * sample_rate).astype(int), 0, len(t) - 1)
    load_zone = 0.6 + 0.4 * np.cos(2 * np.pi * c["shaft_hz"] * times)   # strikes harder in the load zone
    strikes[index] = load_zone
    sound = np.convolve(strikes, _ringing(sample_rate, c["resonance_hz"], rng.uniform(0.0008, 0.002)))[:len(t)]
    return 0.3 * severity * sound / (np.sqrt(np.mean(sound ** 2)) + 1e-12)


def _impact(rng, t, sample_rate, c, severity) -> np.ndarray:
    knocks = np.zeros_like(t)
    count = max(1, rng.poisson(2.5 * t[-1]))
    index = rng.integers(0, len(t), count)
    knocks[index] = rng.uniform(0.5, 1.0, count)
    body = _ringing(sample_rate, rng.uniform(600, 2500), rng.uniform(0.004, 0.012))
    rattle = _ringing(sample_rate, rng.uniform(3000, 6000), 0.002)
    body[:len(rattle)] += 0.5 * rattle
    click = np.convolve(knocks, body)[:len(t)]
    return 3.0 * severity * click


def _rubbing(rng, t, sample_rate, c, severity) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    high = min(6000.0, 0.45 * sample_rate)
    band = sosfilt(butter(4, [1000.0, high], btype="band", fs=sample_rate, output="sos"), rng.standard_normal(len(t)))
    band /= np.sqrt(np.mean(band ** 2)) + 1e-12
    contact = np.clip(np.sin(2 * np.pi * c["shaft_hz"] * t + rng.uniform(0, 2 * np.pi)), 0, None) ** 2
    squeal_hz = rng.uniform(1200, 3000)
    squeal = sum(np.sin(2 * np.pi * k * squeal_hz * t) / k for k in (1, 2, 3) if k * squeal_hz < 0.45 * sample_rate)
    return 0.6 * severity * contact * (band + 0.8 * squeal)


_FAULT_SOUNDS = {"bearing": _bearing, "impact": _impact, "rubbing": _rubbing}
