"""Trains the vital-sign anomaly model on simulated patients and scores it on patients it never saw.

    nice .venv/bin/python scripts/train_vitals_model.py          # writes services/iot/models/vitals-anomaly/
    .venv/bin/python scripts/train_vitals_model.py --quick --out /tmp/vitals-model   # a smoke run

Patients are drawn by seed with services/iot/vitals.py's simulator, in disjoint seed ranges:
training patients (normal vitals with their artefacts: the autoencoder learns these), validation
patients with episodes (the threshold is chosen on them), held-out patients with episodes and
held-out normal patients (only the final scores read them). The card beside the weights records the
seeds, the held-out window F1, recall per episode kind, episodes detected and false alarms per
patient-day, the training time and the library versions.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.iot import vitals_anomaly as va                            # noqa: E402
from services.iot.packaged_network import MODELS_DIR, save_packaged      # noqa: E402
from services.iot.vitals import EPISODE_KINDS, Episode, simulate_vitals  # noqa: E402
from services.iot.window_autoencoder import auc, calibrate, f1_at, fit_autoencoder  # noqa: E402

SEED = 20261128
# (first seed, patients, days each)
PATIENTS = {"train": (40_000, 60, 2), "validation": (41_000, 16, 2), "held_out": (42_000, 24, 2),
            "held_out_normal": (43_000, 12, 3)}
QUICK_PATIENTS = {"train": (40_000, 8, 1), "validation": (41_000, 4, 1), "held_out": (42_000, 4, 1),
                  "held_out_normal": (43_000, 3, 1)}
START_MS = 1_767_225_600_000     # 2026-01-01 00:00 UTC; each patient starts at another hour of the day
EPOCHS = 30
HIDDEN, CODE = 48, 10
TRAIN_STRIDE = 5                 # rows between the starts of training windows
LABELLED_STRIDE = 10
ON = 0.5                         # an episode row counts from half its full intensity


# -- patients ---------------------------------------------------------------------------------------

def patient(seed: int, days: int, episodes=()) -> tuple[np.ndarray, np.ndarray]:
    return simulate_vitals(seed, START_MS + (seed % 24) * 3_600_000, days * 24 * 60, episodes)


def draw_episodes(rng: np.random.Generator, minutes: int) -> list[Episode]:
    """Episodes of every kind in turn, 40-180 minutes each, 1.5-5 hours apart."""
    episodes, at = [], int(rng.integers(60, 240))
    while True:
        length = int(rng.integers(40, 181))
        if at + length > minutes:
            return episodes
        episodes.append(Episode(EPISODE_KINDS[len(episodes) % len(EPISODE_KINDS)], at, length))
        at += length + int(rng.integers(90, 301))


def normal_windows(seeds, days: int, stride: int) -> np.ndarray:
    return np.concatenate([_windows(patient(seed, days)[1], stride)[0] for seed in seeds])


def _windows(values: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
    starts = np.arange(0, len(values) - va.ROWS + 1, stride)
    return np.stack([values[s:s + va.ROWS] for s in starts]), starts


def labelled_windows(seeds, days: int, rng: np.random.Generator):
    """Windows of patients with episodes: an episode window when its episode is on (at half intensity or
    more) for half the window's rows or for its latest third; a normal window when no episode touches
    it. Windows on a ramp in between are left out: neither answer would be wrong there."""
    windows, labels, kinds = [], [], []
    for seed in seeds:
        episodes = draw_episodes(rng, days * 24 * 60)
        _, values = patient(seed, days, episodes)
        wins, starts = _windows(values, LABELLED_STRIDE)
        intensity = np.stack([e.intensity(len(values)) for e in episodes])       # [episodes, minutes]
        for window, start in zip(wins, starts):
            piece = intensity[:, start:start + va.ROWS]
            on = piece >= ON
            strongest = int(np.argmax(on.sum(axis=1)))
            if on[strongest].sum() >= va.ROWS / 2 or on[strongest, -va.THIRD:].all():
                label, kind = True, episodes[strongest].kind
            elif not piece.any():
                label, kind = False, "normal"
            else:
                continue
            windows.append(window)
            labels.append(label)
            kinds.append(kind)
    return np.stack(windows), np.array(labels), np.array(kinds)


# -- training and scores ----------------------------------------------------------------------------

def train(specs, epochs: int, seed: int):
    train_seeds, days = _seeds(specs["train"]), specs["train"][2]
    normal = normal_windows(train_seeds, days, TRAIN_STRIDE)
    features = va.vitals_features(normal).reshape(len(normal), -1)
    net, mean, std = fit_autoencoder(features, epochs, seed, hidden=HIDDEN, code=CODE,
                                     log=lambda line: print(line, flush=True))
    model = va.VitalsAnomalyModel.from_trained(net, mean, std)
    windows, labels, _ = labelled_windows(_seeds(specs["validation"]), specs["validation"][2],
                                          np.random.default_rng([seed, 1]))
    calibrate(model, normal[::4], windows, labels)
    return net, model, mean, std, len(features)


def evaluate(model, specs, seed: int) -> dict:
    windows, labels, kinds = labelled_windows(_seeds(specs["held_out"]), specs["held_out"][2],
                                              np.random.default_rng([seed, 2]))
    scores, per_sensor = model.score_windows(windows)
    f1, precision, recall = f1_at(scores, labels, model.threshold)
    flagged = scores > model.threshold
    return {
        "patients": specs["held_out"][1], "windows": int(len(labels)), "episode_windows": int(labels.sum()),
        "f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4),
        "false_positive_rate": round(float(flagged[~labels].mean()), 4),
        "recall_by_episode": {k: round(float(flagged[kinds == k].mean()), 4) for k in EPISODE_KINDS},
        "top_sensor_by_episode": {k: _most_common_top_sensor(per_sensor[kinds == k]) for k in EPISODE_KINDS},
        "auc": round(auc(scores, labels), 4),
        "episodes_detected": episodes_detected(model, specs["held_out"], seed),
        "false_alarms_per_patient_day": false_alarms_per_day(model, specs["held_out_normal"]),
    }


def _most_common_top_sensor(per_sensor: np.ndarray) -> str:
    return va.SENSORS[int(np.bincount(per_sensor.argmax(axis=1), minlength=len(va.SENSORS)).argmax())]


def episodes_detected(model, spec, seed: int) -> dict:
    """Share of held-out episodes of each kind during which at least one window the service scores
    (back-to-back windows, as DetectAnomalies reads them) is flagged."""
    rng = np.random.default_rng([seed, 3])
    found = {k: [] for k in EPISODE_KINDS}
    for seed_ in _seeds(spec):
        episodes = draw_episodes(rng, spec[2] * 24 * 60)
        _, values = patient(seed_, spec[2], episodes)
        wins, starts = _windows(values, va.ROWS)
        flagged = starts[model.score_windows(wins)[0] > model.threshold]
        for e in episodes:
            found[e.kind].append(bool(np.any((flagged + va.ROWS > e.start_minute)
                                             & (flagged < e.start_minute + e.minutes))))
    return {k: round(float(np.mean(v)), 4) for k, v in found.items()}


def false_alarms_per_day(model, spec) -> float:
    """Flagged back-to-back windows per patient-day of normal patients (artefacts included)."""
    windows = np.concatenate([_windows(patient(seed, spec[2])[1], va.ROWS)[0] for seed in _seeds(spec)])
    flagged = int((model.score_windows(windows)[0] > model.threshold).sum())
    return round(flagged / (spec[1] * spec[2]), 3)


def _seeds(spec) -> range:
    first, count, _ = spec
    return range(first, first + count)


# -- writing ----------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=MODELS_DIR / "vitals-anomaly")
    parser.add_argument("--quick", action="store_true", help="few patients and epochs, to check the script")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    specs = QUICK_PATIENTS if args.quick else PATIENTS
    net, model, mean, std, count = train(specs, 3 if args.quick else EPOCHS, SEED)
    trained = time.perf_counter() - started
    held_out = evaluate(model, specs, SEED)
    print(json.dumps(held_out, indent=1), flush=True)
    total = time.perf_counter() - started
    card = {
        "name": va.NAME, "script": "scripts/train_vitals_model.py", "seed": SEED,
        "provenance": f"trained by scripts/train_vitals_model.py on {specs['train'][1]} simulated patients "
                      f"(services/iot/vitals.py), seed {SEED}",
        "patients": {name: {"first_seed": first, "patients": n, "days": days}
                     for name, (first, n, days) in specs.items()},
        "hidden": HIDDEN, "code": CODE, "rows": va.ROWS, "features": list(va.FEATURES),
        "threshold": round(model.threshold, 5), "sensor_error_scale": model.sensor_error_scale.tolist(),
        "normal_windows": count, "feature_mean": mean.tolist(), "feature_std": std.tolist(),
        "training_seconds": round(trained, 1), "total_seconds": round(total, 1), "held_out": held_out,
        "versions": {"torch": torch.__version__, "numpy": np.__version__,
                     "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"},
    }
    save_packaged(net, card, args.out / Path(va.VitalsAnomalyModel.weights_file).name)
    print(f"wrote {args.out} in {total:.0f} s")


if __name__ == "__main__":
    main()
