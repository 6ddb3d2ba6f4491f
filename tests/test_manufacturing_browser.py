"""End to end in a real browser: broker, bridge, fleet simulator, IoT, vision and audio services and the app,
each a real process over mutual TLS. The dashboard shows the fleet moving over Server-Sent Events, and a
machine near the end of its life gets a work order within minutes."""

from __future__ import annotations

import pytest

from modalmesh.launch import launch
from tests.mqtt import start_broker
from tests.support import start_service
from tests.test_manufacturing_app import start_app

CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def _started(process, timeout: float = 120):
    try:
        process.wait_serving(timeout)
    except BaseException:
        process.stop(5)
        raise
    return process


@pytest.mark.slow
def test_the_dashboard_moves_and_a_worn_machine_gets_a_work_order(pki, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    started = []
    try:
        broker = start_broker(pki, tmp_path)
        started.append(broker)
        iot = start_service("services.iot", pki, tmp_path, "iot", data_dir=tmp_path)
        started.append(iot)
        vision = start_service("services.vision", pki, tmp_path, "vision")
        started.append(vision)
        audio = start_service("services.audio", pki, tmp_path, "audio")
        started.append(audio)
        started.append(_started(launch("services.iot.mqtt_bridge", pki, tmp_path, "mqtt-bridge",
                                       mqtt_host=broker.host, mqtt_port=broker.port, iot_address=iot.target,
                                       drain_grace_s=5)))
        # pump-01 of fleet seed 189 fails after about 375 operating hours; aged 320 at one simulated hour
        # per second, its remaining life is under the threshold as soon as a model window has arrived.
        started.append(_started(launch("apps.manufacturing.simulator", pki, tmp_path, "fleet-simulator",
                                       mqtt_host=broker.host, mqtt_port=broker.port, data_dir=tmp_path,
                                       machines=3, fleet_seed=189, speedup=3600, publish_interval_s=0.5,
                                       max_start_age_hours=320, media_interval_hours=4, drain_grace_s=5)))
        app, http = start_app(pki, tmp_path, str(tmp_path / "app.sqlite3"), iot_address=iot.target,
                              vision_address=vision.target, audio_address=audio.target, mqtt_host=broker.host,
                              mqtt_port=broker.port, twin_interval_s=1, remaining_life_threshold_cycles=100)
        started.append(app)
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page()
            page.goto(http.root + "/manufacturing/")
            page.wait_for_selector("#live.on", timeout=30_000)
            page.wait_for_selector('tr[data-asset="pump-01"]', timeout=60_000)
            first = page.inner_text("#fleet-version")
            page.wait_for_function("v => document.querySelector('#fleet-version').textContent !== v", arg=first,
                                   timeout=30_000)
            page.wait_for_function(   # a remaining-life estimate arrives over SSE, no reload
                "() => !document.querySelector('tr[data-asset=\"pump-01\"] [data-field=rul]')"
                ".textContent.startsWith('—')", timeout=120_000)
            page.wait_for_selector('tr[data-asset="pump-01"] a.order', timeout=120_000)
            assert "remaining-life" in page.inner_text('tr[data-asset="pump-01"] [data-field=work_orders]')
            browser.close()
    finally:
        for process in reversed(started):
            process.stop()
