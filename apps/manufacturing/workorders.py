"""Maintenance work orders: when one opens (the rules) and its life (open → scheduled → done, or cancelled).

An asset has at most one active (open or scheduled) order per reason; the database enforces it with
a partial unique index, so two writers racing to open the same order end with one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from apps.twins import now_ms, reading

OPEN, SCHEDULED, DONE, CANCELLED = "open", "scheduled", "done", "cancelled"
STATES = (OPEN, SCHEDULED, DONE, CANCELLED)
ACTIVE = (OPEN, SCHEDULED)
# Which state each action may start from.
TRANSITIONS = {SCHEDULED: (OPEN, SCHEDULED), DONE: (OPEN, SCHEDULED), CANCELLED: (OPEN, SCHEDULED)}

REMAINING_LIFE, ANOMALY = "remaining-life", "anomaly"
REASONS = (REMAINING_LIFE, ANOMALY)

metadata = sa.MetaData()

work_orders = sa.Table(
    "work_orders", metadata,
    sa.Column("order_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("asset_id", sa.String(128), nullable=False),
    sa.Column("reason", sa.String(32), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    # What the rule saw when it opened the order, e.g. the remaining life and the threshold.
    sa.Column("detail", sa.JSON, nullable=False),
    sa.Column("opened_ms", sa.BigInteger, nullable=False),
    sa.Column("updated_ms", sa.BigInteger, nullable=False),
    sa.Column("window_start_ms", sa.BigInteger),
    sa.Column("window_end_ms", sa.BigInteger),
    sa.Column("closed_ms", sa.BigInteger),
    sa.CheckConstraint(f"state IN {STATES}", name="work_order_state"),
)
_active = work_orders.c.state.in_(ACTIVE)
sa.Index("one_active_order_per_reason", work_orders.c.asset_id, work_orders.c.reason, unique=True,
         sqlite_where=_active, postgresql_where=_active)


class WorkOrderError(Exception):
    pass


class WorkOrderNotFound(WorkOrderError, LookupError):
    pass


class InvalidTransition(WorkOrderError):
    """The action does not apply to the order's state (e.g. completing a cancelled order)."""


@dataclass(frozen=True)
class WorkOrder:
    order_id: int
    asset_id: str
    reason: str
    state: str
    detail: dict[str, Any]
    opened_ms: int
    updated_ms: int
    window_start_ms: int | None
    window_end_ms: int | None
    closed_ms: int | None

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class MaintenanceRules:
    """When an asset needs maintenance: little remaining life, or an anomaly that persists."""

    remaining_life_threshold_cycles: float
    anomaly_persistence_windows: int   # consecutive anomalous windows, the latest included

    def reasons(self, remaining_life_cycles: float | None, window_flags: list[bool]) -> dict[str, dict]:
        """Reasons to open an order, each with what the rule saw; ``window_flags`` is oldest first."""
        reasons = {}
        if remaining_life_cycles is not None and remaining_life_cycles < self.remaining_life_threshold_cycles:
            reasons[REMAINING_LIFE] = {"remaining_life_cycles": round(remaining_life_cycles, 1),
                                       "threshold_cycles": self.remaining_life_threshold_cycles}
        persistence = consecutive_from_latest(window_flags)
        if persistence >= self.anomaly_persistence_windows:
            reasons[ANOMALY] = {"consecutive_windows": persistence,
                                "threshold_windows": self.anomaly_persistence_windows}
        return reasons


def consecutive_from_latest(flags: list[bool]) -> int:
    count = 0
    for flag in reversed(flags):
        if not flag:
            break
        count += 1
    return count


class WorkOrderBook:
    def __init__(self, engine: Engine):
        self.engine = engine

    def create_schema(self) -> None:
        metadata.create_all(self.engine)

    def open(self, asset_id: str, reason: str, detail: dict) -> tuple[WorkOrder, bool]:
        """Open an order, or return the active one for this asset and reason; True when it is new."""
        if reason not in REASONS:
            raise ValueError(f"reason must be one of {REASONS}")
        existing = self.active_order(asset_id, reason)
        if existing:
            return existing, False
        at = now_ms()
        try:
            with self.engine.begin() as conn:
                order_id = conn.execute(work_orders.insert().values(
                    asset_id=asset_id, reason=reason, state=OPEN, detail=detail, opened_ms=at, updated_ms=at,
                ).returning(work_orders.c.order_id)).scalar_one()
        except sa.exc.IntegrityError:   # another writer opened it first
            return self.active_order(asset_id, reason), False
        return self.get(order_id), True

    def get(self, order_id: int) -> WorkOrder:
        with reading(self.engine) as conn:
            row = conn.execute(sa.select(work_orders).where(work_orders.c.order_id == order_id)).first()
        if row is None:
            raise WorkOrderNotFound(f"no work order {order_id}")
        return WorkOrder(**row._mapping)

    def active_order(self, asset_id: str, reason: str) -> WorkOrder | None:
        orders = self.list(asset_id=asset_id, states=ACTIVE)
        return next((o for o in orders if o.reason == reason), None)

    def list(self, *, asset_id: str | None = None, states: tuple[str, ...] | None = None,
             limit: int = 500) -> list[WorkOrder]:
        c = work_orders.c
        query = sa.select(work_orders).order_by(c.order_id.desc()).limit(limit)
        if asset_id is not None:
            query = query.where(c.asset_id == asset_id)
        if states is not None:
            query = query.where(c.state.in_(states))
        with reading(self.engine) as conn:
            return [WorkOrder(**row._mapping) for row in conn.execute(query)]

    def schedule(self, order_id: int, window_start_ms: int, window_end_ms: int) -> WorkOrder:
        if not 0 < window_start_ms < window_end_ms:
            raise ValueError("a maintenance window starts before it ends")
        return self._move(order_id, SCHEDULED, window_start_ms=window_start_ms, window_end_ms=window_end_ms)

    def complete(self, order_id: int) -> WorkOrder:
        return self._move(order_id, DONE, closed_ms=now_ms())

    def cancel(self, order_id: int) -> WorkOrder:
        return self._move(order_id, CANCELLED, closed_ms=now_ms())

    def check(self, order_id: int, state: str) -> WorkOrder:
        """The order, if it may move to ``state`` now; InvalidTransition otherwise."""
        order = self.get(order_id)
        if order.state not in TRANSITIONS[state]:
            raise InvalidTransition(f"work order {order_id} is {order.state}; it cannot become {state}")
        return order

    def _move(self, order_id: int, state: str, **values) -> WorkOrder:
        c = work_orders.c
        with self.engine.begin() as conn:
            moved = conn.execute(work_orders.update()
                                 .where(c.order_id == order_id, c.state.in_(TRANSITIONS[state]))
                                 .values(state=state, updated_ms=now_ms(), **values))
        if moved.rowcount != 1:
            self.check(order_id, state)   # says why: unknown order or wrong state
            raise InvalidTransition(f"work order {order_id} changed meanwhile")
        return self.get(order_id)
