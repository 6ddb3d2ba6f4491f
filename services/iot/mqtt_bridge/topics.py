"""The fleet's MQTT topics and payloads: one place for the layout the broker's ACL, the bridge, the
fleet simulator and the manufacturing app share (docs/mqtt.md describes it for other publishers).

    modalmesh/fleet/<asset_type>/<asset_id>/telemetry    JSON telemetry batch (publisher → bridge)
    modalmesh/fleet/<asset_type>/<asset_id>/inspection   JSON media envelope, image/png (→ app)
    modalmesh/fleet/<asset_type>/<asset_id>/acoustic     JSON media envelope, audio/wav (→ app)
    modalmesh/fleet/<asset_type>/<asset_id>/maintenance  JSON maintenance order (app → simulator)
"""

from __future__ import annotations

import base64
import json
import math
import re
from dataclasses import dataclass

import numpy as np

ROOT = "modalmesh/fleet"
TELEMETRY = "telemetry"
INSPECTION = "inspection"
ACOUSTIC = "acoustic"
MAINTENANCE = "maintenance"
MEDIA_KINDS = (INSPECTION, ACOUSTIC)

# IoTService's asset id rule (iot.proto), which also keeps ids free of MQTT's '+', '#' and '/'.
_ASSET_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_ASSET_TYPE = re.compile(r"^[a-z0-9-]{1,64}$")
MAX_ROWS = 10_000   # per telemetry message; larger batches are split by the publisher
_FLOAT32_MAX = 3.4028234663852886e38   # IoTService stores float32


class MalformedMessage(ValueError):
    """A message that can never become valid: dropped and counted, never retried. ``reason`` is a short
    label for metrics; the message text says what was wrong (never the payload itself)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def topic(asset_type: str, asset_id: str, kind: str) -> str:
    return f"{ROOT}/{asset_type}/{asset_id}/{kind}"


def topic_filter(kind: str, asset_type: str = "+") -> str:
    """Every asset's topic of this kind (of one asset type, or of all)."""
    return f"{ROOT}/{asset_type}/+/{kind}"


@dataclass(frozen=True)
class AssetTopic:
    asset_type: str
    asset_id: str
    kind: str


def parse_topic(name: str) -> AssetTopic:
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:2]) != ROOT:
        raise MalformedMessage("topic", f"not {ROOT}/<asset_type>/<asset_id>/<kind>")
    asset_type, asset_id, kind = parts[2:]
    if not _ASSET_TYPE.match(asset_type):
        raise MalformedMessage("topic", "asset type must be 1-64 of a-z, 0-9, '-'")
    if not _ASSET_ID.match(asset_id):
        raise MalformedMessage("topic", "asset id must be 1-128 of letters, digits, '-', '_', '.', ':'")
    return AssetTopic(asset_type, asset_id, kind)


# -- telemetry --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TelemetryBatch:
    """One asset's rows: what one telemetry message carries and one IngestRequest sends."""

    sensors: tuple[str, ...]
    timestamps_ms: np.ndarray   # int64 [rows], strictly increasing
    values: np.ndarray          # float64 [rows, len(sensors)], finite

    def after(self, timestamp_ms: int) -> "TelemetryBatch":
        """The rows later than ``timestamp_ms``: what is left to store of a redelivered batch."""
        keep = self.timestamps_ms > timestamp_ms
        return TelemetryBatch(self.sensors, self.timestamps_ms[keep], self.values[keep])

    @property
    def rows(self) -> int:
        return len(self.timestamps_ms)


def encode_telemetry(sensors, timestamps_ms, values) -> bytes:
    """``{"sensors": [...], "timestamps_ms": [...], "values": [[...], ...]}``, rows in sensor order."""
    return json.dumps({"sensors": list(sensors), "timestamps_ms": [int(t) for t in timestamps_ms],
                       "values": np.asarray(values, dtype=np.float64).round(6).tolist()},
                      separators=(",", ":")).encode()


def decode_telemetry(payload: bytes, expected_sensors: tuple[str, ...]) -> TelemetryBatch:
    """Parse and validate a telemetry message; MalformedMessage says why one is refused."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedMessage("json", f"not JSON ({type(e).__name__})") from None
    if not isinstance(doc, dict) or not {"sensors", "timestamps_ms", "values"} <= set(doc):
        raise MalformedMessage("schema", "needs an object with sensors, timestamps_ms and values")
    sensors = doc["sensors"]
    if not isinstance(sensors, list) or tuple(sensors) != tuple(expected_sensors):
        raise MalformedMessage("sensors", f"sensors must be {list(expected_sensors)}, in that order")
    timestamps, rows = doc["timestamps_ms"], doc["values"]
    if not isinstance(timestamps, list) or not isinstance(rows, list) or len(timestamps) != len(rows):
        raise MalformedMessage("schema", "timestamps_ms and values must be lists of equal length")
    if not 1 <= len(rows) <= MAX_ROWS:
        raise MalformedMessage("rows", f"a message carries 1 to {MAX_ROWS} rows, not {len(rows)}")
    if not all(type(t) is int and t > 0 for t in timestamps):
        raise MalformedMessage("timestamps", "timestamps_ms must be positive integers (ms since the epoch)")
    if not all(isinstance(row, list) and len(row) == len(sensors)
               and all(type(v) in (int, float) and math.isfinite(v) and abs(v) <= _FLOAT32_MAX for v in row) for row in rows):
        raise MalformedMessage("values", f"each row must hold {len(sensors)} finite float32 numbers")
    stamps = np.asarray(timestamps, dtype=np.int64)
    if np.any(np.diff(stamps) <= 0):
        raise MalformedMessage("timestamps", "timestamps_ms must be strictly increasing")
    return TelemetryBatch(tuple(sensors), stamps, np.asarray(rows, dtype=np.float64))


# -- media and maintenance --------------------------------------------------------------------------

@dataclass(frozen=True)
class MediaMessage:
    """An inspection image or an acoustic clip of one asset, taken at ``timestamp_ms``."""

    timestamp_ms: int
    content_type: str   # image/png or audio/wav
    data: bytes


def encode_media(media: MediaMessage) -> bytes:
    return json.dumps({"timestamp_ms": media.timestamp_ms, "content_type": media.content_type,
                       "data": base64.b64encode(media.data).decode()}).encode()


def decode_media(payload: bytes) -> MediaMessage:
    try:
        doc = json.loads(payload)
        return MediaMessage(int(doc["timestamp_ms"]), str(doc["content_type"]),
                            base64.b64decode(doc["data"], validate=True))
    except (ValueError, KeyError, TypeError) as e:
        raise MalformedMessage("media", f"not a media envelope ({type(e).__name__})") from None


def encode_maintenance(action: str = "repair", work_order: str = "") -> bytes:
    return json.dumps({"action": action, "work_order": work_order}).encode()


def decode_maintenance(payload: bytes) -> dict:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise MalformedMessage("json", "not JSON") from None
    if not isinstance(doc, dict) or doc.get("action") != "repair":
        raise MalformedMessage("maintenance", 'needs {"action": "repair"}')
    return doc
