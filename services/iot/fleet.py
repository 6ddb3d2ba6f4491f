"""Centrifugal pumps simulated to failure with NASA ProgPy's `CentrifugalPumpWithWear`.

Each machine (`MachineSpec`) has its own duty cycle (speed set points held for hours, with the
supply voltage and header pressures that go with them), ambient temperature (daily swing plus
weather), wear rates, initial wear and sensor noise. ProgPy's model gives the physics: impeller
area lost to wear, bearing friction that grows with use, bearing and oil temperatures, and the four
failure events (ImpellerWearFailure, ThrustBearingOverheat, RadialBearingOverheat,
PumpOilOverheat) that end a machine's life and label its telemetry.

Time scales: the shaft speed and the flow settle in seconds, the temperatures in minutes, the wear
in hundreds of hours. Stepping ProgPy's explicit Euler update at the 2 s the fast states need
would take millions of steps per machine, so each simulated minute takes two updates of the same
ProgPy model side by side: one of 2 s for speed and flow (already near their equilibrium, it keeps
them there) and one of 60 s for the temperatures and the wear. After a set-point change the fast
states are first relaxed with 15 steps of 2 s. Machines of a fleet run side by side as one
vectorised ProgPy state, so a fleet of dozens costs little more than one machine.

Telemetry is one row per simulated minute in `CENTRIFUGAL_PUMP.sensors` order; one remaining-life
cycle is one operating hour. Faults for the anomaly model are injected into the measured rows
(`inject_fault`), each with the rows it affects.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from services.iot.asset_types import CENTRIFUGAL_PUMP, TelemetryWindow

NOMINAL_SPEED = 376.991118431          # rad/s: 3600 rpm, ProgPy's initial speed
VOLTS_PER_SYNC_SPEED = 1 / 0.8         # ProgPy's pump example drives wsync = 0.8 V
NEW_IMPELLER_AREA = 12.7084            # ProgPy's x0['A']
NEW_THRUST_FRICTION = 1.4e-6           # ProgPy's x0['rThrust']
NEW_RADIAL_FRICTION = 1.8e-6           # ProgPy's x0['rRadial']
EPOCH_MS = 1_767_225_600_000           # 2026-01-01T00:00:00Z: when every simulated machine starts
MINUTE_MS = 60_000
HORIZON_HOURS = 4000.0                 # a machine that outlives this is a bad draw (never happens by design)

# Wear rates that end a machine's life after about 1000 h at full speed, 295 K ambient, from new:
# found by simulating each failure mode alone (see scripts/train_iot_models.py --calibrate).
IMPELLER_RATE_1000H = 8.9e-5
THRUST_RATE_1000H = 1.08e-12
RADIAL_RATE_1000H = 1.8e-12

FAST_DT_S = 2.0        # the largest Euler step at which ProgPy's speed and flow states stay stable
SLOW_DT_S = 60.0       # one row
RELAX_STEPS = 15       # 30 s of fast dynamics after a set-point change
FAST_EVERY_MINUTES = 10  # between set-point changes speed and flow drift only with wear
BLOCK_MINUTES = 1440   # operating conditions are drawn a day at a time

FAULT_KINDS = ("bearing_overheat", "cavitation", "sensor_stuck", "sensor_spikes", "sensor_drift",
               "speed_oscillation")
SENSOR = {name: i for i, name in enumerate(CENTRIFUGAL_PUMP.sensors)}


@dataclass(frozen=True)
class MachineSpec:
    """One pump: how it is run, where it stands, how fast it wears and how its sensors read."""

    machine_id: str
    seed: int
    speed_levels: tuple[float, ...]        # fractions of 3600 rpm its duty cycle switches between
    segment_hours: tuple[float, float]     # shortest and longest stretch at one set point
    suction_pa: float
    discharge_pa: float
    ambient_mean_k: float
    ambient_daily_swing_k: float           # half the day-night difference
    wear_impeller: float                   # ProgPy wA
    wear_thrust: float                     # ProgPy wThrust
    wear_radial: float                     # ProgPy wRadial
    impeller_area: float                   # initial wear: ProgPy A, rThrust, rRadial at start
    thrust_friction: float
    radial_friction: float
    noise: tuple[float, ...]               # measurement noise, one standard deviation per sensor

    @classmethod
    def draw(cls, seed: int, machine_id: str | None = None) -> "MachineSpec":
        """A random machine; the same seed always gives the same machine."""
        rng = np.random.default_rng([seed, 0x5EED])
        life_scale = math.exp(rng.uniform(math.log(0.6), math.log(3.0)))   # ~1000 h / life
        # One failure mode leads; the others wear at a random fraction of their own pace.
        pace = rng.uniform(0.2, 0.85, size=3)
        pace[rng.integers(3)] = 1.0
        levels = np.round(np.sort(rng.choice([0.88, 0.91, 0.94, 0.97, 1.0], size=rng.integers(2, 4),
                                             replace=False)), 2)
        ambient = rng.uniform(285.0, 303.0)
        base_noise = np.array([0.3, 0.0006, 0.15, 0.15, 0.1, 1500.0, 3000.0, 0.1, 0.4])
        return cls(
            machine_id=machine_id or f"pump-{seed}",
            seed=seed,
            speed_levels=tuple(float(v) for v in levels),
            segment_hours=(float(rng.uniform(3, 6)), float(rng.uniform(8, 16))),
            suction_pa=float(rng.uniform(0.92, 1.08) * 239179.0),
            discharge_pa=float(rng.uniform(0.95, 1.05) * 928654.0),
            ambient_mean_k=float(ambient),
            ambient_daily_swing_k=float(rng.uniform(1.0, 6.0)),
            wear_impeller=float(IMPELLER_RATE_1000H * life_scale * pace[0]),
            wear_thrust=float(THRUST_RATE_1000H * life_scale * pace[1]),
            wear_radial=float(RADIAL_RATE_1000H * life_scale * pace[2]),
            impeller_area=float(NEW_IMPELLER_AREA * (1 - rng.uniform(0.0, 0.04))),
            thrust_friction=float(NEW_THRUST_FRICTION * rng.uniform(1.0, 1.08)),
            radial_friction=float(NEW_RADIAL_FRICTION * rng.uniform(1.0, 1.08)),
            noise=tuple(float(v) for v in base_noise * rng.uniform(0.6, 1.8, size=base_noise.size)),
        )


@dataclass
class Trajectory:
    """One machine run to failure: a row per simulated minute and the label of every row."""

    spec: MachineSpec
    timestamps_ms: np.ndarray      # int64 [rows]
    values: np.ndarray             # float32 [rows, sensors], measured (with noise)
    failure_event: str             # the ProgPy event that ended its life
    life_cycles: float             # operating hours until that event
    rul_cycles: np.ndarray         # float32 [rows]: cycles from each row to the failure

    def window(self, end_row: int, rows: int) -> TelemetryWindow:
        """The `rows` rows that end just before `end_row`."""
        start = end_row - rows
        if start < 0:
            raise ValueError(f"window of {rows} rows ending at row {end_row} starts before the first row")
        return TelemetryWindow(self.timestamps_ms[start:end_row], self.values[start:end_row])


# -- operating conditions ---------------------------------------------------------------------------

class OperatingConditions:
    """A machine's inputs minute by minute: duty-cycle set points, header pressures, ambient temperature.

    Set points change on whole hours, so the machines of a fleet that change in the same minute
    settle together."""

    def __init__(self, spec: MachineSpec):
        self.spec = spec
        self._rng = np.random.default_rng([spec.seed, 0xD07])
        weather = np.random.default_rng([spec.seed, 0xAE7])
        self._weather = [(weather.uniform(0.5, 2.5), weather.uniform(48, 240), weather.uniform(0, 2 * math.pi))
                         for _ in range(3)]
        self._phase = weather.uniform(-1.0, 1.0)
        self._segments: list[tuple[int, float, float, float]] = []   # (first minute, speed, psuc, pdisch)
        self._covered = 0

    def block(self, first: int, minutes: int) -> np.ndarray:
        """Inputs for minutes [first, first+minutes): rows speed fraction, suction Pa, discharge Pa,
        ambient K, set point changed (1.0 on the first minute of a segment)."""
        while self._covered < first + minutes:
            lo, hi = self.spec.segment_hours
            speed = float(self._rng.choice(self.spec.speed_levels))
            psuc = self.spec.suction_pa * float(self._rng.uniform(0.98, 1.02))
            pdisch = self.spec.discharge_pa * float(self._rng.uniform(0.98, 1.02))
            self._segments.append((self._covered, speed, psuc, pdisch))
            self._covered += 60 * int(self._rng.integers(round(lo), round(hi) + 1))
        self._segments = [s for i, s in enumerate(self._segments)
                          if i + 1 == len(self._segments) or self._segments[i + 1][0] > first]
        minute = np.arange(first, first + minutes)
        starts = np.array([s[0] for s in self._segments])
        which = np.searchsorted(starts, minute, side="right") - 1
        table = np.array([s[1:] for s in self._segments])[which]
        changed = (minute == starts[which]).astype(np.float64)
        return np.stack([table[:, 0], table[:, 1], table[:, 2], self.ambient(minute), changed])

    def ambient(self, minute: np.ndarray) -> np.ndarray:
        hours = minute / 60.0
        temp = self.spec.ambient_mean_k + self.spec.ambient_daily_swing_k * np.sin(
            2 * math.pi * (hours - 9.0) / 24.0 + self._phase)
        for amplitude, period, phase in self._weather:
            temp = temp + amplitude * np.sin(2 * math.pi * hours / period + phase)
        return temp


# -- physics --------------------------------------------------------------------------------------

class _PerMachineRows(np.ndarray):
    """ProgPy 1.9's pump builds its leak flow as len(A) copies of the whole leak vector when the
    state rows are plain numpy arrays and the pressures differ per machine; rows of this subclass
    take its other (element-wise) branch, which is right for vectors."""


class PumpPhysics:
    """Several pumps stepped side by side, one simulated minute per `step`."""

    def __init__(self, specs: list[MachineSpec]):
        from progpy.models import CentrifugalPumpWithWear

        self.specs = list(specs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")   # its notice that wear rates live in the state, as used here
            self.model = CentrifugalPumpWithWear()
        self.conditions = [OperatingConditions(s) for s in self.specs]
        self.minute = 0
        n = len(self.specs)
        start = {key: np.zeros(n) for key in self.model.states}
        start["w"][:] = NOMINAL_SPEED * 0.98
        for key in ("Tt", "Tr", "To"):
            start[key][:] = [s.ambient_mean_k for s in self.specs]
        start["A"][:] = [s.impeller_area for s in self.specs]
        start["rThrust"][:] = [s.thrust_friction for s in self.specs]
        start["rRadial"][:] = [s.radial_friction for s in self.specs]
        start["wA"][:] = [s.wear_impeller for s in self.specs]
        start["wThrust"][:] = [s.wear_thrust for s in self.specs]
        start["wRadial"][:] = [s.wear_radial for s in self.specs]
        self.state = np.stack([start[k] for k in self.model.states])
        self._row = {k: i for i, k in enumerate(self.model.states)}
        self._input = {k: i for i, k in enumerate(self.model.inputs)}
        self._fast = [self._row[k] for k in ("w", "Q", "QLeak")]
        self._inputs = np.zeros((len(self.model.inputs), n))
        self._block = np.zeros((5, 0, n))
        self._block_start = 0
        # Bring the pumps to their first operating point and the temperatures near equilibrium.
        self._set_inputs()
        self._relax(np.arange(n), steps=60)
        for _ in range(90):
            self._advance_minute()
        # ProgPy's thermal event states count from 290 K, so a new pump already reads about 0.5:
        # health is each event state relative to where this machine started.
        self._health_start = self._event_states()

    def step(self) -> tuple[np.ndarray, list[str | None]]:
        """One simulated minute: the true readings [machines, sensors] and the event each machine met, if any."""
        changed = self._set_inputs()
        if changed.any():
            self._relax(np.flatnonzero(changed), RELAX_STEPS)
        self._advance_minute()
        self.minute += 1
        return self.readings(), self.events_met()

    def readings(self) -> np.ndarray:
        # ProgPy's output equations (Qout = max(0, Q - QLeak); the rest are states) read straight
        # from the state rows: building its containers every minute would cost more than the physics.
        x, u = self._row, self._inputs
        return np.stack([self.state[x["w"]], np.maximum(0.0, self.state[x["Q"]] - self.state[x["QLeak"]]),
                         self.state[x["Tt"]], self.state[x["Tr"]], self.state[x["To"]],
                         u[self._input["psuc"]], u[self._input["pdisch"]], u[self._input["Tamb"]],
                         u[self._input["V"]]], axis=1)

    def events_met(self) -> list[str | None]:
        """ProgPy's failure thresholds (its `lim` parameters): the first event each machine met, if any."""
        lim, x = self.model.parameters["lim"], self._row
        met = {"ImpellerWearFailure": self.state[x["A"]] <= lim["A"],
               "ThrustBearingOverheat": self.state[x["Tt"]] >= lim["Tt"],
               "RadialBearingOverheat": self.state[x["Tr"]] >= lim["Tr"],
               "PumpOilOverheat": self.state[x["To"]] >= lim["To"]}
        events: list[str | None] = [None] * len(self.specs)
        for name in self.model.events:
            for i in np.flatnonzero(met[name]):
                events[i] = events[i] or name
        return events

    def retain(self, keep: np.ndarray) -> None:
        """Drops the machines not in `keep` (a boolean mask): a failed machine costs nothing more."""
        self.specs = [s for s, k in zip(self.specs, keep) if k]
        self.conditions = [c for c, k in zip(self.conditions, keep) if k]
        self.state, self._inputs, self._block = self.state[:, keep], self._inputs[:, keep], self._block[:, :, keep]
        self._health_start = self._health_start[:, keep]

    def health(self) -> np.ndarray:
        """Per machine, ProgPy's event state of the nearest failure relative to its start: 1 new, 0 failed.
        Bearing and oil margins also move with load and ambient temperature."""
        return np.clip(np.min(self._event_states() / self._health_start, axis=0), 0.0, 1.0)

    def _event_states(self) -> np.ndarray:
        es = self.model.event_state(self.model.StateContainer(self.state))
        return np.stack([np.atleast_1d(es[e]) for e in self.model.events])

    def renew(self, i: int) -> None:
        """Maintenance: a new impeller, new bearings and fresh oil on machine i, cooled to its ambient as
        at start; its wear rates stay its own. (Left at their failure temperatures, the bearings or the
        oil would meet their overheat limit again in the first minute after the repair.)"""
        self.state[self._row["A"], i] = NEW_IMPELLER_AREA
        self.state[self._row["rThrust"], i] = NEW_THRUST_FRICTION
        self.state[self._row["rRadial"], i] = NEW_RADIAL_FRICTION
        for key in ("Tt", "Tr", "To"):
            self.state[self._row[key], i] = self.specs[i].ambient_mean_k

    # -- internals --

    def _set_inputs(self) -> np.ndarray:
        offset = self.minute - self._block_start
        if offset >= self._block.shape[1]:
            self._block = np.stack([c.block(self.minute, BLOCK_MINUTES) for c in self.conditions], axis=2)
            self._block_start, offset = self.minute, 0
        speed, psuc, pdisch, tamb, changed = self._block[:, offset]
        wsync = NOMINAL_SPEED * speed
        by_name = {"Tamb": tamb, "V": wsync * VOLTS_PER_SYNC_SPEED, "pdisch": pdisch, "psuc": psuc, "wsync": wsync}
        self._inputs = np.stack([by_name[k] for k in self.model.inputs])
        return changed > 0

    def _next(self, state: np.ndarray, inputs: np.ndarray, dt) -> np.ndarray:
        x = self.model.StateContainer(state.view(_PerMachineRows))
        u = self.model.InputContainer(inputs)
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            return np.asarray(self.model.next_state(x, u, dt).matrix, dtype=float)

    def _advance_minute(self) -> None:
        n = len(self.specs)
        if self.minute % FAST_EVERY_MINUTES:
            # Speed and flow sit at their equilibrium, which only the slow wear moves: hold them.
            slow = self._next(self.state, self._inputs, SLOW_DT_S)
            slow[self._fast] = self.state[self._fast]
        else:
            # One call for both time scales: the first copy of the machines steps 2 s, the second 60 s.
            dt = np.concatenate([np.full(n, FAST_DT_S), np.full(n, SLOW_DT_S)])
            both = self._next(np.hstack([self.state, self.state]), np.hstack([self._inputs, self._inputs]), dt)
            fast, slow = both[:, :n], both[:, n:]
            slow[self._fast] = fast[self._fast]
        self.state = slow

    def _relax(self, machines: np.ndarray, steps: int) -> None:
        sub, inputs = self.state[:, machines], self._inputs[:, machines]
        for _ in range(steps):
            stepped = self._next(sub, inputs, FAST_DT_S)
            sub[self._fast] = stepped[self._fast]
        self.state[:, machines] = sub


# -- runs to failure --------------------------------------------------------------------------------

def simulate_fleet(specs: list[MachineSpec]) -> list[Trajectory]:
    """Runs every machine to its first failure event, side by side."""
    physics = PumpPhysics(specs)
    alive = list(range(len(specs)))                # physics column -> spec index
    rows: list[list[np.ndarray]] = [[] for _ in specs]
    ends: list[tuple[int, str] | None] = [None] * len(specs)
    while alive:
        if physics.minute >= HORIZON_HOURS * 60:
            raise RuntimeError(f"{[specs[i].machine_id for i in alive]} did not fail within "
                               f"{HORIZON_HOURS:.0f} h: wear rates too low")
        readings, events = physics.step()
        readings = readings.astype(np.float32)
        for column, i in enumerate(alive):
            rows[i].append(readings[column])
        failed = np.array([e is not None for e in events])
        if failed.any():
            for column in np.flatnonzero(failed):
                ends[alive[column]] = (physics.minute, events[column])
            alive = [i for i, f in zip(alive, failed) if not f]
            physics.retain(~failed)
    return [_trajectory(spec, np.stack(history), *end) for spec, history, end in zip(specs, rows, ends)]


def run_to_failure(spec: MachineSpec) -> Trajectory:
    return simulate_fleet([spec])[0]


def _trajectory(spec: MachineSpec, true_rows: np.ndarray, end_minute: int, event: str) -> Trajectory:
    # Rows before the minute the event was met; the row at that minute is the failure itself.
    true_rows = true_rows[:end_minute - 1]
    minutes = np.arange(len(true_rows))
    noise_rng = np.random.default_rng([spec.seed, 0x5E45])
    measured = measure(true_rows, spec, noise_rng)
    return Trajectory(spec=spec, timestamps_ms=EPOCH_MS + minutes.astype(np.int64) * MINUTE_MS,
                      values=measured, failure_event=event, life_cycles=end_minute / 60.0,
                      rul_cycles=((end_minute - minutes) / 60.0).astype(np.float32))


def measure(true_rows: np.ndarray, spec: MachineSpec, rng: np.random.Generator) -> np.ndarray:
    """What the sensors read: the true values plus each sensor's Gaussian noise."""
    noise = rng.standard_normal(true_rows.shape) * np.asarray(spec.noise)
    return (true_rows + noise).astype(np.float32)


# -- faults ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Fault:
    """A sensor-level signature of a real pump fault, with its size drawn once.

    Lubrication loss heats a bearing in minutes (not over the weeks wear takes), cavitation drops
    and roughens the flow, a loose coupling or imbalance makes the speed oscillate, and sensors
    stick, spike or drift. Sizes are in units of the machine's own sensor noise where that is what
    makes them visible; `severity` 1.0 is the size the anomaly model is judged on.
    """

    kind: str
    sensor: int               # the sensor the fault shows on first
    size: float               # K/min, flow fraction, or multiples of the sensor's noise
    period_min: float = 0.0   # speed oscillation
    phase: float = 0.0
    sign: float = 1.0

    @classmethod
    def draw(cls, kind: str, rng: np.random.Generator, sensor: str | None = None,
             severity: float = 1.0) -> "Fault":
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {', '.join(FAULT_KINDS)}")
        if sensor is not None and sensor not in SENSOR:
            raise ValueError(f"unknown sensor {sensor!r}; one of {', '.join(SENSOR)}")
        sign = float(rng.choice([-1.0, 1.0]))
        if kind == "bearing_overheat":
            bearing = sensor or str(rng.choice(["thrust_bearing_temp", "radial_bearing_temp"]))
            if bearing not in ("thrust_bearing_temp", "radial_bearing_temp"):
                raise ValueError(f"bearing_overheat shows on a bearing temperature, not {bearing!r}")
            return cls(kind, SENSOR[bearing], severity * rng.uniform(0.4, 1.0))
        if kind == "cavitation":
            return cls(kind, SENSOR["flow"], severity * rng.uniform(0.1, 0.25))
        if kind == "speed_oscillation":
            return cls(kind, SENSOR["speed"], severity * rng.uniform(6, 12), rng.uniform(3, 8),
                       rng.uniform(0, 2 * math.pi))
        index = SENSOR[sensor] if sensor else int(rng.integers(len(SENSOR)))
        size = {"sensor_stuck": 0.0, "sensor_spikes": rng.uniform(12, 25), "sensor_drift": rng.uniform(0.3, 0.6)}
        return cls(kind, index, severity * size[kind], sign=sign)

    def apply(self, values: np.ndarray, minutes: np.ndarray, rng: np.random.Generator,
              noise: np.ndarray, stuck_at: float | None = None) -> None:
        """Changes `values` (rows of one machine, in place); `minutes` is each row's time since onset."""
        t = minutes.astype(np.float64)
        n = len(values)
        if self.kind == "bearing_overheat":
            values[:, self.sensor] += self.size * t
            values[:, SENSOR["oil_temp"]] += 0.15 * self.size * t
        elif self.kind == "cavitation":
            flow = values[:, self.sensor].copy()
            values[:, self.sensor] = flow * (1 - self.size) + rng.standard_normal(n) * np.abs(flow) * 0.03
            values[:, SENSOR["speed"]] += rng.standard_normal(n) * noise[SENSOR["speed"]] * 4
        elif self.kind == "speed_oscillation":
            values[:, self.sensor] += self.size * noise[self.sensor] * np.sin(
                2 * math.pi * t / self.period_min + self.phase)
        elif self.kind == "sensor_stuck":
            values[:, self.sensor] = values[0, self.sensor] if stuck_at is None else stuck_at
        elif self.kind == "sensor_spikes":
            hits = rng.random(n) < 0.15
            values[hits, self.sensor] += (rng.choice([-1, 1], hits.sum()) * noise[self.sensor] * self.size
                                          * rng.uniform(0.8, 1.2, hits.sum()))
        elif self.kind == "sensor_drift":
            values[:, self.sensor] += self.sign * self.size * noise[self.sensor] * t


def inject_fault(values: np.ndarray, kind: str, start: int, length: int, rng: np.random.Generator,
                 spec: MachineSpec, sensor: str | None = None, severity: float = 1.0) -> np.ndarray:
    """Writes a fault into rows [start, start+length) of one machine's `values` (in place); returns
    the mask of faulty rows. A stuck sensor holds the reading of the row before the fault."""
    fault = Fault.draw(kind, rng, sensor, severity)
    end = min(start + length, len(values))
    stuck_at = float(values[start - 1, fault.sensor]) if start > 0 else None
    segment = values[start:end]
    fault.apply(segment, np.arange(end - start), rng, np.asarray(spec.noise), stuck_at)
    values[start:end] = segment
    mask = np.zeros(len(values), dtype=bool)
    mask[start:end] = True
    return mask


# -- live stepping for the app's simulator --------------------------------------------------------------

@dataclass
class _ActiveFault:
    fault: Fault
    start_minute: int
    minutes: int
    stuck_at: float | None = None


class LivePump:
    """One pump stepped in accelerated time: `advance(seconds)` returns the rows those simulated seconds produce."""

    def __init__(self, spec: MachineSpec):
        self.spec = spec
        self._physics = PumpPhysics([spec])
        self._rng = np.random.default_rng([spec.seed, 0x11FE])
        self._pending_seconds = 0.0
        self._faults: list[_ActiveFault] = []
        self._last_row: np.ndarray | None = None
        self.failure_event: str | None = None

    @property
    def failed(self) -> bool:
        return self.failure_event is not None

    @property
    def health(self) -> float:
        """0 when failed; otherwise ProgPy's event state of the nearest failure (1: new)."""
        return 0.0 if self.failed else float(self._physics.health()[0])

    @property
    def minute(self) -> int:
        """Simulated minutes since the machine started."""
        return self._physics.minute

    @property
    def faulty(self) -> bool:
        """Whether a fault is active at the latest row."""
        return any(f.start_minute <= self.minute < f.start_minute + f.minutes for f in self._faults)

    def advance(self, seconds: float) -> TelemetryWindow:
        """Rows for each whole simulated minute in `seconds` (the rest carries over). A failed pump is
        stopped and sends nothing until `repair()`."""
        self._pending_seconds += seconds
        minutes = int(self._pending_seconds // 60)
        self._pending_seconds -= minutes * 60
        stamps, rows = [], []
        for _ in range(0 if self.failed else minutes):
            readings, events = self._physics.step()
            if events[0]:
                self.failure_event = events[0]
                break
            row = measure(readings, self.spec, self._rng)
            self._apply_faults(row)
            self._last_row = row[0]
            stamps.append(EPOCH_MS + self.minute * MINUTE_MS)
            rows.append(row[0])
        values = np.array(rows, dtype=np.float32).reshape(-1, len(CENTRIFUGAL_PUMP.sensors))
        return TelemetryWindow(np.array(stamps, dtype=np.int64), values)

    def inject_fault(self, kind: str, minutes: int = 60, sensor: str | None = None, severity: float = 1.0) -> Fault:
        """Starts a fault (one of FAULT_KINDS) at the next row, lasting `minutes` simulated minutes."""
        if minutes < 1:
            raise ValueError(f"a fault lasts at least one minute, not {minutes}")
        fault = Fault.draw(kind, self._rng, sensor, severity)
        stuck_at = float(self._last_row[fault.sensor]) if self._last_row is not None else None
        self._faults.append(_ActiveFault(fault, self.minute + 1, minutes, stuck_at))
        return fault

    def repair(self) -> None:
        """Maintenance: new parts cooled to ambient, faults cleared, the pump restarted."""
        self._physics.renew(0)
        self._faults.clear()
        self.failure_event = None

    def _apply_faults(self, row: np.ndarray) -> None:
        for active in self._faults:
            since = self.minute - active.start_minute
            if 0 <= since < active.minutes:
                if active.fault.kind == "sensor_stuck" and active.stuck_at is None:
                    active.stuck_at = float(row[0, active.fault.sensor])     # stuck from its first reading
                active.fault.apply(row, np.array([since]), self._rng, np.asarray(self.spec.noise), active.stuck_at)
        self._faults = [f for f in self._faults if self.minute < f.start_minute + f.minutes]
