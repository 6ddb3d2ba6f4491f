"""The kinds of asset the IoT service knows: each fixes a sensor set and what its models read.

A registered asset has one type. Its telemetry batches must carry the type's sensors in this
order; the remaining-life and anomaly models read windows of the latest rows. Each type has its
own anomaly model; remaining life applies to machines only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from modalmesh.v1 import iot_pb2


@dataclass(frozen=True)
class AssetType:
    name: str
    sensors: tuple[str, ...]
    units: tuple[str, ...]
    # Operating time one remaining-life cycle stands for (0: remaining life does not apply).
    cycle_seconds: float
    # Spacing of telemetry rows the models were trained on (real sensors may differ a little).
    sample_period_ms: int
    # Latest rows the remaining-life model reads at most (it needs fewer: its adapter's min_rows); 0: none.
    window_rows: int
    # Latest rows one anomaly window covers.
    anomaly_window_rows: int

    def to_proto(self) -> iot_pb2.AssetType:
        return iot_pb2.AssetType(name=self.name, sensors=list(self.sensors), cycle_seconds=self.cycle_seconds,
                                 window_rows=self.window_rows)


@dataclass(frozen=True)
class TelemetryWindow:
    """One asset's latest rows, oldest first: what a model row is."""

    timestamps_ms: np.ndarray   # int64 [rows]
    values: np.ndarray          # float32 [rows, len(sensors)]


# NASA ProgPy's CentrifugalPumpWithWear: its five outputs and the four operating inputs a real
# pump's controller also measures. One cycle is one hour of operation; one row per minute.
CENTRIFUGAL_PUMP = AssetType(
    name="centrifugal-pump",
    sensors=("speed", "flow", "thrust_bearing_temp", "radial_bearing_temp", "oil_temp",
             "suction_pressure", "discharge_pressure", "ambient_temp", "supply_voltage"),
    units=("rad/s", "m3/s", "K", "K", "K", "Pa", "Pa", "K", "V"),
    cycle_seconds=3600.0,
    sample_period_ms=60_000,
    window_rows=7 * 24 * 60,
    anomaly_window_rows=60,
)

# A patient's bedside vital signs, one row per minute (services/iot/vitals.py simulates them). A
# half-hour anomaly window is long enough to tell an episode from a one-minute artefact and short
# enough to raise it while it lasts.
PATIENT_VITALS = AssetType(
    name="patient-vitals",
    sensors=("heart_rate", "respiratory_rate", "spo2", "systolic_bp", "diastolic_bp", "temperature"),
    units=("1/min", "1/min", "%", "mmHg", "mmHg", "degC"),
    cycle_seconds=0.0,
    sample_period_ms=60_000,
    window_rows=0,
    anomaly_window_rows=30,
)

ASSET_TYPES: dict[str, AssetType] = {t.name: t for t in (CENTRIFUGAL_PUMP, PATIENT_VITALS)}
