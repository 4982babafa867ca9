"""Sliding event-time windows made of fixed buckets: counters and value series.

A window of ``size_s`` seconds is cut into ``buckets`` buckets of
``size_s / buckets`` seconds. ``now`` is the partition's clock (the highest
event time seen, never the wall clock); the window holds the buckets whose
index is in ``(index(now) - buckets, index(now)]``, so its resolution is one
bucket ("the last hour" with 60 buckets is the last 60 started minutes).

Events may arrive out of order: one lands in its own bucket while that bucket
is still in the window; an older one is not counted (``add`` returns False
and the caller decides whether that is "late").

``RollingCounts`` keeps named counters per bucket plus running window totals;
``RollingSeries`` keeps, per bucket, the first and last value by event time
and the low and high. Both ``dump`` to JSON-ready lists and ``load`` back
exactly, running totals included (they are not recomputed: float sums depend
on the order of operations, and a restored window must continue bit for bit).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

# A bucket of a series: first_ts, first, last_ts, last, low, high.
_FIRST_TS, _FIRST, _LAST_TS, _LAST, _LOW, _HIGH = range(6)


class _Buckets:
    __slots__ = ("bucket_s", "buckets", "floor", "size_s")

    def __init__(self, size_s: float, buckets: int) -> None:
        if size_s <= 0 or buckets < 1:
            raise ValueError(f"a window needs size_s > 0 and buckets >= 1, not {size_s}/{buckets}")
        self.size_s = size_s
        self.bucket_s = size_s / buckets
        self.buckets = buckets
        self.floor: int | None = None  # buckets at or below this index were expired

    def index(self, ts: float) -> int:
        return math.floor(ts / self.bucket_s)

    def lowest(self, now: float) -> int:
        """The oldest bucket index still in the window at ``now``."""
        return self.index(now) - self.buckets + 1

    def _advance_floor(self, now: float) -> int | None:
        """Move the expiry floor to ``now``'s window; the new floor, or None if it did not move."""
        low = self.lowest(now) - 1
        if self.floor is not None and low <= self.floor:
            return None
        self.floor = low
        return low


class RollingCounts(_Buckets):
    """Named counters over a sliding window, with running totals."""

    __slots__ = ("data", "totals")

    def __init__(self, size_s: float, buckets: int) -> None:
        super().__init__(size_s, buckets)
        self.data: dict[int, dict[str, float]] = {}
        self.totals: dict[str, float] = {}

    def add(self, ts: float, counts: Mapping[str, float], now: float) -> bool:
        """Count ``counts`` at ``ts``; False (nothing counted) if ``ts`` is before the window."""
        # the hot path of every windowed processor: index arithmetic inlined
        low = math.floor(now / self.bucket_s) - self.buckets
        if self.floor is None or low > self.floor:
            self.expire(now)
        idx = math.floor(ts / self.bucket_s)
        if idx <= low:
            return False
        bucket = self.data.get(idx)
        if bucket is None:
            bucket = self.data[idx] = {}
        totals = self.totals
        for key, value in counts.items():
            if value:
                bucket[key] = bucket.get(key, 0) + value
                totals[key] = totals.get(key, 0) + value
        return True

    def expire(self, now: float) -> None:
        """Drop the buckets that left the window at ``now`` from the data and the totals."""
        low = self._advance_floor(now)
        if low is None:
            return
        old = [idx for idx in self.data if idx <= low]
        if not old:
            return
        if len(old) == len(self.data):  # all gone: start from exact zeros, no float residue
            self.data.clear()
            self.totals.clear()
            return
        totals = self.totals
        for idx in old:
            for key, value in self.data.pop(idx).items():
                left = totals.get(key, 0) - value
                if left == 0:
                    del totals[key]
                else:
                    totals[key] = left

    def total(self, key: str) -> float:
        return self.totals.get(key, 0)

    def dump(self) -> list[Any]:
        return [self.floor, [[idx, bucket] for idx, bucket in sorted(self.data.items())], self.totals]

    @classmethod
    def load(cls, size_s: float, buckets: int, doc: list[Any]) -> RollingCounts:
        counts = cls(size_s, buckets)
        counts.floor = doc[0]
        counts.data = {int(idx): dict(bucket) for idx, bucket in doc[1]}
        counts.totals = dict(doc[2])
        return counts


class RollingSeries(_Buckets):
    """A numeric series over a sliding window: per bucket first/last (by event time), low, high.

    Queries take ``now`` and first drop what left the window, so every bucket
    held is in it. The newest bucket and the window's low/high are cached
    (derived, never dumped): a tick costs O(1), a bucket leaving the window
    one pass over the buckets.
    """

    __slots__ = ("_high", "_low", "data", "head")

    def __init__(self, size_s: float, buckets: int) -> None:
        super().__init__(size_s, buckets)
        self.data: dict[int, list[float]] = {}
        self.head: int | None = None  # newest bucket index held
        self._high: float | None = None  # None: not known, recompute
        self._low: float | None = None

    def add(self, ts: float, value: float, now: float) -> bool:
        """Record ``value`` at ``ts``; False if ``ts`` is before the window."""
        self.expire(now)
        idx = self.index(ts)
        if idx < self.lowest(now):
            return False
        b = self.data.get(idx)
        if b is None:
            self.data[idx] = [ts, value, ts, value, value, value]
            if self.head is None or idx > self.head:
                self.head = idx
        else:
            if ts < b[_FIRST_TS]:
                b[_FIRST_TS], b[_FIRST] = ts, value
            if ts >= b[_LAST_TS]:  # equal times: the one folded later wins, as in arrival order
                b[_LAST_TS], b[_LAST] = ts, value
            b[_LOW] = min(b[_LOW], value)
            b[_HIGH] = max(b[_HIGH], value)
        if self._high is not None and self._low is not None:
            self._high = max(self._high, value)
            self._low = min(self._low, value)
        elif len(self.data) == 1:
            self._high = self._low = value
        return True

    def expire(self, now: float) -> None:
        low = self._advance_floor(now)
        if low is None:
            return
        old = [idx for idx in self.data if idx <= low]
        if not old:
            return
        for idx in old:
            del self.data[idx]
        self._high = self._low = None
        if self.head is not None and self.head <= low:
            self.head = max(self.data, default=None)

    def empty(self, now: float) -> bool:
        self.expire(now)
        return not self.data

    def last(self, now: float) -> float | None:
        """The newest value in the window (by event time)."""
        self.expire(now)
        return None if self.head is None else self.data[self.head][_LAST]

    def first(self, now: float) -> float | None:
        """The oldest value in the window (by event time)."""
        self.expire(now)
        return self.data[min(self.data)][_FIRST] if self.data else None

    def _extremes(self) -> None:
        if self._high is None or self._low is None:
            values = self.data.values()
            self._high = max((b[_HIGH] for b in values), default=None)
            self._low = min((b[_LOW] for b in values), default=None)

    def high(self, now: float) -> float | None:
        self.expire(now)
        self._extremes()
        return self._high

    def low(self, now: float) -> float | None:
        self.expire(now)
        self._extremes()
        return self._low

    def closes(self, now: float, *, closed_only: bool = True) -> list[float]:
        """Each bucket's last value, oldest first; without the bucket ``now`` is in if ``closed_only``."""
        self.expire(now)
        current = self.index(now)
        return [b[_LAST] for idx, b in sorted(self.data.items()) if not (closed_only and idx == current)]

    def dump(self) -> list[Any]:
        return [self.floor, [[idx, b] for idx, b in sorted(self.data.items())]]

    @classmethod
    def load(cls, size_s: float, buckets: int, doc: list[Any]) -> RollingSeries:
        series = cls(size_s, buckets)
        series.floor = doc[0]
        series.data = {int(idx): list(b) for idx, b in doc[1]}
        series.head = max(series.data, default=None)
        return series


def log_returns(closes: list[float]) -> list[float]:
    """Log returns between consecutive closes (non-positive prices skipped)."""
    out = []
    for prev, cur in itertools.pairwise(closes):
        if prev > 0 and cur > 0:
            out.append(math.log(cur / prev))
    return out


def stdev(values: list[float]) -> float | None:
    """Sample standard deviation, None below two values."""
    n = len(values)
    if n < 2:
        return None
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def zscore(values: list[float]) -> float | None:
    """How many standard deviations the last value is from the mean of the ones before it."""
    if len(values) < 3:
        return None
    history, last = values[:-1], values[-1]
    sd = stdev(history)
    if not sd:
        return None
    return (last - math.fsum(history) / len(history)) / sd


def percentile_from_histogram(bins: Mapping[int, float], q: float, ratio: float) -> float | None:
    """The ``q`` quantile of log-scale histogram ``bins`` (bin i holds [ratio**i, ratio**(i+1)))."""
    total = sum(bins.values())
    if total <= 0:
        return None
    rank = q * total
    seen = 0.0
    for idx in sorted(bins):
        seen += bins[idx]
        if seen >= rank:
            return float(ratio ** (idx + 1))
    return float(ratio ** (max(bins) + 1))


def log_bin(value: float, ratio: float) -> int:
    """The log-scale histogram bin of a positive ``value`` (values below 1 go to bin 0)."""
    return 0 if value < 1 else math.floor(math.log(value) / math.log(ratio))
