"""The fleet-simulator workload over a real broker with mutual TLS: its machines publish telemetry and
media, wear out and fail, and a maintenance order from the app repairs them."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pytest
import soundfile

from apps.manufacturing.simulator import FleetClock, bearing_severity, defect_probability
from modalmesh.launch import launch
from services.iot.asset_types import CENTRIFUGAL_PUMP
from services.iot.mqtt_bridge import topics
from tests.mqtt import broker, close_clients  # noqa: F401 - fixtures
from tests.support import metric, wait_for

SENSORS = CENTRIFUGAL_PUMP.sensors
MINUTE_MS = 60_000


def start_simulator(pki, broker, tmp, **settings):
    simulator = launch("apps.manufacturing.simulator", pki, tmp, "fleet-simulator", mqtt_host=broker.host,
                       mqtt_port=broker.port, data_dir=tmp, drain_grace_s=5, publish_interval_s=0.5,
                       **settings)
    try:
        simulator.wait_serving(60)
    except BaseException:
        simulator.stop(5)
        raise
    return simulator


def telemetry(message) -> tuple[str, topics.TelemetryBatch]:
    return topics.parse_topic(message.topic).asset_id, topics.decode_telemetry(message.payload, SENSORS)


@pytest.mark.slow
def test_machines_publish_telemetry_images_and_sounds(pki, broker, tmp_path):
    bridge = broker.subscriber("mqtt-bridge", topics.topic_filter(topics.TELEMETRY))
    app = broker.subscriber("manufacturing", "modalmesh/fleet/#")
    simulator = start_simulator(pki, broker, tmp_path, machines=3, speedup=7200, max_start_age_hours=0,
                                media_interval_hours=1, fault_interval_hours=0, clip_seconds=0.5)
    try:
        batches: dict[str, list[topics.TelemetryBatch]] = {}
        while sum(len(b) for b in batches.values()) < 9:
            asset_id, batch = telemetry(bridge.next(60))
            batches.setdefault(asset_id, []).append(batch)
        assert sorted(batches) == ["pump-01", "pump-02", "pump-03"]
        for asset_id, series in batches.items():
            stamps = np.concatenate([b.timestamps_ms for b in series])
            assert (np.diff(stamps) == MINUTE_MS).all(), asset_id   # one row a simulated minute, none lost
            values = np.concatenate([b.values for b in series])
            assert values.shape[1] == len(SENSORS) and np.isfinite(values).all()
            assert 300 < values[:, SENSORS.index("speed")].mean() < 400   # rad/s, near 3600 rpm
        kinds = {}
        while len(kinds) < 2:
            message = app.next(30)
            kinds[topics.parse_topic(message.topic).kind] = topics.decode_media(message.payload)
        image = cv2.imdecode(np.frombuffer(kinds[topics.INSPECTION].data, np.uint8), cv2.IMREAD_COLOR)
        assert kinds[topics.INSPECTION].content_type == "image/png" and image.shape == (128, 128, 3)
        clip, rate = soundfile.read(io.BytesIO(kinds[topics.ACOUSTIC].data))
        assert kinds[topics.ACOUSTIC].content_type == "audio/wav" and rate == 16_000 and len(clip) == 8000
        assert 0 < np.abs(clip).max() <= 1
    finally:
        assert simulator.stop() == 0, simulator.log_tail()


@pytest.mark.slow
def test_a_machine_wears_out_stops_and_a_maintenance_order_repairs_it(pki, broker, tmp_path):
    """pump-01 of fleet seed 189 loses its impeller after about 375 operating hours: aged to 320, it fails
    within seconds."""
    bridge = broker.subscriber("mqtt-bridge", topics.topic_filter(topics.TELEMETRY))
    simulator = start_simulator(pki, broker, tmp_path, machines=1, fleet_seed=189, speedup=36_000,
                                max_start_age_hours=320, media_interval_hours=0, fault_interval_hours=0)
    try:
        before = []
        wait_for(lambda: before.append(telemetry(bridge.next(60))[1]) or
                 metric(simulator.metrics(), "modalmesh_fleet_failures_total") == 1, timeout=90, interval=0)
        while not bridge.messages.empty():
            before.append(telemetry(bridge.next())[1])
        assert bridge.none_within(1.5), "a failed machine keeps publishing"
        assert metric(simulator.metrics(), "modalmesh_fleet_machine_health", asset_id="pump-01") == 0

        app = broker.client("manufacturing")
        pump = CENTRIFUGAL_PUMP.name
        for payload, asset_id in ((b"not json", "pump-01"), (json.dumps({"action": "paint"}).encode(), "pump-01"),
                                  (topics.encode_maintenance("repair", "wo-0"), "pump-99")):
            app.publish(topics.topic(pump, asset_id, topics.MAINTENANCE), payload, qos=1).wait_for_publish(5)
        assert bridge.none_within(1.0), "only a valid order for a known machine repairs"
        app.publish(topics.topic(pump, "pump-01", topics.MAINTENANCE), topics.encode_maintenance("repair", "wo-1"),
                    qos=1).wait_for_publish(5)
        after = [telemetry(bridge.next(30))[1] for _ in range(2)]
        assert metric(simulator.metrics(), "modalmesh_fleet_repairs_total") == 1
        assert after[0].timestamps_ms[0] > before[-1].timestamps_ms[-1]   # the clock ran on while it was down

        # Impeller wear shows in the flow at the same speed; a new impeller brings it back.
        worn = np.concatenate([b.values for b in before])
        last, repaired = worn[-60:], np.concatenate([b.values for b in after])[:60]
        flow, speed = SENSORS.index("flow"), SENSORS.index("speed")
        assert abs(repaired[:, speed].mean() / last[:, speed].mean() - 1) < 0.02
        assert repaired[:, flow].mean() > 1.05 * last[:, flow].mean()
    finally:
        assert simulator.stop() == 0, simulator.log_tail()


def test_the_fleet_clock_never_runs_backwards_across_restarts(tmp_path):
    clock = FleetClock(tmp_path)
    first = clock.start_ms()
    assert first % MINUTE_MS == 0
    clock.save(first + 500 * 3600 * 1000 + 17)   # a run that simulated 500 hours ahead of the wall clock
    assert clock.start_ms() == first + 500 * 3600 * 1000 + MINUTE_MS


def test_wear_makes_defects_likelier_and_bearing_faults_louder():
    wear = np.linspace(0, 1, 11)
    assert np.all(np.diff([defect_probability(w) for w in wear]) > 0)
    assert defect_probability(0) < 0.05 and defect_probability(1) > 0.9
    severities = [bearing_severity(w) for w in wear]
    assert severities[:3] == [0.0] * 3 and np.all(np.diff(severities[4:]) > 0) and severities[-1] == 1.0
