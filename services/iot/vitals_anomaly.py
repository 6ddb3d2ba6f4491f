"""Anomaly scores for windows of a patient's vital signs: an autoencoder over level and shape features.

For a patient, unlike a pump, the level is the finding: an SpO2 of 85% is an anomaly even when it
is perfectly flat. Each vital sign of a window (`PATIENT_VITALS.anomaly_window_rows` rows, half an
hour) is described by

- where it sits: the window's median and its latest third's median, against the normal adult
  range (`ADULT_NORMAL`), as a position in the range and as how far outside it they are;
- how it moved: the latest third's median against the first third's, in units of the sign's
  measurement noise;
- its shape relative to its noise (services/iot/window_autoencoder.py's shape features: noise,
  largest jump, repeats, trend, curvature, residuals, autocorrelation).

Medians make a one- or two-minute artefact (a motion spike of heart rate, a probe-off SpO2 dropout,
a cuff misread) move the level features little; the autoencoder, trained on normal patients'
windows with their artefacts, learns what shapes those leave. Scoring is the shared one: each
sign's scaled reconstruction error, the largest the score, `threshold` chosen on validation
patients with episodes (scripts/train_vitals_model.py).
"""

from __future__ import annotations

import numpy as np

from services.iot.asset_types import TelemetryWindow
from services.iot.vitals import ADULT_NORMAL, PATIENT_VITALS, simulate_vitals
from services.iot.window_autoencoder import SHAPE_FEATURES, WindowAnomalyModel, shape_features

NAME = "vitals-anomaly-autoencoder"
ROWS = PATIENT_VITALS.anomaly_window_rows
SENSORS = PATIENT_VITALS.sensors
LEVEL_FEATURES = ("position", "recent_position", "outside_range", "recent_outside_range", "change")
FEATURES = LEVEL_FEATURES + SHAPE_FEATURES
# One typical standard deviation of each sign's reading between minutes (monitor noise and resolution).
REFERENCE_NOISE = np.array([1.5, 0.8, 0.6, 3.0, 2.0, 0.05])
THIRD = ROWS // 3

_CENTER = ADULT_NORMAL.mean(axis=1)
_HALF_RANGE = (ADULT_NORMAL[:, 1] - ADULT_NORMAL[:, 0]) / 2


def level_features(windows: np.ndarray) -> np.ndarray:
    """[batch, ROWS, sensors] -> [batch, sensors, LEVEL_FEATURES]."""
    x = windows.astype(np.float64)
    whole = np.median(x, axis=1)
    early, recent = np.median(x[:, :THIRD], axis=1), np.median(x[:, -THIRD:], axis=1)
    return np.stack([
        (whole - _CENTER) / _HALF_RANGE,
        (recent - _CENTER) / _HALF_RANGE,
        _outside_range(whole),
        _outside_range(recent),
        np.arcsinh((recent - early) / REFERENCE_NOISE),
    ], axis=2).astype(np.float32)


def _outside_range(level: np.ndarray) -> np.ndarray:
    """How far above (+) or below (-) the normal adult range, in half-ranges; 0 inside it."""
    low, high = ADULT_NORMAL[:, 0], ADULT_NORMAL[:, 1]
    return (np.maximum(level - high, 0.0) - np.maximum(low - level, 0.0)) / _HALF_RANGE


def vitals_features(windows: np.ndarray) -> np.ndarray:
    """[batch, ROWS, sensors] -> [batch, sensors, FEATURES]."""
    return np.concatenate([level_features(windows), shape_features(windows, REFERENCE_NOISE)], axis=2)


class VitalsAnomalyModel(WindowAnomalyModel):
    """Rows: TelemetryWindow of at least ROWS vitals rows (the latest ROWS are scored). Results: AnomalyScore."""

    name = NAME
    weights_file = "vitals-anomaly/vitals-anomaly.safetensors"
    rows = ROWS
    sensors = SENSORS

    def features(self, windows: np.ndarray) -> np.ndarray:
        return vitals_features(windows)

    def warm_up(self) -> None:
        timestamps, values = simulate_vitals(0, 0, ROWS)
        self.run_batch([TelemetryWindow(timestamps, values)] * 4)
