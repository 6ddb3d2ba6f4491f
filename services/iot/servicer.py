"""modalmesh.v1.IoTService: asset registrations and telemetry in the store; anomaly scores and remaining
life from the served models, batched across assets and callers by the shared runtime.

Each asset type has its own models (`ModelSlot` per type name): a pump's windows go to the pump anomaly
model, a patient's to the vitals model. A call that names assets of several types sends one batched
request to each type's model, the models running side by side. A type with no slot for a kind of
model (remaining life for patient vitals) gets FAILED_PRECONDITION saying it does not apply.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc
from services.iot.asset_types import AssetType, TelemetryWindow
from services.iot.ingest import TelemetryIngest, check_asset_id
from services.iot.store import AssetTypeConflict, StoredAsset, Telemetry, TelemetryStore, UnknownAsset
from services.runtime.errors import FailedPrecondition, InvalidArgument, NotFound
from services.runtime.served_model import ServedModel
from services.runtime.tensors import encode_tensor

DEFAULT_MAX_POINTS = 10_000
MAX_POINTS = 100_000
MAX_WINDOWS = 64
MAX_ASSETS_PER_REQUEST = 1000
TOP_SENSORS = 3


@dataclass(frozen=True)
class ModelSlot:
    """The model one asset type's results of one kind come from; None when its setting is empty."""

    model: ServedModel | None
    setting: str          # the environment variable that chooses it, for the status when it is not served


class IoTServicer(iot_pb2_grpc.IoTServiceServicer):
    def __init__(self, store: TelemetryStore, ingest: TelemetryIngest, anomaly: Mapping[str, ModelSlot] = {},
                 remaining_life: Mapping[str, ModelSlot] = {}):
        """`anomaly` and `remaining_life`: the slot of each asset type name the kind of model applies to."""
        self.store = store
        self.ingest = ingest
        self.anomaly = dict(anomaly)
        self.remaining_life = dict(remaining_life)

    async def RegisterAsset(self, request: iot_pb2.RegisterAssetRequest, context) -> iot_pb2.RegisterAssetResponse:
        check_asset_id(request.asset_id)
        if request.asset_type not in self.store.asset_types:
            raise InvalidArgument(("asset_type", f"unknown type {request.asset_type!r}; known: "
                                                 f"{sorted(self.store.asset_types)}"))
        try:
            asset, created = await asyncio.to_thread(self.store.register, request.asset_id, request.asset_type)
        except AssetTypeConflict as error:
            raise FailedPrecondition(f"{error}; an asset keeps its type (register another id)") from None
        return iot_pb2.RegisterAssetResponse(asset=_asset(asset), created=created)

    async def ListAssets(self, request: iot_pb2.ListAssetsRequest, context) -> iot_pb2.ListAssetsResponse:
        asset_type = self._asset_type_filter(request.asset_type)
        assets = [a for a in await asyncio.to_thread(self.store.assets) if asset_type in ("", a.asset_type.name)]
        return iot_pb2.ListAssetsResponse(assets=[_asset(a) for a in assets],
                                          asset_types=[t.to_proto() for t in self.store.asset_types.values()])

    async def Ingest(self, request_iterator, context):
        async for acknowledgement in self.ingest.ingest(request_iterator):
            yield acknowledgement

    async def QueryTelemetry(self, request: iot_pb2.QueryTelemetryRequest, context) -> iot_pb2.QueryTelemetryResponse:
        asset = self._asset(request.asset_id, "asset_id")
        start, end, max_points = _query_bounds(request)
        telemetry = await asyncio.to_thread(self.store.read_range, asset.asset_id, start, end)
        shown = _thin(telemetry, max_points)
        return iot_pb2.QueryTelemetryResponse(
            asset_id=asset.asset_id, sensors=list(asset.asset_type.sensors),
            timestamps_ms=encode_tensor(shown.timestamps_ms, common_pb2.DATA_TYPE_INT64),
            values=encode_tensor(shown.values, common_pb2.DATA_TYPE_FP32),
            matched_rows=len(telemetry))

    async def DetectAnomalies(self, request: iot_pb2.DetectAnomaliesRequest,
                              context) -> iot_pb2.DetectAnomaliesResponse:
        windows = request.windows or 1
        if not 1 <= windows <= MAX_WINDOWS:
            raise InvalidArgument(("windows", f"{windows} windows; ask for 1 to {MAX_WINDOWS}"))
        assets = await self._assets_with_rows(request.asset_ids, request.asset_type, self.anomaly, "anomaly",
                                              lambda a, model: a.asset_type.anomaly_window_rows)
        # One read of every asset's windows, one request per model: the call's rows batch together.
        windows_of = await asyncio.to_thread(lambda: [self._latest_windows(a, windows) for a in assets])
        models = [self.anomaly[a.asset_type.name].model for a in assets]
        results = await _infer_per_asset(models, windows_of, context)
        scored = [_anomalies(*parts) for parts in zip(assets, windows_of, results, models)]
        return iot_pb2.DetectAnomaliesResponse(assets=scored, model=_response_model(models, self.anomaly))

    async def PredictRemainingLife(self, request: iot_pb2.PredictRemainingLifeRequest,
                                   context) -> iot_pb2.PredictRemainingLifeResponse:
        assets = await self._assets_with_rows(request.asset_ids, request.asset_type, self.remaining_life,
                                              "remaining-life",
                                              lambda a, model: model.adapter.min_rows)
        latest = await asyncio.to_thread(
            lambda: [self.store.read_latest(a.asset_id, a.asset_type.window_rows) for a in assets])
        models = [self.remaining_life[a.asset_type.name].model for a in assets]
        estimates = await _infer_per_asset(models, [[TelemetryWindow(w.timestamps_ms, w.values)] for w in latest],
                                           context)
        return iot_pb2.PredictRemainingLifeResponse(
            assets=[_remaining_life(a, w, e) for a, w, (e,) in zip(assets, latest, estimates)],
            model=_response_model(models, self.remaining_life))

    # -- models over the latest windows -----------------------------------------------------------

    def _latest_windows(self, asset: StoredAsset, windows: int) -> list[TelemetryWindow]:
        """Up to ``windows`` whole anomaly windows ending at the latest row, oldest first."""
        width = asset.asset_type.anomaly_window_rows
        latest = self.store.read_latest(asset.asset_id, windows * width)
        whole = len(latest) // width * width   # a partial oldest window is left out
        return [TelemetryWindow(latest.timestamps_ms[i:i + width], latest.values[i:i + width])
                for i in range(len(latest) - whole, len(latest), width)]

    # -- which assets ------------------------------------------------------------------------------

    def _asset(self, asset_id: str, field: str) -> StoredAsset:
        check_asset_id(asset_id, field)
        try:
            return self.store.asset(asset_id)
        except UnknownAsset as error:
            raise NotFound(f"{error}; call RegisterAsset first") from None

    def _asset_type_filter(self, asset_type: str) -> str:
        if asset_type and asset_type not in self.store.asset_types:
            raise InvalidArgument(("asset_type",
                                   f"unknown type {asset_type!r}; known: {sorted(self.store.asset_types)}"))
        return asset_type

    async def _assets_with_rows(self, asset_ids, asset_type: str, slots: Mapping[str, ModelSlot], kind: str,
                                rows_needed: Callable[[StoredAsset, ServedModel], int]) -> list[StoredAsset]:
        """The assets asked for, each of a type `slots` serves and with enough telemetry; none asked: every
        asset of a served type (of `asset_type`, when given) that has enough."""
        def needs(asset: StoredAsset) -> int:
            model = slots[asset.asset_type.name].model
            model.require_ready()
            return rows_needed(asset, model)

        wanted = self._asset_type_filter(asset_type)
        if not asset_ids:
            _require_any(slots, kind)
            served = [a for a in await asyncio.to_thread(self.store.assets)
                      if getattr(slots.get(a.asset_type.name), "model", None) is not None
                      and wanted in ("", a.asset_type.name)]
            return [a for a in served if a.stored_rows >= needs(a)]
        if len(asset_ids) > MAX_ASSETS_PER_REQUEST:
            raise InvalidArgument(("asset_ids", f"{len(asset_ids)} assets; ask for at most {MAX_ASSETS_PER_REQUEST}"))
        if len(set(asset_ids)) != len(asset_ids):
            raise InvalidArgument(("asset_ids", "each asset may be asked for once"))
        assets = [self._asset(asset_id, f"asset_ids[{i}]") for i, asset_id in enumerate(asset_ids)]
        _require_served(assets, slots, kind)
        short = [f"{a.asset_id} has {a.stored_rows} rows and needs {needs(a)}"
                 for a in assets if a.stored_rows < needs(a)]
        if short:
            raise FailedPrecondition("not enough telemetry: " + "; ".join(short))
        return assets


def _require_any(slots: Mapping[str, ModelSlot], kind: str) -> None:
    if not any(slot.model is not None for slot in slots.values()):
        settings = sorted({slot.setting for slot in slots.values()})
        raise FailedPrecondition(f"this IoT service serves no {kind} model"
                                 + (f" ({' and '.join(settings)} {'is' if len(settings) == 1 else 'are'} empty)"
                                    if settings else ""))


def _require_served(assets: list[StoredAsset], slots: Mapping[str, ModelSlot], kind: str) -> None:
    """FAILED_PRECONDITION naming the assets whose type the kind of model does not apply to, or whose
    type's model this service does not serve."""
    problems = []
    for type_name in dict.fromkeys(a.asset_type.name for a in assets):
        ids = ", ".join(a.asset_id for a in assets if a.asset_type.name == type_name)
        slot = slots.get(type_name)
        if slot is None:
            problems.append(f"{kind} does not apply to {type_name} assets ({ids})")
        elif slot.model is None:
            problems.append(f"this IoT service serves no {kind} model for {type_name} assets ({ids}; "
                            f"{slot.setting} is empty)")
    if problems:
        raise FailedPrecondition("; ".join(problems))


def _response_model(models: list[ServedModel], slots: Mapping[str, ModelSlot]) -> common_pb2.ModelInfo:
    """The response's one `model`: of the asset types scored, the first in the service's order (pumps before
    patients, so a caller of one type gets its model even when a call with no ids sweeps in others); with no
    asset, the first served. Each asset's own model is on the asset where the response has a field for it."""
    served = [slot.model for slot in slots.values() if slot.model is not None]
    return next((m for m in served if any(m is used for used in models)), served[0]).model_info


def _query_bounds(request: iot_pb2.QueryTelemetryRequest) -> tuple[int, int, int]:
    """start_ms 0: from the first row; end_ms 0: to the last; max_points 0: the default."""
    start, end = request.start_ms, request.end_ms or np.iinfo(np.int64).max
    max_points = request.max_points or DEFAULT_MAX_POINTS
    violations = []
    if start < 0:
        violations.append(("start_ms", f"{start} is negative"))
    if end < start:
        violations.append(("end_ms", f"{end} is before start_ms {start}"))
    if not 1 <= max_points <= MAX_POINTS:
        violations.append(("max_points", f"{max_points}; ask for 1 to {MAX_POINTS}"))
    if violations:
        raise InvalidArgument(violations)
    return start, end, max_points


def _thin(telemetry: Telemetry, max_points: int) -> Telemetry:
    """At most max_points rows, evenly spaced over the matched ones, the first and last among them."""
    if len(telemetry) <= max_points:
        return telemetry
    keep = np.unique(np.linspace(0, len(telemetry) - 1, max_points).round().astype(np.int64))
    return Telemetry(telemetry.timestamps_ms[keep], telemetry.values[keep])


def _top_sensors(asset_type: AssetType, contributions) -> list[str]:
    order = np.argsort(-np.asarray(contributions, dtype=np.float64))
    return [asset_type.sensors[i] for i in order[:TOP_SENSORS]]


def _asset(asset: StoredAsset) -> iot_pb2.Asset:
    return iot_pb2.Asset(asset_id=asset.asset_id, type=asset.asset_type.to_proto(), stored_rows=asset.stored_rows,
                         last_timestamp_ms=asset.last_timestamp_ms)


async def _infer(model: ServedModel, rows: list, context) -> list:
    """One result per row, in order: in requests of at most the model's batch size, which run together."""
    size = model.max_batch_size
    parts = await asyncio.gather(*(model.infer(rows[i:i + size], context) for i in range(0, len(rows), size)))
    return [result for part in parts for result in part]


async def _infer_per_asset(models: list[ServedModel], rows_of: list[list], context) -> list[list]:
    """Each asset's rows through its own model, in order: the rows of all assets of one model in one
    request, the models running side by side."""
    members: dict[int, list[int]] = {}
    for i, model in enumerate(models):
        members.setdefault(id(model), []).append(i)

    async def run(indices: list[int]) -> dict[int, list]:
        results = iter(await _infer(models[indices[0]], [r for i in indices for r in rows_of[i]], context))
        return {i: [next(results) for _ in rows_of[i]] for i in indices}

    merged = {i: r for part in await asyncio.gather(*(run(ix) for ix in members.values())) for i, r in part.items()}
    return [merged[i] for i in range(len(models))]


def _anomalies(asset: StoredAsset, rows: list[TelemetryWindow], results: list,
               model: ServedModel) -> iot_pb2.AssetAnomalies:
    return iot_pb2.AssetAnomalies(
        asset_id=asset.asset_id,
        windows=[iot_pb2.WindowScore(start_ms=int(w.timestamps_ms[0]), end_ms=int(w.timestamps_ms[-1]),
                                     score=float(r.score), anomalous=bool(r.anomalous))
                 for w, r in zip(rows, results)],
        threshold=float(model.adapter.threshold),
        top_sensors=_top_sensors(asset.asset_type, results[-1].contributions),
        model=model.model_info)


def _remaining_life(asset: StoredAsset, latest, estimate) -> iot_pb2.RemainingLife:
    return iot_pb2.RemainingLife(asset_id=asset.asset_id, cycles=estimate.cycles,
                                 lower_cycles=estimate.lower_cycles, upper_cycles=estimate.upper_cycles,
                                 coverage=estimate.coverage, as_of_ms=int(latest.timestamps_ms[-1]),
                                 cycle_seconds=asset.asset_type.cycle_seconds)
