"""MQTT telemetry into IoTService.Ingest, acknowledging each MQTT message only once its rows are stored.

Delivery: the bridge holds a persistent MQTT session (clean session off, a fixed client id) and
subscribes with QoS 1 and manual acknowledgements. A message's PUBACK goes to the broker only after
IoTService acknowledged the batch carrying its rows (or the message was found malformed, or all its
rows were already stored). A message the bridge received but never acknowledged, because the bridge,
the IoT service or a connection failed, is delivered again by the broker. Rows are stored once: the
bridge drops rows no later than the asset's last stored (or already sent) timestamp, so a redelivered
message adds nothing twice.

Threads: paho's network loop runs on its own thread and hands messages to the event loop; everything
else (the Ingest stream, acknowledgements' bookkeeping) runs on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import deque
from dataclasses import dataclass, field

import grpc
import paho.mqtt.client as mqtt
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import Counter, Gauge

from modalmesh.v1 import common_pb2, iot_pb2, iot_pb2_grpc
from services.iot.mqtt_bridge import topics
from services.iot.mqtt_bridge.client import workload_client
from services.runtime.channels import channel_options, client_credentials
from services.runtime.tensors import encode_tensor

log = logging.getLogger(__name__)

_BATCH_SEQUENCE = re.compile(r"batch sequence (\d+)")

# The IoT service found the batch itself wrong: resending it can never succeed.
BATCH_REJECTED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND)


@dataclass
class Received:
    """An MQTT message as paho delivered it (mid: the packet id its acknowledgement names)."""

    mid: int
    topic: str
    payload: bytes


@dataclass
class PendingBatch:
    """Rows sent (or to be sent) to IoTService, and the MQTT messages acknowledged when they are stored."""

    asset_id: str
    batch: topics.TelemetryBatch
    mids: list[int] = field(default_factory=list)
    # Duplicates whose rows this batch carries: acknowledged with it, counted as duplicates already.
    duplicate_mids: list[int] = field(default_factory=list)


class BridgeMetrics:
    def __init__(self, registry):
        self.messages = Counter("modalmesh_mqtt_messages", "MQTT telemetry messages by outcome "
                                "(stored, duplicate, malformed, rejected)", ["outcome"], registry=registry)
        self.malformed = Counter("modalmesh_mqtt_malformed_messages", "Malformed MQTT messages by reason",
                                 ["reason"], registry=registry)
        self.rows = Counter("modalmesh_mqtt_rows_stored", "Telemetry rows IoTService acknowledged",
                            registry=registry)
        self.stream_failures = Counter("modalmesh_mqtt_ingest_stream_failures",
                                       "Ingest streams that ended with an error, by status code", ["code"],
                                       registry=registry)
        self.pending = Gauge("modalmesh_mqtt_pending_batches", "Batches sent but not yet acknowledged",
                             registry=registry)
        self.connected = Gauge("modalmesh_mqtt_connected", "1 while connected and subscribed to the broker",
                               registry=registry)


class TelemetryBridge:
    """Subscribes to telemetry topics and keeps one Ingest stream open to the IoT service."""

    def __init__(self, settings, registry):
        self.settings = settings
        self.metrics = BridgeMetrics(registry)
        self.inbox: asyncio.Queue[Received] = asyncio.Queue()
        self.pending: deque[PendingBatch] = deque()   # oldest first: the service stores batches in order
        self.in_flight: dict[int, PendingBatch] = {}  # by IngestRequest.sequence
        self.sequence = 0
        self.asset_types: dict[str, tuple[str, ...]] = {}   # type name -> sensors
        self.registered: dict[str, str] = {}                # asset id -> type name
        self.last_sent_ms: dict[str, int] = {}              # asset id -> last timestamp stored or sent
        self._acked = asyncio.Event()   # set whenever a batch is acknowledged: room in flight
        self.mqtt: mqtt.Client | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    # -- MQTT side (paho's thread hands over to the event loop) ------------------------------------

    def _start_mqtt(self) -> None:
        s = self.settings
        client = workload_client(s, s.mqtt_client_id, persistent_session=True, manual_ack=True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.reconnect_delay_set(1, int(s.reconnect_max_s))
        client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=30)
        client.loop_start()   # connects, and reconnects with backoff, on its own thread
        self.mqtt = client

    def _on_connect(self, client, _userdata, _flags, reason, _properties) -> None:
        if reason.is_failure:
            log.warning("broker refused the connection", extra={"reason": str(reason)})
            return
        client.subscribe(self.settings.topic_filter, qos=1)

    def _on_subscribe(self, _client, _userdata, _mid, reasons, _properties) -> None:
        self.metrics.connected.set(1)
        log.info("subscribed", extra={"topic_filter": self.settings.topic_filter, "granted": str(reasons[0])})

    def _on_disconnect(self, _client, _userdata, _flags, reason, _properties) -> None:
        self.metrics.connected.set(0)
        log.warning("disconnected from the broker", extra={"reason": str(reason)})

    def _on_message(self, _client, _userdata, message: mqtt.MQTTMessage) -> None:
        received = Received(message.mid, message.topic, bytes(message.payload))
        self.loop.call_soon_threadsafe(self.inbox.put_nowait, received)

    def _ack(self, mids: list[int]) -> None:
        for mid in mids:
            self.mqtt.ack(mid, 1)

    def _settle(self, stored: PendingBatch) -> None:
        """Its rows are stored: acknowledge its messages (and the duplicates that waited on it)."""
        self._ack(stored.mids + stored.duplicate_mids)
        self.metrics.messages.labels("stored").inc(len(stored.mids))

    # -- the Ingest side -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Forever: open the Ingest stream, pump batches, and after a failure back off and reopen."""
        self.loop = asyncio.get_running_loop()
        self._start_mqtt()
        backoff = 0.5
        try:
            while True:
                try:
                    await self._session()
                except grpc.aio.AioRpcError as e:
                    self.metrics.stream_failures.labels(e.code().name).inc()
                    if e.code() in BATCH_REJECTED and self.in_flight:
                        self._reject_oldest(e)
                        backoff = 0.5
                        continue
                    log.warning("IoT service unavailable; retrying", extra={"code": e.code().name,
                                                                             "retry_in_s": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.settings.reconnect_max_s)
        finally:
            self.mqtt.loop_stop()
            self.mqtt.disconnect()

    async def _session(self) -> None:
        async with self._channel() as channel:
            stub = iot_pb2_grpc.IoTServiceStub(channel)
            await self._load_assets(stub)
            call = stub.Ingest()
            reader = asyncio.ensure_future(self._read_acks(call))
            try:
                for batch in self._retry_batches():
                    await self._send(call, batch, reader)
                while True:
                    received = await _first_of(self.inbox.get(), reader)
                    batch = await self._batch_of(stub, received)
                    if batch is not None:
                        await self._send(call, batch, reader)
            finally:
                reader.cancel()
                call.cancel()

    def _channel(self) -> grpc.aio.Channel:
        s = self.settings
        if s.tls_mode == "sidecar":   # the pod's Istio sidecar does the mutual TLS
            return grpc.aio.insecure_channel(s.iot_address, options=channel_options())
        return grpc.aio.secure_channel(s.iot_address, client_credentials(s.tls_ca, s.tls_cert, s.tls_key),
                                       options=channel_options())

    async def _load_assets(self, stub) -> None:
        """What the service has stored: the truth that decides which received rows are new."""
        reply = await stub.ListAssets(iot_pb2.ListAssetsRequest(), timeout=self.settings.call_timeout_s)
        self.asset_types = {t.name: tuple(t.sensors) for t in reply.asset_types}
        self.registered = {a.asset_id: a.type.name for a in reply.assets}
        self.last_sent_ms = {a.asset_id: a.last_timestamp_ms for a in reply.assets}

    def _retry_batches(self) -> list[PendingBatch]:
        """Batches a failed stream left unacknowledged, less the rows the service stored meanwhile."""
        retry = []
        for pending in self.in_flight.values():
            pending.batch = pending.batch.after(self.last_sent_ms.get(pending.asset_id, 0))
            if pending.batch.rows:
                retry.append(pending)
            else:
                self._settle(pending)
        self.in_flight.clear()
        return retry

    async def _batch_of(self, stub, received: Received) -> PendingBatch | None:
        """The rows of a message still to store, or None when it was settled here (malformed, duplicate)."""
        try:
            where = topics.parse_topic(received.topic)
            sensors = self.asset_types.get(where.asset_type)
            if where.kind != topics.TELEMETRY or sensors is None:
                raise topics.MalformedMessage("topic", f"no telemetry of asset type {where.asset_type!r} here")
            await self._register(stub, where)
            batch = topics.decode_telemetry(received.payload, sensors)
        except topics.MalformedMessage as e:
            self._drop(received, e)
            return None
        new = batch.after(self.last_sent_ms.get(where.asset_id, 0))
        if new.rows == 0:
            self._settle_duplicate(where.asset_id, received.mid)
            return None
        self.last_sent_ms[where.asset_id] = int(new.timestamps_ms[-1])
        return PendingBatch(where.asset_id, new, [received.mid])

    async def _register(self, stub, where: topics.AssetTopic) -> None:
        known = self.registered.get(where.asset_id)
        if known == where.asset_type:
            return
        if known is not None:
            raise topics.MalformedMessage("asset_type", f"asset is registered as {known!r}")
        try:
            await stub.RegisterAsset(iot_pb2.RegisterAssetRequest(asset_id=where.asset_id,
                                                                  asset_type=where.asset_type),
                                     timeout=self.settings.call_timeout_s)
        except grpc.aio.AioRpcError as e:
            if e.code() not in BATCH_REJECTED:
                raise
            raise topics.MalformedMessage("asset", f"registration refused: {e.code().name}") from None
        self.registered[where.asset_id] = where.asset_type
        log.info("registered asset", extra={"asset_id": where.asset_id, "asset_type": where.asset_type})

    def _drop(self, received: Received, error: topics.MalformedMessage) -> None:
        """Acknowledged so the broker never redelivers it: it cannot become valid. Logged without payload."""
        log.warning("malformed message dropped", extra={"topic": received.topic, "error": str(error),
                                                        "payload_bytes": len(received.payload)})
        self.metrics.malformed.labels(error.reason).inc()
        self.metrics.messages.labels("malformed").inc()
        self._ack([received.mid])

    def _settle_duplicate(self, asset_id: str, mid: int) -> None:
        """Every row is stored or travels in an unacknowledged batch: acknowledge with that batch."""
        carrier = next((p for p in reversed(self.in_flight.values()) if p.asset_id == asset_id), None)
        if carrier is not None:
            carrier.duplicate_mids.append(mid)
        else:
            self._ack([mid])
        self.metrics.messages.labels("duplicate").inc()

    async def _send(self, call, pending: PendingBatch, reader: asyncio.Future) -> None:
        while len(self.in_flight) >= self.settings.max_in_flight_batches:
            await _first_of(self._acked.wait(), reader)
            self._acked.clear()
        self.sequence += 1
        self.in_flight[self.sequence] = pending
        self.metrics.pending.set(len(self.in_flight))
        await call.write(iot_pb2.IngestRequest(
            sequence=self.sequence, asset_id=pending.asset_id, sensors=list(pending.batch.sensors),
            timestamps_ms=encode_tensor(pending.batch.timestamps_ms, common_pb2.DATA_TYPE_INT64),
            values=encode_tensor(pending.batch.values, common_pb2.DATA_TYPE_FP32)))

    async def _read_acks(self, call) -> None:
        """Acknowledge each stored batch's MQTT messages; raises the stream's error when it ends."""
        async for reply in call:
            pending = self.in_flight.pop(reply.sequence, None)
            if pending is None:
                continue
            self._settle(pending)
            self.metrics.rows.inc(reply.stored_rows)
            self.metrics.pending.set(len(self.in_flight))
            self._acked.set()
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "Ingest stream ended")

    def _reject_oldest(self, error: grpc.aio.AioRpcError) -> None:
        """The service refused a batch the bridge thought valid: drop that batch, resend the rest."""
        sequence = _refused_sequence(error) or min(self.in_flight)
        pending = self.in_flight.pop(sequence, None) or self.in_flight.pop(min(self.in_flight))
        log.warning("batch refused by the IoT service; dropped",
                    extra={"asset_id": pending.asset_id, "code": error.code().name, "details": error.details(),
                           "rows": pending.batch.rows})
        self.metrics.messages.labels("rejected").inc(len(pending.mids))
        self._ack(pending.mids + pending.duplicate_mids)


async def _first_of(awaitable, guard: asyncio.Future):
    """``awaitable``'s result, unless ``guard`` (the ack reader) ends first: then its error is raised."""
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([task, guard], return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        return task.result()
    task.cancel()
    guard.result()   # raises the stream's error
    raise RuntimeError("Ingest stream ended")


def _refused_sequence(error: grpc.aio.AioRpcError) -> int | None:
    """The sequence the IoT service's field violations name ("batch sequence N: ..."), if any."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        request = error_details_pb2.BadRequest()
        if detail.Unpack(request):
            for violation in request.field_violations:
                named = _BATCH_SEQUENCE.search(violation.description)
                if named:
                    return int(named[1])
    return None
