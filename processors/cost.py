"""The cost processor: prices LLM calls and folds them into period totals and budgets.

Input ``llm.call``; state partitioned by tenant. For each call:

1. Price it: take ``cost_usd`` if the producer gave it; otherwise price the
   tokens with the versioned ``PriceTable`` handed in (litellm's price map,
   loaded once by ``connectors.prices``). A model missing from the table is
   counted as ``unpriced_calls`` and reported once per model with a
   ``decision.alert`` (never priced at zero silently).
2. Add it to its day bucket (event time, UTC) per tenant, provider, model,
   project and session. Week and month totals are the sums of their days,
   taken when the bucket closes or is queried (``period_totals``), so a call
   costs one update per dimension, not three; the week/month spend a budget
   watches is kept per call (``CostState.running``).
3. Emit ``decision.cost`` for a day bucket each time its cost crosses another
   ``update_step_usd``, and a final one for every bucket (day/week/month) once
   the watermark passes its end.
4. Emit ``decision.budget`` once per budget, key, period bucket and level
   (soft, hard) when spending reaches the limit.

A call whose day bucket has already closed (older than the allowed lateness)
is rejected as ``late`` and dead-lettered, never silently dropped.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from processors.base import Cause, Emit, Output, Reject, RowInput
from processors.windows import PERIODS, Period, Watermark, bucket_end, bucket_start, day_start_ts
from schemas import Event
from schemas.envelope import LlmCallEvent
from schemas.payloads.decisions import AlertDecision, BudgetDecision, CostDecision

Dimension = Literal["tenant", "provider", "model", "project", "session"]
DIMENSIONS: tuple[Dimension, ...] = ("tenant", "provider", "model", "project", "session")


class ModelPrice(BaseModel):
    """USD per token for one model."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)


class PriceTable(BaseModel):
    """A versioned price table; ``version`` goes on every decision it priced."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str
    prices: dict[str, ModelPrice] = Field(default_factory=dict)

    def lookup(self, provider: str, model: str) -> ModelPrice | None:
        """``provider/model`` first, then the bare model name (litellm's keys mix both)."""
        return self.prices.get(f"{provider}/{model}") or self.prices.get(model)

    def cost(self, price: ModelPrice, input_tokens: int, output_tokens: int, cached_tokens: int) -> float:
        """Like ``litellm.cost_per_token``: cached tokens are part of the input tokens."""
        cached = min(cached_tokens, input_tokens)
        cache_rate = price.cache_read if price.cache_read is not None else price.input
        return (input_tokens - cached) * price.input + cached * cache_rate + output_tokens * price.output


class Budget(BaseModel):
    """A spending limit: ``key`` ``*`` applies it to every tenant/project/provider separately."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(min_length=1)
    scope: Literal["tenant", "project", "provider"]
    key: str = "*"
    period: Period = "day"
    soft_usd: float | None = Field(default=None, gt=0)
    hard_usd: float | None = Field(default=None, gt=0)


class CostConfig(BaseModel):
    """Settings of the cost processor (``[cost]`` in the processors config file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    prices: PriceTable = Field(default_factory=lambda: PriceTable(version="empty"))
    budgets: tuple[Budget, ...] = ()
    update_step_usd: float = Field(default=0.05, gt=0, description="Emit a day update per this much spend.")
    allowed_lateness_s: float = Field(default=3600.0, ge=0, description="How late a call may arrive.")
    retention_days: int = Field(default=62, ge=1, description="Closed buckets kept in state for queries.")


@dataclass(slots=True)
class Total:
    cost: float = 0.0
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    unpriced: int = 0
    emitted_steps: int = 0  # update_step_usd multiples already reported

    def to_list(self) -> list[Any]:
        return [self.cost, self.calls, self.input_tokens, self.output_tokens, self.unpriced, self.emitted_steps]


# (tenant, period, bucket start ISO, dimension, key)
TotalKey = tuple[str, str, str, str, str]


@dataclass(slots=True)
class CostState:
    """Per tenant: a watermark, open buckets and totals (a partition holds several tenants).

    ``totals`` holds every day's totals and the totals of closed weeks and
    months; an open week or month is the sum of its days (``period_totals``).
    ``running`` is the spend of open weeks and months that budgets watch.
    """

    lateness_s: float
    watermarks: dict[str, Watermark] = field(default_factory=dict)
    totals: dict[TotalKey, Total] = field(default_factory=dict)
    open_buckets: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (tenant, period, bucket) -> end
    running: dict[TotalKey, float] = field(default_factory=dict)
    budgets_fired: set[str] = field(default_factory=set)
    unpriced_models: set[str] = field(default_factory=set)
    # Derived, not snapshotted: per tenant, the earliest end of an open bucket
    # (``_close_buckets`` only runs once the watermark reaches it).
    next_close: dict[str, float] = field(default_factory=dict)
    # Derived, not snapshotted: (tenant, day, provider, model, project, session) of a call ->
    # (its five day totals, all in ``totals``; its keys by dimension). A call whose day is
    # open needs no lookups then. Emptied whenever a bucket closes (retention deletes totals).
    hot: dict[tuple[Any, ...], tuple[tuple[tuple[Dimension, str, Total], ...], dict[Dimension, str | None]]] = field(
        default_factory=dict, compare=False, repr=False
    )


class CostProcessor:
    """See the module docstring."""

    name = "cost"
    inputs = ("llm.call",)
    row_input = RowInput(
        "llm.call",
        (
            "provider",
            "model",
            "project",
            "session_id",
            "input_tokens",
            "output_tokens",
            "cached_tokens",
            "cost_usd",
            "price_version",
        ),
    )

    def __init__(self, config: CostConfig | None = None) -> None:
        self.config = config or CostConfig()
        # (bucket index in _buckets_of, dimension) whose week/month spend a budget watches.
        self._budget_periods = tuple(PERIODS.index(b.period) for b in self.config.budgets)  # into _buckets_of
        self._watched = tuple(
            sorted({(PERIODS.index(b.period), b.scope) for b in self.config.budgets if b.period != "day"})
        )

    def partition_key(self, event: Cause) -> str:
        return event.tenant

    def initial_state(self) -> CostState:
        return CostState(self.config.allowed_lateness_s)

    # -- the fold ----------------------------------------------------------------------
    def handle(self, state: CostState, event: Event) -> Sequence[Output]:
        if not isinstance(event, LlmCallEvent):
            return ()
        c = event.data
        values = (
            c.provider,
            c.model,
            c.project,
            c.session_id,
            c.input_tokens,
            c.output_tokens,
            c.cached_tokens,
            c.cost_usd,
            c.price_version,
        )
        return self.handle_row(state, event, event.time.timestamp(), values)

    def handle_row(self, state: CostState, cause: Cause, ts: float, values: Sequence[Any]) -> Sequence[Output]:
        """The fold itself, over ``row_input.fields`` (``handle`` and replays both land here)."""
        provider, model, project, session, input_tokens, output_tokens, cached_tokens, cost_usd, price_version = values
        tenant = cause.tenant
        day = _day_of(int(ts // 86400))
        watermark = state.watermarks.get(tenant) or state.watermarks.setdefault(tenant, Watermark(state.lateness_s))
        if watermark.closed(_next_day_ts(day)):
            return (
                Reject(
                    "late",
                    f"llm.call at {cause.time.isoformat()} is behind the watermark: its day closed "
                    f"(allowed lateness {self.config.allowed_lateness_s:.0f}s)",
                ),
            )
        outputs: list[Output] = []
        model_key = f"{provider}/{model}"
        if cost_usd is not None:
            cost, version = cost_usd, price_version or "producer"
            unpriced = 0
        else:
            prices = self.config.prices
            price = prices.lookup(provider, model)
            version = prices.version
            if price is None:
                cost, unpriced = 0.0, 1
                self._report_unpriced(state, tenant, model_key, version, outputs)
            else:
                cost, unpriced = prices.cost(price, input_tokens, output_tokens, cached_tokens), 0
        step = self.config.update_step_usd
        buckets = _buckets_of(day)
        day_bucket = buckets[0][1]
        hot_key = (tenant, day_bucket, provider, model_key, project, session)
        hot = state.hot.get(hot_key)
        if hot is None:
            hot = _day_totals(state, hot_key, buckets)
        for dim, key, total in hot[0]:
            total.cost += cost
            total.calls += 1
            total.input_tokens += input_tokens
            total.output_tokens += output_tokens
            total.unpriced += unpriced
            steps = math.floor(total.cost / step)
            if steps > total.emitted_steps or total.calls == 1:
                total.emitted_steps = max(steps, total.emitted_steps)
                outputs.append(self._cost("day", day_bucket, dim, key, total, version, final=False))
        if self.config.budgets:
            self._add_running(state, tenant, hot[1], buckets, cost)
            outputs.extend(self._budgets(state, tenant, hot[1], buckets))
        watermark.observe(ts)
        wm = watermark.value
        if wm is not None and wm >= state.next_close.get(tenant, math.inf):
            outputs.extend(self._close_buckets(state, tenant, wm, version))
        return outputs

    def _report_unpriced(
        self, state: CostState, tenant: str, model_key: str, version: str, outputs: list[Output]
    ) -> None:
        marker = f"{tenant}|{model_key}"
        if marker not in state.unpriced_models:
            state.unpriced_models.add(marker)
            outputs.append(self._unpriced_alert(model_key, version))

    def _add_running(
        self,
        state: CostState,
        tenant: str,
        keys: dict[Dimension, str | None],
        buckets: tuple[tuple[Period, str, str], ...],
        cost: float,
    ) -> None:
        """Add ``cost`` to the open week/month spend the budgets watch."""
        running = state.running
        for index, dim in self._watched:
            key = keys[dim]
            if key is not None:
                period, bucket, _ = buckets[index]
                running_key = (tenant, period, bucket, dim, key)
                running[running_key] = running.get(running_key, 0.0) + cost

    def _cost(
        self, period: Period, bucket: str, dim: Dimension, key: str, total: Total, version: str, *, final: bool
    ) -> Emit:
        decision = CostDecision(
            period=period,
            bucket=bucket,
            dimension=dim,
            key=key,
            cost_usd=round(total.cost, 10),
            calls=total.calls,
            input_tokens=total.input_tokens,
            output_tokens=total.output_tokens,
            unpriced_calls=total.unpriced,
            price_version=version,
            final=final,
        )
        return Emit("decision.cost", decision, f"{dim}:{key}:{period}:{bucket}")

    def _unpriced_alert(self, model_key: str, version: str) -> Emit:
        alert = AlertDecision(
            rule="cost-unpriced-model",
            dedup_key=f"cost-unpriced-model/{model_key}",
            status="firing",
            severity="warning",
            summary=f"{model_key} is not in price table {version}: its calls are counted as unpriced",
            labels={"model": model_key, "price_version": version},
        )
        return Emit("decision.alert", alert, alert.dedup_key)

    def _budgets(
        self,
        state: CostState,
        tenant: str,
        keys: dict[Dimension, str | None],
        buckets: tuple[tuple[Period, str, str], ...],
    ) -> list[Emit]:
        out: list[Emit] = []
        for budget, period_index in zip(self.config.budgets, self._budget_periods, strict=True):
            key = keys[budget.scope]
            if key is None or (budget.key not in ("*", key)):
                continue
            bucket = buckets[period_index][1]
            budget_key = (tenant, budget.period, bucket, budget.scope, key)
            if budget.period == "day":
                total = state.totals.get(budget_key)
                spent = None if total is None else total.cost
            else:
                spent = state.running.get(budget_key)
            if spent is None:
                continue
            levels: tuple[tuple[Literal["soft", "hard"], float | None], ...] = (
                ("soft", budget.soft_usd),
                ("hard", budget.hard_usd),
            )
            for level, limit in levels:
                if limit is None or spent < limit:
                    continue
                marker = f"{tenant}|{budget.name}|{key}|{bucket}|{level}"
                if marker in state.budgets_fired:
                    continue
                state.budgets_fired.add(marker)
                decision = BudgetDecision(
                    budget=budget.name,
                    scope=budget.scope,
                    key=key,
                    period=budget.period,
                    bucket=bucket,
                    level=level,
                    limit_usd=limit,
                    spent_usd=round(spent, 10),
                )
                out.append(Emit("decision.budget", decision, f"{budget.name}:{key}:{bucket}:{level}"))
        return out

    def _close_buckets(self, state: CostState, tenant: str, wm: float, version: str) -> list[Emit]:
        """Final totals for the tenant's buckets the watermark ``wm`` passed; prune past retention."""
        closed = []
        still_open = math.inf
        for (t, period, bucket), end in state.open_buckets.items():
            if t != tenant:
                continue
            end_ts = _end_ts(end)
            if end_ts <= wm:
                closed.append((period, bucket))
            elif end_ts < still_open:
                still_open = end_ts
        state.next_close[tenant] = still_open
        if not closed:
            return []
        state.hot.clear()
        out: list[Emit] = []
        for period, bucket in sorted(closed):  # days first: a week or month sums its days
            rows = period_totals(state, tenant, period, bucket)
            del state.open_buckets[(tenant, period, bucket)]
            for (dim, key), total in sorted(rows.items()):
                if period != "day":
                    state.totals[(tenant, period, bucket, dim, key)] = total
                    state.running.pop((tenant, period, bucket, dim, key), None)
                out.append(self._cost(period, bucket, dim, key, total, version, final=True))  # type: ignore[arg-type]
        horizon = (datetime.fromtimestamp(wm, tz=UTC).date() - timedelta(days=self.config.retention_days)).isoformat()
        # Days an open week or month still sums are kept past the horizon.
        days_from = min([horizon, *(b for (t, _, b) in state.open_buckets if t == tenant)])
        stale = [
            k
            for k in state.totals
            if k[0] == tenant
            and k[2] < (days_from if k[1] == "day" else horizon)
            and (tenant, k[1], k[2]) not in state.open_buckets
        ]
        for k in stale:
            del state.totals[k]
        return out

    # -- snapshots -----------------------------------------------------------------------
    def snapshot(self, state: CostState) -> dict[str, Any]:
        return {
            "max_event_ts": {t: w.max_event_ts for t, w in sorted(state.watermarks.items())},
            "totals": [[*key, *total.to_list()] for key, total in state.totals.items()],
            "open_buckets": [[t, p, b, e] for (t, p, b), e in state.open_buckets.items()],
            "running": [[*key, cost] for key, cost in state.running.items()],
            "budgets_fired": sorted(state.budgets_fired),
            "unpriced_models": sorted(state.unpriced_models),
        }

    def restore(self, snapshot: dict[str, Any]) -> CostState:
        state = self.initial_state()
        for tenant, ts in snapshot["max_event_ts"].items():
            state.watermarks[tenant] = Watermark(state.lateness_s, ts)
        state.open_buckets = {(t, p, b): e for t, p, b, e in snapshot["open_buckets"]}
        for row in snapshot["totals"]:
            if row[1] != "day" and (row[0], row[1], row[2]) in state.open_buckets:
                continue  # an open week/month total from before they were summed from days
            state.totals[(row[0], row[1], row[2], row[3], row[4])] = Total(*row[5:])
        for row in snapshot.get("running", []):
            state.running[(row[0], row[1], row[2], row[3], row[4])] = row[5]
        for (t, _, _), end in state.open_buckets.items():
            state.next_close[t] = min(state.next_close.get(t, math.inf), _end_ts(end))
        state.budgets_fired = set(snapshot["budgets_fired"])
        state.unpriced_models = set(snapshot["unpriced_models"])
        return state


def _day_totals(
    state: CostState, hot_key: tuple[Any, ...], buckets: tuple[tuple[Period, str, str], ...]
) -> tuple[tuple[tuple[Dimension, str, Total], ...], dict[Dimension, str | None]]:
    """The first call of its kind since the last close: open its buckets, and find (or start)
    its five day totals (``CostState.hot``)."""
    tenant, day_bucket, provider, model_key, project, session = hot_key
    keyed: dict[Dimension, str | None] = {
        "tenant": tenant,
        "provider": provider,
        "model": model_key,
        "project": project,
        "session": session,
    }
    _open(state, tenant, buckets)
    totals = state.totals
    targets = []
    for dim, key in keyed.items():
        if key is not None:
            total_key = (tenant, "day", day_bucket, dim, key)
            total = totals.get(total_key)
            if total is None:
                total = totals[total_key] = Total()
            targets.append((dim, key, total))
    hot = (tuple(targets), keyed)
    if len(state.hot) < 65_536:  # bounded: sessions are many
        state.hot[hot_key] = hot
    return hot


def _open(state: CostState, tenant: str, buckets: tuple[tuple[Period, str, str], ...]) -> None:
    """Open the day, week and month buckets of a call (``next_close`` tracks the earliest end)."""
    open_buckets = state.open_buckets
    for period, bucket, end in buckets:
        bucket_key = (tenant, period, bucket)
        if bucket_key not in open_buckets:
            open_buckets[bucket_key] = end
            end_ts = _end_ts(end)
            if end_ts < state.next_close.get(tenant, math.inf):
                state.next_close[tenant] = end_ts


@functools.lru_cache(maxsize=1024)
def _buckets_of(day: date) -> tuple[tuple[Period, str, str], ...]:
    """(period, bucket start, bucket end) of ``day``, ISO dates: the same for every call that day."""
    out = []
    for period in PERIODS:
        start = bucket_start(day, period)
        out.append((period, start.isoformat(), bucket_end(start, period).isoformat()))
    return tuple(out)


@functools.lru_cache(maxsize=4096)
def _day_of(days_since_epoch: int) -> date:
    """The UTC date ``days_since_epoch`` days after 1970-01-01 (``int(ts // 86400)``)."""
    return _EPOCH_DATE + timedelta(days=days_since_epoch)


_EPOCH_DATE = date(1970, 1, 1)


@functools.lru_cache(maxsize=1024)
def _next_day_ts(day: date) -> float:
    return day_start_ts(day + timedelta(days=1))


@functools.lru_cache(maxsize=4096)
def _end_ts(end: str) -> float:
    """Epoch seconds of an ISO bucket end (checked for every open bucket on every call)."""
    return day_start_ts(date.fromisoformat(end))


def build(config: dict[str, Any] | None) -> CostProcessor:
    """Registry factory: ``config`` is the ``[cost]`` table (with ``prices`` filled in by the caller)."""
    return CostProcessor(CostConfig.model_validate(config or {}))


def period_totals(state: CostState, tenant: str, period: str, bucket: str) -> dict[tuple[str, str], Total]:
    """One tenant's totals of one bucket by (dimension, key); an open week or month sums its days."""
    end = state.open_buckets.get((tenant, period, bucket)) if period != "day" else None
    if end is None:
        return {
            (dim, key): total
            for (t, p, b, dim, key), total in state.totals.items()
            if t == tenant and p == period and b == bucket
        }
    sums: dict[tuple[str, str], Total] = {}
    for (t, p, b, dim, key), total in sorted(state.totals.items()):  # a fixed order: the same float sums
        if t != tenant or p != "day" or not bucket <= b < end:
            continue
        acc = sums.get((dim, key))
        if acc is None:
            acc = sums[(dim, key)] = Total()
        acc.cost += total.cost
        acc.calls += total.calls
        acc.input_tokens += total.input_tokens
        acc.output_tokens += total.output_tokens
        acc.unpriced += total.unpriced
    return sums


def cost_rows(
    states: Sequence[CostState],
    period: Period,
    bucket: str,
    by: Dimension,
    tenant: str | None = None,
) -> list[dict[str, Any]]:
    """Totals of one bucket grouped by ``by`` across partition states (for ``spine cost``)."""
    rows: dict[tuple[str, str], Total] = {}
    for state in states:
        tenants = sorted({k[0] for k in state.totals}) if tenant is None else [tenant]
        for t in tenants:
            for (dim, key), total in period_totals(state, t, period, bucket).items():
                if dim != by:
                    continue
                acc = rows.setdefault((t, key), Total())
                acc.cost += total.cost
                acc.calls += total.calls
                acc.input_tokens += total.input_tokens
                acc.output_tokens += total.output_tokens
                acc.unpriced += total.unpriced
    return [
        {
            "tenant": t,
            by: key,
            "cost_usd": round(total.cost, 6),
            "calls": total.calls,
            "input_tokens": total.input_tokens,
            "output_tokens": total.output_tokens,
            "unpriced_calls": total.unpriced,
        }
        for (t, key), total in sorted(rows.items(), key=lambda kv: (-kv[1].cost, kv[0]))
    ]
