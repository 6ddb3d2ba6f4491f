"""The manufacturing app as a real process, against the real IoT, vision and audio services and the real
MQTT broker, all over mutual TLS: twins from IoTService, media scored and rendered, work orders through
the pages' forms reaching the machine as a maintenance order, clear HTTP errors, live events, and no
acknowledged twin update lost to kill -9."""

from __future__ import annotations

import io
import json
import os
import signal
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import cv2
import numpy as np
import pytest
import soundfile

from apps.manufacturing import assets
from apps.manufacturing.workorders import ANOMALY, DONE, REMAINING_LIFE, WorkOrderBook
from apps.twins import TwinStore, open_database
from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc
from services.audio.machine_sounds import machine_sound
from services.iot.asset_types import CENTRIFUGAL_PUMP
from services.iot.mqtt_bridge import topics
from services.vision.textures import product_image
from tests.mqtt import start_broker
from tests.support import free_port, start_service, wait_for

PUMP = CENTRIFUGAL_PUMP.name
NO_MODELS = {"anomaly_model": "", "remaining_life_model": ""}   # twins, telemetry and orders need none


class Http:
    def __init__(self, port: int):
        self.root = f"http://127.0.0.1:{port}"

    def get(self, path: str, accept: str = "text/html") -> tuple[int, str, bytes]:
        return self._send(urllib.request.Request(self.root + path, headers={"Accept": accept}))

    def post(self, path: str, form: dict | None = None, accept: str = "text/html") -> tuple[int, str, bytes]:
        body = urllib.parse.urlencode(form or {}).encode()
        return self._send(urllib.request.Request(self.root + path, data=body, method="POST", headers={
            "Accept": accept, "Content-Type": "application/x-www-form-urlencoded"}))

    def json(self, path: str):
        status, _, body = self.get(path, accept="application/json")
        assert status == 200, (status, body[:300])
        return json.loads(body)

    def _send(self, request) -> tuple[int, str, bytes]:
        opener = urllib.request.build_opener(NoRedirect)
        try:
            with opener.open(request, timeout=20) as reply:
                return reply.status, reply.headers.get("content-type", ""), reply.read()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("content-type", ""), error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def start_app(pki, tmp, database: str, **settings):
    http_port = free_port()
    app = start_service("apps.manufacturing", pki, tmp, "manufacturing", http_port=http_port,
                        database_url=f"sqlite:///{database}", drain_grace_s=5, **settings)
    http = Http(http_port)
    try:
        wait_for(lambda: _answers(http), timeout=20)
    except BaseException:
        app.stop(5)
        raise
    return app, http


def _answers(http: Http) -> bool:
    try:
        return http.get("/api/fleet", accept="application/json")[0] == 200
    except OSError:
        return False


def ingest(iot, asset_id: str, rows: int, first_minute: int = 0) -> None:
    iot.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=asset_id, asset_type=PUMP))
    stamps = 1_767_225_600_000 + (first_minute + np.arange(rows, dtype=np.int64)) * 60_000
    values = np.random.default_rng(len(asset_id)).normal(300, 5, (rows, len(CENTRIFUGAL_PUMP.sensors)))
    request = iot_pb2.IngestRequest(
        sequence=1, asset_id=asset_id, sensors=list(CENTRIFUGAL_PUMP.sensors),
        timestamps_ms=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_INT64, shape=[rows], data=stamps.tobytes()),
        values=common_pb2.Tensor(dtype=common_pb2.DATA_TYPE_FP32, shape=list(values.shape),
                                 data=values.astype("<f4").tobytes()))
    (ack,) = list(iot.Ingest(iter([request])))
    assert ack.stored_rows == rows


@pytest.fixture(scope="module")
def stack(pki, tmp_path_factory):
    """Broker, IoT, vision and audio services, and the app, each a real process on free ports."""
    tmp = tmp_path_factory.mktemp("manufacturing")
    started = []
    try:
        broker = start_broker(pki, tmp)
        started.append(broker)
        iot = start_service("services.iot", pki, tmp, "iot", data_dir=tmp, **NO_MODELS)
        started.append(iot)
        vision = start_service("services.vision", pki, tmp, "vision")
        started.append(vision)
        audio = start_service("services.audio", pki, tmp, "audio")
        started.append(audio)
        channel = iot.channel()
        ingest(iot_pb2_grpc.IoTServiceStub(channel), "pump-07", 240)
        app, http = start_app(pki, tmp, str(tmp / "app.sqlite3"), iot_address=iot.target,
                              vision_address=vision.target, audio_address=audio.target, mqtt_host=broker.host,
                              mqtt_port=broker.port, twin_interval_s=0.5)
        started.append(app)
        yield {"broker": broker, "iot": iot, "app": app, "http": http, "database": tmp / "app.sqlite3"}
        channel.close()
    finally:
        for process in reversed(started):
            process.stop()


@pytest.mark.slow
def test_twins_appear_for_every_asset_with_telemetry(stack):
    http = stack["http"]
    wait_for(lambda: [a["asset_id"] for a in http.json("/api/fleet")["assets"]] == ["pump-07"], timeout=20)
    twin = http.json("/api/assets/pump-07")
    assert twin["definition"] == "modalmesh:centrifugal-pump:1"
    assert twin["attributes"]["sensors"] == list(CENTRIFUGAL_PUMP.sensors)
    assert stack["app"].health() == "SERVING"


@pytest.mark.slow
def test_the_asset_page_plots_telemetry_from_the_iot_service(stack):
    http = stack["http"]
    wait_for(lambda: http.get("/assets/pump-07")[0] == 200, timeout=20)
    status, kind, page = http.get("/manufacturing/assets/pump-07")
    assert status == 200 and kind.startswith("text/html")
    text = page.decode()
    assert text.count('<svg class="chart"') >= len(CENTRIFUGAL_PUMP.sensors)
    assert 'href="/manufacturing/static/app.css"' in text   # links follow the prefix the page came in on
    telemetry = http.json("/api/assets/pump-07/telemetry?max_points=50")
    assert telemetry["matched_rows"] == 240 and len(telemetry["timestamps_ms"]) == 50


def publish_media(broker, asset_id: str) -> None:
    simulator = broker.client("fleet-simulator")
    rng = np.random.default_rng(7)
    image = product_image(rng, 128, ["scratch", "spot"]).image
    ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    clip = io.BytesIO()
    soundfile.write(clip, machine_sound(rng, 1.0, 16_000, fault="bearing", severity=1.0), 16_000, format="WAV",
                    subtype="PCM_16")
    for kind, media in ((topics.INSPECTION, topics.MediaMessage(1_767_300_000_000, "image/png", png.tobytes())),
                        (topics.ACOUSTIC, topics.MediaMessage(1_767_300_000_000, "audio/wav", clip.getvalue()))):
        simulator.publish(topics.topic(PUMP, asset_id, kind), topics.encode_media(media), qos=1).wait_for_publish(5)
    simulator.publish(topics.topic(PUMP, asset_id, topics.INSPECTION), b"not an envelope", qos=1).wait_for_publish(5)


@pytest.mark.slow
def test_media_are_scored_rendered_and_recorded_on_the_twin(stack):
    http = stack["http"]
    publish_media(stack["broker"], "pump-07")

    def recorded():
        features = http.json("/api/assets/pump-07")["features"]
        return assets.INSPECTION in features and assets.ACOUSTIC in features

    wait_for(recorded, timeout=60, interval=0.3)
    features = http.json("/api/assets/pump-07")["features"]
    inspection = features[assets.INSPECTION]["properties"]
    assert inspection["verdict"] == "fail" and inspection["defects"]   # two defects were painted on it
    assert {d["class"] for d in inspection["defects"]} <= {"scratch", "spot", "crack"}
    assert inspection["model"]["name"] and inspection["model"]["provenance"]
    acoustic = features[assets.ACOUSTIC]["properties"]
    assert acoustic["anomalous"] is True and acoustic["score"] > acoustic["threshold"]
    for kind in ("inspection", "spectrogram"):
        status, content_type, png = http.get(f"/assets/pump-07/{kind}.png")
        assert status == 200 and content_type == "image/png" and png.startswith(b"\x89PNG")
        assert cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR) is not None
    page = http.get("/assets/pump-07")[2].decode()
    assert 'id="inspection"' in page and 'id="spectrogram"' in page
    assert stack["app"].health() == "SERVING"   # the malformed message was dropped, nothing crashed


@pytest.mark.slow
def test_a_completed_work_order_sends_the_repair_and_gives_the_twin_a_new_life(stack):
    http, broker = stack["http"], stack["broker"]
    wait_for(lambda: http.get("/api/assets/pump-07", accept="application/json")[0] == 200, timeout=20)
    machine = broker.subscriber("fleet-simulator", topics.topic_filter(topics.MAINTENANCE))
    order, _ = WorkOrderBook(open_database(f"sqlite:///{stack['database']}")).open(
        "pump-07", REMAINING_LIFE, {"remaining_life_cycles": 42.0, "threshold_cycles": 100.0})

    status, _, _ = http.post(f"/work-orders/{order.order_id}/schedule",
                             {"window_start": "2026-12-01T08:00", "window_end": "2026-12-01T12:00",
                              "next": "/work-orders?state=active"})
    assert status == 303
    window = http.json("/api/assets/pump-07")["features"][assets.MAINTENANCE]["desiredProperties"]
    assert window == {"workOrder": order.order_id, "windowStartMs": 1_796_112_000_000,
                      "windowEndMs": 1_796_126_400_000}
    page = http.get("/work-orders?state=active")[2].decode()
    assert f'id="order-{order.order_id}"' in page and "scheduled" in page

    status, _, body = http.post(f"/work-orders/{order.order_id}/complete", accept="application/json")
    assert status == 200 and json.loads(body)["state"] == DONE
    message = machine.next(10)
    assert message.topic == topics.topic(PUMP, "pump-07", topics.MAINTENANCE)
    assert topics.decode_maintenance(message.payload)["work_order"] == str(order.order_id)
    twin = http.json("/api/assets/pump-07")
    maintenance = twin["features"][assets.MAINTENANCE]
    assert "desiredProperties" not in maintenance and maintenance["properties"]["lastWorkOrder"] == order.order_id
    assert maintenance["properties"]["storedRowsAtMaintenance"] == 240
    assert twin["features"][assets.HEALTH]["properties"] == {"index": 1.0, "basis": "maintenance"}
    kinds = [e["kind"] for e in http.json("/api/assets/pump-07/history")]
    assert kinds[0] == "created" and "maintenance-scheduled" in kinds and kinds[-1] == "maintenance"

    assert http.post(f"/work-orders/{order.order_id}/complete")[0] == 409   # done is done
    assert http.post(f"/work-orders/{order.order_id}/cancel")[0] == 409
    assert machine.none_within(1.0)


@pytest.mark.slow
def test_bad_requests_get_clear_statuses_not_stack_traces(stack):
    http = stack["http"]
    order, _ = WorkOrderBook(open_database(f"sqlite:///{stack['database']}")).open("pump-07", ANOMALY, {})
    cases = [
        (http.get("/assets/no-such-pump"), 404),
        (http.get("/api/assets/no-such-pump", accept="application/json"), 404),
        (http.get("/api/assets/no-such-pump/telemetry", accept="application/json"), 404),
        (http.get("/assets/pump-07/thermal.png"), 404),
        (http.get("/work-orders?state=maybe"), 400),
        (http.get("/api/assets/pump-07/history?from_revision=first", accept="application/json"), 400),
        (http.post("/work-orders/99999/complete"), 404),
        (http.post(f"/work-orders/{order.order_id}/schedule", {"window_start": "tomorrow", "window_end": "x"}), 400),
        (http.post(f"/work-orders/{order.order_id}/schedule", {"window_start": "2026-12-02T10:00",
                                                              "window_end": "2026-12-02T09:00"}), 400),
        (http.post(f"/work-orders/{order.order_id}/schedule", {}), 400),
        (http.post(f"/work-orders/{order.order_id}/paint"), 404),
        (http.post("/work-orders/seven/complete"), 400),
    ]
    for (status, kind, body), expected in cases:
        assert status == expected, (expected, status, body[:300])
        assert b"Traceback" not in body
    status, kind, body = http.get("/assets/no-such-pump")
    assert kind.startswith("text/html") and b"not found" in body
    assert http.json(f"/api/work-orders?asset_id=pump-07&state=open")[0]["order_id"] == order.order_id


@pytest.mark.slow
def test_server_sent_events_stream_fleet_snapshots(stack):
    http = stack["http"]
    with urllib.request.urlopen(http.root + "/manufacturing/events", timeout=20) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        versions = []
        for line in stream:
            if line.startswith(b"data: "):
                snapshot = json.loads(line[6:])
                versions.append(snapshot["version"])
                assert [a["asset_id"] for a in snapshot["assets"]] == ["pump-07"]
                if len(versions) == 2:
                    break
    assert versions[1] > versions[0]   # the twin loop's passes keep coming


def test_a_service_that_is_down_is_reported_and_never_crashes_the_app(pki, tmp_path):
    """Nothing listens at the service addresses and there is no broker: pages still answer."""
    dead = f"localhost:{free_port()}"
    database = tmp_path / "app.sqlite3"
    engine = open_database(f"sqlite:///{database}")
    TwinStore(engine).create_schema()
    TwinStore(engine).create("pump-01", "modalmesh:centrifugal-pump:1", {"assetType": PUMP})
    WorkOrderBook(engine).create_schema()
    order, _ = WorkOrderBook(engine).open("pump-01", ANOMALY, {})
    app, http = start_app(pki, tmp_path, str(database), iot_address=dead, vision_address=dead, audio_address=dead,
                          mqtt_host="", twin_interval_s=0.3)
    try:
        wait_for(lambda: http.json("/api/fleet")["outages"], timeout=20)
        assert http.json("/api/fleet")["outages"][0]["service"] == "iot"
        assert http.get("/")[0] == 200 and b"iot unavailable" in http.get("/")[2]
        status, _, page = http.get("/assets/pump-01")
        assert status == 200 and b"Telemetry unavailable" in page
        assert http.get("/api/assets/pump-01/telemetry", accept="application/json")[0] == 503
        assert http.post(f"/work-orders/{order.order_id}/complete")[0] == 503
        assert WorkOrderBook(engine).get(order.order_id).state == "open"   # nothing changed
        assert app.health() == "SERVING"
    finally:
        assert app.stop() == 0, app.log_tail()


@pytest.mark.slow
def test_kill_9_of_the_app_loses_no_acknowledged_twin_update(pki, tmp_path):
    """Reschedule an order over and over (each answer is an acknowledged twin revision), kill -9 the
    app mid-stream, restart it on the same database: every acknowledged revision is there."""
    database = tmp_path / "app.sqlite3"
    engine = open_database(f"sqlite:///{database}")
    TwinStore(engine).create_schema()
    TwinStore(engine).create("pump-01", "modalmesh:centrifugal-pump:1", {"assetType": PUMP})
    WorkOrderBook(engine).create_schema()
    order, _ = WorkOrderBook(engine).open("pump-01", REMAINING_LIFE, {})
    settings = {"iot_address": f"localhost:{free_port()}", "mqtt_host": "", "twin_interval_s": 60}
    app, http = start_app(pki, tmp_path, str(database), **settings)
    acknowledged: list[int] = []
    stop = threading.Event()

    def reschedule():
        start = 1_800_000_000_000
        while not stop.is_set():
            start += 60_000
            try:
                status, _, _ = http.post(f"/work-orders/{order.order_id}/schedule",
                                         {"window_start": str(start), "window_end": str(start + 3_600_000)},
                                         accept="application/json")
            except OSError:
                return   # the app is gone
            if status == 200:
                acknowledged.append(start)

    writers = [threading.Thread(target=reschedule) for _ in range(3)]
    for writer in writers:
        writer.start()
    wait_for(lambda: len(acknowledged) >= 60, timeout=60)
    os.kill(app.pid, signal.SIGKILL)
    app.process.wait()
    stop.set()
    for writer in writers:
        writer.join()

    store = TwinStore(open_database(f"sqlite:///{database}"))
    twin = store.get("pump-01")
    assert twin.revision >= 1 + len(acknowledged)
    assert store.count_events("pump-01") == twin.revision
    windows = {e.patch["features"][assets.MAINTENANCE]["desiredProperties"]["windowStartMs"]
               for e in store.history("pump-01", from_revision=2, limit=100_000)}
    assert set(acknowledged) <= windows

    app, http = start_app(pki, tmp_path, str(database), **settings)   # and the app comes back on it
    try:
        assert http.json("/api/assets/pump-01")["revision"] == twin.revision
    finally:
        assert app.stop() == 0, app.log_tail()
