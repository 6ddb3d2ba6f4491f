"""Asset twins of the fleet: what their attributes and features hold, and the patches that change them.

Features (reported properties unless said otherwise):
    health            index in [0, 1] from the remaining life and the recent anomalies
    remainingLife     cycles with an interval, as of a telemetry timestamp, from IoTService
    anomalies         recent windows' scores, the open (anomalous) ones, the sensors behind them
    visualInspection  the last inspection image's verdict and defects, from VisionService
    acoustic          the last acoustic clip's anomaly score, from AudioService
    maintenance       the last completed work order; desired: the maintenance window of a scheduled one
"""

from __future__ import annotations

from dataclasses import dataclass

from apps.twins import Twin, finite
from modalmesh.v1 import common_pb2, iot_pb2

# The IoT asset type of the fleet's machines (services/iot/asset_types.py): the app asks for these only.
MACHINES = "centrifugal-pump"
HEALTH, REMAINING_LIFE, ANOMALIES = "health", "remainingLife", "anomalies"
INSPECTION, ACOUSTIC, MAINTENANCE = "visualInspection", "acoustic", "maintenance"


def definition(asset_type: str) -> str:
    return f"modalmesh:{asset_type}:1"


def model_name(model: common_pb2.ModelInfo) -> dict:
    return {"name": model.name, "version": model.version, "provenance": model.provenance}


def attributes(asset: iot_pb2.Asset) -> dict:
    kind = asset.type
    return {"assetType": kind.name, "sensors": list(kind.sensors), "cycleSeconds": kind.cycle_seconds,
            "windowRows": kind.window_rows}


@dataclass(frozen=True)
class HealthIndex:
    """Remaining life against a reference life, lowered by the share of recent anomalous windows.

    1.0: at least ``reference_cycles`` left and nothing anomalous; 0.0: no life left. Anomalies alone
    can halve it, since a machine that sounds and reads wrong is worth a look whatever its age.
    """

    reference_cycles: float

    def __call__(self, remaining_cycles: float | None, anomalous_share: float) -> float | None:
        if remaining_cycles is None:
            return None
        life = min(max(remaining_cycles / self.reference_cycles, 0.0), 1.0)
        return round(life * (1.0 - 0.5 * anomalous_share), 3)


def remaining_life_properties(life: iot_pb2.RemainingLife, model: common_pb2.ModelInfo) -> dict:
    return {"cycles": finite(life.cycles, 1), "lowerCycles": finite(life.lower_cycles, 1),
            "upperCycles": finite(life.upper_cycles, 1), "coverage": finite(life.coverage, 3),
            "asOfMs": life.as_of_ms, "cycleSeconds": life.cycle_seconds, "model": model_name(model)}


def anomaly_properties(scored: iot_pb2.AssetAnomalies, model: common_pb2.ModelInfo) -> dict:
    windows = list(scored.windows)
    latest = windows[-1] if windows else None
    return {
        "threshold": finite(scored.threshold),
        "latestScore": finite(latest.score) if latest else None,
        "asOfMs": latest.end_ms if latest else None,
        "flags": [w.anomalous for w in windows],
        "open": [{"startMs": w.start_ms, "endMs": w.end_ms, "score": finite(w.score)}
                 for w in windows if w.anomalous],
        "topSensors": list(scored.top_sensors),
        "model": model_name(model),
    }


def awaiting_fresh_telemetry(twin: Twin, asset: iot_pb2.Asset) -> bool:
    """After maintenance, a window still holds rows from before the repair until a full window of new
    rows arrives: its estimates describe the old machine and must not reopen the order just closed."""
    since = twin.reported(MAINTENANCE).get("storedRowsAtMaintenance")
    return since is not None and asset.stored_rows - since < asset.type.window_rows


def reset_after_maintenance(order_id: int, stored_rows: int, completed_ms: int, count: int) -> dict:
    """A new life: estimates of the old machine are cleared (its history stays in the log)."""
    return {"features": {
        HEALTH: {"properties": {"index": 1.0, "basis": "maintenance"}},
        REMAINING_LIFE: {"properties": None},
        ANOMALIES: {"properties": None},
        MAINTENANCE: {"properties": {"lastWorkOrder": order_id, "lastCompletedMs": completed_ms,
                                     "storedRowsAtMaintenance": stored_rows, "completed": count},
                      "desiredProperties": None},
    }}
