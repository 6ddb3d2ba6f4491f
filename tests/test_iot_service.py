"""IoTService over a real socket with mutual TLS: registrations, streaming ingest read back exactly,
every kind of bad batch refused with nothing of it stored, thinning, and the model RPCs."""

from __future__ import annotations

import itertools

import grpc
import numpy as np
import pytest

from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc
from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow
from services.iot.store import NotAfterStored, TelemetryStore
from services.runtime.database import sqlite_url
from services.runtime.errors import bad_request_of
from tests.support import metric, start_service

PUMP = CENTRIFUGAL_PUMP.name
SENSORS = list(CENTRIFUGAL_PUMP.sensors)
MAX_ROWS = 2000
MAX_MESSAGE_BYTES = 1 << 20
START_MS = 1_767_225_600_000   # 2026-01-01
# Storage tests: no torch to load.
NO_MODELS = {"anomaly_model": "", "remaining_life_model": "", "vitals_anomaly_model": ""}
_ids = itertools.count()


@pytest.fixture(scope="module")
def iot_service(pki, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("iot")
    service = start_service("services.iot", pki, tmp, "iot", iot_database_url=f"sqlite:///{tmp}/iot.sqlite3",
                            ingest_max_rows_per_batch=MAX_ROWS, max_message_bytes=MAX_MESSAGE_BYTES, **NO_MODELS)
    yield service
    assert service.stop() == 0, service.log_tail()


@pytest.fixture(scope="module")
def iot(iot_service):
    channel = iot_service.channel()
    yield iot_pb2_grpc.IoTServiceStub(channel)
    channel.close()


def new_asset(iot, prefix: str = "pump") -> str:
    asset_id = f"{prefix}-{next(_ids)}"
    assert iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=PUMP)).created
    return asset_id


def rows(n: int, first_ms: int = START_MS, period_ms: int = 60_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return first_ms + period_ms * np.arange(n, dtype=np.int64), rng.normal(300, 20, (n, len(SENSORS)))


def batch(asset_id: str, sequence: int, timestamps, values, *, value_dtype=np.float32,
          sensors=None) -> iot_pb2.IngestRequest:
    timestamps = np.asarray(timestamps, dtype="<i8")
    values = np.asarray(values, dtype=value_dtype)
    dtype = {np.float32: common_pb2.DATA_TYPE_FP32, np.float64: common_pb2.DATA_TYPE_FP64}[value_dtype]
    return iot_pb2.IngestRequest(
        sequence=sequence, asset_id=asset_id, sensors=SENSORS if sensors is None else sensors,
        timestamps_ms=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_INT64, shape=[len(timestamps)],
                                        data=timestamps.tobytes()),
        values=common_pb2.Tensor(dtype=dtype, shape=list(values.shape), data=values.tobytes()))


def ingest(iot, requests) -> tuple[list[iot_pb2.IngestResponse], grpc.RpcError | None]:
    """Acknowledgements received, and the status that ended the stream if not OK."""
    acks = []
    try:
        for ack in iot.Ingest(iter(requests), timeout=30):
            acks.append(ack)
    except grpc.RpcError as error:
        return acks, error
    return acks, None


def query(iot, asset_id: str, start_ms: int = 0, end_ms: int = 0, max_points: int = 0):
    reply = iot.QueryTelemetry(iot_pb2.QueryTelemetryRequest(asset_id=asset_id, start_ms=start_ms, end_ms=end_ms,
                                                             max_points=max_points))
    assert reply.timestamps_ms.dtype == common_pb2.DATA_TYPE_INT64
    assert reply.values.dtype == common_pb2.DATA_TYPE_FP32
    timestamps = np.frombuffer(reply.timestamps_ms.data, "<i8").reshape(tuple(reply.timestamps_ms.shape))
    values = np.frombuffer(reply.values.data, "<f4").reshape(tuple(reply.values.shape))
    return reply, timestamps, values


def stored_rows(iot, asset_id: str) -> int:
    (asset,) = [a for a in iot.ListAssets(iot_pb2.ListAssetsRequest()).assets if a.asset_id == asset_id]
    return asset.stored_rows


# -- registrations -------------------------------------------------------------------------------


def test_register_is_idempotent_and_list_shows_types_and_what_is_stored(iot):
    asset_id = new_asset(iot)
    again = iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=PUMP))
    assert not again.created and again.asset.type.sensors == SENSORS and again.asset.stored_rows == 0
    listed = iot.ListAssets(iot_pb2.ListAssetsRequest())
    (asset,) = [a for a in listed.assets if a.asset_id == asset_id]
    assert asset.type.name == PUMP and asset.last_timestamp_ms == 0
    pump, vitals = listed.asset_types
    assert pump.name == PUMP and list(pump.sensors) == SENSORS and pump.window_rows == CENTRIFUGAL_PUMP.window_rows
    assert vitals.name == "patient-vitals" and len(vitals.sensors) == 6 and vitals.window_rows == 0


@pytest.mark.parametrize("asset_id, asset_type, field", [
    ("", PUMP, "asset_id"),
    ("pump 7", PUMP, "asset_id"),
    ("x" * 129, PUMP, "asset_id"),
    ("pump-ok", "wind-turbine", "asset_type"),
])
def test_bad_registrations_are_refused_with_field_details(iot, iot_service, asset_id, asset_type, field):
    with pytest.raises(grpc.RpcError) as error:
        iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=asset_type))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_of(error.value)] == [field]
    assert iot_service.health() == "SERVING"


# -- ingest and query ----------------------------------------------------------------------------


def test_batches_are_acknowledged_in_order_and_read_back_exactly(iot):
    asset_id = new_asset(iot)
    t1, v1 = rows(100, seed=1)
    t2, v2 = rows(250, first_ms=int(t1[-1]) + 60_000, seed=2)
    t3, v3 = rows(50, first_ms=int(t2[-1]) + 1, seed=3)
    acks, error = ingest(iot, [batch(asset_id, 1, t1, v1), batch(asset_id, 2, t2, v2, value_dtype=np.float64),
                               batch(asset_id, 5, t3, v3)])
    assert error is None
    assert [(a.sequence, a.asset_id, a.stored_rows, a.last_timestamp_ms) for a in acks] == [
        (1, asset_id, 100, t1[-1]), (2, asset_id, 250, t2[-1]), (5, asset_id, 50, t3[-1])]
    reply, timestamps, values = query(iot, asset_id)
    assert reply.matched_rows == 400 and list(reply.sensors) == SENSORS
    np.testing.assert_array_equal(timestamps, np.concatenate([t1, t2, t3]))
    np.testing.assert_array_equal(values, np.concatenate([v1, v2, v3]).astype(np.float32))
    assert stored_rows(iot, asset_id) == 400


def test_a_later_stream_continues_after_the_last_stored_row(iot):
    asset_id = new_asset(iot)
    t1, v1 = rows(10)
    t2, v2 = rows(10, first_ms=int(t1[-1]) + 1)
    assert ingest(iot, [batch(asset_id, 0, t1, v1)])[1] is None
    assert ingest(iot, [batch(asset_id, 0, t2, v2)])[1] is None
    np.testing.assert_array_equal(query(iot, asset_id)[1], np.concatenate([t1, t2]))


def test_query_by_time_range_is_inclusive_and_spans_batches(iot):
    asset_id = new_asset(iot)
    timestamps, values = rows(1000, seed=4)
    acks, error = ingest(iot, [batch(asset_id, i, timestamps[i * 100:(i + 1) * 100], values[i * 100:(i + 1) * 100])
                               for i in range(10)])
    assert error is None and len(acks) == 10
    reply, got_t, got_v = query(iot, asset_id, start_ms=int(timestamps[150]), end_ms=int(timestamps[420]))
    assert reply.matched_rows == 271
    np.testing.assert_array_equal(got_t, timestamps[150:421])
    np.testing.assert_array_equal(got_v, values[150:421].astype(np.float32))
    between = query(iot, asset_id, start_ms=int(timestamps[3]) + 1, end_ms=int(timestamps[4]) - 1)
    assert between[0].matched_rows == 0 and between[1].shape == (0,) and between[2].shape == (0, len(SENSORS))
    assert query(iot, asset_id, start_ms=int(timestamps[990]))[0].matched_rows == 10


def test_query_thins_to_evenly_spaced_rows_keeping_the_first_and_last(iot):
    asset_id = new_asset(iot)
    timestamps, values = rows(1001, seed=5)
    assert ingest(iot, [batch(asset_id, 0, timestamps, values)])[1] is None
    reply, got_t, got_v = query(iot, asset_id, max_points=11)
    assert reply.matched_rows == 1001 and len(got_t) == 11
    np.testing.assert_array_equal(got_t, timestamps[::100])
    np.testing.assert_array_equal(got_v, values[::100].astype(np.float32))
    assert len(query(iot, asset_id, max_points=5000)[1]) == 1001


@pytest.mark.parametrize("request_, code, field", [
    (iot_pb2.QueryTelemetryRequest(asset_id="never-registered"), grpc.StatusCode.NOT_FOUND, None),
    (iot_pb2.QueryTelemetryRequest(asset_id="bad id"), grpc.StatusCode.INVALID_ARGUMENT, "asset_id"),
    (iot_pb2.QueryTelemetryRequest(asset_id="{asset}", start_ms=10, end_ms=5), grpc.StatusCode.INVALID_ARGUMENT,
     "end_ms"),
    (iot_pb2.QueryTelemetryRequest(asset_id="{asset}", max_points=100_001), grpc.StatusCode.INVALID_ARGUMENT,
     "max_points"),
    (iot_pb2.QueryTelemetryRequest(asset_id="{asset}", max_points=-1), grpc.StatusCode.INVALID_ARGUMENT,
     "max_points"),
])
def test_bad_queries_get_clear_statuses(iot, request_, code, field):
    request_.asset_id = request_.asset_id.replace("{asset}", new_asset(iot))
    with pytest.raises(grpc.RpcError) as error:
        iot.QueryTelemetry(request_)
    assert error.value.code() == code, error.value.details()
    if field:
        assert [f for f, _ in bad_request_of(error.value)] == [field]


# -- bad batches: the stream ends with the status, the batches before stay, nothing of the bad one -----


def _bad_batches(asset_id: str, good_last_ms: int) -> dict:
    """The bad batch of each case, sent as sequence 2 after a good batch 1 that ended at good_last_ms."""
    t, v = rows(20, first_ms=good_last_ms + 60_000)
    duplicate, backwards, nan, inf = t.copy(), t.copy(), v.copy(), v.copy()
    duplicate[7] = duplicate[6]
    backwards[12] = backwards[3]
    nan[4, 2] = np.nan
    inf[19, 8] = -np.inf
    huge = v.copy()
    huge[0, 0] = 1e300
    wrong_dtype = batch(asset_id, 2, t, v)
    wrong_dtype.timestamps_ms.dtype = common_pb2.DATA_TYPE_INT32
    int_values = batch(asset_id, 2, t, v)
    int_values.values.dtype = common_pb2.DATA_TYPE_INT32
    flat_timestamps = batch(asset_id, 2, t, v)
    flat_timestamps.timestamps_ms.shape[:] = [4, 5]
    short_data = batch(asset_id, 2, t, v)
    short_data.values.data = short_data.values.data[:-4]
    long_t, long_v = rows(MAX_ROWS + 1, first_ms=good_last_ms + 1)
    return {
        "duplicate timestamp": (batch(asset_id, 2, duplicate, v), "timestamps_ms[7]"),
        "timestamps going back": (batch(asset_id, 2, backwards, v), "timestamps_ms[12]"),
        "not after the stored rows": (batch(asset_id, 2, *rows(20, first_ms=good_last_ms)), "timestamps_ms[0]"),
        "NaN": (batch(asset_id, 2, t, nan), "values[4][2]"),
        "infinity": (batch(asset_id, 2, t, inf, value_dtype=np.float64), "values[19][8]"),
        "FP64 past float32's range": (batch(asset_id, 2, t, huge, value_dtype=np.float64), "values[0][0]"),
        "a sensor missing": (batch(asset_id, 2, t, v[:, :8], sensors=SENSORS[:8]), "sensors"),
        "sensors reordered": (batch(asset_id, 2, t, v, sensors=SENSORS[::-1]), "sensors"),
        "timestamps as INT32": (wrong_dtype, "timestamps_ms.dtype"),
        "values as INT32": (int_values, "values.dtype"),
        "values one column short": (batch(asset_id, 2, t, v[:, :8]), "values.shape"),
        "timestamps not a vector": (flat_timestamps, "timestamps_ms.shape"),
        "data shorter than the shape": (short_data, "values.data"),
        "more rows than a batch may hold": (batch(asset_id, 2, long_t, long_v), "timestamps_ms.shape"),
        "sequence not increasing": (batch(asset_id, 1, t, v), "sequence"),
        "malformed asset id": (batch("no spaces please", 2, t, v), "asset_id"),
    }


BAD_CASES = list(_bad_batches("x", START_MS))


@pytest.mark.parametrize("case", BAD_CASES)
def test_a_bad_batch_ends_the_stream_and_nothing_of_it_is_stored(iot, iot_service, case):
    asset_id = new_asset(iot)
    t, v = rows(30, seed=6)
    bad, field = _bad_batches(asset_id, int(t[-1]))[case]
    after_t, after_v = rows(5, first_ms=int(t[-1]) + 10**9)
    acks, error = ingest(iot, [batch(asset_id, 1, t, v), bad, batch(asset_id, 3, after_t, after_v)])
    assert [a.sequence for a in acks] == [1], "the good batch before the bad one is acknowledged"
    assert error is not None and error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    violations = bad_request_of(error)
    assert [f for f, _ in violations] == [field], violations
    assert "batch sequence" in violations[0][1]
    reply, timestamps, values = query(iot, asset_id)
    assert reply.matched_rows == 30 and stored_rows(iot, asset_id) == 30
    np.testing.assert_array_equal(timestamps, t)
    assert iot_service.health() == "SERVING"


def test_unknown_asset_is_not_found_and_stores_nothing(iot, iot_service):
    t, v = rows(5)
    acks, error = ingest(iot, [batch("pump-nobody-registered", 1, t, v)])
    assert acks == [] and error.code() == grpc.StatusCode.NOT_FOUND
    assert "RegisterAsset" in error.details() and "batch sequence 1" in error.details()
    assert "pump-nobody-registered" not in [a.asset_id for a in iot.ListAssets(iot_pb2.ListAssetsRequest()).assets]
    assert iot_service.health() == "SERVING"


def test_an_empty_stream_is_invalid(iot, iot_service):
    acks, error = ingest(iot, [])
    assert acks == [] and error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in bad_request_of(error)] == ["stream"]
    assert iot_service.health() == "SERVING"


def test_a_message_past_the_size_limit_is_resource_exhausted_and_stores_nothing(iot, iot_service):
    asset_id = new_asset(iot)
    t, v = rows(MAX_ROWS)
    v = np.tile(v, (1, 8))   # a wide message: well past the 1 MiB limit
    request = batch(asset_id, 1, t, v, value_dtype=np.float64)
    assert request.ByteSize() > MAX_MESSAGE_BYTES
    acks, error = ingest(iot, [request])
    assert acks == [] and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert stored_rows(iot, asset_id) == 0
    assert iot_service.health() == "SERVING"


def test_concurrent_streams_of_one_asset_never_store_rows_out_of_order(iot):
    """Two streams race with overlapping times: each batch is stored whole or refused, in time order."""
    asset_id = new_asset(iot)
    timestamps, values = rows(400, seed=7)
    streams = [[batch(asset_id, i, timestamps[i * 20:(i + 1) * 20], values[i * 20:(i + 1) * 20])
                for i in range(start, 20, 2)] for start in (0, 1)]
    calls = [iot.Ingest(iter(s), timeout=30) for s in streams]
    acked = []
    for call in calls:
        try:
            for ack in call:
                acked.append(ack.sequence)
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "not after" in error.details()
    reply, got_t, got_v = query(iot, asset_id)
    assert reply.matched_rows == 20 * len(acked) == stored_rows(iot, asset_id)
    assert np.all(np.diff(got_t) > 0)
    expected = np.concatenate([timestamps[s * 20:(s + 1) * 20] for s in sorted(acked)])
    np.testing.assert_array_equal(got_t, expected)


def test_metrics_count_what_was_committed(iot, iot_service):
    before = iot_service.metrics()
    asset_id = new_asset(iot)
    t, v = rows(123)
    assert ingest(iot, [batch(asset_id, 0, t[:23], v[:23]), batch(asset_id, 1, t[23:], v[23:])])[1] is None
    after = iot_service.metrics()

    def grew(name: str) -> float:
        return metric(after, name) - metric(before, name)

    assert grew("modalmesh_iot_ingested_rows_total") == 123
    assert grew("modalmesh_iot_ingested_batches_total") == 2
    assert 1 <= grew("modalmesh_iot_store_commit_seconds_count") <= 2   # both batches may share a transaction
    assert grew("modalmesh_iot_store_commit_batches_sum") == 2
    assert metric(after, "modalmesh_iot_in_flight_batches") == 0


# -- the models ----------------------------------------------------------------------------------


def test_model_rpcs_without_models_are_failed_precondition(iot):
    for call, request in [(iot.DetectAnomalies, iot_pb2.DetectAnomaliesRequest()),
                          (iot.PredictRemainingLife, iot_pb2.PredictRemainingLifeRequest())]:
        with pytest.raises(grpc.RpcError) as error:
            call(request)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "MODEL" in error.value.details()


def test_past_the_in_flight_limit_a_batch_is_resource_exhausted_and_earlier_ones_stay(pki, tmp_path):
    """One batch may wait for the store across all streams: a stream that pipelines 50 finds it full."""
    service = start_service("services.iot", pki, tmp_path, "iot", iot_database_url=f"sqlite:///{tmp_path}/iot.sqlite3",
                            ingest_total_in_flight=1, **NO_MODELS)
    try:
        with service.channel() as channel:
            iot = iot_pb2_grpc.IoTServiceStub(channel)
            asset_id = new_asset(iot)
            timestamps, values = rows(50 * 20)
            acks, error = ingest(iot, [batch(asset_id, i, timestamps[i * 20:(i + 1) * 20],
                                             values[i * 20:(i + 1) * 20]) for i in range(50)])
            assert error is not None and error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
            assert "retry" in error.details()
            assert [a.sequence for a in acks] == list(range(len(acks))) and len(acks) < 50
            reply, got_t, _ = query(iot, asset_id)
            assert reply.matched_rows == 20 * len(acks) == stored_rows(iot, asset_id)
            np.testing.assert_array_equal(got_t, timestamps[:20 * len(acks)])
        assert service.health() == "SERVING"
    finally:
        assert service.stop() == 0, service.log_tail()


# -- the store in-process: what the service's reads and several writers rely on ------------------


def test_latest_rows_span_chunk_boundaries(tmp_path):
    store = TelemetryStore(sqlite_url(tmp_path / "iot.sqlite3"), {PUMP: CENTRIFUGAL_PUMP})
    store.register("pump", PUMP)
    timestamps, values = rows(1000, seed=8)
    for start in range(0, 1000, 70):   # chunks of 70 rows, the last one of 20
        store.append("pump", timestamps[start:start + 70], values[start:start + 70])
    for n in (1, 69, 70, 71, 500, 1000, 5000):
        latest = store.read_latest("pump", n)
        np.testing.assert_array_equal(latest.timestamps_ms, timestamps[-n:])
        np.testing.assert_array_equal(latest.values, values[-n:].astype(np.float32))
    assert len(store.read_latest("pump", 0)) == 0
    store.close()


def test_two_stores_on_one_database_never_store_rows_twice_or_out_of_order(tmp_path):
    """As two service processes (or replicas on PostgreSQL) would: each append claims the asset's row count."""
    url = sqlite_url(tmp_path / "iot.sqlite3")
    first, second = TelemetryStore(url, {PUMP: CENTRIFUGAL_PUMP}), TelemetryStore(url, {PUMP: CENTRIFUGAL_PUMP})
    first.register("pump", PUMP)
    assert second.register("pump", PUMP)[1] is False   # sees the registration the other made
    timestamps, values = rows(30)
    first.append("pump", timestamps[:10], values[:10])
    with pytest.raises(NotAfterStored):   # second still thinks nothing is stored: it reloads, then refuses
        second.append("pump", timestamps[5:15], values[5:15])
    assert second.append("pump", timestamps[10:20], values[10:20]).stored_rows == 20
    with pytest.raises(NotAfterStored):
        first.append("pump", timestamps[10:20], values[10:20])
    assert first.append("pump", timestamps[20:], values[20:]).stored_rows == 30
    third = TelemetryStore(url, {PUMP: CENTRIFUGAL_PUMP})
    np.testing.assert_array_equal(third.read_range("pump", 0, 2**62).timestamps_ms, timestamps)
    # Registered by one process, then streamed to another: the other looks it up instead of NOT_FOUND.
    first.register("pump-2", PUMP)
    assert second.asset("pump-2").stored_rows == 0
    first.append("pump-2", timestamps[:5], values[:5])
    assert {a.asset_id: a.stored_rows for a in third.assets()} == {"pump": 30, "pump-2": 5}
    for store in (first, second, third):
        store.close()


@pytest.mark.slow
def test_the_service_runs_on_postgresql(pki, tmp_path, postgres_url):
    """The same code on PostgreSQL by URL: ingest with group commit, queries, two stores racing."""
    service = start_service("services.iot", pki, tmp_path, "iot", iot_database_url=postgres_url, **NO_MODELS)
    try:
        with service.channel() as channel:
            iot = iot_pb2_grpc.IoTServiceStub(channel)
            asset_id = new_asset(iot)
            timestamps, values = rows(1000, seed=9)
            acks, error = ingest(iot, [batch(asset_id, i, timestamps[i * 100:(i + 1) * 100],
                                             values[i * 100:(i + 1) * 100]) for i in range(10)])
            assert error is None and len(acks) == 10
            reply, got_t, got_v = query(iot, asset_id, start_ms=int(timestamps[250]), end_ms=int(timestamps[749]))
            assert reply.matched_rows == 500
            np.testing.assert_array_equal(got_t, timestamps[250:750])
            np.testing.assert_array_equal(got_v, values[250:750].astype(np.float32))
            bad = rows(10, first_ms=int(timestamps[-1]))
            assert ingest(iot, [batch(asset_id, 0, *bad)])[1].code() == grpc.StatusCode.INVALID_ARGUMENT
            # A second writer on the same database (another replica) continues after the service's rows.
            other = TelemetryStore(postgres_url, {PUMP: CENTRIFUGAL_PUMP})
            more_t, more_v = rows(10, first_ms=int(timestamps[-1]) + 1)
            assert other.append(asset_id, more_t, more_v).stored_rows == 1010
            other.close()
            with pytest.raises(grpc.RpcError) as refused:   # the service's view was stale: it reloads, then refuses
                list(iot.Ingest(iter([batch(asset_id, 0, *rows(10, first_ms=int(timestamps[-1]) + 2))])))
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert query(iot, asset_id)[0].matched_rows == 1010
    finally:
        assert service.stop() == 0, service.log_tail()


# -- the models, on pumps from the ProgPy fleet simulator ------------------------------------------


@pytest.fixture(scope="module")
def pumps():
    """Three simulated pumps: healthy (25 h), one whose thrust bearing overheats in its last hour, one of 100 rows."""
    from services.iot.fleet import LivePump, MachineSpec

    healthy = LivePump(MachineSpec.draw(11)).advance(1500 * 60)
    overheating = LivePump(MachineSpec.draw(12))
    before = overheating.advance(1440 * 60)
    overheating.inject_fault("bearing_overheat", minutes=60, sensor="thrust_bearing_temp")
    during = overheating.advance(60 * 60)
    young = LivePump(MachineSpec.draw(13)).advance(100 * 60)
    return {"healthy": (healthy.timestamps_ms, healthy.values),
            "overheating": (np.concatenate([before.timestamps_ms, during.timestamps_ms]),
                            np.concatenate([before.values, during.values])),
            "young": (young.timestamps_ms, young.values)}


@pytest.fixture(scope="module")
def scored(pki, tmp_path_factory, pumps):
    """A service with the packaged models, and each pump's telemetry ingested under its own asset id."""
    tmp = tmp_path_factory.mktemp("iot-models")
    service = start_service("services.iot", pki, tmp, "iot", iot_database_url=f"sqlite:///{tmp}/iot.sqlite3")
    channel = service.channel()
    iot = iot_pb2_grpc.IoTServiceStub(channel)
    ids = {}
    for name, (timestamps, values) in pumps.items():
        ids[name] = new_asset(iot, name)
        assert ingest(iot, [batch(ids[name], i, timestamps[i:i + 500], values[i:i + 500])
                            for i in range(0, len(timestamps), 500)])[1] is None
    yield iot, ids
    channel.close()
    assert service.stop() == 0, service.log_tail()


@pytest.mark.slow
def test_anomaly_scores_flag_the_overheating_bearing_and_match_the_model_in_process(scored, pumps):
    from services.iot.anomaly_model import AnomalyModel

    iot, ids = scored
    reply = iot.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=[ids["healthy"], ids["overheating"]],
                                                               windows=3))
    assert reply.model.name and reply.model.provenance and reply.model.version
    healthy, overheating = reply.assets
    assert [a.asset_id for a in reply.assets] == [ids["healthy"], ids["overheating"]]
    assert not healthy.windows[-1].anomalous and overheating.windows[-1].anomalous
    assert overheating.top_sensors[0] == "thrust_bearing_temp"
    model = AnomalyModel(device="cpu")
    model.load()
    for asset, name in [(healthy, "healthy"), (overheating, "overheating")]:
        timestamps, values = pumps[name]
        assert asset.threshold == pytest.approx(model.threshold)
        windows = [(len(timestamps) - 60 * k, len(timestamps) - 60 * (k - 1)) for k in (3, 2, 1)]
        assert [(w.start_ms, w.end_ms) for w in asset.windows] == [
            (timestamps[a], timestamps[b - 1]) for a, b in windows]
        expected = model.run_batch([TelemetryWindow(timestamps[a:b], values[a:b]) for a, b in windows])
        np.testing.assert_allclose([w.score for w in asset.windows], [e.score for e in expected], rtol=1e-4)


@pytest.mark.slow
def test_remaining_life_reads_the_latest_day_and_matches_the_model_in_process(scored, pumps):
    from services.iot.remaining_life import RemainingLifeModel

    iot, ids = scored
    reply = iot.PredictRemainingLife(iot_pb2.PredictRemainingLifeRequest(asset_ids=[ids["healthy"]]))
    (life,) = reply.assets
    timestamps, values = pumps["healthy"]
    assert life.as_of_ms == timestamps[-1] and life.cycle_seconds == CENTRIFUGAL_PUMP.cycle_seconds
    assert life.lower_cycles <= life.cycles <= life.upper_cycles and 0 < life.coverage < 1
    model = RemainingLifeModel(device="cpu")
    model.load()
    # The model counts down from a cap (as C-MAPSS work does): one day into a life of hundreds of hours is near it.
    assert life.cycles >= 0.8 * model.card["rul_cap_cycles"]
    (expected,) = model.run_batch([TelemetryWindow(timestamps[-CENTRIFUGAL_PUMP.window_rows:],
                                                   values[-CENTRIFUGAL_PUMP.window_rows:])])
    assert life.cycles == pytest.approx(expected.cycles, rel=1e-4)
    assert (life.lower_cycles, life.upper_cycles) == pytest.approx((expected.lower_cycles, expected.upper_cycles),
                                                                   rel=1e-4)
    assert reply.model.name and reply.model.provenance


@pytest.mark.slow
def test_assets_without_enough_telemetry_are_refused_when_named_and_skipped_otherwise(scored):
    iot, ids = scored
    with pytest.raises(grpc.RpcError) as error:
        iot.PredictRemainingLife(iot_pb2.PredictRemainingLifeRequest(asset_ids=[ids["healthy"], ids["young"]]))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"{ids['young']} has 100 rows and needs {24 * 60}" in error.value.details()
    everyone = {a.asset_id for a in iot.PredictRemainingLife(iot_pb2.PredictRemainingLifeRequest()).assets}
    assert {ids["healthy"], ids["overheating"]} <= everyone and ids["young"] not in everyone
    young = iot.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=[ids["young"]], windows=64))
    assert len(young.assets[0].windows) == 1   # 100 rows hold one whole window of 60
    for request, field in [(iot_pb2.DetectAnomaliesRequest(windows=65), "windows"),
                           (iot_pb2.DetectAnomaliesRequest(asset_ids=[ids["young"]] * 2), "asset_ids")]:
        with pytest.raises(grpc.RpcError) as error:
            iot.DetectAnomalies(request)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in bad_request_of(error.value)] == [field]
    with pytest.raises(grpc.RpcError) as error:
        iot.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=["pump-nobody-registered"]))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
