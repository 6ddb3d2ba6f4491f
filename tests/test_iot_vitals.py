"""Patient vital signs in the IoT service: the simulator, the patient-vitals asset type and its anomaly
model, over a real socket with mutual TLS, side by side with a pump and its model. The service tests
are marked slow: starting the service with its models and simulating the pump takes 10-20 s here."""

from __future__ import annotations

import shutil

import grpc
import numpy as np
import pytest

from modalmesh.v1 import iot_pb2, iot_pb2_grpc
from services.iot.asset_types import ASSET_TYPES, CENTRIFUGAL_PUMP, TelemetryWindow
from services.iot.packaged_network import MODELS_DIR
from services.iot.vitals import ADULT_NORMAL, EPISODE_KINDS, PATIENT_VITALS, Episode, simulate_vitals
from services.runtime.errors import bad_request_of
from tests.test_iot_service import batch, ingest, query
from tests.support import start_service

VITALS = list(PATIENT_VITALS.sensors)
HR, RR, SPO2, SBP, DBP, TEMP = range(len(VITALS))
START_MS = 1_767_254_400_000          # 2026-01-01 08:00 UTC
WINDOW = PATIENT_VITALS.anomaly_window_rows


def test_the_vitals_type_is_registered_with_its_six_signs_per_minute():
    assert ASSET_TYPES["patient-vitals"] is PATIENT_VITALS
    assert VITALS == ["heart_rate", "respiratory_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature"]
    assert PATIENT_VITALS.units == ("1/min", "1/min", "%", "mmHg", "mmHg", "degC")
    assert PATIENT_VITALS.sample_period_ms == 60_000 and 15 <= WINDOW <= 60


# -- the simulator -----------------------------------------------------------------------------------


def test_simulated_vitals_repeat_per_seed_and_stay_in_plausible_ranges():
    timestamps, values = simulate_vitals(7, START_MS, 24 * 60)
    again = simulate_vitals(7, START_MS, 24 * 60)
    other = simulate_vitals(8, START_MS, 24 * 60)[1]
    assert np.array_equal(timestamps, again[0]) and np.array_equal(values, again[1])
    assert not np.array_equal(values, other)
    assert timestamps.dtype == np.int64 and values.dtype == np.float32 and values.shape == (24 * 60, 6)
    assert np.all(np.diff(timestamps) == 60_000) and timestamps[0] == START_MS
    # A normal day: medians inside the normal adult ranges; SpO2 never above 100%.
    median = np.median(values, axis=0)
    assert np.all((median > ADULT_NORMAL[:, 0]) & (median < ADULT_NORMAL[:, 1])), median
    assert values[:, SPO2].max() <= 100
    # Heart rate and temperature follow the day: lower before dawn than in the afternoon.
    hours = (timestamps - START_MS) / 3_600_000 + 8
    night, afternoon = (hours % 24 >= 2) & (hours % 24 < 6), (hours % 24 >= 14) & (hours % 24 < 18)
    assert values[night, TEMP].mean() < values[afternoon, TEMP].mean() - 0.2
    assert values[night, HR].mean() < values[afternoon, HR].mean()
    # Artefacts that are not episodes: heart-rate spikes of a minute or two, one-minute SpO2 dropouts.
    heart_jumps = np.abs(np.diff(values[:, HR])) > 12
    assert heart_jumps.sum() >= 4
    dropouts = values[1:-1, SPO2] < np.minimum(values[:-2, SPO2], values[2:, SPO2]) - 8
    assert 1 <= dropouts.sum() <= 20


@pytest.mark.parametrize("kind, up, down", [
    ("tachycardia", [HR, RR], []),
    ("desaturation", [RR, HR], [SPO2]),
    ("hypotension", [HR], [SBP, DBP]),
    ("fever", [TEMP, HR, RR], []),
])
def test_an_episode_moves_its_signals_and_nothing_outside_it(kind, up, down):
    episode = Episode(kind, start_minute=120, minutes=120)
    _, calm = simulate_vitals(3, START_MS, 360)
    _, sick = simulate_vitals(3, START_MS, 360, [episode])
    change = np.median(sick[170:230] - calm[170:230], axis=0)           # the plateau
    scale = ADULT_NORMAL[:, 1] - ADULT_NORMAL[:, 0]
    for sign in up:
        assert change[sign] > 0.05 * scale[sign], (VITALS[sign], change)
    for sign in down:
        assert change[sign] < -0.15 * scale[sign], (VITALS[sign], change)
    untouched = [s for s in range(6) if s not in up + down]
    assert np.all(np.abs(change[untouched]) <= 0.05 * scale[untouched] + 1), change
    # Same patient, same noise: only the episode's minutes differ, and it ramps (no step on its first minute).
    assert np.array_equal(calm[:120], sick[:120]) and np.array_equal(calm[241:], sick[241:])
    first = np.abs(sick[121] - calm[121])
    assert np.all(first < np.abs(change) / 2 + 1)
    # Clinically what its name says at the plateau.
    plateau = np.median(sick[170:230], axis=0)
    assert {"tachycardia": plateau[HR] > 100, "desaturation": plateau[SPO2] < 92,
            "hypotension": plateau[SBP] < 95, "fever": plateau[TEMP] >= 38.0}[kind], plateau


def test_episodes_are_checked():
    with pytest.raises(ValueError, match="unknown episode kind"):
        Episode("hiccups", 0, 10)
    with pytest.raises(ValueError):
        Episode("fever", 0, 0)
    assert set(EPISODE_KINDS) == {"tachycardia", "desaturation", "hypotension", "fever"}


# -- the service ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patients():
    """Six hours of three patients: a hypotension episode in the last 80 minutes, a desaturation
    episode in the middle, and a calm one."""
    minutes = 360
    return {
        "falling": simulate_vitals(101, START_MS, minutes, [Episode("hypotension", 280, 120)]),
        "desaturating": simulate_vitals(102, START_MS, minutes, [Episode("desaturation", 200, 90)]),
        "calm": simulate_vitals(103, START_MS, minutes),
    }


@pytest.fixture(scope="module")
def pump():
    from services.iot.fleet import LivePump, MachineSpec

    window = LivePump(MachineSpec.draw(11)).advance(120 * 60)
    return window.timestamps_ms, window.values


def vitals_batch(asset_id, sequence, timestamps, values, sensors=VITALS):
    return batch(asset_id, sequence, timestamps, values, sensors=sensors)


@pytest.fixture(scope="module")
def ward(pki, tmp_path_factory, patients, pump):
    """A service with the packaged models; each patient and the pump ingested under their own asset ids."""
    tmp = tmp_path_factory.mktemp("iot-vitals")
    service = start_service("services.iot", pki, tmp, "iot", iot_database_url=f"sqlite:///{tmp}/iot.sqlite3",
                            remaining_life_model="")
    channel = service.channel()
    iot = iot_pb2_grpc.IoTServiceStub(channel)
    for name, (timestamps, values) in patients.items():
        created = iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=f"patient-{name}",
                                                                 asset_type="patient-vitals"))
        assert created.created and list(created.asset.type.sensors) == VITALS
        assert ingest(iot, [vitals_batch(f"patient-{name}", i, timestamps[i:i + 120], values[i:i + 120])
                            for i in range(0, len(timestamps), 120)])[1] is None
    iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id="pump-1", asset_type=CENTRIFUGAL_PUMP.name))
    assert ingest(iot, [batch("pump-1", 0, *pump)])[1] is None
    yield iot
    channel.close()
    assert service.stop() == 0, service.log_tail()


def windows_of(timestamps, windows: int):
    """(first, last) row of each of the latest `windows` back-to-back windows, oldest first."""
    n = len(timestamps)
    return [(n - WINDOW * k, n - WINDOW * (k - 1)) for k in range(windows, 0, -1)]


@pytest.mark.slow
def test_query_returns_the_vitals_as_ingested(ward, patients):
    timestamps, values = patients["calm"]
    reply, got_t, got_v = query(ward, "patient-calm")
    assert list(reply.sensors) == VITALS and reply.matched_rows == len(timestamps)
    assert np.array_equal(got_t, timestamps) and np.array_equal(got_v, values)


@pytest.mark.slow
def test_episodes_are_flagged_by_the_vitals_model_and_a_pump_by_its_own_in_one_call(ward, patients, pump):
    from services.iot.anomaly_model import NAME as PUMP_MODEL
    from services.iot.vitals_anomaly import NAME as VITALS_MODEL, VitalsAnomalyModel

    ids = ["patient-falling", "pump-1", "patient-desaturating", "patient-calm"]
    reply = ward.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=ids, windows=12))
    falling, pumped, desaturating, calm = reply.assets
    assert [a.asset_id for a in reply.assets] == ids
    # Each asset names the model that scored it; the response's own model is the first type's in the
    # service's order (pumps, then patients), whatever order the ids came in.
    assert [a.model.name for a in reply.assets] == [VITALS_MODEL, PUMP_MODEL, VITALS_MODEL, VITALS_MODEL]
    assert reply.model.name == PUMP_MODEL and falling.model.provenance.startswith(
        "trained by scripts/train_vitals_model.py on ")
    assert falling.threshold != pumped.threshold

    flags = lambda asset: [w.anomalous for w in asset.windows]   # noqa: E731
    # Hypotension from minute 280 (ramping in over 10): the last two windows (300-359) are flagged,
    # the hours before it are not; it shows on the pressures.
    assert flags(falling) == [False] * 9 + [flags(falling)[9], True, True]
    assert falling.top_sensors[0] in ("systolic_bp", "diastolic_bp")
    assert "heart_rate" in falling.top_sensors
    # Desaturation over minutes 200-289: the windows wholly inside it are flagged, the calm hours
    # before and after are not; by the latest window it is over.
    windows = windows_of(patients["desaturating"][0], 12)
    inside = [200 <= a and b <= 290 for a, b in windows]
    outside = [b <= 200 or a >= 300 for a, b in windows]
    assert all(f for f, i in zip(flags(desaturating), inside) if i) and sum(inside) == 2
    assert not any(f for f, o in zip(flags(desaturating), outside) if o)
    assert not any(flags(calm))
    # The pump's windows went to the pump model: 60-row windows on its 9 sensors, healthy.
    assert len(pumped.windows) == 2 and not any(flags(pumped))
    assert set(pumped.top_sensors) <= set(CENTRIFUGAL_PUMP.sensors)

    # The service scores exactly what the model scores in process.
    model = VitalsAnomalyModel(device="cpu")
    model.load()
    timestamps, values = patients["desaturating"]
    expected = model.run_batch([TelemetryWindow(timestamps[a:b], values[a:b]) for a, b in windows])
    np.testing.assert_allclose([w.score for w in desaturating.windows], [e.score for e in expected], rtol=1e-4)
    assert [(w.start_ms, w.end_ms) for w in desaturating.windows] == [
        (timestamps[a], timestamps[b - 1]) for a, b in windows]
    assert desaturating.threshold == pytest.approx(model.threshold)


@pytest.mark.slow
def test_every_asset_is_scored_by_its_type_when_none_is_named(ward):
    reply = ward.DetectAnomalies(iot_pb2.DetectAnomaliesRequest())
    models = {a.asset_id: a.model.name for a in reply.assets}
    assert reply.model.name == "pump-anomaly-autoencoder"
    patients_only = ward.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=["patient-calm"]))
    assert patients_only.model.name == "vitals-anomaly-autoencoder"
    assert models["pump-1"] == "pump-anomaly-autoencoder"
    assert {models[f"patient-{p}"] for p in ("falling", "desaturating", "calm")} == {"vitals-anomaly-autoencoder"}


@pytest.mark.slow
def test_a_sweep_asks_for_one_type_of_asset_only(ward):
    """A caller that sweeps one kind of asset (the manufacturing app: its pumps) sees nothing of the others."""
    listed = ward.ListAssets(iot_pb2.ListAssetsRequest(asset_type=CENTRIFUGAL_PUMP.name))
    assert [a.asset_id for a in listed.assets] == ["pump-1"]
    scored = ward.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_type=CENTRIFUGAL_PUMP.name))
    assert [a.asset_id for a in scored.assets] == ["pump-1"]
    patients = ward.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_type="patient-vitals"))
    assert sorted(a.asset_id for a in patients.assets) == ["patient-calm", "patient-desaturating", "patient-falling"]
    for call, request in ((ward.ListAssets, iot_pb2.ListAssetsRequest(asset_type="boiler")),
                          (ward.DetectAnomalies, iot_pb2.DetectAnomaliesRequest(asset_type="boiler"))):
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "boiler" in error.value.details()


@pytest.mark.slow
def test_remaining_life_does_not_apply_to_patients(ward):
    with pytest.raises(grpc.RpcError) as error:
        ward.PredictRemainingLife(iot_pb2.PredictRemainingLifeRequest(asset_ids=["patient-calm"]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "remaining-life does not apply to patient-vitals assets (patient-calm)" in error.value.details()


@pytest.mark.slow
@pytest.mark.parametrize("sensors, columns, field", [
    (VITALS[:5], 5, "sensors"),                        # a sign missing
    (VITALS[::-1], 6, "sensors"),                      # out of order
    (VITALS, 5, "values.shape"),                       # a column short
])
def test_bad_vitals_batches_are_refused_and_nothing_of_them_is_stored(ward, sensors, columns, field):
    timestamps, values = simulate_vitals(104, START_MS, 10)
    asset_id = f"patient-bad-{field}-{columns}-{sensors[0]}"
    ward.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type="patient-vitals"))
    acks, error = ingest(ward, [vitals_batch(asset_id, 0, timestamps, values[:, :columns], sensors=sensors)])
    assert not acks and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_of(error)] == [field]
    assert query(ward, asset_id)[0].matched_rows == 0


@pytest.mark.slow
def test_vitals_model_from_a_folder_and_a_missing_pump_model(pki, tmp_path, patients):
    """MODALMESH_VITALS_ANOMALY_MODEL may name a folder; with the pump's model off, pumps get
    FAILED_PRECONDITION naming its setting while patients are still scored."""
    folder = tmp_path / "my-vitals-model"
    shutil.copytree(MODELS_DIR / "vitals-anomaly", folder)
    service = start_service("services.iot", pki, tmp_path, "iot", iot_database_url=f"sqlite:///{tmp_path}/iot.db",
                            anomaly_model="", remaining_life_model="", vitals_anomaly_model=str(folder))
    try:
        with service.channel() as channel:
            iot = iot_pb2_grpc.IoTServiceStub(channel)
            timestamps, values = patients["falling"]
            iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id="patient-1", asset_type="patient-vitals"))
            iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id="pump-1", asset_type=CENTRIFUGAL_PUMP.name))
            assert ingest(iot, [vitals_batch("patient-1", 0, timestamps, values)])[1] is None
            reply = iot.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=["patient-1"]))
            assert reply.assets[0].windows[-1].anomalous
            assert reply.model.provenance.startswith(f"local path {folder}")
            with pytest.raises(grpc.RpcError) as error:
                iot.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=["patient-1", "pump-1"]))
            assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "no anomaly model for centrifugal-pump assets (pump-1; MODALMESH_ANOMALY_MODEL is empty)" \
                in error.value.details()
            with pytest.raises(grpc.RpcError) as error:
                iot.PredictRemainingLife(iot_pb2.PredictRemainingLifeRequest(asset_ids=["patient-1"]))
            assert "does not apply to patient-vitals" in error.value.details()
    finally:
        assert service.stop() == 0, service.log_tail()
