"""Trains the IoT models on a simulated fleet of centrifugal pumps and scores them on machines they never saw.

    .venv/bin/python scripts/train_iot_models.py                  # writes services/iot/models/
    .venv/bin/python scripts/train_iot_models.py --quick --out /tmp/iot-models   # a smoke run

Three disjoint fleets are drawn with fixed seeds (services/iot/fleet.py, NASA ProgPy's
CentrifugalPumpWithWear run to failure): training machines, validation machines (the interval
margin of the remaining-life model and the anomaly threshold are chosen on them), and held-out
machines that only the final scores read. Each model's card (a JSON file beside its weights)
records the seeds, the fleet, the held-out metrics, the training time and the library versions.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.iot import anomaly_model as am          # noqa: E402
from services.iot import remaining_life as rl         # noqa: E402
from services.iot.fleet import FAULT_KINDS, MachineSpec, Trajectory, inject_fault, simulate_fleet  # noqa: E402
from services.iot.packaged_network import save_packaged as save  # noqa: E402
from services.iot.window_autoencoder import auc, calibrate, f1_at, fit_autoencoder  # noqa: E402

SEED = 20261128
FLEETS = {"train": (10_000, 48), "validation": (20_000, 10), "held_out": (30_000, 12)}
QUICK_FLEETS = {"train": (10_000, 8), "validation": (20_000, 3), "held_out": (30_000, 3)}
FAULT_MIN_ROWS = 20          # a window counts as faulty when the fault covers at least this many of its rows
COVERAGE = 0.9
EPOCHS_REMAINING_LIFE = 16
EPOCHS_ANOMALY = 20
WINDOW_STRIDE_HOURS = 2      # remaining-life training windows end every other hour


# -- remaining life -------------------------------------------------------------------------------

def rul_windows(trajectories: list[Trajectory], stride_hours: int = 1, history_hours: int | None = None,
               rng: np.random.Generator | None = None):
    """Windows ending on every `stride_hours` hour mark from the first day on: features
    [n, HISTORY_HOURS, INPUTS], true RUL [n], machine [n]. Each window reads the whole history up to
    a week (what a store that has kept every row holds), or `history_hours` at most; with `rng`, half
    the windows read a random shorter history, down to a day (telemetry that began mid-life)."""
    xs, ys, ms = [], [], []
    for m, tr in enumerate(trajectories):
        hourly = rl.hourly_means(tr.values)
        ends = np.arange(rl.MIN_HOURS, len(hourly) + 1, stride_hours)
        spans = np.minimum(ends, history_hours or rl.HISTORY_HOURS)
        if rng is not None:
            shorter = rng.random(len(ends)) < 0.5
            spans[shorter] = rng.integers(rl.MIN_HOURS, spans[shorter] + 1)
        xs.append(np.stack([rl.history_features(hourly[e - h:e]) for e, h in zip(ends, spans)]))
        ys.append(tr.rul_cycles[ends * 60 - 1])
        ms.append(np.full(len(ends), m))
    return np.concatenate(xs), np.concatenate(ys).astype(np.float32), np.concatenate(ms)


def train_remaining_life(train, validation, epochs: int, seed: int):
    x, y, _ = rul_windows(train, WINDOW_STRIDE_HOURS, rng=np.random.default_rng([seed, 3]))
    y = np.minimum(y, rl.RUL_CAP)
    net, mean, std = rl.fit(x, y, epochs, seed, log=lambda line: print(line, flush=True))
    model = rl.RemainingLifeModel.from_trained(net, mean, std)
    # Conformalised quantile regression, bin by bin of the point estimate: widen the 5%-95% pair
    # until it covers 90% of the validation truths in the last RUL_CAP cycles of life whose estimate
    # falls in that bin. Calibrated on every window, the thousands of early ones (truth "150 or
    # more", estimate at the cap) would set a margin of 0 near the cap and late-life truths that read
    # 150 would go uncovered; early windows stay covered anyway, their truth being the cap itself.
    vx, true_rul, _ = rul_windows(validation)
    vy = np.minimum(true_rul, rl.RUL_CAP)
    pred = model.predict_features(vx)
    nonconformity = np.maximum(pred[:, 1] - vy, vy - pred[:, 2])
    bins, late = rl.margin_bin(pred[:, 0]), true_rul <= rl.RUL_CAP
    model.margins = np.array([conformal_margin(nonconformity[(bins == b) & late] if np.any((bins == b) & late)
                                               else nonconformity[bins == b]) for b in range(len(rl.MARGIN_BINS))])
    return net, model, mean, std, model.margins


def conformal_margin(nonconformity: np.ndarray) -> float:
    """The split-conformal quantile for COVERAGE; no validation window in the bin: the largest margin, the cap."""
    n = len(nonconformity)
    if n == 0:
        return rl.RUL_CAP
    level = math.ceil((n + 1) * COVERAGE) / n
    return float(max(0.0, np.max(nonconformity) if level > 1 else np.quantile(nonconformity, level)))


def phm08(d: np.ndarray) -> np.ndarray:
    """PHM08 challenge score per estimate, d = estimated - true: late estimates cost more than early ones."""
    return np.where(d < 0, np.exp(-d / 13.0) - 1, np.exp(d / 10.0) - 1)


def evaluate_remaining_life(model, held_out: list[Trajectory], history_hours: int | None = None) -> dict:
    """Every hour of every held-out machine's life from its first day, against the capped truth (as
    C-MAPSS results are), each window reading its whole history up to a week (or `history_hours`)."""
    x, true_rul, machine = rul_windows(held_out, history_hours=history_hours)
    y = np.minimum(true_rul, rl.RUL_CAP)
    pred = model.predict_features(x)
    err = pred[:, 0] - y
    covered = (y >= pred[:, 1]) & (y <= pred[:, 2])
    late = true_rul <= rl.RUL_CAP
    per_machine = []
    for m, tr in enumerate(held_out):
        mask = machine == m
        rmse = float(np.sqrt(np.mean(err[mask] ** 2)))
        per_machine.append({
            "machine": tr.spec.machine_id, "life_cycles": round(tr.life_cycles, 1), "failure": tr.failure_event,
            "windows": int(mask.sum()), "rmse_cycles": round(rmse, 1),
            "rmse_fraction_of_life": round(rmse / tr.life_cycles, 4),
            "coverage": round(float(np.mean(covered[mask])), 3),
            "within_cap_rmse_cycles": round(float(np.sqrt(np.mean(err[mask & late] ** 2))), 1),
            "within_cap_coverage": round(float(np.mean(covered[mask & late])), 3)})
    return {
        "machines": len(held_out), "windows": int(len(y)), "rul_cap_cycles": rl.RUL_CAP,
        "history_hours": history_hours or rl.HISTORY_HOURS,
        "rmse_cycles": round(float(np.sqrt(np.mean(err ** 2))), 2),
        "worst_rmse_fraction_of_life": max(m["rmse_fraction_of_life"] for m in per_machine),
        "mean_rmse_fraction_of_life": round(float(np.mean([m["rmse_fraction_of_life"] for m in per_machine])), 4),
        "interval_coverage": round(float(np.mean(covered)), 3),
        "mean_interval_width_cycles": round(float(np.mean(pred[:, 2] - pred[:, 1])), 1),
        "within_cap_windows": int(late.sum()),
        "within_cap_rmse_cycles": round(float(np.sqrt(np.mean(err[late] ** 2))), 2),
        "within_cap_interval_coverage": round(float(np.mean(covered[late])), 3),
        "phm08_mean_per_window": round(float(phm08(err).mean()), 3),
        "within_cap_phm08_mean_per_window": round(float(phm08(err[late]).mean()), 3),
        # The point estimate against the true remaining life, cap or no cap: early in a long life
        # "150 or more" is off by the rest of the life.
        "uncapped_rmse_cycles": round(float(np.sqrt(np.mean((pred[:, 0] - true_rul) ** 2))), 1),
        "per_machine": per_machine,
    }


# -- anomalies ------------------------------------------------------------------------------------

def normal_windows(trajectories: list[Trajectory], stride: int) -> np.ndarray:
    rows = am.ROWS
    return np.concatenate([np.stack([tr.values[s:s + rows] for s in range(0, len(tr.values) - rows, stride)])
                           for tr in trajectories])


def labelled_windows(trajectories: list[Trajectory], per_machine: int, rng: np.random.Generator):
    """Half normal windows, half with one injected fault covering FAULT_MIN_ROWS..ROWS of the latest rows."""
    rows = am.ROWS
    windows, labels, kinds = [], [], []
    for tr in trajectories:
        for i in range(per_machine):
            start = int(rng.integers(1, len(tr.values) - rows))
            piece = tr.values[start - 1:start + rows].copy()          # the row before: a stuck sensor's value
            kind = "normal"
            if i % 2:
                kind = FAULT_KINDS[(i // 2) % len(FAULT_KINDS)]
                covered = int(rng.integers(FAULT_MIN_ROWS, rows + 1))
                inject_fault(piece, kind, rows + 1 - covered, covered, rng, tr.spec)
            windows.append(piece[1:])
            labels.append(kind != "normal")
            kinds.append(kind)
    return np.stack(windows), np.array(labels), np.array(kinds)


def train_anomaly(train, validation, epochs: int, seed: int):
    features = np.concatenate([am.shape_features(normal_windows([tr], stride=40)).reshape(-1, len(am.SENSORS)
                                                                                          * len(am.SHAPE_FEATURES))
                               for tr in train])
    net, mean, std = fit_autoencoder(features, epochs, seed, log=lambda line: print(line, flush=True))
    model = am.AnomalyModel.from_trained(net, mean, std)
    windows, labels, _ = labelled_windows(validation, 400, np.random.default_rng([seed, 1]))
    calibrate(model, np.concatenate([normal_windows([tr], stride=200) for tr in train]), windows, labels)
    return net, model, mean, std, len(features)


def evaluate_anomaly(model, threshold, held_out, seed) -> dict:
    windows, labels, kinds = labelled_windows(held_out, 400, np.random.default_rng([seed, 2]))
    scores, _ = model.score_windows(windows)
    f1, precision, recall = f1_at(scores, labels, threshold)
    flagged = scores > threshold
    return {
        "machines": len(held_out), "windows": int(len(labels)), "faulty_windows": int(labels.sum()),
        "f1": round(f1, 4), "precision": round(precision, 4), "recall": round(recall, 4),
        "false_positive_rate": round(float(flagged[~labels].mean()), 4),
        "recall_by_fault": {k: round(float(flagged[kinds == k].mean()), 4) for k in FAULT_KINDS},
        "auc": round(auc(scores, labels), 4),
    }


# -- writing ------------------------------------------------------------------------------------------

def environment() -> dict:
    return {"torch": torch.__version__, "progpy": version("progpy"), "numpy": np.__version__,
            "machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads"}


def simulate_or_load(cache: Path | None, specs: list[MachineSpec]) -> list[Trajectory]:
    import pickle

    if cache and cache.exists():
        trajectories = pickle.loads(cache.read_bytes())
        if [t.spec for t in trajectories] == specs:
            return trajectories
    trajectories = simulate_fleet(specs)
    if cache:
        cache.write_bytes(pickle.dumps(trajectories))
    return trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=rl.MODELS_DIR)
    parser.add_argument("--quick", action="store_true", help="a small fleet and few epochs, to check the script")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy machine)")
    parser.add_argument("--fleet-cache", type=Path, help="keep the simulated fleet in this .pkl file and reuse it")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    fleets = QUICK_FLEETS if args.quick else FLEETS
    specs = {name: [MachineSpec.draw(first + i) for i in range(count)] for name, (first, count) in fleets.items()}
    everything = simulate_or_load(args.fleet_cache, [s for group in specs.values() for s in group])
    by_id = {tr.spec.machine_id: tr for tr in everything}
    fleet = {name: [by_id[s.machine_id] for s in group] for name, group in specs.items()}
    simulated = time.perf_counter() - started
    print(f"simulated {len(everything)} pumps to failure in {simulated:.0f} s; lives "
          f"{min(t.life_cycles for t in everything):.0f}-{max(t.life_cycles for t in everything):.0f} h", flush=True)
    describe_fleet = {name: {"machines": len(group), "first_seed": fleets[name][0],
                             "life_cycles": [round(t.life_cycles, 1) for t in group]}
                      for name, group in fleet.items()}

    t0 = time.perf_counter()
    net, model, mean, std, margin = train_remaining_life(fleet["train"], fleet["validation"],
                                                         epochs=3 if args.quick else EPOCHS_REMAINING_LIFE, seed=SEED)
    rul_seconds = time.perf_counter() - t0
    rul_metrics = evaluate_remaining_life(model, fleet["held_out"])
    day_only = evaluate_remaining_life(model, fleet["held_out"], history_hours=rl.MIN_HOURS)
    rul_metrics["one_day_of_history"] = {k: v for k, v in day_only.items() if k != "per_machine"}
    print(json.dumps({k: v for k, v in rul_metrics.items() if k != "per_machine"}, indent=1), flush=True)

    t0 = time.perf_counter()
    anet, amodel, amean, astd, normal_count = train_anomaly(
        fleet["train"], fleet["validation"], epochs=3 if args.quick else EPOCHS_ANOMALY, seed=SEED)
    anomaly_seconds = time.perf_counter() - t0
    anomaly_metrics = evaluate_anomaly(amodel, amodel.threshold, fleet["held_out"], SEED)
    print(json.dumps(anomaly_metrics, indent=1), flush=True)

    total = time.perf_counter() - started
    n_train = len(fleet["train"])
    provenance = f"trained by scripts/train_iot_models.py on {n_train} simulated ProgPy pumps, seed {SEED}"
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"script": "scripts/train_iot_models.py", "seed": SEED, "provenance": provenance,
              "fleets": describe_fleet, "simulation_seconds": round(simulated, 1),
              "total_seconds": round(total, 1), "versions": environment()}
    save(net, {"name": rl.NAME, **common, "channels": 32, "coverage": COVERAGE, "rul_cap_cycles": rl.RUL_CAP,
               "interval_margin_bins_cycles": list(rl.MARGIN_BINS),
               "interval_margins_cycles": [round(float(m), 2) for m in margin], "history_hours": rl.HISTORY_HOURS,
               "min_history_hours": rl.MIN_HOURS, "features": list(rl.INPUTS),
               "feature_mean": mean.tolist(), "feature_std": std.tolist(),
               "training_seconds": round(rul_seconds, 1), "held_out": rul_metrics},
         args.out / "remaining_life.safetensors")
    save(anet, {"name": am.NAME, **common, "hidden": 64, "code": 12, "threshold": round(amodel.threshold, 5),
                "sensor_error_scale": amodel.sensor_error_scale.tolist(), "shape_features": list(am.SHAPE_FEATURES),
                "fault_min_rows": FAULT_MIN_ROWS, "normal_windows": normal_count,
                "feature_mean": amean.tolist(), "feature_std": astd.tolist(),
                "training_seconds": round(anomaly_seconds, 1), "held_out": anomaly_metrics},
         args.out / "anomaly.safetensors")
    print(f"wrote {args.out} in {total:.0f} s")


if __name__ == "__main__":
    main()
