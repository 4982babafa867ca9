"""The alerting processor as pure input -> output: every rule kind, fire/resolve pairs, cooldown, time."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from processors.alerting import Alerter, build
from schemas import Event
from schemas.envelope import AlertDecisionEvent
from streams.processing import run_partitioned, run_pure
from tests.decisions_support import at, budget, call, heartbeat, session, tick


def alerter(*rules: dict[str, Any], **config: Any) -> Alerter:
    return build({"rules": list(rules), **config})


def alerts(events: list[Event], processor: Alerter) -> list[tuple[float, str, str, float | None]]:
    """(seconds after T0, status, dedup key, value) of every alert."""
    out: list[tuple[float, str, str, float | None]] = []
    for d in run_pure(processor, events).decisions:
        assert isinstance(d, AlertDecisionEvent)
        value = None if d.data.value is None else round(d.data.value, 2)
        out.append(((d.time - at(0)).total_seconds(), d.data.status, d.data.dedup_key, value))
    return out


BTC_DROP = {
    "kind": "rate_of_change",
    "name": "btc-drop",
    "symbol": "BTC-*",
    "change_pct": -5,
    "window_s": 3600,
    "severity": "critical",
    "labels": {"team": "trading"},
}


def test_rate_of_change_btc_falls_5pct_within_an_hour() -> None:
    prices = [100_000, 99_000, 97_000, 96_000, 94_900, 94_000, 96_000, 97_000]
    events = [tick(600 * i, p) for i, p in enumerate(prices)]
    out = run_pure(alerter(BTC_DROP), events).decisions
    # at 3600 the 100000 of t=0 has left the hour: the fall is measured from 99000
    assert [(d.time, d.data.status, d.data.value) for d in out] == [  # type: ignore[union-attr]
        (at(2400), "firing", pytest.approx(-5.1)),
        (at(3600), "resolved", pytest.approx(-3.030303)),
    ]
    fired = out[0].data
    assert isinstance(fired, type(out[1].data))
    assert fired.dedup_key == "btc-drop/BTC-USD" and fired.severity == "critical"  # type: ignore[union-attr]
    assert fired.labels == {"team": "trading", "symbol": "BTC-USD"}  # type: ignore[union-attr]
    assert fired.summary == "BTC-USD fell 5.10% within 1h (100000 -> 94900)"  # type: ignore[union-attr]


def test_rate_of_change_measures_within_the_window_only() -> None:
    # The same 6% fall spread over three hours never fires a 1 h rule.
    events = [tick(1200 * i, 100_000 * (1 - 0.0067 * i)) for i in range(10)]
    assert alerts(events, alerter(BTC_DROP)) == []
    start = {**BTC_DROP, "name": "btc-drop-start", "reference": "start", "window_s": 4 * 3600}
    assert [a[1] for a in alerts(events, alerter(start))] == ["firing"]


def test_cooldown_holds_back_a_refire_and_renotify_repeats() -> None:
    flapping = [100_000, 94_000, 96_000, 94_000, 96_000, 94_000, 94_000]
    events = [tick(300 * i, p) for i, p in enumerate(flapping)]
    rule = {**BTC_DROP, "cooldown_s": 1200}
    # fire at 300, resolve at 600, re-fire held back until 1500 (cooldown from 300), then resolve... and so on
    assert alerts(events, alerter(rule)) == [
        (300.0, "firing", "btc-drop/BTC-USD", -6.0),
        (600.0, "resolved", "btc-drop/BTC-USD", -4.0),
        (1500.0, "firing", "btc-drop/BTC-USD", -6.0),
    ]
    still = [tick(0, 100_000), *(tick(60 * i, 94_000) for i in range(1, 40))]
    repeat = {**BTC_DROP, "cooldown_s": 900, "renotify": True}
    assert [a[0] for a in alerts(still, alerter(repeat))] == [60.0, 960.0, 1860.0]


def test_threshold_with_hysteresis_per_subject() -> None:
    rule = {
        "kind": "threshold",
        "name": "slow-calls",
        "type": "llm.call",
        "field": "latency_ms",
        "subject": "openai/*",
        "op": ">",
        "value": 5000,
        "resolve_at": 3000,
    }
    events = [
        call(0, "openai/east", latency_ms=6000),
        call(1, "azure/west", latency_ms=9000),  # not matched
        call(2, "openai/east", latency_ms=4000),  # below 5000 but above 3000: still firing
        call(3, "openai/east", latency_ms=2500),
        call(2.5, "openai/east", latency_ms=9000),  # older than the last value: never replaces it
    ]
    assert alerts(events, alerter(rule)) == [
        (0.0, "firing", "slow-calls/openai/gpt-4o", 6000.0),
        (3.0, "resolved", "slow-calls/openai/gpt-4o", 2500.0),
    ]


def test_volatility_stdev_and_zscore() -> None:
    calm = [tick(60 * i, 100_000 * (1 + 0.001 * (-1) ** i)) for i in range(30)]
    wild = [tick(60 * (30 + i), 100_000 * (1 + 0.02 * (-1) ** i)) for i in range(10)]
    stdev_rule = {"kind": "volatility", "name": "btc-vol", "symbol": "BTC-USD", "window_s": 1800, "stdev_pct": 1.0}
    out = alerts(calm + wild, alerter(stdev_rule))
    # judged as each interval closes: three wild returns in 29 lift the stdev past 1%
    assert [(a[0], a[1]) for a in out] == [(1980.0, "firing")]
    z_rule = {"kind": "volatility", "name": "btc-z", "symbol": "BTC-USD", "window_s": 1800, "zscore": 4}
    out = alerts([*calm, wild[0], wild[1]], alerter(z_rule))
    assert [(a[0], a[1]) for a in out] == [(1860.0, "firing")]
    assert out[0][3] is not None and abs(out[0][3]) >= 4


def test_error_rate_spike_per_provider_fires_and_resolves_as_the_window_moves_on() -> None:
    rule = {"kind": "error_rate", "name": "provider-errors", "threshold": 0.5, "min_requests": 4, "window_s": 60}
    events = [call(i, "openai/east") for i in range(4)]
    events += [call(4 + i, "openai/east", status="error", error="server_error") for i in range(4)]
    events += [call(5 + i, "azure/west", status="error", error="bad_request") for i in range(6)]  # not errors
    events += [call(130 + i, "azure/west") for i in range(2)]  # the window moved on: openai resolves at a sweep
    assert alerts(events, alerter(rule)) == [
        (7.0, "firing", "provider-errors/openai", 0.5),
        (130.0, "resolved", "provider-errors/openai", None),
    ]


def test_session_idle_and_error() -> None:
    idle = {"kind": "session", "name": "session-idle", "on": "idle", "idle_s": 300}
    error = {"kind": "session", "name": "session-error", "on": "error", "severity": "critical"}
    events = [
        session(0, "session.started", "s1", project="checkout"),
        session(10, "session.state", "s1", state="idle"),
        session(100, "session.state", "s1", state="idle"),  # the same state again: idle still counts from 10
        heartbeat(200, "node-a"),
        heartbeat(320, "node-a"),  # the clock passes 310: idle for 310 s
        session(330, "session.message", "s1", role="user"),  # activity, but the state is still idle
        session(400, "session.state", "s1", state="running"),
        session(410, "session.state", "s1", state="error", reason="tool crashed"),
        session(500, "session.state", "s1", state="completed"),
    ]
    assert alerts(events, alerter(idle, error)) == [
        (320.0, "firing", "session-idle/s1", 310.0),
        (330.0, "resolved", "session-idle/s1", 0.0),
        (410.0, "firing", "session-error/s1", None),
        (500.0, "resolved", "session-error/s1", None),
    ]


def test_node_offline_after_missed_heartbeats_and_back() -> None:
    rule = {"kind": "node_offline", "name": "node-offline", "missed_heartbeats": 3}
    events = [
        heartbeat(0, "n1"),
        heartbeat(0, "n2"),
        *(heartbeat(10 * i, "n2") for i in range(1, 6)),
        heartbeat(60, "n1"),
    ]
    assert alerts(events, alerter(rule, sweep_interval_s=10)) == [
        (40.0, "firing", "node-offline/n1", 40.0),
        (60.0, "resolved", "node-offline/n1", 0.0),
    ]


def test_budget_crossed_fires_per_level_and_resolves_when_the_period_ends() -> None:
    rule = {"kind": "budget", "name": "budget", "severity": "critical", "levels": ["hard"]}
    soft_too = {"kind": "budget", "name": "budget-soft", "levels": ["soft"], "severity": "info"}
    day_end = 15 * 3600  # T0 is 09:00 UTC: the day bucket ends 15 h later
    events = [
        budget(60, "soft", 21.0, 20.0),
        budget(120, "hard", 50.5, 50.0),
        tick(day_end - 1, 1.0, tenant="acme"),
        tick(day_end + 5, 1.0, tenant="acme"),
    ]
    cfg = {"rules": [rule, soft_too, {**BTC_DROP, "symbol": "NONE"}]}
    assert alerts(events, build(cfg)) == [
        (60.0, "firing", "budget-soft/daily/acme/soft", 21.0),
        (120.0, "firing", "budget/daily/acme/hard", 50.5),
        (day_end + 5, "resolved", "budget-soft/daily/acme/soft", 21.0),  # swept in key order
        (day_end + 5, "resolved", "budget/daily/acme/hard", 50.5),
    ]


def test_late_events_are_rejected_out_of_order_ones_land_in_their_bucket() -> None:
    # The tick at 2900 arrives after the one at 3000: it raises the hour's high (the fall is now 5.4%)
    # but is not the latest price. The one at 2000 is 1000 s behind the clock: late (lateness 300 s).
    events = [tick(0, 100_000), tick(3000, 96_000), tick(2900, 101_500), tick(2000, 90_000)]
    run = run_pure(alerter(BTC_DROP), events)
    assert [r.kind for _, r in run.rejected] == ["late"]
    assert [(d.time, d.data.status, d.data.value) for d in run.decisions] == [  # type: ignore[union-attr]
        (at(2900), "firing", pytest.approx(-5.418719))
    ]


def test_inputs_follow_the_rules() -> None:
    assert alerter().inputs == ()
    assert alerter(BTC_DROP, {"kind": "node_offline", "name": "n"}).inputs == ("market.tick", "node.heartbeat")
    rule = {"kind": "threshold", "name": "cpu", "type": "node.heartbeat", "field": "cpu_pct", "op": ">", "value": 90}
    assert alerter(rule).inputs == ("node.heartbeat",)


def test_snapshot_restore_round_trips_and_continues_identically() -> None:
    rules: list[dict[str, Any]] = [
        BTC_DROP,
        {"kind": "volatility", "name": "btc-vol", "symbol": "BTC-USD", "window_s": 1800, "stdev_pct": 0.5},
        {"kind": "error_rate", "name": "errs", "threshold": 0.3, "min_requests": 3},
        {"kind": "session", "name": "idle", "on": "idle", "idle_s": 60},
        {"kind": "node_offline", "name": "off"},
    ]
    events = [tick(60 * i, 100_000 * (1 - 0.002 * i) + 500 * (-1) ** i, tenant="acme") for i in range(60)]
    events += [call(3600 + i, "openai/east", status="error" if i % 2 else "ok") for i in range(10)]
    events += [session(3700, "session.started", "s1"), session(3710, "session.state", "s1", state="idle")]
    events += [heartbeat(3720, "n1"), tick(3900, 80_000, tenant="acme")]
    events.sort(key=lambda e: e.time)
    processor = alerter(*rules)
    whole = run_pure(processor, events)
    half = run_pure(processor, events[:40])
    doc = orjson.loads(orjson.dumps(processor.snapshot(half.state)))
    assert processor.snapshot(processor.restore(doc)) == doc
    rest = run_pure(processor, events[40:], processor.restore(doc))
    assert [d.id for d in half.decisions + rest.decisions] == [d.id for d in whole.decisions]
    assert processor.snapshot(rest.state) == processor.snapshot(whole.state)
    assert len(whole.decisions) >= 4
    _, parted = run_partitioned(alerter(*rules), events, partitions=4)
    assert [d.id for d in parted.decisions] == [d.id for d in whole.decisions]


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (
            [{"kind": "threshold", "name": "x", "type": "market.tick", "field": "venue", "op": ">", "value": 1}],
            "rules.0.threshold: Value error, market.tick has no numeric field 'venue'; numeric fields: "
            "ask, bid, change_24h_pct, price, volume",
        ),
        ([{"kind": "rate_of_change", "name": "x", "change_pct": 0}], "change_pct must not be 0"),
        ([{"kind": "nope", "name": "x"}], "rules.0: Input tag 'nope' found using 'kind' does not match"),
        ([{"kind": "error_rate", "name": "x", "threshold": 2}], "rules.0.error_rate.threshold: Input should be"),
        (
            [{"kind": "volatility", "name": "v", "stdev_pct": 1, "zscore": 2}],
            "set exactly one of stdev_pct and zscore",
        ),
        ([{"kind": "session", "name": "Bad Name", "on": "idle"}], "rules.0.session.name: String should match"),
        ([{"kind": "node_offline", "name": "a"}, {"kind": "node_offline", "name": "a"}], "'a' is used twice"),
    ],
)
def test_config_errors_name_the_key_and_value(rules: list[dict[str, Any]], message: str) -> None:
    from spine.errors import UsageError
    from spine.processes import build_processor
    from spine.settings import load_settings

    with pytest.raises(UsageError) as exc:
        build_processor("alerting", load_settings(), {"rules": rules})
    assert message in exc.value.message and exc.value.message.startswith("bad [alerting] config: ")
