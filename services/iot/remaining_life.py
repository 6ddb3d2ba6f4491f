"""Remaining useful life of a centrifugal pump from up to a week of its telemetry.

The latest rows (at most `CENTRIFUGAL_PUMP.window_rows`, a week; at least `min_rows`, a day) are
cut by timestamp into one-hour cycles counted back from the latest row; each cycle becomes the mean
of every sensor plus four load-normalised health signals (bearing and oil temperature rise over
ambient per unit of speed squared, flow per unit of speed), because friction heat grows with speed
squared and the duty cycle changes the speed. The model always reads `HISTORY_HOURS` cycles: hours
before the first row repeat the oldest one and are marked absent in a presence channel. Three more
inputs, the same at every cycle, say how much history there is and how fast each health signal has
been moving over all of it (least-squares slope per hour): how worn a pump is shows in one day, how
fast it is wearing needs the longer span, and the rate is what tells a slow-wearing pump from a
fast-wearing one at the same wear. A small 1-D CNN reads the cycles and gives a point estimate and a
5%-95% quantile pair; the interval is then widened by a margin chosen on validation machines
(conformalised quantile regression) so that it covers 90% of held-out truths. The margin depends on
the point estimate (`MARGIN_BINS`): near the cap nearly every truth is "150 or more" and a small
margin covers it, while late in life the error is larger; one margin for all would cover the many
early windows and miss the few late ones that matter.

Remaining life is capped at `RUL_CAP` cycles, as C-MAPSS models are (at 125 there): wear that
ends a pump's life in 1500 hours barely shows in a week of telemetry early on, while the last
week of a life shows clearly. An estimate of 150 reads "150 cycles or more"; the training script
also reports the error against the uncapped truth (see docs/models.md).

Fewer rows than `min_rows`: the service refuses the request (a shorter history has not been seen
in training). More rows than a week: only the latest week is read. Gaps in the rows leave their
hour empty; an empty hour repeats the nearest older one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow
from services.iot.packaged_network import MODELS_DIR, PackagedNetwork  # noqa: F401 - MODELS_DIR: scripts and tests

NAME = "pump-remaining-life"
HISTORY_HOURS = CENTRIFUGAL_PUMP.window_rows * CENTRIFUGAL_PUMP.sample_period_ms // 3_600_000   # a week
MIN_HOURS = 24       # a fresh asset gets an estimate after a day
HOUR_MS = 3_600_000
NOMINAL_SPEED = 376.991118431
S = {name: i for i, name in enumerate(CENTRIFUGAL_PUMP.sensors)}
FEATURES = CENTRIFUGAL_PUMP.sensors + ("thrust_rise_per_load", "radial_rise_per_load", "oil_rise_per_load",
                                        "flow_per_speed")
TRENDS = ("thrust_rise_per_load", "radial_rise_per_load", "oil_rise_per_load", "flow_per_speed")
INPUTS = FEATURES + ("present", "history_fraction") + tuple(f"{name}_slope" for name in TRENDS)
RUL_CAP = 150.0      # cycles: estimates (and training targets) saturate here
MARGIN_BINS = (0.0, 25.0, 50.0, 75.0, 100.0, 125.0, 145.0)   # point estimates from each edge get their own margin


@dataclass(frozen=True)
class RemainingLifeEstimate:
    cycles: float
    lower_cycles: float
    upper_cycles: float
    coverage: float


# -- features -------------------------------------------------------------------------------------

def health_signals(means: np.ndarray) -> np.ndarray:
    """[..., sensors] cycle means -> [..., FEATURES]: the means plus the load-normalised signals."""
    load = (means[..., S["speed"]] / NOMINAL_SPEED) ** 2
    ambient = means[..., S["ambient_temp"]]
    rises = [(means[..., S[t]] - ambient) / load for t in ("thrust_bearing_temp", "radial_bearing_temp", "oil_temp")]
    flow = means[..., S["flow"]] / (means[..., S["speed"]] / NOMINAL_SPEED)
    return np.concatenate([means, np.stack(rises + [flow], axis=-1)], axis=-1).astype(np.float32)


def cycle_features(window: TelemetryWindow) -> np.ndarray:
    """[HISTORY_HOURS, INPUTS] from the rows of the latest HISTORY_HOURS hours (at most)."""
    ts = np.asarray(window.timestamps_ms, dtype=np.int64)
    values = np.asarray(window.values, dtype=np.float64)
    age = (ts[-1] - ts) // HOUR_MS                     # 0: the latest hour
    keep = age < HISTORY_HOURS
    hours = int(age[keep].max()) + 1                   # from the oldest row's hour to the latest
    bins = hours - 1 - age[keep]
    counts = np.bincount(bins, minlength=hours)
    sums = np.stack([np.bincount(bins, values[keep, j], minlength=hours) for j in range(values.shape[1])], axis=1)
    means = np.empty_like(sums)
    for c in range(hours):                             # the oldest hour has rows; an empty hour repeats its older neighbour
        means[c] = sums[c] / counts[c] if counts[c] else means[c - 1]
    return history_features(means)


def history_features(means: np.ndarray) -> np.ndarray:
    """[hours, sensors] hourly means, oldest first, 1 <= hours <= HISTORY_HOURS -> [HISTORY_HOURS, INPUTS]."""
    hours = len(means)
    signals = health_signals(means)
    padded = np.concatenate([np.repeat(signals[:1], HISTORY_HOURS - hours, axis=0), signals])
    present = (np.arange(HISTORY_HOURS) >= HISTORY_HOURS - hours).astype(np.float32)
    trend = signals[:, [FEATURES.index(name) for name in TRENDS]].astype(np.float64)
    t = np.arange(hours) - (hours - 1) / 2
    slopes = (t @ (trend - trend.mean(0))) / max(float(t @ t), 1.0)     # per hour, least squares
    constant = np.concatenate([[hours / HISTORY_HOURS], slopes]).astype(np.float32)
    return np.concatenate([padded, present[:, None], np.broadcast_to(constant, (HISTORY_HOURS, len(constant)))],
                          axis=1)


def hourly_means(values: np.ndarray) -> np.ndarray:
    """[hours, sensors] means of a trajectory's whole hours (training: windows end on hour marks)."""
    hours = len(values) // 60
    return values[:hours * 60].reshape(hours, 60, -1).astype(np.float64).mean(axis=1)


# -- network --------------------------------------------------------------------------------------

class RemainingLifeNet(nn.Module):
    """Standardised [batch, cycles, inputs] -> [batch, 3]: point, 5% and 95% quantiles, in units of the cap.
    The week is pooled to 6-hour steps after the first convolutions: wear moves over days, not hours."""

    POOL = 6

    def __init__(self, features: int = len(INPUTS), channels: int = 32, cycles: int = HISTORY_HOURS):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(features, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.AvgPool1d(self.POOL),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * (cycles // self.POOL), 64), nn.ReLU(),
                                  nn.Linear(64, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.transpose(1, 2)))


def pinball(pred: torch.Tensor, target: torch.Tensor, q: float) -> torch.Tensor:
    diff = target - pred
    return torch.maximum(q * diff, (q - 1) * diff).mean()


def fit(x: np.ndarray, y: np.ndarray, epochs: int, seed: int, scale: float = RUL_CAP, channels: int = 32,
        batch: int = 256, log=print) -> tuple[RemainingLifeNet, np.ndarray, np.ndarray]:
    """Trains a RemainingLifeNet on windows x [n, cycles, features] and RUL y [n] (cycles): squared
    error on the point, pinball losses on the 5% and 95% quantiles. Returns it with the feature
    mean and standard deviation it standardises with."""
    flat = x.reshape(-1, x.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    torch.manual_seed(seed)
    net = RemainingLifeNet(features=x.shape[-1], channels=channels, cycles=x.shape[1])
    xt = torch.from_numpy(((x - mean) / std).astype(np.float32))
    yt = torch.from_numpy((y / scale).astype(np.float32))
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    steps = epochs * -(-len(xt) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for i in range(0, len(xt), batch):
            rows = order[i:i + batch]
            out = net(xt[rows])
            loss = (((out[:, 0] - yt[rows]) ** 2).mean() + pinball(out[:, 1], yt[rows], 0.05)
                    + pinball(out[:, 2], yt[rows], 0.95))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(rows)
        log(f"  remaining life epoch {epoch + 1}/{epochs}: loss {total / len(xt):.5f}")
    return net.eval(), mean.astype(np.float32), std.astype(np.float32)


# -- adapter --------------------------------------------------------------------------------------

class RemainingLifeModel(PackagedNetwork):
    """Rows: TelemetryWindow of at least `min_rows` rows. Results: one RemainingLifeEstimate per row."""

    name = NAME
    weights_file = "remaining_life.safetensors"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.min_rows = MIN_HOURS * HOUR_MS // CENTRIFUGAL_PUMP.sample_period_ms
        self.max_rows = CENTRIFUGAL_PUMP.window_rows

    def build_network(self, card: dict) -> RemainingLifeNet:
        return RemainingLifeNet(channels=card["channels"], cycles=card["history_hours"])

    def read_card(self, card: dict) -> None:
        self.margins = np.asarray(card["interval_margins_cycles"], dtype=np.float64)
        self.cap = float(card["rul_cap_cycles"])
        self.coverage = float(card["coverage"])

    def warm_up(self) -> None:
        rows = self.min_rows
        window = TelemetryWindow(np.arange(rows, dtype=np.int64) * 60_000,
                                 np.tile(np.array(self.card["feature_mean"][:len(S)], dtype=np.float32), (rows, 1)))
        self.run_batch([window] * 4)

    @torch.inference_mode()
    def run_batch(self, rows: Sequence[TelemetryWindow]) -> list[RemainingLifeEstimate]:
        features = np.stack([cycle_features(_latest(w, self.max_rows)) for w in rows])
        out = self.predict_features(features)
        return [RemainingLifeEstimate(float(p), float(lo), float(hi), self.coverage) for p, lo, hi in out]

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """[batch, HISTORY_HOURS, INPUTS] -> [batch, 3] cycles: point, lower, upper."""
        return predict(self.net, features, self._mean, self._std, self.margins, self.cap, self.device)

    @classmethod
    def from_trained(cls, net: RemainingLifeNet, mean: np.ndarray, std: np.ndarray,
                     margins: np.ndarray | None = None) -> "RemainingLifeModel":
        """An in-memory model straight from `fit` (training scripts evaluate it before writing it)."""
        model = cls(device="cpu")
        model.net, model.cap = net, RUL_CAP
        model.margins = np.zeros(len(MARGIN_BINS)) if margins is None else margins
        model._mean, model._std = torch.from_numpy(mean), torch.from_numpy(std)
        return model


@torch.inference_mode()
def predict(net: RemainingLifeNet, features: np.ndarray, mean, std, margins: np.ndarray | float, scale: float,
            device=torch.device("cpu")) -> np.ndarray:
    """Point, lower and upper cycles per window, within [0, scale] (the cap); the interval is widened by
    the margin of the point estimate's bin (`margins`, one per MARGIN_BINS edge), or by one number for all."""
    x = (torch.as_tensor(features, dtype=torch.float32, device=device) - torch.as_tensor(mean, device=device)) \
        / torch.as_tensor(std, device=device)
    raw = net(x).float().cpu().numpy() * scale
    point = np.clip(raw[:, 0], 0.0, scale)
    margins = np.atleast_1d(np.asarray(margins, dtype=np.float64))
    margin = margins[margin_bin(point)] if len(margins) > 1 else margins[0]
    lower = np.clip(np.minimum(raw[:, 1], point) - margin, 0.0, scale)
    upper = np.clip(np.maximum(raw[:, 2], point) + margin, 0.0, scale)
    return np.stack([point, lower, upper], axis=1)


def margin_bin(point: np.ndarray) -> np.ndarray:
    """The MARGIN_BINS bin of each point estimate."""
    return np.searchsorted(np.asarray(MARGIN_BINS), point, side="right") - 1


def _latest(window: TelemetryWindow, rows: int) -> TelemetryWindow:
    return TelemetryWindow(window.timestamps_ms[-rows:], window.values[-rows:])

