"""What the window anomaly models share: features of each sensor's behaviour in a window of telemetry,
an autoencoder trained on normal windows to reconstruct them, and a score per window from each
sensor's reconstruction error in units of its own normal scatter.

A model (services/iot/anomaly_model.py for pumps, services/iot/vitals_anomaly.py for patients) says
which rows and sensors it reads and how it describes them (`features`); scoring, the network, its
training and the threshold choice are the same for all of them.

Each sensor's error is its squared reconstruction error over its standardised features, divided by
the 99th percentile of that error on normal training windows; the score is the largest of these (a
fault usually shows on one or two sensors, and summing over every feature would bury it in the
others' normal scatter). Per-sensor contributions are each sensor's share of the scaled errors, so
`top_sensors` names where to look.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from services.iot.asset_types import TelemetryWindow
from services.iot.packaged_network import PackagedNetwork

SHAPE_FEATURES = ("noise", "jump", "repeats", "trend", "curvature", "residual", "step_residual", "autocorrelation")


@dataclass(frozen=True)
class AnomalyScore:
    score: float
    anomalous: bool
    contributions: tuple[float, ...]     # per sensor, in the model's sensor order, summing to 1
    sensors: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def top_sensors(self, count: int = 3) -> list[str]:
        order = np.argsort(self.contributions)[::-1][:count]
        return [self.sensors[i] for i in order]


# -- shape features -------------------------------------------------------------------------------

def _trend_basis(rows: int) -> np.ndarray:
    t = np.linspace(-1.0, 1.0, rows)
    return np.stack([np.ones(rows), t, t * t - (t * t).mean()], axis=1)


def shape_features(windows: np.ndarray, reference_noise: np.ndarray) -> np.ndarray:
    """[batch, rows, sensors] -> [batch, sensors, SHAPE_FEATURES]: each sensor's shape relative to its
    own noise, not its level (`reference_noise`: one typical standard deviation per sensor)."""
    x = windows.astype(np.float64)
    diffs = np.diff(x, axis=1)
    floor = reference_noise * 0.02
    noise = 1.4826 * np.median(np.abs(diffs), axis=1) / np.sqrt(2) + floor      # robust to jumps
    basis = _trend_basis(x.shape[1])
    coef = np.einsum("rk,brs->bks", np.linalg.pinv(basis).T, x)               # least-squares trend
    residual = x - np.einsum("rk,bks->brs", basis, coef)
    resid_std = residual.std(axis=1) + floor
    step_std = _best_step_residual(x) + floor
    centered = residual - residual.mean(axis=1, keepdims=True)
    autocorr = (centered[:, 1:] * centered[:, :-1]).sum(1) / ((centered ** 2).sum(1) + 1e-12)
    return np.stack([
        np.log(noise / reference_noise),
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
    def __init__(self, inputs: int, hidden: int = 64, code: int = 12):
        super().__init__()
        self.encode = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, code))
        self.decode = nn.Sequential(nn.ReLU(), nn.Linear(code, hidden), nn.ReLU(), nn.Linear(hidden, inputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


# -- adapter --------------------------------------------------------------------------------------

class WindowAnomalyModel(PackagedNetwork):
    """Rows: TelemetryWindow of at least `min_rows` rows (the latest `rows` are scored). Results: AnomalyScore."""

    rows: int
    sensors: tuple[str, ...]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_rows = self.rows
        self.threshold = float("nan")

    def features(self, windows: np.ndarray) -> np.ndarray:
        """[batch, rows, sensors] -> [batch, sensors, features per sensor]."""
        raise NotImplementedError

    def build_network(self, card: dict) -> WindowAutoencoder:
        return WindowAutoencoder(len(card["feature_mean"]), hidden=card["hidden"], code=card["code"])

    def read_card(self, card: dict) -> None:
        self.sensor_error_scale = np.array(card["sensor_error_scale"])
        self.threshold = float(card["threshold"])

    @classmethod
    def from_trained(cls, net: WindowAutoencoder, mean: np.ndarray, std: np.ndarray,
                     sensor_error_scale: np.ndarray | None = None, threshold: float = float("nan")):
        """An in-memory model straight from training (the training script scores it before writing it)."""
        model = cls(device="cpu")
        model.net, model.threshold = net, threshold
        model.sensor_error_scale = np.ones(len(cls.sensors)) if sensor_error_scale is None else sensor_error_scale
        model._mean, model._std = torch.from_numpy(mean), torch.from_numpy(std)
        return model

    def run_batch(self, rows: Sequence[TelemetryWindow]) -> list[AnomalyScore]:
        windows = np.stack([np.asarray(w.values[-self.rows:]) for w in rows])
        scores, per_sensor = self.score_windows(windows)
        shares = per_sensor / np.maximum(per_sensor.sum(axis=1, keepdims=True), 1e-12)
        return [AnomalyScore(float(s), bool(s > self.threshold), tuple(float(c) for c in share), self.sensors)
                for s, share in zip(scores, shares)]

    def score_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """[batch, rows, sensors] -> scores [batch] and scaled errors per sensor [batch, sensors]."""
        per_sensor = self.sensor_errors(windows) / self.sensor_error_scale
        return per_sensor.max(axis=1), per_sensor

    @torch.inference_mode()
    def sensor_errors(self, windows: np.ndarray) -> np.ndarray:
        """[batch, rows, sensors] -> squared reconstruction error of each sensor's features [batch, sensors]."""
        features = torch.from_numpy(self.features(windows).reshape(len(windows), -1)).to(self.device)
        x = (features - self._mean) / self._std
        error = ((self.net(x) - x) ** 2).float().cpu().numpy().reshape(len(windows), len(self.sensors), -1)
        return error.sum(axis=2)


# -- training -------------------------------------------------------------------------------------

def fit_autoencoder(features: np.ndarray, epochs: int, seed: int, hidden: int = 64, code: int = 12,
                    log: Callable[[str], None] = print) -> tuple[WindowAutoencoder, np.ndarray, np.ndarray]:
    """An autoencoder fitted to normal windows' features [n, inputs]; returns it with the feature
    mean and standard deviation it reads them by."""
    mean = features.mean(0)
    std = np.maximum(features.std(0), 0.05)          # a feature that never moves in normal operation
    torch.manual_seed(seed)
    net = WindowAutoencoder(features.shape[1], hidden=hidden, code=code)
    xt = torch.from_numpy((features - mean) / std)
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-5)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for i in range(0, len(xt), 512):
            batch = xt[order[i:i + 512]]
            loss = ((net(batch) - batch) ** 2).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        log(f"  anomaly epoch {epoch + 1}/{epochs}: loss {total / len(xt):.5f}")
    net.eval()
    return net, mean.astype(np.float32), std.astype(np.float32)


def calibrate(model: WindowAnomalyModel, normal: np.ndarray, windows: np.ndarray, labels: np.ndarray) -> None:
    """Each sensor's error in units of its own normal scatter (99th percentile on `normal` training
    windows); then the threshold with the best F1 on labelled validation `windows`."""
    model.sensor_error_scale = np.quantile(model.sensor_errors(normal), 0.99, axis=0)
    scores, _ = model.score_windows(windows)
    model.threshold = best_threshold(scores, labels)


def f1_at(scores, labels, threshold) -> tuple[float, float, float]:
    flagged = scores > threshold
    tp = float(np.sum(flagged & labels))
    precision = tp / max(flagged.sum(), 1)
    recall = tp / max(labels.sum(), 1)
    return 2 * precision * recall / max(precision + recall, 1e-12), precision, recall


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    candidates = np.quantile(scores, np.linspace(0.3, 0.999, 400))
    return float(max(candidates, key=lambda t: f1_at(scores, labels, t)[0]))


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    order = np.argsort(scores)
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    pos = labels.sum()
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * (len(labels) - pos)))
