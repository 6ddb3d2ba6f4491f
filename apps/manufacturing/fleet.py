"""The app's state and what people do with it: the fleet's twins, their work orders, the services' availability,
and the actions of the work orders page (schedule, complete, cancel)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from apps.clients import Availability
from apps.manufacturing import assets
from apps.manufacturing.fleet_link import FleetLink
from apps.manufacturing.pictures import LatestImages
from apps.manufacturing.twin_loop import IOT
from apps.manufacturing.updates import FleetUpdates
from apps.manufacturing.workorders import ACTIVE, DONE, WorkOrder, WorkOrderBook
from apps.twins import Twin, TwinStore, now_ms
from modalmesh.v1 import iot_pb2, iot_pb2_grpc

log = logging.getLogger(__name__)


class ServiceDown(Exception):
    """A service (or the broker) the action needs is unavailable: HTTP 503."""


@dataclass
class Fleet:
    twins: TwinStore
    orders: WorkOrderBook
    images: LatestImages
    iot: iot_pb2_grpc.IoTServiceStub
    link: FleetLink | None
    availability: Availability
    updates: FleetUpdates
    call_timeout_s: float

    # -- what the pages show ----------------------------------------------------------------------

    def snapshot(self) -> dict:
        """Every machine's twin summary, its active orders, and any outage: the dashboard's data."""
        active = {}
        for order in self.orders.list(states=ACTIVE):
            active.setdefault(order.asset_id, []).append(order.as_dict())
        return {
            "assets": [summary(twin, active.get(twin.twin_id, [])) for twin in self.twins.list()],
            "outages": [{"service": o.service, "code": o.code, "detail": o.detail, "since_ms": o.since_ms}
                        for o in self.availability.outages()],
            "version": self.updates.version,
        }

    async def telemetry(self, asset_id: str, max_points: int) -> iot_pb2.QueryTelemetryResponse:
        try:
            reply = await self.iot.QueryTelemetry(iot_pb2.QueryTelemetryRequest(asset_id=asset_id,
                                                                               max_points=max_points),
                                                  timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                raise LookupError(error.details()) from None
            outage = self.availability.failed(IOT, error)
            raise ServiceDown(f"IoT service unavailable ({outage.code}): {outage.detail}") from None
        self.availability.succeeded(IOT)
        return reply

    # -- work orders --------------------------------------------------------------------------------

    async def schedule(self, order_id: int, window_start_ms: int, window_end_ms: int) -> WorkOrder:
        order = await asyncio.to_thread(self.orders.schedule, order_id, window_start_ms, window_end_ms)
        await asyncio.to_thread(self.twins.desire, order.asset_id, assets.MAINTENANCE, {
            "workOrder": order.order_id, "windowStartMs": window_start_ms, "windowEndMs": window_end_ms},
            kind="maintenance-scheduled")
        await self.updates.bump()
        return order

    async def cancel(self, order_id: int) -> WorkOrder:
        order = await asyncio.to_thread(self.orders.cancel, order_id)
        twin = await asyncio.to_thread(self.twins.get, order.asset_id)
        if twin.desired(assets.MAINTENANCE).get("workOrder") == order_id:
            await asyncio.to_thread(self.twins.modify, order.asset_id, {
                "features": {assets.MAINTENANCE: {"desiredProperties": None}}}, kind="maintenance-cancelled")
        await self.updates.bump()
        return order

    async def complete(self, order_id: int) -> WorkOrder:
        """Order the repair over MQTT, then close the asset's orders and give its twin a new life.

        The repair order goes out first: if the broker is down nothing changes and the page says so.
        """
        order = await asyncio.to_thread(self.orders.check, order_id, DONE)
        twin = await asyncio.to_thread(self.twins.get, order.asset_id)
        if self.link is None:
            raise ServiceDown("no MQTT broker configured: the repair cannot be ordered")
        stored_rows = await self._stored_rows(order.asset_id)
        try:
            await asyncio.to_thread(self.link.request_repair, asset_type(twin), order.asset_id, order_id)
        except Exception as error:
            raise ServiceDown(f"maintenance order not delivered: {error}") from None
        done = await asyncio.to_thread(self._close_and_reset, order, twin, stored_rows)
        log.info("work order done", extra={"asset_id": order.asset_id, "order_id": order_id})
        await self.updates.bump()
        return done

    async def _stored_rows(self, asset_id: str) -> int:
        """Rows stored for the asset now: the twin ignores estimates until a window of newer ones."""
        try:
            listed = await self.iot.ListAssets(iot_pb2.ListAssetsRequest(asset_type=assets.MACHINES),
                                               timeout=self.call_timeout_s)
        except grpc.aio.AioRpcError as error:
            outage = self.availability.failed(IOT, error)
            raise ServiceDown(f"IoT service unavailable ({outage.code}): {outage.detail}") from None
        return next((a.stored_rows for a in listed.assets if a.asset_id == asset_id), 0)

    def _close_and_reset(self, order: WorkOrder, twin: Twin, stored_rows: int) -> WorkOrder:
        done = self.orders.complete(order.order_id)
        for other in self.orders.list(asset_id=order.asset_id, states=ACTIVE):   # one repair serves them all
            self.orders.complete(other.order_id)
        count = twin.reported(assets.MAINTENANCE).get("completed", 0) + 1
        self.twins.modify(order.asset_id, assets.reset_after_maintenance(order.order_id, stored_rows, now_ms(),
                                                                         count), kind="maintenance")
        return done


def asset_type(twin: Twin) -> str:
    return twin.attributes.get("assetType") or twin.definition.split(":")[1]


def summary(twin: Twin, active_orders: list[dict]) -> dict:
    life = twin.reported(assets.REMAINING_LIFE)
    anomalies = twin.reported(assets.ANOMALIES)
    inspection = twin.reported(assets.INSPECTION)
    acoustic = twin.reported(assets.ACOUSTIC)
    return {
        "asset_id": twin.twin_id,
        "asset_type": asset_type(twin),
        "revision": twin.revision,
        "modified_ms": twin.modified_ms,
        "health": twin.reported(assets.HEALTH).get("index"),
        "rul": life.get("cycles"), "rul_lower": life.get("lowerCycles"), "rul_upper": life.get("upperCycles"),
        "rul_as_of_ms": life.get("asOfMs"),
        "anomaly_score": anomalies.get("latestScore"), "anomaly_threshold": anomalies.get("threshold"),
        "open_anomalies": len(anomalies.get("open", [])),
        "inspection": inspection.get("verdict"), "acoustic_score": acoustic.get("score"),
        "acoustic_anomalous": acoustic.get("anomalous"),
        "work_orders": active_orders,
        "maintenance_window": twin.desired(assets.MAINTENANCE) or None,
    }
