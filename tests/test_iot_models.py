"""The simulated pump fleet and the IoT models trained on it (scripts/train_iot_models.py).

Machines here are fresh draws the training never saw: `worn_out` is an unmodified machine with a
short life (317 h, about 5 s to simulate); the live-pump tests raise wear rates so a pump fails
in tens of hours; the held-out check on three more unmodified machines is marked slow.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from services.iot import anomaly_model as am
from services.iot import remaining_life as rl
from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow
from services.iot.fleet import (FAULT_KINDS, NEW_IMPELLER_AREA, LivePump, MachineSpec, inject_fault,
                                run_to_failure, simulate_fleet)

PROGPY_EVENTS = {"ImpellerWearFailure", "ThrustBearingOverheat", "RadialBearingOverheat", "PumpOilOverheat"}


def fast_wearing(seed: int, factor: float = 25.0) -> MachineSpec:
    spec = MachineSpec.draw(seed)
    return replace(spec, wear_impeller=spec.wear_impeller * factor, wear_thrust=spec.wear_thrust * factor,
                   wear_radial=spec.wear_radial * factor)


@pytest.fixture(scope="module")
def remaining_life():
    model = rl.RemainingLifeModel(device="cpu", threads=1)
    model.load()
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def anomalies():
    model = am.AnomalyModel(device="cpu", threads=1)
    model.load()
    model.warm_up()
    return model


@pytest.fixture(scope="module")
def worn_out():
    return run_to_failure(MachineSpec.draw(90_269))


def test_a_machine_runs_until_a_progpy_failure_event(worn_out):
    tr = worn_out
    assert tr.failure_event in PROGPY_EVENTS
    rows = len(tr.values)
    assert tr.values.shape == (rows, len(CENTRIFUGAL_PUMP.sensors)) and np.isfinite(tr.values).all()
    assert np.all(np.diff(tr.timestamps_ms) == CENTRIFUGAL_PUMP.sample_period_ms)
    assert tr.rul_cycles[0] == pytest.approx(tr.life_cycles, abs=0.05)
    assert 0 < tr.rul_cycles[-1] <= 2 / 60 and np.all(np.diff(tr.rul_cycles) < 0)
    # The failure shows in the physics: a bearing or the oil near its limit, or the flow down.
    limits = {"ThrustBearingOverheat": 2, "RadialBearingOverheat": 3, "PumpOilOverheat": 4}
    if tr.failure_event in limits:
        assert tr.values[-30:, limits[tr.failure_event]].mean() > 360
    else:
        assert tr.values[-60:, 1].mean() < 0.95 * tr.values[:60, 1].mean()


def test_machines_differ_and_draws_repeat():
    a, b = MachineSpec.draw(5), MachineSpec.draw(6)
    assert a == MachineSpec.draw(5) and a != b
    assert a.wear_thrust != b.wear_thrust and a.noise != b.noise and a.ambient_mean_k != b.ambient_mean_k
    first, again = simulate_fleet([fast_wearing(7), fast_wearing(8)]), [run_to_failure(fast_wearing(8))]
    assert np.array_equal(first[1].values, again[0].values)      # side by side or alone: the same pump
    assert first[0].life_cycles != first[1].life_cycles


def test_remaining_life_model_describes_itself(remaining_life):
    info = remaining_life.describe()
    assert info.name == rl.NAME and len(info.version) == 12
    assert info.provenance.startswith("trained by scripts/train_iot_models.py on ")
    assert "simulated ProgPy pumps, seed" in info.provenance
    assert remaining_life.min_rows == 24 * 60                      # a day: what the service asks for at least
    assert remaining_life.max_rows == CENTRIFUGAL_PUMP.window_rows == 7 * 24 * 60   # a week: what it reads


def test_remaining_life_falls_as_the_machine_wears(remaining_life, worn_out):
    tr = worn_out
    window = CENTRIFUGAL_PUMP.window_rows
    ends = [window + 60, len(tr.values) - 100 * 60, len(tr.values) - 30 * 60, len(tr.values)]
    estimates = remaining_life.run_batch([tr.window(end, window) for end in ends])
    for estimate, end in zip(estimates, ends):
        assert estimate.lower_cycles <= estimate.cycles <= estimate.upper_cycles
        assert estimate.coverage == pytest.approx(0.9)
    assert estimates[0].cycles > estimates[1].cycles > estimates[2].cycles > estimates[3].cycles


def test_rows_with_gaps_and_extra_history_are_read_by_timestamp(remaining_life, worn_out):
    tr = worn_out
    full = tr.window(len(tr.values), CENTRIFUGAL_PUMP.window_rows + 2000)
    latest = tr.window(len(tr.values), CENTRIFUGAL_PUMP.window_rows)
    keep = np.ones(len(latest.timestamps_ms), dtype=bool)
    keep[100:160] = False                                    # an hour of telemetry missing
    gappy = TelemetryWindow(latest.timestamps_ms[keep], latest.values[keep])
    day = tr.window(len(tr.values), remaining_life.min_rows)
    a, b, c, d = remaining_life.run_batch([full, latest, gappy, day])
    assert a == b                                            # only the latest week is read
    assert abs(c.cycles - b.cycles) < 0.2 * b.cycles + 10
    assert d.lower_cycles <= d.cycles <= d.upper_cycles and d.cycles < 0.5 * remaining_life.cap   # a day is enough


def test_user_weights_load_from_a_path(tmp_path, remaining_life):
    for name in ("remaining_life.safetensors", "remaining_life.json"):
        shutil.copy(rl.MODELS_DIR / name, tmp_path / name)
    model = rl.RemainingLifeModel(weights=tmp_path / "remaining_life.safetensors", device="cpu", threads=1)
    model.load()
    assert model.describe().version == remaining_life.describe().version
    assert model.describe().provenance.startswith(f"local path {tmp_path}")


def fault_windows(tr, rng, per_kind: int = 3):
    rows = am.ROWS
    windows, kinds = [], []
    for kind in FAULT_KINDS:
        for _ in range(per_kind):
            start = int(rng.integers(1, len(tr.values) - rows))
            piece = tr.values[start - 1:start + rows].copy()
            inject_fault(piece, kind, 1, rows, rng, tr.spec)
            windows.append(piece[1:])
            kinds.append(kind)
    return windows, kinds


def test_fault_windows_score_above_the_threshold_and_normal_ones_below(anomalies, worn_out):
    rng = np.random.default_rng(11)
    tr = worn_out
    normal = [tr.values[s:s + am.ROWS] for s in rng.integers(0, len(tr.values) - am.ROWS, 60)]
    faulty, kinds = fault_windows(tr, rng)
    stamps = np.arange(am.ROWS, dtype=np.int64) * 60_000
    normal_scores = anomalies.run_batch([TelemetryWindow(stamps, w) for w in normal])
    fault_scores = anomalies.run_batch([TelemetryWindow(stamps, w) for w in faulty])
    # Normal windows over the whole life, the last worn days included, stay below the threshold as
    # often as on the held-out machines of the card (false-positive rate 8%).
    assert sum(s.anomalous for s in normal_scores) <= 6
    missed = [k for k, s in zip(kinds, fault_scores) if not s.anomalous]
    assert len(missed) <= 1, missed
    assert np.median([s.score for s in fault_scores]) > 3 * anomalies.threshold


def test_contributions_point_at_the_faulty_sensor(anomalies, worn_out):
    rng = np.random.default_rng(12)
    start = 500
    piece = worn_out.values[start - 1:start + am.ROWS].copy()
    inject_fault(piece, "sensor_stuck", 1, am.ROWS, rng, worn_out.spec, sensor="oil_temp")
    [score] = anomalies.run_batch([TelemetryWindow(np.arange(am.ROWS, dtype=np.int64) * 60_000, piece[1:])])
    assert score.anomalous
    assert score.top_sensors(1) == ["oil_temp"]
    assert sum(score.contributions) == pytest.approx(1.0, abs=1e-5)


def test_live_pump_wears_out_and_repair_renews_it(anomalies):
    pump = LivePump(fast_wearing(90_002, factor=40.0))
    first = pump.advance(3 * 3600)
    assert first.values.shape == (180, len(CENTRIFUGAL_PUMP.sensors))
    assert np.all(np.diff(first.timestamps_ms) == 60_000)
    start_health = pump.health
    while not pump.failed:
        pump.advance(24 * 3600)
    assert pump.failure_event in PROGPY_EVENTS and pump.health == 0.0
    assert pump.advance(3600).values.shape[0] == 0                 # a failed pump is stopped
    pump.repair()
    physics = pump._physics
    assert physics.state[physics._row["A"], 0] == NEW_IMPELLER_AREA
    assert not pump.failed
    after = pump.advance(3 * 3600)
    assert after.values.shape[0] == 180 and pump.health > 0.5 * start_health


def test_a_pump_that_failed_from_overheating_runs_again_after_repair():
    """Repair cools the bearings and the oil with the new parts: left at their failure temperature,
    the pump would meet its overheat limit again in the first minute."""
    pump = LivePump(fast_wearing(90_029))                           # oil overheats after about 11 h
    while not pump.failed:
        pump.advance(3600)
    assert pump.failure_event == "PumpOilOverheat"
    life_minutes = pump.minute
    pump.repair()
    again = pump.advance(8 * 3600)
    assert not pump.failed and again.values.shape[0] == 8 * 60
    oil = again.values[:, CENTRIFUGAL_PUMP.sensors.index("oil_temp")]
    ambient = again.values[:, CENTRIFUGAL_PUMP.sensors.index("ambient_temp")]
    assert oil[0] < ambient[0] + 15 and oil[-1] > oil[0]             # restarted cool, warming with use
    while not pump.failed:            # and wears out again: new parts (the first life began a little worn)
        pump.advance(3600)
    assert 0.8 * life_minutes < pump.minute - life_minutes < 2 * life_minutes


def test_live_pump_faults_are_flagged(anomalies):
    pump = LivePump(MachineSpec.draw(90_003))
    pump.advance(2 * 3600)
    stamps = lambda w: TelemetryWindow(w.timestamps_ms, w.values)    # noqa: E731
    [healthy] = anomalies.run_batch([stamps(pump.advance(3600))])
    pump.inject_fault("speed_oscillation", minutes=60)
    [oscillating] = anomalies.run_batch([stamps(pump.advance(3600))])
    assert not healthy.anomalous and oscillating.anomalous
    assert oscillating.top_sensors(1) == ["speed"]
    with pytest.raises(ValueError, match="unknown fault kind"):
        pump.inject_fault("gremlins")


def test_model_cards_record_held_out_results():
    rul = json.loads((rl.MODELS_DIR / "remaining_life.json").read_text())["held_out"]
    anomaly = json.loads((rl.MODELS_DIR / "anomaly.json").read_text())["held_out"]
    assert rul["rul_cap_cycles"] == rl.RUL_CAP
    assert rul["worst_rmse_fraction_of_life"] <= 0.15
    assert rul["interval_coverage"] >= 0.9
    # A week of history reads the last 150 cycles better than one day does.
    day = rul["one_day_of_history"]
    assert rul["history_hours"] == 7 * 24 and day["history_hours"] == 24
    assert rul["within_cap_rmse_cycles"] < day["within_cap_rmse_cycles"]
    assert anomaly["f1"] >= 0.9


@pytest.mark.slow
def test_committed_models_meet_their_targets_on_fresh_machines(remaining_life, anomalies):
    """Three unmodified machines from seeds no fleet of the training script uses; remaining life is
    scored against the capped truth, as the model card's numbers are."""
    fleet = simulate_fleet([MachineSpec.draw(50_000 + i) for i in range(3)])
    for tr in fleet:
        ends = np.arange(remaining_life.min_rows, len(tr.values) + 1, 600)
        estimates = remaining_life.run_batch([tr.window(e, min(e, CENTRIFUGAL_PUMP.window_rows)) for e in ends])
        truth = np.minimum(tr.rul_cycles[ends - 1], remaining_life.cap)
        error = np.array([e.cycles for e in estimates]) - truth
        rmse = float(np.sqrt(np.mean(error ** 2)))
        assert rmse <= 0.15 * tr.life_cycles, (tr.spec.machine_id, tr.life_cycles, rmse)
        covered = np.mean([e.lower_cycles <= t <= e.upper_cycles for e, t in zip(estimates, truth)])
        assert covered >= 0.7, (tr.spec.machine_id, covered)
    rng = np.random.default_rng(13)
    labels, windows = [], []
    for tr in fleet:
        normal = [tr.values[s:s + am.ROWS] for s in rng.integers(0, len(tr.values) - am.ROWS, 36)]
        faulty, _ = fault_windows(tr, rng, per_kind=6)
        windows += normal + faulty
        labels += [False] * len(normal) + [True] * len(faulty)
    flagged = np.array([s.anomalous for s in anomalies.run_batch(
        [TelemetryWindow(np.arange(am.ROWS, dtype=np.int64) * 60_000, w) for w in windows])])
    labels = np.array(labels)
    tp = np.sum(flagged & labels)
    f1 = 2 * tp / (flagged.sum() + labels.sum())
    assert f1 >= 0.9, f1
