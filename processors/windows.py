"""Event-time windows and watermarks (never the wall clock).

- Calendar buckets (``day``, ``week`` starting Monday, ``month``), UTC.
- Tumbling windows of N seconds and hopping windows (size, hop).
- ``Watermark``: the highest event time seen minus the allowed lateness. A
  window whose end is at or before the watermark is closed; an event that
  would land only in closed windows is late (the processor rejects it and the
  runner dead-letters it with reason ``late``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Literal

Period = Literal["day", "week", "month"]
PERIODS: tuple[Period, ...] = ("day", "week", "month")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def bucket_start(day: date, period: Period) -> date:
    """The first day of the ``period`` bucket holding ``day``."""
    if period == "day":
        return day
    if period == "week":
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def bucket_end(start: date, period: Period) -> date:
    """The first day after the bucket that starts at ``start``."""
    if period == "day":
        return start + timedelta(days=1)
    if period == "week":
        return start + timedelta(days=7)
    return (start.replace(day=28) + timedelta(days=4)).replace(day=1)


def day_start_ts(day: date) -> float:
    return (datetime(day.year, day.month, day.day, tzinfo=UTC) - _EPOCH).total_seconds()


def tumbling(ts: float, size_s: float) -> float:
    """Start (epoch seconds) of the size-``size_s`` tumbling window holding ``ts``."""
    return ts - (ts % size_s)


def hopping(ts: float, size_s: float, hop_s: float) -> list[float]:
    """Starts of every (size, hop) hopping window holding ``ts``, oldest first."""
    last = ts - (ts % hop_s)
    starts = []
    start = last
    while start > ts - size_s:
        starts.append(start)
        start -= hop_s
    return sorted(starts)


@dataclass(slots=True)
class Watermark:
    """Max event time seen minus the allowed lateness (epoch seconds)."""

    allowed_lateness_s: float
    max_event_ts: float | None = None

    @property
    def value(self) -> float | None:
        return None if self.max_event_ts is None else self.max_event_ts - self.allowed_lateness_s

    def observe(self, ts: float) -> None:
        if self.max_event_ts is None or ts > self.max_event_ts:
            self.max_event_ts = ts

    def closed(self, window_end_ts: float) -> bool:
        """Has the window ending at ``window_end_ts`` closed?"""
        value = self.value
        return value is not None and window_end_ts <= value
