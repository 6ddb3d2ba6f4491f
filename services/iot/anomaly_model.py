"""Anomaly scores for windows of pump telemetry: an autoencoder over how each sensor behaves in the window.

Each sensor of a window (`CENTRIFUGAL_PUMP.anomaly_window_rows` rows) is described by its shape
relative to its own noise, not by its level: the noise level, the largest jump, the share of
repeated readings, the linear and quadratic trend, the residual after that trend and its lag-one
autocorrelation. Slow wear moves levels over weeks and leaves these almost unchanged, so a worn
pump is not an anomaly; a stuck, spiking or drifting sensor, a bearing heating in minutes, a
cavitating flow or an oscillating speed are. Normal set-point changes move speed, flow, voltage
and then the temperatures together, and the autoencoder, trained on normal operation of
simulated pumps over their whole lives, learns those joint patterns.

Scoring is services/iot/window_autoencoder.py's: each sensor's scaled reconstruction error, the
largest of them the score; `threshold` was chosen on validation machines with injected faults.
"""

from __future__ import annotations

import numpy as np

from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow
from services.iot.window_autoencoder import SHAPE_FEATURES, AnomalyScore, WindowAnomalyModel
from services.iot.window_autoencoder import shape_features as _shape_features

__all__ = ["NAME", "ROWS", "SENSORS", "SHAPE_FEATURES", "REFERENCE_NOISE", "AnomalyScore", "AnomalyModel",
           "shape_features"]

NAME = "pump-anomaly-autoencoder"
ROWS = CENTRIFUGAL_PUMP.anomaly_window_rows
SENSORS = CENTRIFUGAL_PUMP.sensors
# Typical measurement noise per sensor (one standard deviation): the unit the noise feature is read in.
REFERENCE_NOISE = np.array([0.3, 0.0006, 0.15, 0.15, 0.1, 1500.0, 3000.0, 0.1, 0.4])


def shape_features(windows: np.ndarray) -> np.ndarray:
    """[batch, ROWS, sensors] -> [batch, sensors, SHAPE_FEATURES]."""
    return _shape_features(windows, REFERENCE_NOISE)


class AnomalyModel(WindowAnomalyModel):
    """Rows: TelemetryWindow of at least `min_rows` rows (the latest ROWS are scored). Results: AnomalyScore."""

    name = NAME
    weights_file = "anomaly.safetensors"
    rows = ROWS
    sensors = SENSORS

    def features(self, windows: np.ndarray) -> np.ndarray:
        return shape_features(windows)

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        values = (300 + rng.standard_normal((ROWS, len(SENSORS))) * REFERENCE_NOISE).astype(np.float32)
        self.run_batch([TelemetryWindow(np.arange(ROWS, dtype=np.int64) * 60_000, values)] * 4)
