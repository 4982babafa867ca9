"""The backlog reporter: consumer-group lag as ``node.backlog`` events, for the scaling processor.

The scaling processor is pure and cannot ask the broker how far behind a
consumer group is, so this connector does (wall clock: it is an edge) and
publishes the answer as an event. Scaling decisions driven by lag therefore
replay from the archive exactly as they were made live::

    async with streams.connect(url) as bus:
        await report_backlog(bus, ["market-agents"], interval_s=5, stop=stop)

One ``node.backlog`` per group per interval: ``queue`` is the group,
``pending`` the messages not yet delivered, ``in_flight`` those delivered and
not acked (summed over the streams the group reads).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence

from schemas import Event, make_event
from streams.bus import Bus, GroupLag

log = logging.getLogger("spine.connectors.backlog")


def backlog_event(lag: GroupLag, *, tenant: str = "default", node_id: str | None = None) -> Event:
    """The ``node.backlog`` event for one group's lag (event time: now)."""
    streams = sorted(lag.streams)
    data = {
        "queue": lag.group,
        "pending": lag.pending,
        "in_flight": lag.ack_pending,
        "stream": streams[0] if len(streams) == 1 else None,
        "node_id": node_id,
    }
    return make_event("node.backlog", data, tenant=tenant, source="connectors/backlog")


async def report_backlog(
    bus: Bus,
    groups: Sequence[str],
    *,
    stop: asyncio.Event,
    interval_s: float = 5.0,
    tenant: str = "default",
    node_id: str | None = None,
) -> int:
    """Publish every group's backlog every ``interval_s`` until ``stop`` is set; returns events published."""
    node = node_id or socket.gethostname()
    published = 0
    while not stop.is_set():
        events = []
        for group in groups:
            try:
                events.append(backlog_event(await bus.lag(group), tenant=tenant, node_id=node))
            except Exception as exc:  # one group's failure must not stop the others' reports
                log.warning("backlog of %s: %s", group, exc)
        if events:
            await bus.publish_many(events)
            published += len(events)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval_s)
    return published
