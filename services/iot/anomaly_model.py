"""Anomaly scores for windows of pump telemetry: an autoencoder over how each sensor behaves in the window.

Each sensor of a window (`CENTRIFUGAL_PUMP.anomaly_window_rows` rows) is described by its shape
relative to its own noise, not by its level: the noise level, the largest jump, the share of
repeated readings, the linear and quadratic trend, the residual after that trend and its lag-one
autocorrelation. Slow wear moves levels over weeks and leaves these almost unchanged, so a worn
pump is not an anomaly; a stuck, spiking or drifting sensor, a bearing heating in minutes, a
cavitating flow or an oscillating speed are. Normal set-point changes move speed, flow, voltage
and then the temperatures together, and the autoencoder, trained on normal operation of
simulated pumps over their whole lives, learns those joint patterns.

Each sensor's error is its squared reconstruction error over its standardised features, divided by
the 99th percentile of that error on normal training windows; the score is the largest of these
(a fault usually shows on one or two sensors, and summing over all 72 features would bury it in
the others' normal scatter). `threshold` was chosen on validation machines with injected faults.
Per-sensor contributions are each sensor's share of the scaled errors, so `top_sensors` names
where to look.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow
from services.iot.packaged_network import PackagedNetwork

NAME = "pump-anomaly-autoencoder"
ROWS = CENTRIFUGAL_PUMP.anomaly_window_rows
SENSORS = CENTRIFUGAL_PUMP.sensors
SHAPE_FEATURES = ("noise", "jump", "repeats", "trend", "curvature", "residual", "step_residual", "autocorrelation")
# Typical measurement noise per sensor (one standard deviation): the unit the noise feature is read in.
REFERENCE_NOISE = np.array([0.3, 0.0006, 0.15, 0.15, 0.1, 1500.0, 3000.0, 0.1, 0.4])


@dataclass(frozen=True)
class AnomalyScore:
    score: float
    anomalous: bool
    contributions: tuple[float, ...]     # per sensor, CENTRIFUGAL_PUMP.sensors order, summing to 1

    def top_sensors(self, count: int = 3) -> list[str]:
        order = np.argsort(self.contributions)[::-1][:count]
        return [SENSORS[i] for i in order]


# -- features -------------------------------------------------------------------------------------

def _trend_basis(rows: int) -> np.ndarray:
    t = np.linspace(-1.0, 1.0, rows)
    return np.stack([np.ones(rows), t, t * t - (t * t).mean()], axis=1)


def shape_features(windows: np.ndarray) -> np.ndarray:
    """[batch, ROWS, sensors] -> [batch, sensors, SHAPE_FEATURES]."""
    x = windows.astype(np.float64)
    diffs = np.diff(x, axis=1)
    floor = REFERENCE_NOISE * 0.02
    noise = 1.4826 * np.median(np.abs(diffs), axis=1) / np.sqrt(2) + floor      # robust to jumps
    basis = _trend_basis(x.shape[1])
    coef = np.einsum("rk,brs->bks", np.linalg.pinv(basis).T, x)               # least-squares trend
    residual = x - np.einsum("rk,bks->brs", basis, coef)
    resid_std = residual.std(axis=1) + floor
    step_std = _best_step_residual(x) + floor
    centered = residual - residual.mean(axis=1, keepdims=True)
    autocorr = (centered[:, 1:] * centered[:, :-1]).sum(1) / ((centered ** 2).sum(1) + 1e-12)
    return np.stack([
        np.log(noise / REFERENCE_NOISE),
        np.log((np.abs(diffs).max(axis=1) + floor) / noise),
        (diffs == 0).mean(axis=1),
        np.arcsinh(coef[:, 1] / noise),
        np.arcsinh(coef[:, 2] / noise),
        np.log(resid_std / noise),
        np.log(step_std / noise),
        autocorr,
    ], axis=2).astype(np.float32)


def _best_step_residual(x: np.ndarray) -> np.ndarray:
    """Residual standard deviation of the best one-step (two-level) fit: a set-point change fits
    it; an oscillation, a ramp or spikes do not."""
    n = x.shape[1]
    total = x.sum(axis=1, keepdims=True)
    left = np.cumsum(x, axis=1)[:, :-1]                       # sums of the first k rows, k = 1..n-1
    k = np.arange(1, n)[None, :, None]
    # Between-level sum of squares explained by a break after row k; the best break explains most.
    explained = (left - k * total / n) ** 2 * n / (k * (n - k))
    variance = ((x - x.mean(axis=1, keepdims=True)) ** 2).sum(axis=1)
    return np.sqrt(np.maximum(variance - explained.max(axis=1), 0.0) / n)


# -- network --------------------------------------------------------------------------------------

class WindowAutoencoder(nn.Module):
    def __init__(self, inputs: int = len(SENSORS) * len(SHAPE_FEATURES), hidden: int = 64, code: int = 12):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decode = nn.Sequential(nn.ReLU(), nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# -- adapter --------------------------------------------------------------------------------------

class AnomalyModel(PackagedNetwork):
    """Rows: TelemetryWindow of at least `min_rows` rows (the latest ROWS are scored). Results: AnomalyScore."""

    name = NAME
    weights_file = "anomaly.safetensors"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_rows = ROWS
        self.threshold = float("nan")

    def build_network(self, card: dict) -> WindowAutoencoder:
        return WindowAutoencoder(hidden=card["hidden"], code=card["code"])

    def read_card(self, card: dict) -> None:
        self.sensor_error_scale = np.array(card["sensor_error_scale"])
        self.threshold = float(card["threshold"])

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        values = (300 + rng.standard_normal((ROWS, len(SENSORS))) * REFERENCE_NOISE).astype(np.float32)
        self.run_batch([TelemetryWindow(np.arange(ROWS, dtype=np.int64) * 60_000, values)] * 4)

    @classmethod
    def from_trained(cls, net: WindowAutoencoder, mean: np.ndarray, std: np.ndarray,
                     sensor_error_scale: np.ndarray | None = None, threshold: float = float("nan")) -> "AnomalyModel":
        """An in-memory model straight from training (the training script scores it before writing it)."""
        model = cls(device="cpu")
        model.net, model.threshold = net, threshold
        model.sensor_error_scale = np.ones(len(SENSORS)) if sensor_error_scale is None else sensor_error_scale
        model._mean, model._std = torch.from_numpy(mean), torch.from_numpy(std)
        return model

    def run_batch(self, rows: Sequence[TelemetryWindow]) -> list[AnomalyScore]:
        windows = np.stack([np.asarray(w.values[-ROWS:]) for w in rows])
        scores, per_sensor = self.score_windows(windows)
        shares = per_sensor / np.maximum(per_sensor.sum(axis=1, keepdims=True), 1e-12)
        return [AnomalyScore(float(s), bool(s > self.threshold), tuple(float(c) for c in share))
                for s, share in zip(scores, shares)]

    def score_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[batch, ROWS, sensors] -> scores [batch] and scaled errors per sensor [batch, sensors]."""
        per_sensor = self.sensor_errors(windows) / self.sensor_error_scale
        return per_sensor.max(axis=1), per_sensor

    @torch.inference_mode()
    def sensor_errors(self, windows: np.ndarray) -> np.ndarray:
        """[batch, ROWS, sensors] -> squared reconstruction error of each sensor's features [batch, sensors]."""
        features = torch.from_numpy(shape_features(windows).reshape(len(windows), -1)).to(self.device)
        x = (features - self._mean) / self._std
        error = ((self.net(x) - x) ** 2).float().cpu().numpy().reshape(len(windows), len(SENSORS), -1)
        return error.sum(axis=2)
