"""kill -9 of the IoT service during streaming ingest: after a restart on the same database, every
acknowledged batch is stored, nothing is duplicated, and nothing but whole batches is there."""

from __future__ import annotations

import os
import signal
import threading

import grpc
import numpy as np
import pytest

from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc
from services.iot.asset_types import CENTRIFUGAL_PUMP
from tests.support import start_service

SENSORS = list(CENTRIFUGAL_PUMP.sensors)
BATCH_ROWS = 250
START_MS = 1_767_225_600_000
KILL_AFTER_ACKS = 40   # per stream, on average: the kill lands while later batches are in flight


def sent_batch(asset_id: str, sequence: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``sequence`` of an asset: its rows are a pure function of both, so the test can recompute them."""
    timestamps = START_MS + 1000 * (sequence * BATCH_ROWS + np.arange(BATCH_ROWS, dtype=np.int64))
    values = np.random.default_rng([sequence, len(asset_id)]).normal(0, 1, (BATCH_ROWS, len(SENSORS)))
    return timestamps, values.astype(np.float32)


def requests(asset_id: str):
    sequence = 0
    while True:   # until the service dies under it
        timestamps, values = sent_batch(asset_id, sequence)
        yield iot_pb2.IngestRequest(
            sequence=sequence, asset_id=asset_id, sensors=SENSORS,
            timestamps_ms=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_INT64, shape=[BATCH_ROWS],
                                            data=timestamps.tobytes()),
            values=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FP32, shape=list(values.shape),
                                     data=values.tobytes()))
        sequence += 1


class KillSwitch:
    """SIGKILL the service once the streams together have this many acknowledgements."""

    def __init__(self, pid: int, after_acks: int):
        self.pid, self.left, self.lock = pid, after_acks, threading.Lock()

    def acknowledged(self) -> None:
        with self.lock:
            self.left -= 1
            if self.left == 0:
                os.kill(self.pid, signal.SIGKILL)


def stream_until_killed(iot, asset_id: str, acked: list[int], kill: KillSwitch, failures: list) -> None:
    try:
        for ack in iot.Ingest(requests(asset_id)):
            acked.append(ack.sequence)
            kill.acknowledged()
    except grpc.RpcError as error:
        if error.code() != grpc.StatusCode.UNAVAILABLE:
            failures.append(error)
    except BaseException as error:   # noqa: BLE001 - reported by the test's thread
        failures.append(error)


@pytest.mark.slow
def test_kill_9_during_ingest_loses_no_acknowledged_batch(pki, tmp_path):
    database = f"sqlite:///{tmp_path}/iot.sqlite3"
    assets = ["pump-a", "pump-b"]
    service = start_service("services.iot", pki, tmp_path, "iot", iot_database_url=database,
                            anomaly_model="", remaining_life_model="", vitals_anomaly_model="")
    acked: dict[str, list[int]] = {asset_id: [] for asset_id in assets}
    try:
        with service.channel() as channel:
            iot = iot_pb2_grpc.IoTServiceStub(channel)
            for asset_id in assets:
                iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=CENTRIFUGAL_PUMP.name))
            kill, failures = KillSwitch(service.pid, KILL_AFTER_ACKS * len(assets)), []
            streams = [threading.Thread(target=stream_until_killed, args=(iot, a, acked[a], kill, failures))
                       for a in assets]
            for stream in streams:
                stream.start()
            for stream in streams:
                stream.join(60)
        assert not failures, failures
        assert service.process.wait(10) == -signal.SIGKILL
    finally:
        service.stop(5)

    restarted = start_service("services.iot", pki, tmp_path, "iot", iot_database_url=database,
                              anomaly_model="", remaining_life_model="", vitals_anomaly_model="")
    try:
        with restarted.channel() as channel:
            iot = iot_pb2_grpc.IoTServiceStub(channel)
            listed = {a.asset_id: a for a in iot.ListAssets(iot_pb2.ListAssetsRequest()).assets}
            for asset_id in assets:
                assert acked[asset_id] == list(range(len(acked[asset_id]))) and acked[asset_id]
                reply = iot.QueryTelemetry(iot_pb2.QueryTelemetryRequest(asset_id=asset_id, max_points=100_000))
                timestamps = np.frombuffer(reply.timestamps_ms.data, "<i8")
                values = np.frombuffer(reply.values.data, "<f4").reshape(-1, len(SENSORS))
                # Every acknowledged batch, maybe a few committed whose acknowledgement the kill cut off,
                # and nothing else: whole batches, in order, each exactly as sent.
                stored_batches, partial = divmod(reply.matched_rows, BATCH_ROWS)
                assert partial == 0 and stored_batches >= len(acked[asset_id]), (asset_id, reply.matched_rows)
                assert listed[asset_id].stored_rows == reply.matched_rows
                expected = [sent_batch(asset_id, s) for s in range(stored_batches)]
                np.testing.assert_array_equal(timestamps, np.concatenate([t for t, _ in expected]))
                np.testing.assert_array_equal(values, np.concatenate([v for _, v in expected]))
                assert listed[asset_id].last_timestamp_ms == timestamps[-1]
                # The asset takes telemetry again from where its store ends.
                next_batch = next(r for r in requests(asset_id) if r.sequence == stored_batches)
                (ack,) = list(iot.Ingest(iter([next_batch])))
                assert ack.sequence == stored_batches
        assert restarted.health() == "SERVING"
    finally:
        assert restarted.stop() == 0, restarted.log_tail()
