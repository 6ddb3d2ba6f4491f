"""The fleet-simulator workload: a dozen ProgPy pumps (services/iot/fleet.py) stepped in accelerated
time, publishing what their sensors, cameras and microphones would over MQTT.

Every ``publish_interval_s`` real seconds each running machine advances ``speedup`` simulated seconds
per real second and publishes the rows (one per simulated minute) on its telemetry topic, QoS 1. Every
``media_interval_hours`` simulated hours it publishes an inspection image (services/vision/textures.py,
defects likelier as the machine wears) and an acoustic clip (services/audio/machine_sounds.py, a
bearing fault louder as it wears). Every ``fault_interval_hours`` one running machine gets a transient
fault (sensor or process, fleet.FAULT_KINDS) for the anomaly demo. A machine that reaches a failure
event stops and publishes nothing until a maintenance order on its maintenance topic repairs it.

Machines start at different ages (the oldest at ``max_start_age_hours``), so that within minutes of
`make up` one of them approaches failure. Timestamps are the fleet's simulated clock, which starts at
the wall clock and never runs backwards across restarts (the last one is kept in ``data_dir``), since
the IoT service stores only rows later than an asset's last stored row.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import soundfile
from prometheus_client import Counter, Gauge
from pydantic import Field

from services.audio.machine_sounds import machine_character, machine_sound
from services.iot.asset_types import CENTRIFUGAL_PUMP
from services.iot.fleet import EPOCH_MS, FAULT_KINDS, LivePump, MachineSpec
from services.iot.mqtt_bridge import topics
from services.iot.mqtt_bridge.client import workload_client
from services.runtime.settings import ServiceSettings
from services.vision.textures import product_image, sample_defects

log = logging.getLogger(__name__)

MINUTE_MS = 60_000
AGEING_CHUNK_S = 24 * 3600.0   # simulated time stepped per call while machines are aged at start


class SimulatorSettings(ServiceSettings):
    workload: str = "fleet-simulator"
    mqtt_host: str = Field("localhost", description="The broker's host (its certificate must name it)")
    mqtt_port: int = Field(8883, ge=1, le=65535)
    mqtt_client_id: str = "fleet-simulator"
    machines: int = Field(12, ge=1, le=200)
    fleet_seed: int = Field(2026, description="Same seed, same machines")
    speedup: float = Field(3600.0, gt=0, description="Simulated seconds per real second")
    publish_interval_s: float = Field(1.0, gt=0, description="Real seconds between telemetry messages")
    max_start_age_hours: float = Field(120.0, ge=0, description="Operating hours of the oldest machine at "
                                       "start; the others are spread evenly below it")
    media_interval_hours: float = Field(24.0, ge=0, description="Simulated hours between a machine's "
                                        "inspection images and acoustic clips; 0 publishes none")
    fault_interval_hours: float = Field(96.0, ge=0, description="Simulated hours between injected faults; "
                                        "0 injects none")
    fault_minutes: int = Field(180, ge=1, description="Simulated minutes an injected fault lasts")
    image_size: int = Field(128, ge=32, le=1024)
    clip_seconds: float = Field(1.0, gt=0, le=30)
    clip_sample_rate: int = 16_000


# -- the fleet ----------------------------------------------------------------------------------------

@dataclass
class Machine:
    """A LivePump and what the simulator keeps about it: its offset onto the fleet clock, its media."""

    pump: LivePump
    shift_minutes: int                # fleet minute = pump minute + shift (changes when it is repaired)
    sound: dict                       # machine_sounds.machine_character: its own voice
    rng: np.random.Generator
    next_media_minute: int = 0
    last_timestamp_ms: int = 0
    repairs: int = 0

    @property
    def asset_id(self) -> str:
        return self.pump.spec.machine_id


@dataclass
class Tick:
    """What one step of the fleet produced, to publish."""

    telemetry: list[tuple[str, bytes]] = field(default_factory=list)   # (topic, payload)
    media: list[tuple[str, bytes]] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)                    # machines that failed in this step


class Fleet:
    """The machines and the fleet clock. Stepped on one worker thread; repairs wait for the next step."""

    def __init__(self, settings: SimulatorSettings, start_ms: int):
        self.settings = settings
        self.start_ms = start_ms
        self.fleet_seconds = 0.0
        self.next_fault_minute = self._hours_to_minutes(settings.fault_interval_hours)
        self.rng = np.random.default_rng([settings.fleet_seed, 0xF1EE7])
        self.machines: dict[str, Machine] = {}
        for i in range(settings.machines):
            spec = MachineSpec.draw(settings.fleet_seed * 1000 + i, f"pump-{i + 1:02d}")
            rng = np.random.default_rng([settings.fleet_seed, i])
            media_phase = int(rng.integers(0, max(1, self._hours_to_minutes(settings.media_interval_hours))))
            self.machines[spec.machine_id] = Machine(LivePump(spec), 0, machine_character(rng), rng,
                                                     next_media_minute=media_phase)
        self._repairs: list[str] = []
        self._lock = threading.Lock()

    @staticmethod
    def _hours_to_minutes(hours: float) -> int:
        return int(round(hours * 60))

    @property
    def minute(self) -> int:
        return int(self.fleet_seconds // 60)

    def age(self) -> None:
        """Run each machine for its start age (rows discarded), oldest ``max_start_age_hours``."""
        ages = np.linspace(self.settings.max_start_age_hours, 0, len(self.machines)) * 3600
        for machine, age_s in zip(self.machines.values(), self.rng.permutation(ages)):
            while age_s > 0 and not machine.pump.failed:
                machine.pump.advance(min(age_s, AGEING_CHUNK_S))
                age_s -= AGEING_CHUNK_S
            if machine.pump.failed:   # aged past its life: a machine fresh from maintenance instead
                machine.pump.repair()
            machine.shift_minutes = -machine.pump.minute

    def request_repair(self, asset_id: str) -> bool:
        if asset_id not in self.machines:
            return False
        with self._lock:
            self._repairs.append(asset_id)
        return True

    def step(self, real_seconds: float) -> Tick:
        """Advance every machine ``real_seconds * speedup`` simulated seconds; what to publish."""
        self._apply_repairs()
        simulated = real_seconds * self.settings.speedup
        self.fleet_seconds += simulated
        tick = Tick()
        for machine in self.machines.values():
            was_failed = machine.pump.failed
            window = machine.pump.advance(simulated)
            if machine.pump.failed and not was_failed:
                tick.failed.append(machine.asset_id)
            if len(window.timestamps_ms):
                tick.telemetry.append(self._telemetry(machine, window))
            if not machine.pump.failed:
                tick.media += self._media_due(machine)
        self._inject_fault_if_due()
        return tick

    def _apply_repairs(self) -> None:
        with self._lock:
            repairs, self._repairs = self._repairs, []
        for asset_id in repairs:
            machine = self.machines[asset_id]
            machine.pump.repair()
            machine.repairs += 1
            # The pump's own minute stood still while it was down; the fleet's did not.
            machine.shift_minutes = self.minute - machine.pump.minute
            log.info("machine repaired", extra={"asset_id": asset_id, "repairs": machine.repairs})

    def _telemetry(self, machine: Machine, window) -> tuple[str, bytes]:
        pump_minutes = (window.timestamps_ms - EPOCH_MS) // MINUTE_MS
        stamps = self.start_ms + (pump_minutes + machine.shift_minutes) * MINUTE_MS
        keep = stamps > machine.last_timestamp_ms   # the fleet clock rounds: never send a minute twice
        stamps, values = stamps[keep], window.values[keep]
        if len(stamps):
            machine.last_timestamp_ms = int(stamps[-1])
        return (topics.topic(CENTRIFUGAL_PUMP.name, machine.asset_id, topics.TELEMETRY),
                topics.encode_telemetry(CENTRIFUGAL_PUMP.sensors, stamps, values))

    def _media_due(self, machine: Machine) -> list[tuple[str, bytes]]:
        interval = self._hours_to_minutes(self.settings.media_interval_hours)
        if interval <= 0 or self.minute < machine.next_media_minute:
            return []
        machine.next_media_minute = self.minute + interval
        wear = 1.0 - float(np.clip(machine.pump.health, 0.0, 1.0))
        taken_ms = self.start_ms + self.minute * MINUTE_MS
        return [
            (topics.topic(CENTRIFUGAL_PUMP.name, machine.asset_id, topics.INSPECTION),
             topics.encode_media(topics.MediaMessage(taken_ms, "image/png", self._inspection_png(machine, wear)))),
            (topics.topic(CENTRIFUGAL_PUMP.name, machine.asset_id, topics.ACOUSTIC),
             topics.encode_media(topics.MediaMessage(taken_ms, "audio/wav", self._acoustic_wav(machine, wear)))),
        ]

    def _inspection_png(self, machine: Machine, wear: float) -> bytes:
        probability = defect_probability(wear)
        sample = product_image(machine.rng, self.settings.image_size, sample_defects(machine.rng, probability))
        ok, png = cv2.imencode(".png", cv2.cvtColor(sample.image, cv2.COLOR_RGB2BGR))
        assert ok, "PNG encoding of a uint8 image cannot fail"
        return png.tobytes()

    def _acoustic_wav(self, machine: Machine, wear: float) -> bytes:
        severity = bearing_severity(wear)
        clip = machine_sound(machine.rng, self.settings.clip_seconds, self.settings.clip_sample_rate,
                             fault="bearing" if severity > 0 else None, severity=severity, machine=machine.sound)
        out = io.BytesIO()
        soundfile.write(out, clip, self.settings.clip_sample_rate, format="WAV", subtype="PCM_16")
        return out.getvalue()

    def _inject_fault_if_due(self) -> None:
        if self.settings.fault_interval_hours <= 0 or self.minute < self.next_fault_minute:
            return
        self.next_fault_minute = self.minute + self._hours_to_minutes(self.settings.fault_interval_hours)
        running = [m for m in self.machines.values() if not m.pump.failed]
        if running:
            machine = running[int(self.rng.integers(len(running)))]
            kind = str(self.rng.choice(FAULT_KINDS))
            machine.pump.inject_fault(kind, minutes=self.settings.fault_minutes)
            log.info("fault injected", extra={"asset_id": machine.asset_id, "kind": kind,
                                              "minutes": self.settings.fault_minutes})


def defect_probability(wear: float) -> float:
    """A new machine's parts are rarely flawed; a worn one's mostly are."""
    return 0.02 + 0.9 * wear ** 2


def bearing_severity(wear: float) -> float:
    """No bearing fault while wear is under 30%, then rising to full at failure."""
    return float(np.clip((wear - 0.3) / 0.7, 0.0, 1.0))


# -- the fleet clock across restarts -------------------------------------------------------------------

class FleetClock:
    """The latest timestamp published, kept in a file so a restarted simulator starts after it."""

    def __init__(self, data_dir: Path):
        self.path = Path(data_dir) / "fleet-simulator-clock.json"

    def start_ms(self) -> int:
        now = int(time.time() * 1000) // MINUTE_MS * MINUTE_MS
        try:
            last = int(json.loads(self.path.read_text())["last_timestamp_ms"])
        except (FileNotFoundError, ValueError, KeyError, TypeError):
            last = 0
        return max(now, last - last % MINUTE_MS + MINUTE_MS)

    def save(self, last_timestamp_ms: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"last_timestamp_ms": last_timestamp_ms}))
        tmp.replace(self.path)


# -- the workload -------------------------------------------------------------------------------------

class SimulatorMetrics:
    def __init__(self, registry):
        self.published = Counter("modalmesh_fleet_published_messages", "MQTT messages published, by kind",
                                 ["kind"], registry=registry)
        self.not_queued = Counter("modalmesh_fleet_unpublished_messages", "Messages the MQTT client refused "
                                  "(its queue was full while the broker was away), by kind", ["kind"],
                                  registry=registry)
        self.health = Gauge("modalmesh_fleet_machine_health", "ProgPy event state of the nearest failure "
                            "(1 new, 0 failed)", ["asset_id"], registry=registry)
        self.failures = Counter("modalmesh_fleet_failures", "Machines that reached a failure event",
                                registry=registry)
        self.repairs = Counter("modalmesh_fleet_repairs", "Maintenance orders carried out", registry=registry)
        self.simulated_hours = Gauge("modalmesh_fleet_simulated_hours", "Fleet clock since start",
                                     registry=registry)


class FleetSimulator:
    def __init__(self, settings: SimulatorSettings, registry):
        self.settings = settings
        self.metrics = SimulatorMetrics(registry)
        self.clock = FleetClock(settings.data_dir)
        self.fleet: Fleet | None = None
        self.mqtt = None

    async def run(self) -> None:
        self.fleet = Fleet(self.settings, self.clock.start_ms())
        await asyncio.to_thread(self.fleet.age)
        self._connect()
        log.info("fleet running", extra={"machines": len(self.fleet.machines), "speedup": self.settings.speedup})
        try:
            last = time.monotonic()
            while True:
                await asyncio.sleep(max(0.0, last + self.settings.publish_interval_s - time.monotonic()))
                now = time.monotonic()
                tick = await asyncio.to_thread(self.fleet.step, now - last)
                last = now
                self._publish(tick)
        finally:
            self.mqtt.loop_stop()
            self.mqtt.disconnect()

    def _connect(self) -> None:
        s = self.settings
        client = workload_client(s, s.mqtt_client_id, persistent_session=True)
        client.max_queued_messages_set(10_000)   # while the broker is away; past it messages are counted lost
        client.reconnect_delay_set(1, 10)
        client.on_connect = lambda c, u, f, reason, p: (
            c.subscribe(topics.topic_filter(topics.MAINTENANCE), qos=1) if not reason.is_failure else None)
        client.on_message = self._on_maintenance
        client.connect_async(s.mqtt_host, s.mqtt_port, keepalive=30)
        client.loop_start()
        self.mqtt = client

    def _on_maintenance(self, _client, _userdata, message) -> None:
        """On paho's thread: queue the repair for the next step (a bad order is logged, never raised)."""
        try:
            where = topics.parse_topic(message.topic)
            topics.decode_maintenance(message.payload)
        except topics.MalformedMessage as e:
            log.warning("maintenance order ignored", extra={"topic": message.topic, "error": str(e)})
            return
        if self.fleet.request_repair(where.asset_id):
            self.metrics.repairs.inc()
        else:
            log.warning("maintenance order for an unknown machine", extra={"asset_id": where.asset_id})

    def _publish(self, tick: Tick) -> None:
        for topic, payload in tick.telemetry + tick.media:
            kind = topic.rsplit("/", 1)[-1]
            info = self.mqtt.publish(topic, payload, qos=1)
            if info.rc == 0:
                self.metrics.published.labels(kind).inc()
            else:
                self.metrics.not_queued.labels(kind).inc()
        for asset_id in tick.failed:
            self.metrics.failures.inc()
            log.info("machine failed", extra={"asset_id": asset_id,
                                              "event": self.fleet.machines[asset_id].pump.failure_event})
        for machine in self.fleet.machines.values():
            self.metrics.health.labels(machine.asset_id).set(machine.pump.health)
        self.metrics.simulated_hours.set(self.fleet.fleet_seconds / 3600)
        last = max(m.last_timestamp_ms for m in self.fleet.machines.values())
        if last:
            self.clock.save(last)


def build(runtime):
    from services.runtime.server import Service

    return Service(models=[], tasks=[FleetSimulator(runtime.settings, runtime.metrics.registry).run])


def main() -> None:
    # gRPC is imported only now, after prepare_process (services/runtime/bootstrap.py) ran.
    from services.runtime.server import run_service

    run_service(SimulatorSettings, build)


if __name__ == "__main__":
    from services.runtime.bootstrap import prepare_process

    prepare_process()
    main()
