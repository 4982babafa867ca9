"""The route client: the latest routing table per model group, for gateways.

It follows ``decision.route`` on the DECISIONS stream (``Bus.follow``: no
consumer group, every gateway sees every table) and keeps the highest version
per (tenant, model group) in memory. No litellm, no processor imports::

    async with RouteClient(bus, tenant="acme") as routes:
        await routes.ready()                       # caught up with the stream
        pick = routes.choose("gpt-4o", key=user_id)
        if pick is None: ...                       # nothing healthy: fail fast
        for candidate in routes.fallbacks("gpt-4o", key=user_id): ...

``choose`` is stable per key: the same key gets the same deployment while the
table stays the same, and when weights change only the keys whose share moved
change deployment (weighted rendezvous hashing). For ``weighted`` tables the
weights are shares of traffic; they sum to less than 1 only when every
deployment is throttled (429s, half-open), and the keys of the shortfall get
None (shed). For ordered strategies (cheapest, lowest_latency, fallback) a
candidate takes a key with probability equal to its weight (1 when healthy,
less under 429 pressure or while half-open) and passes the rest down the
list; a key every candidate declines gets None. When every candidate is
open, the one whose ``open_until`` passed first gets the key as a probe (so a
single-deployment group recovers); before that, ``choose`` returns None.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Self

from schemas.envelope import RouteDecisionEvent
from schemas.payloads.decisions import RouteCandidate, RouteDecision
from streams.bus import Bus, Record

log = logging.getLogger("spine.streams.routes")

_ORDERED = ("cheapest", "lowest_latency", "fallback")
_FULL = 0.999  # weights are rounded to 4 places: a sum this close to 1 is everything


@dataclass(frozen=True, slots=True)
class RouteTable:
    """One table as the client holds it."""

    tenant: str
    decision: RouteDecision
    seq: int  # DECISIONS stream sequence it came from
    received: float  # time.monotonic() when it arrived (for latency measurements)

    @property
    def version(self) -> int:
        return self.decision.version


def unit(key: str, deployment: str) -> float:
    """A stable pseudo-random number in (0, 1) for ``key`` on ``deployment`` (same in every process)."""
    digest = hashlib.blake2b(f"{key}\x00{deployment}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def choose(decision: RouteDecision, key: str, now: datetime | None = None) -> RouteCandidate | None:
    """The candidate of ``decision`` for ``key`` (see the module docstring); None if nothing may take it."""
    live = [c for c in decision.candidates if c.weight > 0]
    if live:
        if decision.strategy in _ORDERED:
            for candidate in live:
                if candidate.weight >= 1 or unit(key, candidate.deployment) < candidate.weight:
                    return candidate
            return None  # every candidate is throttled and declined this key
        if sum(c.weight for c in live) < _FULL and unit(key, "\x00shed") >= sum(c.weight for c in live):
            return None  # every deployment is throttled: this key is part of the shortfall
        # weighted rendezvous: the highest w / -ln(u) wins, so shares follow the weights
        return max(live, key=lambda c: (c.weight / -math.log(unit(key, c.deployment)), c.deployment))
    return probe(decision, now)


def probe(decision: RouteDecision, now: datetime | None) -> RouteCandidate | None:
    """The open candidate whose cooldown ended first, if it has ended by ``now``."""
    due = [c for c in decision.candidates if c.breaker == "open" and c.open_until is not None]
    if not due or now is None:
        return None
    first = min(due, key=lambda c: (c.open_until, c.deployment))
    assert first.open_until is not None
    return first if first.open_until <= now else None


def fallbacks(decision: RouteDecision, key: str, now: datetime | None = None) -> list[RouteCandidate]:
    """Candidates in the order to try them for ``key``: the chosen one first, then the other live ones."""
    first = choose(decision, key, now)
    if first is None:
        return []
    live = [c for c in decision.candidates if c.weight > 0 and c.deployment != first.deployment]
    if decision.strategy == "weighted":
        live.sort(key=lambda c: (-c.weight / -math.log(unit(key, c.deployment)), c.deployment))
    return [first, *live]


class RouteClient:
    """Follows ``decision.route`` and answers ``choose``/``fallbacks``; see the module docstring."""

    def __init__(
        self,
        bus: Bus,
        *,
        tenant: str = "*",
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.bus = bus
        self.tenant = tenant
        self._clock = clock
        self._tables: dict[tuple[str, str], RouteTable] = {}
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._caught_up = asyncio.Event()
        self.seen = 0  # tables applied
        self.errors = 0  # times following failed and resumed

    async def start(self) -> Self:
        """Start following in the background (``ready`` waits until the stored tables are read)."""
        if self._task is None:
            self._task = asyncio.create_task(self._follow(), name="spine-route-client")
        return self

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def ready(self) -> None:
        """Wait until every table stored when the client started has been read (wrap in ``asyncio.timeout``)."""
        assert self._task is not None, "start() the client first"
        waiter = asyncio.ensure_future(self._caught_up.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not self._caught_up.is_set() and self._task.done():
            self._task.result()  # the follower ended: raise why

    async def _follow(self) -> None:
        # Catch up with a replay (it ends), then follow from where it stopped. A broker hiccup
        # must not leave a gateway with a stale table: resume from the last position after it.
        after: dict[int, int] = {}
        while True:
            try:
                if not self._caught_up.is_set():
                    async for record in self.bus.replay("DECISIONS", pattern="decision.route", tenant=self.tenant):
                        self._apply(record)
                        after[record.partition] = max(after.get(record.partition, 0), record.seq)
                    self._caught_up.set()
                async for item in self.bus.follow(
                    "DECISIONS", after=after, pattern="decision.route", tenant=self.tenant
                ):
                    after[item.partition] = max(after.get(item.partition, 0), item.seq)
                    if isinstance(item, Record):
                        self._apply(item)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.errors += 1
                log.warning("route client: following DECISIONS failed (%s: %s); resuming", type(exc).__name__, exc)
                await asyncio.sleep(min(0.05 * 2**self.errors, 2.0))

    def _apply(self, record: Record) -> None:
        event = record.event
        if not isinstance(event, RouteDecisionEvent):
            return
        key = (event.tenant, event.data.model_group)
        current = self._tables.get(key)
        # The highest version wins: a decision re-published after a crash is older, not newer.
        if current is not None and current.version >= event.data.version:
            return
        self._tables[key] = RouteTable(event.tenant, event.data, record.seq, time.monotonic())
        self.seen += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- what gateways call ----------------------------------------------------------------
    def table(self, model_group: str, tenant: str = "default") -> RouteTable | None:
        return self._tables.get((tenant, model_group))

    def tables(self) -> dict[tuple[str, str], RouteTable]:
        return dict(self._tables)

    def now(self) -> datetime:
        if self._clock is not None:
            return self._clock()
        from schemas import utcnow

        return utcnow()

    def choose(self, model_group: str, key: str, tenant: str = "default") -> RouteCandidate | None:
        table = self._tables.get((tenant, model_group))
        return None if table is None else choose(table.decision, key, self.now())

    def fallbacks(self, model_group: str, key: str, tenant: str = "default") -> list[RouteCandidate]:
        table = self._tables.get((tenant, model_group))
        return [] if table is None else fallbacks(table.decision, key, self.now())

    async def wait_for(
        self,
        model_group: str,
        predicate: Callable[[RouteTable], bool],
        *,
        tenant: str = "default",
    ) -> RouteTable:
        """The table of ``model_group`` once ``predicate`` holds for it (wrap in ``asyncio.timeout``)."""
        while True:
            changed = self._changed
            table = self._tables.get((tenant, model_group))
            if table is not None and predicate(table):
                return table
            await changed.wait()
