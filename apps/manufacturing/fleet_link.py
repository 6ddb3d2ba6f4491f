"""The app's MQTT link to the fleet: inspection images and acoustic clips in, maintenance orders out.

It connects to the mesh's broker with the app's own certificate (the broker's ACL lets `manufacturing`
read the media topics and write the maintenance topic, nothing else) and reconnects by itself. Media
are snapshots: when they arrive faster than the services score them, the oldest waiting ones are
dropped (and counted) rather than queued without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

from apps.clients import Availability
from services.iot.mqtt_bridge import topics
from services.iot.mqtt_bridge.client import workload_client
from services.runtime.settings import ServiceSettings

log = logging.getLogger(__name__)

BROKER = "mqtt-broker"
PUBLISH_TIMEOUT_S = 5.0

MediaHandler = Callable[[topics.AssetTopic, topics.MediaMessage], Awaitable[None]]


class BrokerUnavailable(Exception):
    pass


class FleetLink:
    def __init__(self, settings: ServiceSettings, host: str, port: int, availability: Availability,
                 client_id: str = "manufacturing", queue_size: int = 64):
        self.host, self.port, self.availability = host, port, availability
        self.client = workload_client(settings, client_id)
        self.client.reconnect_delay_set(min_delay=1, max_delay=10)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.connected = threading.Event()
        self.queue_size = queue_size
        self.dropped = 0
        self.malformed = 0
        self.handled = 0

    async def run(self, handle: MediaHandler) -> None:
        """Receive media until cancelled; ``handle`` is awaited for each, one at a time."""
        loop = asyncio.get_running_loop()
        waiting: asyncio.Queue = asyncio.Queue(self.queue_size)
        self.client.on_message = lambda c, u, message: loop.call_soon_threadsafe(
            self._enqueue, waiting, message.topic, message.payload)
        self.availability.failed(BROKER, ConnectionError("connecting"))
        self.client.connect_async(self.host, self.port, keepalive=30)
        self.client.loop_start()   # paho's thread: the network, and reconnects after a broker restart
        try:
            while True:
                topic, payload = await waiting.get()
                await self._handle(handle, topic, payload)
        finally:
            self.client.disconnect()
            self.client.loop_stop()

    def _enqueue(self, waiting: asyncio.Queue, topic: str, payload: bytes) -> None:
        if waiting.full():
            waiting.get_nowait()
            self.dropped += 1
        waiting.put_nowait((topic, payload))

    async def _handle(self, handle: MediaHandler, topic: str, payload: bytes) -> None:
        try:
            where = topics.parse_topic(topic)
            media = topics.decode_media(payload)
        except topics.MalformedMessage as error:
            self.malformed += 1
            log.warning("media message dropped", extra={"reason": error.reason, "detail": str(error)})
            return
        try:
            await handle(where, media)
            self.handled += 1
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("media message not recorded", extra={"asset_id": where.asset_id, "kind": where.kind})

    def request_repair(self, asset_type: str, asset_id: str, order_id: int) -> None:
        """Publish the maintenance order (QoS 1) and wait until the broker has it."""
        if not self.connected.is_set():
            raise BrokerUnavailable("not connected to the MQTT broker")
        info = self.client.publish(topics.topic(asset_type, asset_id, topics.MAINTENANCE),
                                   topics.encode_maintenance("repair", str(order_id)), qos=1)
        try:
            info.wait_for_publish(PUBLISH_TIMEOUT_S)
        except (RuntimeError, ValueError) as error:
            raise BrokerUnavailable(f"maintenance order not published: {error}") from None
        if not info.is_published():
            raise BrokerUnavailable(f"the broker did not acknowledge the order within {PUBLISH_TIMEOUT_S:.0f} s")

    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            self.availability.failed(BROKER, ConnectionError(f"broker refused the connection: {reason}"))
            return
        for kind in topics.MEDIA_KINDS:
            client.subscribe(topics.topic_filter(kind), qos=1)
        self.connected.set()
        self.availability.succeeded(BROKER)
        log.info("connected to the MQTT broker", extra={"host": self.host, "port": self.port})

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        self.connected.clear()
        self.availability.failed(BROKER, ConnectionError(f"disconnected from the MQTT broker: {reason}"))
