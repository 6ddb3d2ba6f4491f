"""Remaining useful life of a centrifugal pump from its latest 24 hours of telemetry.

The window (`CENTRIFUGAL_PUMP.window_rows` rows, one a minute) is cut into 24 one-hour cycles by
timestamp, counted back from the latest row; each cycle becomes the mean of every sensor plus four
load-normalised health signals (bearing and oil temperature rise over ambient per unit of speed
squared, flow per unit of speed), because friction heat grows with speed squared and the duty
cycle changes the speed. A small 1-D CNN reads the 24 cycles and gives a point estimate and a
5%-95% quantile pair; the interval is then widened by a margin chosen on validation machines
(conformalised quantile regression) so that it covers 90% of held-out truths.

Remaining life is capped at `RUL_CAP` cycles, as C-MAPSS models are (at 125 there): wear that
ends a pump's life in 1500 hours barely shows in one day of telemetry early on, while the last
week of a life shows clearly. An estimate of 150 reads "150 cycles or more"; trained on uncapped
targets the same network scored an RMSE of 30-90% of each held-out machine's life (see
docs/models.md), which is guessing.

Fewer rows than `min_rows` (a full window): the service refuses the request (a shorter history
has not been seen in training). More rows: only the latest window is read. Gaps in the rows leave
their hour empty; an empty hour repeats the nearest older one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow
from services.runtime.adapter import ModelAdapter, ModelDescription
from services.runtime.devices import configure_threads, pick_device

MODELS_DIR = Path(__file__).resolve().parent / "models"
NAME = "pump-remaining-life"
CYCLES = 24
HOUR_MS = 3_600_000
NOMINAL_SPEED = 376.991118431
S = {name: i for i, name in enumerate(CENTRIFUGAL_PUMP.sensors)}
FEATURES = CENTRIFUGAL_PUMP.sensors + ("thrust_rise_per_load", "radial_rise_per_load", "oil_rise_per_load",
                                        "flow_per_speed")
RUL_CAP = 150.0      # cycles: estimates (and training targets) saturate here


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
    """[CYCLES, FEATURES], oldest cycle first, from the rows of the latest CYCLES hours."""
    ts = np.asarray(window.timestamps_ms, dtype=np.int64)
    values = np.asarray(window.values, dtype=np.float64)
    age = (ts[-1] - ts) // HOUR_MS                     # 0: the latest hour
    keep = age < CYCLES
    bins = CYCLES - 1 - age[keep]
    counts = np.bincount(bins, minlength=CYCLES)
    sums = np.stack([np.bincount(bins, values[keep, j], minlength=CYCLES) for j in range(values.shape[1])], axis=1)
    means = np.full_like(sums, np.nan)
    filled = counts > 0
    means[filled] = sums[filled] / counts[filled, None]
    for c in range(CYCLES):                            # an empty hour repeats its older neighbour
        if not filled[c]:
            means[c] = means[c - 1] if c > 0 and not np.isnan(means[c - 1]).any() else means[filled][0]
    return health_signals(means)


def hourly_means(values: np.ndarray) -> np.ndarray:
    """[hours, sensors] means of a trajectory's whole hours (training: windows end on hour marks)."""
    hours = len(values) // 60
    return values[:hours * 60].reshape(hours, 60, -1).astype(np.float64).mean(axis=1)


# -- network --------------------------------------------------------------------------------------

class RemainingLifeNet(nn.Module):
    """Standardised [batch, CYCLES, FEATURES] -> [batch, 3]: point, 5% and 95% quantiles, in units of the cap."""

    def __init__(self, features: int = len(FEATURES), channels: int = 32, cycles: int = CYCLES):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv1d(features, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, padding=1), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * cycles, 64), nn.ReLU(), nn.Linear(64, 3))

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

class RemainingLifeModel(ModelAdapter):
    """Rows: TelemetryWindow of at least `min_rows` rows. Results: one RemainingLifeEstimate per row."""

    def __init__(self, weights: str | Path | None = None, device: str = "auto", threads: int = 0,
                 instances: int = 1):
        self.path = Path(weights).expanduser() if weights else MODELS_DIR / "remaining_life.safetensors"
        self.device = pick_device(device)
        self.threads, self.instances = threads, instances
        self.net: RemainingLifeNet | None = None
        self.card: dict = {}
        self.min_rows = CENTRIFUGAL_PUMP.window_rows
        self._description: ModelDescription | None = None

    def load(self) -> None:
        from safetensors.torch import load_file

        configure_threads(self.threads, self.instances)
        self.card = json.loads(self.path.with_suffix(".json").read_text())
        self.net = RemainingLifeNet(channels=self.card["channels"])
        self.net.load_state_dict(load_file(self.path))
        self.net.to(self.device).eval()
        self._mean = torch.tensor(self.card["feature_mean"], device=self.device)
        self._std = torch.tensor(self.card["feature_std"], device=self.device)
        self.margin = float(self.card["interval_margin_cycles"])
        self.cap = float(self.card["rul_cap_cycles"])
        self.coverage = float(self.card["coverage"])
        self._description = ModelDescription(
            name=self.card.get("name", NAME), version=file_digest(self.path),
            provenance=self.card["provenance"] if self.path.parent == MODELS_DIR
            else f"local path {self.path.resolve()} ({self.card['provenance']})",
            device=str(self.device), dtype="float32")

    def warm_up(self) -> None:
        rows = self.min_rows
        window = TelemetryWindow(np.arange(rows, dtype=np.int64) * 60_000,
                                 np.tile(np.array(self.card["feature_mean"][:len(S)], dtype=np.float32), (rows, 1)))
        self.run_batch([window] * 4)

    def describe(self) -> ModelDescription:
        return self._description

    @torch.inference_mode()
    def run_batch(self, rows: Sequence[TelemetryWindow]) -> list[RemainingLifeEstimate]:
        features = np.stack([cycle_features(_latest(w, self.min_rows)) for w in rows])
        out = self.predict_features(features)
        return [RemainingLifeEstimate(float(p), float(lo), float(hi), self.coverage) for p, lo, hi in out]

    def predict_features(self, features: np.ndarray) -> np.ndarray:
        """[batch, CYCLES, FEATURES] -> [batch, 3] cycles: point, lower, upper."""
        return predict(self.net, features, self._mean, self._std, self.margin, self.cap, self.device)

    @classmethod
    def from_trained(cls, net: RemainingLifeNet, mean: np.ndarray, std: np.ndarray,
                     margin: float = 0.0) -> "RemainingLifeModel":
        """An in-memory model straight from `fit` (training scripts evaluate it before writing it)."""
        model = cls(device="cpu")
        model.net, model.margin, model.cap = net, margin, RUL_CAP
        model._mean, model._std = torch.from_numpy(mean), torch.from_numpy(std)
        return model


@torch.inference_mode()
def predict(net: RemainingLifeNet, features: np.ndarray, mean, std, margin: float, scale: float,
            device=torch.device("cpu")) -> np.ndarray:
    """Point, lower and upper cycles per window, within [0, scale] (the cap); the interval is widened by `margin`."""
    x = (torch.as_tensor(features, dtype=torch.float32, device=device) - torch.as_tensor(mean, device=device)) \
        / torch.as_tensor(std, device=device)
    raw = net(x).float().cpu().numpy() * scale
    point = np.clip(raw[:, 0], 0.0, scale)
    lower = np.clip(np.minimum(raw[:, 1], point) - margin, 0.0, scale)
    upper = np.clip(np.maximum(raw[:, 2], point) + margin, 0.0, scale)
    return np.stack([point, lower, upper], axis=1)


def _latest(window: TelemetryWindow, rows: int) -> TelemetryWindow:
    return TelemetryWindow(window.timestamps_ms[-rows:], window.values[-rows:])


def file_digest(path: Path) -> str:
    """Short content hash of a weights file: the version every response reports."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
