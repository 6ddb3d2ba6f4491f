"""Maintenance work orders: the rules that open them, their states, one active order per asset and reason,
and the twin loop turning IoTService's answers into twin state and orders."""

from __future__ import annotations

import threading

import pytest

from apps.clients import Availability
from apps.manufacturing import assets
from apps.manufacturing.twin_loop import LoopSettings, Observation, TwinLoop
from apps.manufacturing.updates import FleetUpdates
from apps.manufacturing.workorders import (ANOMALY, CANCELLED, DONE, OPEN, REMAINING_LIFE, SCHEDULED,
                                           InvalidTransition, MaintenanceRules, WorkOrderBook, WorkOrderNotFound)
from apps.twins import TwinStore, open_database
from modalmesh.v1 import common_pb2, iot_pb2

RULES = MaintenanceRules(remaining_life_threshold_cycles=100.0, anomaly_persistence_windows=3)


@pytest.fixture
def engine(tmp_path):
    engine = open_database(f"sqlite:///{tmp_path / 'app.sqlite3'}")
    TwinStore(engine).create_schema()
    WorkOrderBook(engine).create_schema()
    return engine


@pytest.fixture
def book(engine) -> WorkOrderBook:
    return WorkOrderBook(engine)


def test_remaining_life_under_the_threshold_opens_an_order():
    assert RULES.reasons(99.9, []) == {REMAINING_LIFE: {"remaining_life_cycles": 99.9, "threshold_cycles": 100.0}}
    assert RULES.reasons(100.0, []) == {}
    assert RULES.reasons(None, []) == {}


def test_only_an_anomaly_that_persists_opens_an_order():
    assert RULES.reasons(500.0, [False, True, True]) == {}                 # two in a row
    assert RULES.reasons(500.0, [True, True, True, False]) == {}           # over: the latest is normal
    assert RULES.reasons(500.0, [False, True, True, True])[ANOMALY]["consecutive_windows"] == 3
    both = RULES.reasons(10.0, [True] * 4)
    assert set(both) == {REMAINING_LIFE, ANOMALY}


def test_an_order_goes_open_scheduled_done(book):
    order, created = book.open("pump-1", REMAINING_LIFE, {"remaining_life_cycles": 80.0})
    assert created and order.state == OPEN
    order = book.schedule(order.order_id, 1_000, 2_000)
    assert (order.state, order.window_start_ms, order.window_end_ms) == (SCHEDULED, 1_000, 2_000)
    order = book.schedule(order.order_id, 3_000, 4_000)   # rescheduled
    assert order.window_start_ms == 3_000
    order = book.complete(order.order_id)
    assert order.state == DONE and order.closed_ms
    with pytest.raises(InvalidTransition):
        book.complete(order.order_id)
    with pytest.raises(InvalidTransition):
        book.schedule(order.order_id, 1, 2)


def test_cancelled_orders_stay_cancelled_and_bad_requests_change_nothing(book):
    order, _ = book.open("pump-1", ANOMALY, {})
    with pytest.raises(ValueError):
        book.schedule(order.order_id, 2_000, 1_000)
    assert book.cancel(order.order_id).state == CANCELLED
    with pytest.raises(InvalidTransition):
        book.complete(order.order_id)
    with pytest.raises(WorkOrderNotFound):
        book.complete(9999)
    with pytest.raises(ValueError):
        book.open("pump-1", "vibes", {})
    assert [o.state for o in book.list(asset_id="pump-1")] == [CANCELLED]


def test_one_active_order_per_asset_and_reason_even_when_writers_race(book):
    results = []
    threads = [threading.Thread(target=lambda: results.append(book.open("pump-1", ANOMALY, {}))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(created for _, created in results) == 1
    assert len({order.order_id for order, _ in results}) == 1
    other, created = book.open("pump-1", REMAINING_LIFE, {})
    assert created and other.order_id != results[0][0].order_id
    book.complete(results[0][0].order_id)
    again, created = book.open("pump-1", ANOMALY, {})   # the old one is done: a new one may open
    assert created and again.order_id != results[0][0].order_id


# -- the twin loop: IoTService's answers (real messages) become twin state and orders ---------------

MODEL = common_pb2.ModelInfo(name="pump-remaining-life", version="1", provenance="scripts/train", device="cpu",
                             dtype="float32")
PUMP = iot_pb2.AssetType(name="centrifugal-pump", sensors=["speed", "flow"], cycle_seconds=3600, window_rows=100)


def observation(asset_id: str, stored_rows: int, cycles: float | None, flags: list[bool]) -> Observation:
    asset = iot_pb2.Asset(asset_id=asset_id, type=PUMP, stored_rows=stored_rows, last_timestamp_ms=stored_rows * 60_000)
    life = None if cycles is None else iot_pb2.RemainingLife(
        asset_id=asset_id, cycles=cycles, lower_cycles=cycles * 0.8, upper_cycles=cycles * 1.2, coverage=0.9,
        as_of_ms=asset.last_timestamp_ms, cycle_seconds=3600)
    scored = iot_pb2.AssetAnomalies(asset_id=asset_id, threshold=0.5, top_sensors=["flow"], windows=[
        iot_pb2.WindowScore(start_ms=i, end_ms=i + 1, score=0.9 if flag else 0.1, anomalous=flag)
        for i, flag in enumerate(flags)])
    return Observation(asset, life, MODEL, scored, MODEL)


@pytest.fixture
def loop(engine) -> TwinLoop:
    return TwinLoop(None, TwinStore(engine), WorkOrderBook(engine), RULES, assets.HealthIndex(1000.0),
                    Availability(), FleetUpdates(), LoopSettings(1.0, 4, 5.0))


def test_the_loop_records_estimates_on_the_twin_and_opens_orders(loop):
    loop.apply([observation("pump-1", 500, 400.0, [False] * 4), observation("pump-2", 500, 60.0, [False] * 4)])
    healthy, worn = loop.twins.get("pump-1"), loop.twins.get("pump-2")
    assert healthy.attributes["assetType"] == "centrifugal-pump"
    assert healthy.reported(assets.REMAINING_LIFE)["cycles"] == 400.0
    assert healthy.reported(assets.REMAINING_LIFE)["lowerCycles"] == 320.0
    assert healthy.reported(assets.REMAINING_LIFE)["model"]["name"] == "pump-remaining-life"
    assert healthy.reported(assets.HEALTH)["index"] == 0.4
    assert not loop.orders.list(asset_id="pump-1")
    (order,) = loop.orders.list(asset_id="pump-2")
    assert order.reason == REMAINING_LIFE and order.detail["remaining_life_cycles"] == 60.0
    assert worn.reported(assets.MAINTENANCE) == {"openedWorkOrder": order.order_id, "openedReason": REMAINING_LIFE}
    assert [e.kind for e in loop.twins.history("pump-2")][-1] == "work-order-opened"


def test_no_duplicate_orders_and_no_revision_without_a_change(loop):
    seen = observation("pump-1", 500, 50.0, [True] * 4)
    loop.apply([seen])
    revision = loop.twins.get("pump-1").revision
    loop.apply([seen])
    assert loop.twins.get("pump-1").revision == revision
    orders = loop.orders.list(asset_id="pump-1")
    assert sorted(o.reason for o in orders) == [ANOMALY, REMAINING_LIFE]
    anomalies = loop.twins.get("pump-1").reported(assets.ANOMALIES)
    assert len(anomalies["open"]) == 4 and anomalies["topSensors"] == ["flow"]
    assert loop.twins.get("pump-1").reported(assets.HEALTH)["index"] == 0.025   # 50/1000, halved by anomalies


def test_after_maintenance_estimates_wait_for_a_window_of_new_telemetry(loop):
    loop.apply([observation("pump-1", 500, 50.0, [False] * 4)])
    (order,) = loop.orders.list(asset_id="pump-1")
    loop.orders.complete(order.order_id)
    loop.twins.modify("pump-1", assets.reset_after_maintenance(order.order_id, 500, 1, 1), kind="maintenance")
    assert loop.twins.get("pump-1").reported(assets.REMAINING_LIFE) == {}
    loop.apply([observation("pump-1", 550, 50.0, [False] * 4)])   # the window still holds the old machine
    assert loop.orders.list(asset_id="pump-1", states=(OPEN,)) == []
    assert loop.twins.get("pump-1").reported(assets.HEALTH)["index"] == 1.0
    loop.apply([observation("pump-1", 600, 900.0, [False] * 4)])   # a whole window since the repair
    assert loop.twins.get("pump-1").reported(assets.REMAINING_LIFE)["cycles"] == 900.0
    assert loop.orders.list(asset_id="pump-1", states=(OPEN,)) == []
    events = [e.kind for e in loop.twins.history("pump-1")]
    assert events[0] == "created" and "maintenance" in events   # the old life stays in the history
