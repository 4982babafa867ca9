"""The cost processor's periods: days folded per call, weeks and months summed from their days."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta

from processors.cost import CostConfig, CostProcessor, cost_rows, period_totals
from processors.runtime import run_partitioned
from schemas import Event, make_event

T0 = datetime(2026, 9, 28, 6, tzinfo=UTC)  # a Monday; the run crosses a week and a month end


def calls(n: int, seed: int) -> list[Event]:
    r = random.Random(seed)
    out = []
    for i in range(n):
        out.append(
            make_event(
                "llm.call",
                {
                    "provider": r.choice(["openai", "anthropic"]),
                    "model": "m",
                    "project": r.choice(["p1", "p2"]),
                    "input_tokens": r.randint(1, 100),
                    "output_tokens": 1,
                    "cost_usd": r.random(),
                },
                tenant="acme",
                time=T0 + timedelta(hours=2 * i),
                source="tests",
            )
        )
    return out


def config(**extra: object) -> CostConfig:
    return CostConfig.model_validate({"allowed_lateness_s": 0, "retention_days": 62, **extra})


def expected(events: list[Event], start: date, end: date) -> dict[str, tuple[float, int]]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])
    for e in events:
        if start <= e.time.date() < end:
            sums[e.data.project][0] += e.data.cost_usd  # type: ignore[union-attr]
            sums[e.data.project][1] += 1  # type: ignore[union-attr]
    return {k: (v[0], int(v[1])) for k, v in sums.items()}


def test_open_and_closed_weeks_and_months_are_the_sums_of_their_calls() -> None:
    events = calls(150, seed=1)  # 12.5 days: week 2026-09-28 closes, week 2026-10-05 stays open
    parts, run = run_partitioned(CostProcessor(config()), events)
    states = [p.state for p in parts.values()]
    for period, bucket, start, end in (
        ("week", "2026-09-28", date(2026, 9, 28), date(2026, 10, 5)),  # closed, after its days passed retention
        ("week", "2026-10-05", date(2026, 10, 5), date(2026, 10, 12)),  # open: summed from its days
        ("month", "2026-10-01", date(2026, 10, 1), date(2026, 11, 1)),  # open
        ("month", "2026-09-01", date(2026, 9, 1), date(2026, 10, 1)),  # closed
    ):
        rows = {row["project"]: (row["cost_usd"], row["calls"]) for row in cost_rows(states, period, bucket, "project")}  # type: ignore[arg-type]
        want = expected(events, start, end)
        assert rows.keys() == want.keys(), (period, bucket)
        for key, (cost, n) in want.items():
            assert rows[key][1] == n and abs(rows[key][0] - cost) < 1e-6, (period, bucket, key)
    finals = {
        (e.data.bucket, e.data.key): e.data  # type: ignore[union-attr]
        for e in run.decisions
        if e.type == "decision.cost" and e.data.final and e.data.period == "week"  # type: ignore[union-attr]
    }
    want = expected(events, date(2026, 9, 28), date(2026, 10, 5))
    for key, (cost, n) in want.items():
        assert finals[("2026-09-28", key)].calls == n and abs(finals[("2026-09-28", key)].cost_usd - cost) < 1e-9


def test_retention_keeps_the_days_an_open_week_or_month_still_sums() -> None:
    events = calls(150, seed=1)  # the last call is on 2026-10-10: the horizon of 2 days is 2026-10-08
    parts, _ = run_partitioned(CostProcessor(config(retention_days=2)), events)
    (part,) = parts.values()
    days = sorted({k[2] for k in part.state.totals if k[1] == "day"})
    # Days of the open week (from 2026-10-05) and month (from 2026-10-01) are kept; older ones went.
    assert days[0] == "2026-10-01" and days[-1] == "2026-10-10"
    want = expected(events, date(2026, 10, 1), date(2026, 11, 1))
    month = period_totals(part.state, "acme", "month", "2026-10-01")
    assert {k: t.calls for (dim, k), t in month.items() if dim == "project"} == {k: n for k, (_, n) in want.items()}


def test_week_budgets_watch_the_running_spend_and_fire_once() -> None:
    events = calls(60, seed=2)
    budget = {"name": "wk", "scope": "project", "period": "week", "soft_usd": 3, "hard_usd": 6}
    processor = CostProcessor(config(budgets=[budget]))
    _, run = run_partitioned(processor, events)
    fired = [e for e in run.decisions if e.type == "decision.budget"]
    assert sorted({(e.data.key, e.data.bucket, e.data.level) for e in fired}) == sorted(  # type: ignore[union-attr]
        (e.data.key, e.data.bucket, e.data.level)
        for e in fired  # type: ignore[union-attr]
    )  # once per key, bucket and level
    for decision in fired:
        d = decision.data
        spent_before = sum(
            e.data.cost_usd  # type: ignore[union-attr]
            for e in events
            if e.data.project == d.key  # type: ignore[union-attr]
            and e.time <= decision.time
            and e.time.date() >= date.fromisoformat(d.bucket)  # type: ignore[union-attr]
        )
        limit = budget["soft_usd"] if d.level == "soft" else budget["hard_usd"]  # type: ignore[union-attr]
        assert abs(d.spent_usd - spent_before) < 1e-6 and d.spent_usd >= limit  # type: ignore[union-attr]
    assert {(d.data.key, d.data.level) for d in fired if d.data.bucket == "2026-09-28"} == {  # type: ignore[union-attr]
        ("p1", "soft"),
        ("p1", "hard"),
        ("p2", "soft"),
        ("p2", "hard"),
    }


def test_snapshots_round_trip_mid_week() -> None:
    events = calls(80, seed=3)
    processor = CostProcessor(config(budgets=[{"name": "wk", "scope": "tenant", "period": "week", "hard_usd": 9}]))
    parts, whole = run_partitioned(processor, events)
    first, _ = run_partitioned(processor, events[:41])
    (part,) = first.values()
    restored = processor.restore(processor.snapshot(part.state))
    assert processor.snapshot(restored) == processor.snapshot(part.state)
    decisions = []
    for e in events[41:]:
        outs = processor.handle(restored, e)
        decisions += list(outs)
    (full,) = parts.values()
    assert processor.snapshot(restored) == processor.snapshot(full.state)
    assert len(decisions) == sum(1 for d in whole.decisions if d.time > events[40].time)
