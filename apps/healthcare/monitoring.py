"""Vital signs on the twin: every few seconds, each patient's bedside asset is read from IoTService
(its latest reading, and DetectAnomalies over the recent windows) and the twin's ``vitals`` feature is
updated when what it says changed. Anomalous windows become periods (start, end, top sensors); periods
already on the twin are extended, never forgotten, as the windows slide past them."""

from __future__ import annotations

import asyncio
import logging

import grpc

from apps.clients import Availability
from apps.healthcare import patients
from apps.healthcare.privacy import every
from apps.twins import Twin, TwinStore, finite
from modalmesh.v1 import iot_pb2, iot_pb2_grpc
from services.iot.vitals import PATIENT_VITALS
from services.runtime.tensors import decode_tensor

log = logging.getLogger(__name__)

IOT = "iot"
VITALS_ASSET = "vitalsAsset"   # the twin attribute naming the patient's asset (an opaque id, not the pseudonym)
LATEST_ROWS_MS = 10 * 60_000   # the latest reading is looked for in the last ten minutes of telemetry
# A new reading alone is recorded on the twin at most once per this much monitored time; a new anomalous
# period at once. The readings themselves are the IoT service's: the twin keeps state, not telemetry.
LATEST_EVERY_MS = 15 * 60_000


class VitalsMonitor:
    def __init__(self, iot: iot_pb2_grpc.IoTServiceStub, twins: TwinStore, availability: Availability,
                 interval_s: float, windows: int, timeout_s: float):
        self.iot, self.twins, self.availability = iot, twins, availability
        self.interval_s, self.windows, self.timeout_s = interval_s, windows, timeout_s

    async def run(self) -> None:
        await every(self.interval_s, self.run_once, "vitals pass",
                    unavailable=lambda error: self.availability.failed(IOT, error))

    async def run_once(self) -> int:
        """One pass over every monitored patient; returns how many twins changed."""
        monitored = {t.attributes[VITALS_ASSET]: t for t in await asyncio.to_thread(self.twins.list,
                                                                                     patients.DEFINITION)
                     if t.attributes.get(VITALS_ASSET)}
        if not monitored:
            return 0
        listed = await self.iot.ListAssets(iot_pb2.ListAssetsRequest(), timeout=self.timeout_s)
        stored = {a.asset_id: a for a in listed.assets if a.asset_id in monitored and a.stored_rows}
        present = sorted(stored)
        scorable = [a for a in present if stored[a].stored_rows >= PATIENT_VITALS.anomaly_window_rows]
        last_ms = {a: stored[a].last_timestamp_ms for a in present}
        scored = await self._scored(scorable)
        self.availability.succeeded(IOT)
        changed = 0
        for asset_id in present:
            latest = await self._latest(asset_id, last_ms[asset_id])
            twin = monitored[asset_id]
            previous = twin.reported(patients.VITALS)
            properties = vitals_properties(previous, latest, *scored.get(asset_id, (None, None)))
            if worth_recording(previous, properties):
                await asyncio.to_thread(self.twins.modify, twin.twin_id,
                                        {"features": {patients.VITALS: {"properties": properties}}}, kind="vitals")
                changed += 1
        return changed

    async def _scored(self, asset_ids: list[str]) -> dict:
        """Asset id → (its AssetAnomalies, the model); empty when the service scores no vitals."""
        if not asset_ids:
            return {}
        try:
            reply = await self.iot.DetectAnomalies(iot_pb2.DetectAnomaliesRequest(asset_ids=asset_ids,
                                                                                   windows=self.windows),
                                                   timeout=self.timeout_s)
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:   # e.g. no anomaly model served
                raise
            log.warning("vitals not scored", extra={"code": error.code().name})
            return {}
        return {a.asset_id: (a, reply.model) for a in reply.assets}

    async def _latest(self, asset_id: str, last_ms: int) -> tuple[int, list[float]] | None:
        reply = await self.iot.QueryTelemetry(iot_pb2.QueryTelemetryRequest(
            asset_id=asset_id, start_ms=max(1, last_ms - LATEST_ROWS_MS), end_ms=last_ms, max_points=100_000),
            timeout=self.timeout_s)
        times, values = decode_tensor(reply.timestamps_ms), decode_tensor(reply.values)
        if not len(times):
            return None
        return int(times[-1]), [float(v) for v in values[-1]]


def vitals_properties(previous: dict, latest: tuple[int, list[float]] | None, anomalies, model) -> dict:
    """The vitals feature from the latest reading and the scored windows, keeping earlier periods."""
    properties = {"anomalies": dict(previous.get("anomalies", {})), "anomalyNow": False}
    if latest is not None:
        at_ms, values = latest
        properties["latestMs"] = at_ms
        properties["latest"] = {name: finite(v, 2) for name, v in zip(PATIENT_VITALS.sensors, values)}
    else:
        properties.update({k: previous[k] for k in ("latest", "latestMs") if k in previous})
    if anomalies is not None:
        properties["threshold"] = finite(anomalies.threshold)
        properties["model"] = patients.model_record(model)
        for start, end, score in anomalous_periods(anomalies.windows):
            merge_period(properties["anomalies"], start, end, score, list(anomalies.top_sensors))
        properties["anomalyNow"] = bool(anomalies.windows) and anomalies.windows[-1].anomalous
    elif previous.get("model"):
        properties.update({k: previous[k] for k in ("threshold", "model") if k in previous})
    return properties


def worth_recording(previous: dict, properties: dict) -> bool:
    """A new revision when an anomalous period begins or the patient enters or leaves one (or the model
    changes); the rest (a new reading, a period's end moving as the windows slide) every 15 monitored
    minutes, so the history says what happened without a revision per row."""
    def outline(vitals: dict) -> tuple:
        return (sorted(vitals.get("anomalies", {})), vitals.get("anomalyNow"), vitals.get("model"),
                vitals.get("threshold"))
    if outline(properties) != outline(previous) or "latestMs" not in previous:
        return True
    return properties != previous and properties.get("latestMs", 0) - previous["latestMs"] >= LATEST_EVERY_MS


def anomalous_periods(windows) -> list[tuple[int, int, float]]:
    """Consecutive anomalous windows as (start_ms, end_ms, highest score)."""
    periods: list[list] = []
    for window in windows:
        if not window.anomalous:
            continue
        if periods and window.start_ms <= periods[-1][1] + 60_000:
            periods[-1][1] = max(periods[-1][1], window.end_ms)
            periods[-1][2] = max(periods[-1][2], window.score)
        else:
            periods.append([window.start_ms, window.end_ms, window.score])
    return [tuple(p) for p in periods]


def merge_period(known: dict, start: int, end: int, score: float, top_sensors: list[str]) -> None:
    """Extend the known period that overlaps [start, end], or add one keyed by its start."""
    for key, period in known.items():
        if start <= period["endMs"] + 60_000 and end >= period["startMs"] - 60_000:
            known[key] = {**period, "startMs": min(start, period["startMs"]), "endMs": max(end, period["endMs"]),
                          "score": max(finite(score) or 0.0, period.get("score") or 0.0)}
            return
    known[str(start)] = {"startMs": start, "endMs": end, "score": finite(score), "topSensors": top_sensors}


def anomaly_periods(twin: Twin) -> list[dict]:
    return sorted(twin.reported(patients.VITALS).get("anomalies", {}).values(), key=lambda p: p["startMs"])
