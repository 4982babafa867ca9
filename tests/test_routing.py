"""The routing processor as pure input -> output: breakers, strategies, 429 pressure, time."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from processors.routing import Router, RoutingConfig, build, route_rows
from schemas import Event
from schemas.envelope import RouteDecisionEvent
from streams.processing import run_partitioned, run_pure
from streams.routes import choose
from tests.decisions_support import at, call, provider, table

EAST, WEST = "openai/east", "azure/west"


def router(**config: Any) -> Router:
    return build(config)


def routes(decisions: list[Event]) -> list[RouteDecisionEvent]:
    return [d for d in decisions if isinstance(d, RouteDecisionEvent)]


def two_deployments() -> list[Event]:
    return [call(0, EAST), call(1, WEST)]


def test_breaker_opens_after_n_failures_cools_down_half_opens_and_closes() -> None:
    events = [
        *two_deployments(),
        *(call(10 + i, EAST, status="error", error="server_error") for i in range(5)),
        call(20, WEST),
        call(41, WEST),  # the clock passes open_until (10+4 + 30 = 44)? not yet
        call(45, WEST),  # now it has: east turns half-open at 44
        *(call(50 + i, EAST) for i in range(3)),  # three successful probes close it
        *(call(60 + i, EAST) for i in range(20)),  # healthy traffic changes nothing visible
    ]
    out = routes(run_pure(router(), events).decisions)
    assert [d.data.version for d in out] == [1, 2, 3, 4, 5]
    assert table(out[0]) == [(EAST, 1.0, "closed")]
    assert table(out[1]) == [(WEST, 0.5, "closed"), (EAST, 0.5, "closed")]
    assert table(out[2]) == [(WEST, 1.0, "closed"), (EAST, 0.0, "open")]
    assert out[2].data.reason == "openai/east opened: 5 failures in 60s (server_error 5); probe after 30s"
    assert out[2].data.candidates[1].open_until == at(44)
    assert out[2].time == at(14)
    assert table(out[3]) == [(WEST, 0.9091, "closed"), (EAST, 0.0909, "half_open")]
    assert out[3].time == at(45) and "half-open" in out[3].data.reason
    assert table(out[4]) == [(WEST, 0.5, "closed"), (EAST, 0.5, "closed")]
    assert out[4].time == at(52) and out[4].data.reason == "openai/east closed after 3 successful probes"


def test_a_failed_probe_reopens_with_a_doubled_cooldown() -> None:
    events = [
        *two_deployments(),
        *(call(10 + i, EAST, status="error", error="timeout") for i in range(5)),
        call(45, WEST),  # half-open at 44
        call(46, EAST, status="error", error="timeout"),  # the probe fails: open for 60 s
        call(100, WEST),
        call(107, WEST),  # half-open again at 106
    ]
    out = routes(run_pure(router(), events).decisions)
    states = [next(c.breaker for c in d.data.candidates if c.deployment == EAST) for d in out]
    assert states == ["closed", "closed", "open", "half_open", "open", "half_open"]
    reopened = out[4].data.candidates[1]
    assert reopened.open_until == at(106) and out[4].data.reason.endswith("probe after 60s")
    assert out[5].time == at(107)


def test_error_rate_trips_only_with_enough_calls_and_bad_requests_never_count() -> None:
    cfg = {"breaker": {"failures": 100, "error_rate": 0.5, "min_requests": 10}}
    # 4 timeouts out of 6: above 50% but only 6 calls; bad requests are the caller's fault.
    events = [call(0, EAST), call(0.5, WEST)]
    events += [call(1 + i, EAST, status="error", error="timeout") for i in range(4)]
    events += [call(6 + i, EAST, status="error", error="bad_request") for i in range(10)]
    assert len(routes(run_pure(router(**cfg), events).decisions)) == 2
    # bad requests count as answered calls: 8 more timeouts make 12 failures of 23 calls
    events += [call(20, EAST, status="error", error="timeout") for _ in range(8)]
    out = routes(run_pure(router(**cfg), events).decisions)
    assert table(out[-1])[-1] == (EAST, 0.0, "open")
    assert "error rate 52% over 23 calls (bad_request 10, timeout 12)" in out[-1].data.reason
    assert len(routes(run_pure(router(**cfg), events[:-1]).decisions)) == 2


def test_429s_lower_the_weight_in_steps_before_the_breaker_trips() -> None:
    cfg = {"breaker": {"min_requests": 10, "error_rate": 0.5}, "rate_limit": {"min_requests": 5, "step": 0.1}}
    events = [call(i * 0.1, WEST) for i in range(5)] + [call(1 + i * 0.1, EAST) for i in range(5)]
    events += [call(2 + i, EAST, status="error", error="rate_limit") for i in range(2)]  # 2/7 429s
    events += [call(4 + i, EAST, status="error", error="rate_limit") for i in range(5)]  # 7/12: trips
    out = routes(run_pure(router(**cfg), events).decisions)
    weights = [{c.deployment: (c.weight, c.breaker) for c in d.data.candidates}[EAST] for d in out[1:]]
    # 429 shares 1/6, 2/7, 3/8, 4/9 -> x0.8, x0.7, x0.6, x0.5 (west at x1 absorbs the rest); 5/10 is
    # no new step; 6/11 is an error rate above 50% over 10+ calls: open
    assert weights == [
        (0.5, "closed"),
        (0.4444, "closed"),
        (0.4118, "closed"),
        (0.375, "closed"),
        (0.3333, "closed"),
        (0.0, "open"),
    ]
    assert out[2].data.reason == "openai/east weight x0.8 (429s 17%)"
    assert "429s: weight x0.8" in next(c.why for c in out[2].data.candidates if c.deployment == EAST)
    assert out[-1].data.reason.startswith("openai/east opened: error rate 55% over 11 calls")


def test_a_single_deployment_group_is_cooled_down_too_and_recovers_through_a_probe() -> None:
    events = [
        call(0, EAST, group="solo"),
        *(call(1 + i, EAST, status="error", error="auth", group="solo") for i in range(5)),
    ]
    out = routes(run_pure(router(), events).decisions)
    assert table(out[-1]) == [(EAST, 0.0, "open")]
    decision = out[-1].data
    assert choose(decision, "user-1", now=at(30)) is None  # cooling down: fail fast
    probe = choose(decision, "user-1", now=at(35))  # the probe time passed: one probe goes through
    assert probe is not None and probe.deployment == EAST
    events += [call(36 + i, EAST, group="solo") for i in range(3)]
    out = routes(run_pure(router(), events).decisions)
    assert [table(d) for d in out[-2:]] == [[(EAST, 0.1, "half_open")], [(EAST, 1.0, "closed")]]


def test_strategies_cheapest_lowest_latency_fallback_weighted() -> None:
    configs = [
        provider(0, "openai/a", priority=2, input_cost_per_1k=0.0025, output_cost_per_1k=0.01, weight=3),
        provider(0, "azure/b", priority=1, input_cost_per_1k=0.0005, output_cost_per_1k=0.0015, weight=1),
        provider(0, "groq/c", priority=0, weight=0),
    ]
    lat = [call(1 + i * 0.01, d, latency_ms=ms) for i in range(6) for d, ms in (("openai/a", 300), ("azure/b", 900))]
    lat += [call(2 + i * 0.01, "groq/c", latency_ms=1500) for i in range(6)]
    lat.append(call(11, "openai/a", latency_ms=300))  # the next re-ranking tick (every 10 s)

    def last_table(strategy: str) -> list[tuple[str, float, str]]:
        cfg = {"groups": {"gpt-4o": {"strategy": strategy}}}
        return table(routes(run_pure(router(**cfg), configs + lat).decisions)[-1])

    # priced deployments by price, unpriced last (groq has no price and no cost on its calls)
    assert [d for d, _, _ in last_table("cheapest")] == ["azure/b", "openai/a", "groq/c"]
    assert [d for d, _, _ in last_table("lowest_latency")] == ["openai/a", "azure/b", "groq/c"]
    assert [d for d, _, _ in last_table("fallback")] == ["groq/c", "azure/b", "openai/a"]
    assert last_table("weighted") == [
        ("groq/c", 0.0, "closed"),
        ("azure/b", 0.25, "closed"),
        ("openai/a", 0.75, "closed"),
    ]


def test_lowest_latency_ranking_has_hysteresis_and_waits_for_the_next_tick() -> None:
    cfg = {"groups": {"gpt-4o": {"strategy": "lowest_latency"}}, "switch_margin": 0.2, "min_samples": 3}
    events = [call(i * 0.1, d, latency_ms=ms) for i in range(5) for d, ms in ((EAST, 500), (WEST, 900))]
    events.append(call(10, EAST, latency_ms=500))  # tick: east ranks first
    # west gets a little faster than east (5% better): no switch, within the margin
    events += [call(11 + i * 0.1, WEST, latency_ms=470) for i in range(40)]
    events.append(call(20.5, EAST, latency_ms=500))
    # west gets much faster: switches, but only at the next 10 s tick
    events += [call(21 + i * 0.08, WEST, latency_ms=200) for i in range(100)]
    events.append(call(29.9, EAST, latency_ms=500))
    first = routes(run_pure(router(**cfg), events).decisions)
    assert [d for d, _, _ in table(first[-1])] == [EAST, WEST]
    events.append(call(30, EAST, latency_ms=500))
    out = routes(run_pure(router(**cfg), events).decisions)
    assert [d for d, _, _ in table(out[-1])] == [WEST, EAST] and out[-1].time == at(30)
    assert out[-1].data.reason == "re-ranked"


def test_tables_are_emitted_only_when_routing_changes() -> None:
    events = [*two_deployments(), *(call(2 + i * 0.5, d) for i in range(200) for d in (EAST, WEST))]
    out = routes(run_pure(router(), events).decisions)
    assert [d.data.version for d in out] == [1, 2]


def test_config_provider_adds_reconfigures_moves_and_disables_deployments() -> None:
    cfg = {
        "discover": False,
        "deployments": [{"deployment": EAST, "model_group": "gpt-4o", "provider": "openai", "model": "gpt-4o"}],
    }
    events = [
        call(0, EAST),
        call(1, WEST),  # not configured, not discovered
        provider(2, WEST, weight=3),
        provider(3, WEST, weight=3),  # the same again: nothing changes
        provider(4, EAST, weight=1, group="gpt-4o-mini"),
        provider(5, WEST, enabled=False),
    ]
    run = run_pure(router(**cfg), events)
    out = routes(run.decisions)
    assert [(d.data.model_group, d.data.version, table(d)) for d in out] == [
        ("gpt-4o", 1, [(EAST, 1.0, "closed")]),
        ("gpt-4o", 2, [(WEST, 0.75, "closed"), (EAST, 0.25, "closed")]),  # weighted: by priority, then name
        ("gpt-4o", 3, [(WEST, 1.0, "closed")]),
        ("gpt-4o-mini", 1, [(EAST, 1.0, "closed")]),
        ("gpt-4o", 4, []),
    ]
    assert run.state.tenants["acme"].unknown == 1


def test_out_of_order_calls_count_in_health_late_ones_are_rejected() -> None:
    events = [
        call(100, EAST),
        call(101, WEST),
        call(80, EAST, status="error", error="timeout"),  # 21 s late: within the 30 s lateness
        call(60, EAST, status="error", error="timeout"),  # 41 s late: dead-lettered
    ]
    run = run_pure(router(), events)
    assert [r.kind for _, r in run.rejected] == ["late"]
    assert "41s behind" in run.rejected[0][1].reason
    rows = {r["deployment"]: r for r in route_rows([run.state])}
    assert rows[EAST]["requests"] == 2 and rows[EAST]["errors"] == {"timeout": 1}


def test_calls_from_before_a_recovery_do_not_re_trip_the_breaker() -> None:
    events = [*two_deployments(), *(call(10 + i, EAST, status="error", error="server_error") for i in range(5))]
    events += [call(45, WEST), *(call(46 + i, EAST) for i in range(3))]  # closed at 48
    # five failures that started before the close arrive late: health counts them, the breaker does not
    events += [call(47.5, EAST, status="error", error="server_error") for _ in range(5)]
    run = run_pure(router(), events)
    assert table(routes(run.decisions)[-1]) == [(WEST, 0.5, "closed"), (EAST, 0.5, "closed")]
    rows = {r["deployment"]: r for r in route_rows([run.state])}
    assert rows[EAST]["errors"] == {"server_error": 10}


def test_health_figures_latency_ttft_cost() -> None:
    events = [call(i, EAST, latency_ms=100 + 10 * i, ttft_ms=50, cost_usd=0.002) for i in range(20)]
    events.append(call(20, EAST, status="error", error="timeout", latency_ms=None, cost_usd=None))
    (row,) = route_rows([run_pure(router(), events).state])
    assert row["requests"] == 21 and row["error_rate"] == pytest.approx(1 / 21, abs=1e-4)
    assert 180 <= row["p50_ms"] <= 220 and 260 <= row["p95_ms"] <= 320  # 10%-wide histogram bins
    assert 50 <= row["ttft_p50_ms"] <= 56 and row["cost_per_1k"] == pytest.approx(0.002)
    # the window slides: a minute later only the newest calls count
    later = run_pure(router(), [*events, call(75, EAST)])
    (row,) = route_rows([later.state])
    assert row["requests"] < 21


def test_snapshot_restore_round_trips_and_continues_identically() -> None:
    events = [*two_deployments(), *(call(10 + i, EAST, status="error", error="server_error") for i in range(5))]
    events += [call(20 + i, d, latency_ms=200 + i, cost_usd=0.001) for i in range(40) for d in (EAST, WEST)]
    whole = run_pure(router(), events)
    processor = router()
    half = run_pure(processor, events[:20])
    doc = orjson.loads(orjson.dumps(processor.snapshot(half.state)))
    restored = processor.restore(doc)
    assert processor.snapshot(restored) == doc
    rest = run_pure(processor, events[20:], restored)
    assert [d.id for d in half.decisions + rest.decisions] == [d.id for d in whole.decisions]
    assert processor.snapshot(rest.state) == processor.snapshot(whole.state)


def test_same_input_same_decisions_and_tenants_partition_independently() -> None:
    events = [
        call(i, EAST if i % 3 else WEST, tenant=f"t{i % 4}", status="error", error="timeout")
        if i % 5 == 0
        else call(i, EAST if i % 3 else WEST, tenant=f"t{i % 4}")
        for i in range(200)
    ]
    a, b = run_pure(router(), events), run_pure(router(), events)
    assert [e.id for e in a.decisions] == [e.id for e in b.decisions] and a.decisions == b.decisions
    _, parted = run_partitioned(router(), events, partitions=4)
    assert sorted(e.id for e in parted.decisions) == sorted(e.id for e in a.decisions)


def test_config_errors_name_the_key_and_value() -> None:
    from spine.errors import UsageError
    from spine.processes import build_processor
    from spine.settings import load_settings

    settings = load_settings()
    with pytest.raises(UsageError) as exc:
        build_processor("routing", settings, {"breaker": {"error_rate": 1.5}})
    assert (
        exc.value.message
        == "bad [routing] config: breaker.error_rate: Input should be less than or equal to 1 (got 1.5)"
    )
    with pytest.raises(UsageError) as exc:
        build_processor("routing", settings, {"groups": {"gpt-4o": {"strategy": "random"}}})
    assert "groups.gpt-4o.strategy" in exc.value.message and "'random'" in exc.value.message
    with pytest.raises(UsageError) as exc:
        build_processor("routing", settings, {"windw_s": 5})
    assert "windw_s: Extra inputs are not permitted" in exc.value.message
    assert RoutingConfig().strategy("x") == "weighted"


def test_route_time_follows_event_time_not_the_wall_clock() -> None:
    events = [*two_deployments(), *(call(10 + i, EAST, status="error", error="server_error") for i in range(5))]
    out = routes(run_pure(router(), events).decisions)
    assert all(d.time - at(0) < timedelta(minutes=1) for d in out)
