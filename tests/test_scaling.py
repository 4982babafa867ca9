"""The scaling processor as pure input -> output: HPA target tracking, stabilization, floors, signals."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from processors.scaling import Scaler, build, scale_rows
from schemas import Event, make_event
from schemas.envelope import ScaleDecisionEvent
from streams.processing import run_partitioned, run_pure
from tests.decisions_support import at, backlog, call, session, tick


def scaler(*workloads: dict[str, Any], **config: Any) -> Scaler:
    return build({"workloads": list(workloads), **config})


def scales(events: list[Event], processor: Scaler) -> list[tuple[float, int, int, str]]:
    """(seconds after T0, current, desired, rule) of every decision."""
    out = []
    for d in run_pure(processor, events).decisions:
        assert isinstance(d, ScaleDecisionEvent)
        out.append(((d.time - at(0)).total_seconds(), d.data.current, d.data.desired, d.data.rule))
    return out


QUEUE = {
    "name": "workers",
    "min_replicas": 1,
    "max_replicas": 20,
    "initial_replicas": 2,
    "tolerance": 0.1,
    "scale_down_stabilization_s": 120,
    "scale_down_cooldown_s": 30,
    "signals": [{"kind": "backlog", "queue": "jobs", "target_per_replica": 100}],
}


def test_target_tracking_up_at_once_down_after_stabilization() -> None:
    events = [
        backlog(0, "jobs", 210),  # ratio 1.05: within the tolerance, stays at 2
        backlog(15, "jobs", 950),  # ceil(950 / 100) = 10, at once
        backlog(30, "jobs", 1200, in_flight=90),  # in-flight counts: 13
        backlog(45, "jobs", 300),  # 3, but the last 120 s recommended 13: hold
        backlog(90, "jobs", 300),
        backlog(165, "jobs", 300),  # 13 left the window at 150; the highest since is 3
        backlog(180, "jobs", 5000),  # 50, capped at max_replicas 20
    ]
    assert scales(events, scaler(QUEUE, evaluation_interval_s=15)) == [
        (15.0, 2, 10, "backlog:jobs"),
        (30.0, 10, 13, "backlog:jobs"),
        (165.0, 13, 3, "backlog:jobs"),
        (180.0, 3, 20, "backlog:jobs"),
    ]
    (decision,) = [d for d in run_pure(scaler(QUEUE), events).decisions if d.time == at(180)]
    assert decision.data.reason.endswith("capped at max_replicas 20")  # type: ignore[union-attr]
    assert decision.data.signals == {"backlog:jobs": 5000.0}  # type: ignore[union-attr]


def test_scale_down_waits_for_its_cooldown_and_scale_up_for_its_own() -> None:
    wl = {**QUEUE, "scale_down_stabilization_s": 0, "scale_down_cooldown_s": 60, "scale_up_cooldown_s": 20}
    events = [backlog(0, "jobs", 500), backlog(10, "jobs", 900), backlog(30, "jobs", 900)]
    events += [backlog(40, "jobs", 100), backlog(89, "jobs", 100), backlog(90, "jobs", 100)]
    assert scales(events, scaler(wl, evaluation_interval_s=0)) == [
        (0.0, 2, 5, "backlog:jobs"),
        (30.0, 5, 9, "backlog:jobs"),  # not at 10: 20 s since the last scale-up
        (90.0, 9, 1, "backlog:jobs"),  # not at 40 or 89: 60 s after the last change
    ]


def test_a_stale_backlog_report_is_ignored_and_min_replicas_holds() -> None:
    wl = {**QUEUE, "scale_down_stabilization_s": 0, "scale_down_cooldown_s": 0}
    wl["signals"] = [{"kind": "backlog", "queue": "jobs", "target_per_replica": 100, "stale_s": 60}]
    events = [backlog(0, "jobs", 800), backlog(30, "other", 5), tick(100, 1.0), backlog(110, "jobs", 1000)]
    # like the HPA, a workload whose signals have no fresh data holds its count
    run = run_pure(scaler(wl, evaluation_interval_s=0), events)
    assert [(d.data.desired, d.data.signals) for d in run.decisions] == [  # type: ignore[union-attr]
        (8, {"backlog:jobs": 800.0}),
        (10, {"backlog:jobs": 1000.0}),
    ]


def test_btc_drops_5pct_in_an_hour_scales_market_agents_to_at_least_10() -> None:
    wl = {
        "name": "market-agents",
        "min_replicas": 2,
        "max_replicas": 40,
        "scale_down_stabilization_s": 600,
        "rules": [{"name": "btc-crash", "symbol": "BTC-USD", "change_pct": -5, "window_s": 3600, "min_replicas": 10}],
    }
    prices = [100_000, 99_000, 97_000, 96_000, 94_800, 94_000, 97_000, 98_000, 98_000, 98_000]
    events = [tick(300 * i, p) for i, p in enumerate(prices)]
    processor = scaler(wl, evaluation_interval_s=60)
    out = run_pure(processor, events).decisions
    assert scales(events, processor) == [
        (1200.0, 2, 10, "btc-crash"),  # on the tick that made it a 5.2% fall, not at the next evaluation
        (2400.0, 10, 2, "min_replicas"),  # under 5% since 1800; 600 s of stabilization later: back to min
    ]
    first = out[0].data
    assert first.reason == "BTC-USD -5.20% within 3600s: at least 10"  # type: ignore[union-attr]
    assert first.workload == "market-agents" and out[0].subject == "market-agents"  # type: ignore[union-attr]


def test_volatility_event_rate_and_sessions_signals_combine_by_max() -> None:
    wl = {
        "name": "agents",
        "min_replicas": 1,
        "max_replicas": 50,
        "tolerance": 0,
        "signals": [
            {"kind": "volatility", "symbol": "ETH-USD", "window_s": 1200, "target_per_replica": 0.5},
            {"kind": "event_rate", "types": "llm.*", "window_s": 60, "target_per_replica": 0.05},
            {"kind": "sessions", "agent": "claude-code", "target_per_replica": 2},
        ],
    }
    events: list[Event] = [tick(60 * i, 3000 * (1 + 0.02 * (-1) ** i), "ETH-USD") for i in range(25)]
    events += [session(1500 + i, "session.started", f"s{i}") for i in range(7)]
    events += [session(1510, "session.state", "s0", state="completed")]
    events += [call(1520 + i, "openai/east") for i in range(90)]
    events.sort(key=lambda e: e.time)
    run = run_pure(scaler(wl, evaluation_interval_s=0), events)
    last = run.decisions[-1].data
    assert isinstance(last, type(run.decisions[0].data))
    signals = last.signals  # type: ignore[union-attr]
    assert set(signals) == {"volatility:ETH-USD", "rate:llm.*", "sessions"}
    assert signals["sessions"] == 6.0  # seven started, one completed: 3 replicas
    assert 4 < signals["volatility:ETH-USD"] < 4.5  # alternating 4% moves: 9 replicas
    assert 0.95 < signals["rate:llm.*"] <= 1.0  # ~1 call/s at 0.05 per replica: 20 replicas
    assert (last.desired, last.rule) == (20, "rate:llm.*")  # type: ignore[union-attr]
    first = run.decisions[0].data
    assert (first.desired, first.rule) == (9, "volatility:ETH-USD")  # type: ignore[union-attr]


def test_late_events_are_rejected_tenants_filter_and_inputs_follow_the_config() -> None:
    wl = {**QUEUE, "tenant": "acme"}
    processor = scaler(wl)
    assert processor.inputs == ("node.backlog",)
    events = [backlog(1000, "jobs", 900, tenant="other"), backlog(0, "jobs", 900, tenant="acme")]
    run = run_pure(processor, events)
    assert run.decisions == [] and [r.kind for _, r in run.rejected] == ["late"]
    events = [backlog(0, "jobs", 900, tenant="other"), backlog(10, "jobs", 400, tenant="acme")]
    assert scales(events, scaler(wl, evaluation_interval_s=0)) == [(10.0, 2, 4, "backlog:jobs")]


def test_every_replica_sees_the_same_global_state() -> None:
    events = [backlog(i * 7, "jobs", (i * 137) % 1500, tenant=f"t{i % 5}") for i in range(80)]
    pure = run_pure(scaler(QUEUE), events)
    _, parted = run_partitioned(scaler(QUEUE), events, partitions=8)
    assert [d.id for d in parted.decisions] == [d.id for d in pure.decisions] and len(pure.decisions) > 3
    assert {scaler(QUEUE).partition_key(e) for e in events} == {"scaling"}


def test_snapshot_restore_round_trips_and_continues_identically() -> None:
    wl = {
        **QUEUE,
        "signals": [
            *QUEUE["signals"],  # type: ignore[misc]
            {"kind": "volatility", "symbol": "BTC-USD", "window_s": 1200, "target_per_replica": 0.3},
            {"kind": "event_rate", "types": "market.tick", "target_per_replica": 0.01},
            {"kind": "sessions", "target_per_replica": 1},
        ],
        "rules": [{"name": "crash", "symbol": "BTC-USD", "change_pct": -3, "min_replicas": 8, "hold_s": 300}],
    }
    events = [tick(30 * i, 100_000 * (1 - 0.001 * i) * (1 + 0.004 * (-1) ** i)) for i in range(80)]
    events += [backlog(30 * i + 1, "jobs", 100 * (i % 9)) for i in range(0, 80, 5)]
    events += [session(30 * i + 2, "session.started", f"s{i}") for i in range(0, 80, 7)]
    events.sort(key=lambda e: e.time)
    processor = scaler(wl)
    whole = run_pure(processor, events)
    half = run_pure(processor, events[:50])
    doc = orjson.loads(orjson.dumps(processor.snapshot(half.state)))
    assert processor.snapshot(processor.restore(doc)) == doc
    rest = run_pure(processor, events[50:], processor.restore(doc))
    assert [d.id for d in half.decisions + rest.decisions] == [d.id for d in whole.decisions]
    assert processor.snapshot(rest.state) == processor.snapshot(whole.state)
    assert len(whole.decisions) >= 3
    assert scale_rows([whole.state])[0]["replicas"] == whole.decisions[-1].data.desired  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("workload", "message"),
    [
        ({**QUEUE, "min_replicas": 5, "max_replicas": 3}, "min_replicas 5 is above max_replicas 3"),
        ({**QUEUE, "initial_replicas": 50}, "initial_replicas 50 is outside 1..20"),
        ({"name": "w"}, "workload 'w' has neither signals nor rules"),
        ({**QUEUE, "tolerance": 1.5}, "workloads.0.tolerance: Input should be less than 1 (got 1.5)"),
        (
            {**QUEUE, "signals": [{"kind": "backlog", "queue": "q", "target_per_replica": 0}]},
            "workloads.0.signals.0.backlog.target_per_replica: Input should be greater than 0 (got 0)",
        ),
        (
            {**QUEUE, "rules": [{"name": "r", "symbol": "B", "change_pct": -5, "min_replicas": 99}]},
            "asks for 99 replicas, above max_replicas 20",
        ),
        ({**QUEUE, "max_replica": 3}, "workloads.0.max_replica: Extra inputs are not permitted (got 3)"),
    ],
)
def test_config_errors_name_the_key_and_value(workload: dict[str, Any], message: str) -> None:
    from spine.errors import UsageError
    from spine.processes import build_processor
    from spine.settings import load_settings

    with pytest.raises(UsageError) as exc:
        build_processor("scaling", load_settings(), {"workloads": [workload]})
    assert message in exc.value.message and exc.value.message.startswith("bad [scaling] config: ")


def test_node_backlog_events_have_the_queue_as_subject() -> None:
    event = make_event("node.backlog", {"queue": "jobs", "pending": 3})
    assert event.subject == "jobs" and event.type == "node.backlog"
