"""The twin loop: every few seconds, what IoTService knows of each asset becomes its twin's state, and
the maintenance rules open work orders. A service that is down is reported and retried, never fatal."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from apps.clients import Availability
from apps.manufacturing import assets
from apps.manufacturing.updates import FleetUpdates
from apps.manufacturing.workorders import MaintenanceRules, WorkOrderBook
from apps.twins import TwinStore
from modalmesh.v1 import iot_pb2, iot_pb2_grpc

log = logging.getLogger(__name__)

IOT = "iot"


@dataclass(frozen=True)
class LoopSettings:
    interval_s: float
    anomaly_windows: int      # recent windows scored per asset (at least the rule's persistence)
    call_timeout_s: float


@dataclass(frozen=True)
class Observation:
    """What IoTService said of one asset in one pass; a part is None when its call failed or had nothing."""

    asset: iot_pb2.Asset
    life: iot_pb2.RemainingLife | None
    life_model: object
    anomalies: iot_pb2.AssetAnomalies | None
    anomaly_model: object


class TwinLoop:
    def __init__(self, iot: iot_pb2_grpc.IoTServiceStub, twins: TwinStore, orders: WorkOrderBook,
                 rules: MaintenanceRules, health: assets.HealthIndex, availability: Availability,
                 updates: FleetUpdates, settings: LoopSettings):
        self.iot, self.twins, self.orders, self.rules = iot, twins, orders, rules
        self.health, self.availability, self.updates, self.settings = health, availability, updates, settings
        self.passes = 0

    async def run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:   # a database hiccup must not stop the twins for good
                log.exception("twin update pass failed; retrying")
            await asyncio.sleep(self.settings.interval_s)

    async def run_once(self) -> None:
        observations = await self.observe()
        if observations is not None:
            await asyncio.to_thread(self.apply, observations)
        self.passes += 1
        await self.updates.bump()

    async def observe(self) -> list[Observation] | None:
        timeout = self.settings.call_timeout_s
        try:
            listed = await self.iot.ListAssets(iot_pb2.ListAssetsRequest(asset_type=assets.MACHINES), timeout=timeout)
            # No ids: every machine with enough telemetry for the model (naming one without would fail all).
            # The IoT service may hold other kinds of asset (patients' vital signs): never ask for those.
            lives = await self._optional(self.iot.PredictRemainingLife(
                iot_pb2.PredictRemainingLifeRequest(asset_type=assets.MACHINES), timeout=timeout))
            scores = await self._optional(self.iot.DetectAnomalies(
                iot_pb2.DetectAnomaliesRequest(windows=self.settings.anomaly_windows, asset_type=assets.MACHINES),
                timeout=timeout))
        except grpc.aio.AioRpcError as error:
            if self.availability.outage(IOT) is None:   # once per outage, not once per pass
                log.warning("IoT service unavailable", extra={"code": error.code().name, "detail": error.details()})
            self.availability.failed(IOT, error)
            return None
        self.availability.succeeded(IOT)
        life_of = {life.asset_id: life for life in lives.assets} if lives else {}
        scores_of = {scored.asset_id: scored for scored in scores.assets} if scores else {}
        return [Observation(asset, life_of.get(asset.asset_id), lives.model if lives else None,
                            scores_of.get(asset.asset_id), scores.model if scores else None)
                for asset in listed.assets]

    async def _optional(self, call):
        """A model the service does not serve is no outage: the twins go without its estimates."""
        try:
            return await call
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.FAILED_PRECONDITION:
                log.info("no estimate this pass", extra={"code": error.code().name, "detail": error.details()})
                return None
            raise

    def apply(self, observations: list[Observation]) -> None:
        for observation in observations:
            self.update_twin(observation)

    def update_twin(self, seen: Observation) -> None:
        asset = seen.asset
        twin = self.twins.ensure(asset.asset_id, assets.definition(asset.type.name), assets.attributes(asset))
        if assets.awaiting_fresh_telemetry(twin, asset):
            return
        features = {}
        if seen.life is not None:
            features[assets.REMAINING_LIFE] = {"properties": assets.remaining_life_properties(seen.life,
                                                                                               seen.life_model)}
        if seen.anomalies is not None and seen.anomalies.windows:
            features[assets.ANOMALIES] = {"properties": assets.anomaly_properties(seen.anomalies,
                                                                                  seen.anomaly_model)}
        if not features:
            return
        life = features.get(assets.REMAINING_LIFE, {}).get("properties") or twin.reported(assets.REMAINING_LIFE)
        flags = (features.get(assets.ANOMALIES, {}).get("properties") or twin.reported(assets.ANOMALIES)).get(
            "flags", [])
        index = self.health(life.get("cycles"), sum(flags) / len(flags) if flags else 0.0)
        if index is not None:
            features[assets.HEALTH] = {"properties": {"index": index, "basis": "estimate"}}
        if _changes(twin, features):
            twin = self.twins.modify(asset.asset_id, {"features": features}, kind="observed")
        self.open_orders(asset.asset_id, life.get("cycles"), flags)

    def open_orders(self, asset_id: str, remaining_cycles: float | None, flags: list[bool]) -> None:
        for reason, detail in self.rules.reasons(remaining_cycles, flags).items():
            order, created = self.orders.open(asset_id, reason, detail)
            if created:
                log.info("work order opened", extra={"asset_id": asset_id, "order_id": order.order_id,
                                                     "reason": reason})
                self.twins.modify(asset_id, {"features": {assets.MAINTENANCE: {"properties": {
                    "openedWorkOrder": order.order_id, "openedReason": reason}}}}, kind="work-order-opened")


def _changes(twin, features: dict) -> bool:
    return any(twin.reported(name) != {**twin.reported(name), **feature["properties"]}
               for name, feature in features.items())
