"""The session supervisor as pure input -> output: hand-built event sequences, explicit times and ids."""

from __future__ import annotations

import textwrap
import tomllib
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import orjson
import pytest
from pydantic import ValidationError

from processors import registry
from processors.base import Reject, run_pure
from processors.supervisor import (
    KillOnCostConfig,
    NodeLivenessConfig,
    RestartOnCompactionConfig,
    ResumeOnIdleConfig,
    SessionSupervisor,
    SupervisorConfig,
    SupervisorSnapshotError,
    SupervisorState,
    build,
    is_legal,
    node_rows,
    session_detail,
    session_rows,
)
from processors.supervisor import config as config_module
from schemas import Event, make_event
from streams.processing import PureRun, run_partitioned

T0 = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)
DAY = "2026-11-21"  # T0's day bucket; it ends 14 hours after T0
DAY_END_S = 14 * 3600


class Feed:
    """Builds events with explicit, predictable ids and times (seconds after T0)."""

    def __init__(self, tenant: str = "acme") -> None:
        self.tenant = tenant
        self.events: list[Event] = []

    def add(self, type_name: str, at: float, data: dict[str, Any], tenant: str | None = None) -> Event:
        event = make_event(
            type_name,
            data,
            id=f"evt-{len(self.events) + 1:04d}",
            time=T0 + timedelta(seconds=at),
            tenant=tenant or self.tenant,
            source="tests",
        )
        self.events.append(event)
        return event

    def started(self, session: str, at: float, node: str = "node-a", project: str | None = "checkout") -> Event:
        return self.add(
            "session.started",
            at,
            {"session_id": session, "node_id": node, "agent": "claude-code", "project": project, "model": "a/m"},
        )

    def state(self, session: str, status: str, at: float, node: str | None = None) -> Event:
        data: dict[str, Any] = {"session_id": session, "state": status}
        if node is not None:
            data["node_id"] = node
        return self.add("session.state", at, data)

    def session_hb(self, session: str, at: float, status: str | None = None, node: str = "node-a") -> Event:
        data: dict[str, Any] = {"session_id": session, "node_id": node, "tokens_used": int(at)}
        if status is not None:
            data["state"] = status
        return self.add("session.heartbeat", at, data)

    def message(self, session: str, at: float) -> Event:
        return self.add("session.message", at, {"session_id": session, "role": "assistant", "tokens": 10})

    def node_hb(self, node: str, at: float, interval: float = 10.0) -> Event:
        return self.add("node.heartbeat", at, {"node_id": node, "hostname": f"{node}.lan", "interval_s": interval})

    def tick(self, at: float) -> Event:
        """Advance the tenant's clock: a heartbeat of a node that never goes offline in these tests."""
        return self.node_hb("clock", at, interval=86_400.0)

    def cost(self, session: str, usd: float, at: float, bucket: str = DAY, period: str = "day") -> Event:
        return self.add(
            "decision.cost",
            at,
            {"period": period, "bucket": bucket, "dimension": "session", "key": session, "cost_usd": usd, "calls": 1},
        )

    def budget(
        self, scope: str, key: str, at: float, level: str = "hard", bucket: str = DAY, tenant: str | None = None
    ) -> Event:
        return self.add(
            "decision.budget",
            at,
            {
                "budget": f"{scope}-daily",
                "scope": scope,
                "key": key,
                "period": "day",
                "bucket": bucket,
                "level": level,
                "limit_usd": 100.0,
                "spent_usd": 101.5,
            },
            tenant=tenant,
        )


def supervisor(**overrides: Any) -> SessionSupervisor:
    return SessionSupervisor(SupervisorConfig.model_validate(overrides))


def data(event: Event) -> Any:
    """An event's payload, untyped: each test knows which decision it looks at."""
    return event.data


def commands(run: PureRun[Any]) -> list[tuple[str, str, str, int]]:
    """(action, session, policy, attempt) of every decision.command, in order."""
    out: list[tuple[str, str, str, int]] = []
    for event in run.decisions:
        if event.type == "decision.command":
            command = data(event)
            out.append((command.action, command.session_id, command.policy, command.attempt))
    return out


def alerts(run: PureRun[Any]) -> list[tuple[str, str]]:
    """(dedup_key, status) of every decision.alert, in order."""
    return [(data(e).dedup_key, data(e).status) for e in run.decisions if e.type == "decision.alert"]


def session_of(run: PureRun[SupervisorState], session: str, tenant: str = "acme") -> Any:
    return run.state.tenants[tenant].sessions[session]


def round_trip(processor: SessionSupervisor, state: SupervisorState) -> SupervisorState:
    return processor.restore(orjson.loads(orjson.dumps(processor.snapshot(state))))


# --- config and registration ------------------------------------------------------------------


def test_config_defaults_are_a_working_supervisor() -> None:
    config = SupervisorConfig()
    assert config.nodes.missed_heartbeats == 3
    assert config.resume_on_idle == ResumeOnIdleConfig(
        enabled=True, idle_threshold_s=300.0, max_retries=3, reset_window_s=3600.0
    )
    assert config.restart_on_compaction == RestartOnCompactionConfig(enabled=True, max_retries=2, reset_window_s=3600.0)
    assert config.kill_on_cost.session_limit_usd is None
    assert config.kill_on_cost.on_hard_budget
    for model in (
        SupervisorConfig,
        NodeLivenessConfig,
        ResumeOnIdleConfig,
        RestartOnCompactionConfig,
        KillOnCostConfig,
    ):
        assert all(f.description for f in model.model_fields.values()), model


@pytest.mark.parametrize(
    "bad",
    [
        {"nodes": {"missed_heartbeats": 0}},
        {"resume_on_idle": {"idle_threshold_s": -1}},
        {"resume_on_idle": {"max_retries": 0}},
        {"restart_on_compaction": {"reset_window_s": 0}},
        {"kill_on_cost": {"session_limit_usd": 0}},
        {"kill_on_cost": {"budget_scopes": ["provider"]}},
        {"kill_on_cost": {"on_hard_budget": False}},  # enabled with no trigger
        {"resume_on_idle": {"idle_treshold_s": 60}},  # typo: extra fields are errors
        {"unknown": 1},
    ],
)
def test_config_rejects_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        SupervisorConfig.model_validate(bad)


def test_config_is_frozen_and_kill_can_be_disabled() -> None:
    config = SupervisorConfig(kill_on_cost=KillOnCostConfig(enabled=False, on_hard_budget=False))
    with pytest.raises(ValidationError):
        config.retry_cap_alerts = False  # type: ignore[misc]


def test_config_docstring_example_is_valid() -> None:
    doc = config_module.__doc__ or ""
    table = doc[doc.index("[supervisor]\n") : doc.index("``processors.supervisor.build")]
    parsed = tomllib.loads(textwrap.dedent("    " + table))
    config = build(parsed["supervisor"]).config
    assert config.kill_on_cost.session_limit_usd == 25.0
    assert config.nodes.offline_severity == "critical"


def test_registry_builds_the_supervisor_from_its_config_table() -> None:
    processor = registry.build("supervisor", {"resume_on_idle": {"idle_threshold_s": 60}})
    assert isinstance(processor, SessionSupervisor)
    assert processor.name == "supervisor"
    assert processor.inputs == ("session.>", "node.heartbeat", "decision.cost", "decision.budget")
    assert processor.config.resume_on_idle.idle_threshold_s == 60
    assert isinstance(registry.build("supervisor", None), SessionSupervisor)


# --- the session state machine ------------------------------------------------------------------


def test_transition_table() -> None:
    assert is_legal(None, "idle")  # adoption of a session first seen mid-stream
    assert is_legal("running", "idle") and is_legal("idle", "running") and is_legal("compacted", "running")
    assert is_legal("error", "running") and is_legal("running", "completed")
    assert is_legal("completed", "completed")  # a repeated report is a no-op
    assert not is_legal("completed", "running")
    assert not is_legal("error", "idle")
    assert not is_legal("error", "compacted")


def test_legal_lifecycle_updates_the_session() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "idle", 10)
    feed.state("s1", "running", 20)
    feed.state("s1", "compacted", 30)
    feed.state("s1", "running", 40, node="node-b")
    feed.state("s1", "error", 50)
    feed.state("s1", "running", 60)
    feed.state("s1", "completed", 70)
    run = run_pure(supervisor(restart_on_compaction={"enabled": False}), feed.events)
    assert run.rejected == []
    s1 = session_of(run, "s1")
    assert (s1.status, s1.transitions, s1.node_id, s1.project) == ("completed", 8, "node-b", "checkout")
    assert s1.status_since_us == s1.state_at_us


def test_illegal_transition_is_rejected_and_the_session_keeps_its_state() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "completed", 10)
    bad = feed.state("s1", "running", 20)
    feed.started("s2", 30)
    feed.state("s2", "error", 40)
    bad2 = feed.session_hb("s2", 50, status="idle")
    run = run_pure(supervisor(), feed.events)
    assert [(event.id, reject.kind) for event, reject in run.rejected] == [(bad.id, "rejected"), (bad2.id, "rejected")]
    assert "completed->running" in run.rejected[0][1].reason
    assert "terminal" in run.rejected[0][1].reason
    assert "error->idle" in run.rejected[1][1].reason
    s1, s2 = session_of(run, "s1"), session_of(run, "s2")
    assert s1.status == "completed" and s2.status == "error"
    assert s1.illegal_transitions == 1
    assert s1.last_illegal == {
        "from": "completed",
        "to": "running",
        "event_id": bad.id,
        "event_type": "session.state",
        "at_us": s1.last_illegal["at_us"],
    }
    # a restarted session id is illegal too: completed is terminal
    feed.started("s1", 60)
    again = run_pure(supervisor(), feed.events)
    assert again.rejected[-1][1].kind == "rejected"
    assert session_of(again, "s1").status == "completed"


def test_stale_state_report_is_dead_lettered_as_late_and_not_applied() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "idle", 20)
    late = feed.state("s1", "compacted", 15)  # older than the idle report
    run = run_pure(supervisor(), feed.events)
    assert [(e.id, r.kind) for e, r in run.rejected] == [(late.id, "late")]
    assert session_of(run, "s1").status == "idle"
    assert session_of(run, "s1").late_events == 1
    assert commands(run) == []  # no restart for a compaction that was superseded


def test_out_of_order_session_heartbeats_do_not_roll_state_back() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.session_hb("s1", 20, status="idle")
    feed.session_hb("s1", 15, status="running")  # delayed: superseded, not dead-lettered
    feed.session_hb("s1", 25, status="idle")
    run = run_pure(supervisor(), feed.events)
    s1 = session_of(run, "s1")
    assert run.rejected == []
    assert (s1.status, s1.late_events, s1.tokens_used) == ("idle", 1, 25)
    # an explicit state change older than the newest heartbeat is superseded too
    late = feed.state("s1", "running", 22)
    run = run_pure(supervisor(), feed.events)
    assert [(e.id, r.kind) for e, r in run.rejected] == [(late.id, "late")]


def test_session_adopted_mid_stream_and_a_late_started_fills_in_metadata() -> None:
    feed = Feed()
    feed.state("s1", "idle", 10, node="node-b")
    feed.started("s1", 5, node="node-a", project="billing")
    run = run_pure(supervisor(), feed.events)
    s1 = session_of(run, "s1")
    assert run.rejected == []
    assert (s1.status, s1.node_id, s1.project, s1.agent) == ("idle", "node-b", "billing", "claude-code")
    assert s1.started_us is not None


# --- nodes --------------------------------------------------------------------------------------


def test_node_goes_offline_after_missed_heartbeats_and_the_alert_resolves() -> None:
    feed = Feed()
    feed.node_hb("node-a", 0)
    feed.started("s1", 1)
    feed.tick(29)
    feed.tick(30)  # exactly 3 intervals: not yet missed
    feed.tick(31)  # more than 3 intervals: offline
    feed.tick(45)  # no second firing
    feed.node_hb("node-a", 50)  # back
    processor = supervisor()
    run = run_pure(processor, feed.events[:4])
    assert alerts(run) == []
    run = run_pure(processor, feed.events[:5])
    assert alerts(run) == [("node-offline/node-a", "firing")]
    firing = run.decisions[-1]
    assert firing.subject == "node-offline/node-a"
    assert data(firing).rule == "node-offline"
    assert data(firing).labels == {"node": "node-a", "sessions": "1", "hostname": "node-a.lan"}
    assert node_rows(run.state)[1]["status"] == "offline"
    assert session_rows(run.state)[0]["node_status"] == "offline"
    run = run_pure(processor, feed.events)
    assert alerts(run) == [("node-offline/node-a", "firing"), ("node-offline/node-a", "resolved")]
    assert run.state.tenants["acme"].nodes["node-a"].status == "online"
    assert session_rows(run.state)[0]["node_status"] == "online"


def test_missed_heartbeat_count_and_node_interval_are_respected() -> None:
    feed = Feed()
    feed.node_hb("node-a", 0, interval=5)
    feed.tick(9)
    feed.tick(11)  # 2 intervals of 5s missed with missed_heartbeats=2
    run = run_pure(supervisor(nodes={"missed_heartbeats": 2}), feed.events)
    assert alerts(run) == [("node-offline/node-a", "firing")]
    run = run_pure(supervisor(nodes={"missed_heartbeats": 3}), feed.events)
    assert alerts(run) == []


def test_out_of_order_node_heartbeats() -> None:
    feed = Feed()
    feed.node_hb("node-a", 100)
    feed.node_hb("node-a", 95)  # stale: must not move the last heartbeat back
    feed.tick(131)
    feed.node_hb("node-a", 99)  # stale too: must not revive the node
    run = run_pure(supervisor(), feed.events)
    node = run.state.tenants["acme"].nodes["node-a"]
    assert (node.status, node.stale_heartbeats, node.heartbeats) == ("offline", 2, 3)
    assert alerts(run) == [("node-offline/node-a", "firing")]
    # a heartbeat newer than the last one but already too old to prove life keeps it offline
    feed.tick(200)
    feed.node_hb("node-a", 160)
    run = run_pure(supervisor(), feed.events)
    assert run.state.tenants["acme"].nodes["node-a"].status == "offline"
    assert alerts(run) == [("node-offline/node-a", "firing")]


def test_a_node_heartbeat_after_a_long_silence_revives_it_without_an_alert() -> None:
    # the heartbeat is applied before the timers run: nothing else observed the node as gone
    feed = Feed()
    feed.node_hb("node-a", 0)
    feed.node_hb("node-a", 300)
    run = run_pure(supervisor(), feed.events)
    assert alerts(run) == []
    assert run.state.tenants["acme"].nodes["node-a"].status == "online"


def test_offline_nodes_are_forgotten_and_their_alert_closed() -> None:
    feed = Feed()
    feed.node_hb("node-a", 0)
    feed.tick(31)
    feed.tick(31 + 100)
    run = run_pure(supervisor(nodes={"forget_after_s": 100}), feed.events)
    assert alerts(run) == [("node-offline/node-a", "firing"), ("node-offline/node-a", "resolved")]
    assert "node-a" not in run.state.tenants["acme"].nodes


# --- resume on idle -------------------------------------------------------------------------------


def test_resume_on_idle_respects_the_threshold_retry_limit_and_reset_window() -> None:
    processor = supervisor(resume_on_idle={"idle_threshold_s": 300, "max_retries": 2, "reset_window_s": 3600})
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "idle", 100)
    feed.tick(399)  # 299s idle
    feed.tick(400)  # 300s: resume #1 (window opens at 400)
    feed.tick(699)
    feed.tick(700)  # idle 300s since our resume: resume #2
    feed.tick(1000)  # limit reached: retry-cap alert, once
    feed.tick(2000)
    feed.tick(3999)
    feed.tick(4000)  # window (400 + 3600) reopens: alert resolves, resume #1 of the new window
    run = run_pure(processor, feed.events)
    assert commands(run) == [
        ("resume", "s1", "resume-on-idle", 1),
        ("resume", "s1", "resume-on-idle", 2),
        ("resume", "s1", "resume-on-idle", 1),
    ]
    assert [e.causationid for e in run.decisions if e.type == "decision.command"] == [
        feed.events[3].id,
        feed.events[5].id,
        feed.events[9].id,
    ]
    assert alerts(run) == [
        ("policy-retry-cap/resume-on-idle/s1", "firing"),
        ("policy-retry-cap/resume-on-idle/s1", "resolved"),
    ]
    first = run.decisions[0]
    assert first.subject == "s1"
    assert data(first).node_id == "node-a"
    assert data(first).reason == "idle for 300s (threshold 300s)"
    record = session_of(run, "s1").retries["resume-on-idle"]
    assert (record.count, record.window_start_us) == (1, session_of(run, "s1").last_command["at_us"])


def test_activity_and_leaving_idle_postpone_or_cancel_resume() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "idle", 0)
    feed.message("s1", 200)  # activity while idle: the clock restarts
    feed.tick(499)
    feed.tick(500)
    feed.state("s1", "running", 600)
    feed.tick(5000)  # running sessions are never resumed
    run = run_pure(supervisor(), feed.events)
    assert commands(run) == [("resume", "s1", "resume-on-idle", 1)]
    assert run.decisions[0].causationid == feed.events[4].id


def test_leaving_idle_resolves_the_retry_cap_alert() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "idle", 0)
    feed.tick(300)  # resume #1 (max 1)
    feed.tick(600)  # capped
    feed.state("s1", "running", 700)
    run = run_pure(supervisor(resume_on_idle={"max_retries": 1}), feed.events)
    assert commands(run) == [("resume", "s1", "resume-on-idle", 1)]
    assert alerts(run) == [
        ("policy-retry-cap/resume-on-idle/s1", "firing"),
        ("policy-retry-cap/resume-on-idle/s1", "resolved"),
    ]
    assert run.rejected == []


def test_resume_waits_while_the_node_is_offline() -> None:
    feed = Feed()
    feed.node_hb("node-a", 0, interval=60)
    feed.started("s1", 0)
    feed.state("s1", "idle", 0)
    feed.tick(200)
    feed.tick(400)  # idle 400s but node-a is offline since 180s: no resume
    feed.node_hb("node-a", 450, interval=60)  # back: the idle session is resumed at once
    run = run_pure(supervisor(), feed.events)
    assert alerts(run) == [("node-offline/node-a", "firing"), ("node-offline/node-a", "resolved")]
    assert commands(run) == [("resume", "s1", "resume-on-idle", 1)]
    assert run.decisions[-1].causationid == feed.events[-1].id


def test_disabled_policies_do_nothing() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "idle", 0)
    feed.started("s2", 0)
    feed.state("s2", "compacted", 10)
    feed.cost("s2", 99.0, 20)
    feed.tick(10_000)
    config = {
        "resume_on_idle": {"enabled": False},
        "restart_on_compaction": {"enabled": False},
        "kill_on_cost": {"enabled": False, "session_limit_usd": 1.0},
    }
    assert run_pure(supervisor(**config), feed.events).decisions == []


# --- restart on compaction ------------------------------------------------------------------------


def test_restart_on_compaction_once_per_compaction_within_the_retry_limit() -> None:
    processor = supervisor(restart_on_compaction={"max_retries": 2, "reset_window_s": 1000})
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "compacted", 10)  # restart #1 (window opens at 10)
    feed.session_hb("s1", 20, status="compacted")  # still the same compaction
    feed.tick(30)
    feed.state("s1", "running", 40)
    feed.state("s1", "compacted", 50)  # restart #2
    feed.state("s1", "running", 60)
    feed.state("s1", "compacted", 70)  # capped: alert, no command
    feed.tick(500)
    feed.tick(1010)  # window reopens while still compacted: resolve, restart #1
    feed.tick(2000)
    run = run_pure(processor, feed.events)
    assert commands(run) == [
        ("restart", "s1", "restart-on-compaction", 1),
        ("restart", "s1", "restart-on-compaction", 2),
        ("restart", "s1", "restart-on-compaction", 1),
    ]
    command_causes = [e.causationid for e in run.decisions if e.type == "decision.command"]
    assert command_causes == [feed.events[1].id, feed.events[5].id, feed.events[9].id]
    assert alerts(run) == [
        ("policy-retry-cap/restart-on-compaction/s1", "firing"),
        ("policy-retry-cap/restart-on-compaction/s1", "resolved"),
    ]


def test_retry_cap_alerts_can_be_turned_off() -> None:
    feed = Feed()
    feed.started("s1", 0)
    for i in range(3):
        feed.state("s1", "compacted", 10 + 20 * i)
        feed.state("s1", "running", 20 + 20 * i)
    run = run_pure(supervisor(retry_cap_alerts=False), feed.events)
    assert len(commands(run)) == 2
    assert alerts(run) == []


# --- kill on cost ---------------------------------------------------------------------------------


def test_kill_when_session_cost_exceeds_the_limit_once() -> None:
    processor = supervisor(kill_on_cost={"session_limit_usd": 5.0})
    feed = Feed()
    feed.started("s1", 0)
    feed.cost("s1", 3.0, 10)
    feed.cost("s1", 4.0, 20, bucket="2026-11-20")  # another day bucket: 3 + 4 = 7 > 5
    feed.cost("s1", 9.0, 30, period="month", bucket="2026-11-01")  # roll-ups are not added again
    feed.cost("s1", 8.0, 40)
    feed.state("s1", "idle", 50)
    feed.tick(5000)  # a killed session is not resumed
    run = run_pure(processor, feed.events)
    assert commands(run) == [("kill", "s1", "kill-on-cost-exceeded", 1)]
    kill = run.decisions[0]
    assert kill.causationid == feed.events[2].id
    assert data(kill).reason == "session cost $7.00 exceeds the session limit $5.00"
    s1 = session_of(run, "s1")
    assert s1.killed_us is not None and s1.kill_reason == data(kill).reason
    assert session_rows(run.state)[0]["cost_usd"] == 12.0  # 8 (max of the day's running totals) + 4
    assert session_rows(run.state)[0]["killed"] is True


def test_cost_that_overtakes_session_started_kills_when_the_session_appears() -> None:
    feed = Feed()
    feed.cost("s1", 50.0, 10)  # LLM stream ahead of the SESSIONS stream
    feed.tick(20)
    feed.started("s1", 5, node="node-c")
    run = run_pure(supervisor(kill_on_cost={"session_limit_usd": 5.0}), feed.events)
    assert commands(run) == [("kill", "s1", "kill-on-cost-exceeded", 1)]
    assert run.decisions[0].causationid == feed.events[2].id
    assert data(run.decisions[0]).node_id == "node-c"


def test_hard_project_budget_kills_live_sessions_of_the_project_once() -> None:
    feed = Feed()
    feed.started("s2", 0)
    feed.started("s1", 0)
    feed.state("s1", "idle", 5)
    feed.started("s3", 0, project="other")
    feed.started("s4", 0)
    feed.state("s4", "completed", 5)
    feed.budget("project", "checkout", 10, level="soft")  # soft: notify only, no kill
    feed.budget("project", "checkout", 20)
    feed.budget("project", "checkout", 30)  # redelivered / repeated: nothing new
    feed.started("s5", 40)  # starts while the budget is exhausted
    feed.started("s6", DAY_END_S + 1)  # the next day: the budget's bucket has ended
    run = run_pure(supervisor(), feed.events)
    assert commands(run) == [
        ("kill", "s1", "kill-on-cost-exceeded", 1),
        ("kill", "s2", "kill-on-cost-exceeded", 1),
        ("kill", "s5", "kill-on-cost-exceeded", 1),
    ]
    assert "hard budget 'project-daily' (project checkout, day 2026-11-21)" in data(run.decisions[0]).reason
    assert run.state.tenants["acme"].budgets == {}  # expired with its bucket


def test_budget_kill_of_new_sessions_can_be_turned_off() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.budget("project", "checkout", 20)
    feed.started("s2", 40)
    run = run_pure(supervisor(kill_on_cost={"kill_new_sessions": False}), feed.events)
    assert commands(run) == [("kill", "s1", "kill-on-cost-exceeded", 1)]


def test_hard_tenant_budget_kills_every_session_of_that_tenant_only() -> None:
    feed = Feed()
    feed.started("a1", 0)
    feed.started("a2", 0, project=None)
    feed.add("session.started", 0, {"session_id": "g1", "node_id": "n", "agent": "x"}, tenant="globex")
    feed.budget("tenant", "acme", 10)
    run = run_pure(supervisor(), feed.events)
    assert commands(run) == [("kill", "a1", "kill-on-cost-exceeded", 1), ("kill", "a2", "kill-on-cost-exceeded", 1)]
    only_projects = run_pure(supervisor(kill_on_cost={"budget_scopes": ["project"]}), feed.events)
    assert commands(only_projects) == []


def test_kill_goes_out_even_while_the_node_is_offline() -> None:
    feed = Feed()
    feed.node_hb("node-a", 0)
    feed.started("s1", 0)
    feed.tick(100)
    feed.cost("s1", 20.0, 110)
    run = run_pure(supervisor(kill_on_cost={"session_limit_usd": 10}), feed.events)
    assert commands(run) == [("kill", "s1", "kill-on-cost-exceeded", 1)]


def test_cost_processor_decisions_drive_the_supervisor() -> None:
    from processors.cost import Budget, CostConfig, CostProcessor, ModelPrice, PriceTable

    prices = PriceTable(version="t", prices={"gpt-4o": ModelPrice(input=1e-3, output=1e-3)})
    cost = CostProcessor(
        CostConfig(
            prices=prices,
            budgets=(Budget(name="checkout-day", scope="project", key="checkout", hard_usd=5.0),),
            update_step_usd=0.5,
        )
    )
    feed = Feed()
    feed.started("s1", 0)
    calls = [
        feed.add(
            "llm.call",
            10 + i,
            {
                "provider": "openai",
                "model": "gpt-4o",
                "input_tokens": 1000,
                "output_tokens": 0,
                "project": "checkout",
                "session_id": "s1",
            },
        )
        for i in range(6)
    ]
    decided = run_pure(cast(Any, cost), calls).decisions
    assert any(e.type == "decision.budget" for e in decided)
    run = run_pure(supervisor(kill_on_cost={"session_limit_usd": 2.5}), [feed.events[0], *decided])
    assert commands(run) == [("kill", "s1", "kill-on-cost-exceeded", 1)]
    assert "exceeds the session limit $2.50" in data(run.decisions[0]).reason


# --- retention ----------------------------------------------------------------------------------


def test_completed_sessions_expire_after_retention() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "completed", 10)
    feed.tick(109)
    feed.tick(110)
    processor = supervisor(completed_session_retention_s=100)
    assert "s1" in run_pure(processor, feed.events[:3]).state.tenants["acme"].sessions
    assert "s1" not in run_pure(processor, feed.events).state.tenants["acme"].sessions


# --- snapshots, determinism, partitions -------------------------------------------------------------


def scenario() -> list[Event]:
    """Every rule at least once, two tenants interleaved."""
    feed = Feed()
    feed.node_hb("node-a", 0)
    feed.node_hb("node-b", 0, interval=30)
    feed.started("s1", 1)
    feed.started("s2", 2, node="node-b")
    feed.started("s3", 3, project="billing")
    feed.add("session.started", 4, {"session_id": "g1", "node_id": "gn", "agent": "x"}, tenant="globex")
    feed.state("s1", "idle", 5)
    feed.state("s2", "compacted", 6)
    feed.state("s3", "completed", 7)
    feed.state("s3", "running", 8)  # illegal
    feed.add("session.state", 9, {"session_id": "g1", "state": "idle"}, tenant="globex")
    for t in range(10, 1300, 10):
        feed.node_hb("node-b", t, interval=30)
        if t < 200 or t > 700:
            feed.node_hb("node-a", t)
        if t % 100 == 0:
            feed.session_hb("s2", t, status="running" if t % 200 else "compacted", node="node-b")
            feed.add("node.heartbeat", t, {"node_id": "gn", "interval_s": 10.0}, tenant="globex")
        if t == 400:
            feed.cost("s2", 4.0, t)
        if t == 900:
            feed.cost("s2", 12.0, t)
        if t == 1000:
            feed.budget("tenant", "globex", t, tenant="globex")
    feed.state("s2", "idle", 750)  # out of order: dead-lettered as late
    feed.session_hb("s2", 740, status="idle", node="node-b")  # out of order: ignored
    feed.state("s1", "running", 1301)
    return feed.events


def scenario_processor() -> SessionSupervisor:
    return supervisor(
        resume_on_idle={"idle_threshold_s": 60, "max_retries": 3, "reset_window_s": 400},
        restart_on_compaction={"max_retries": 2, "reset_window_s": 500},
        kill_on_cost={"session_limit_usd": 10.0},
        completed_session_retention_s=600,
    )


def test_scenario_exercises_every_rule() -> None:
    run = run_pure(scenario_processor(), scenario())
    actions = {(a, p) for a, _, p, _ in commands(run)}
    assert actions == {
        ("resume", "resume-on-idle"),
        ("restart", "restart-on-compaction"),
        ("kill", "kill-on-cost-exceeded"),
    }
    rules = {key.split("/")[0] for key, _ in alerts(run)}
    assert rules == {"node-offline", "policy-retry-cap"}
    assert {r.kind for _, r in run.rejected} == {"rejected", "late"}
    assert "g1" in {s for _, s, _, _ in commands(run)}  # globex's tenant budget


def test_snapshot_restore_mid_sequence_gives_identical_decisions() -> None:
    processor = scenario_processor()
    events = scenario()
    whole = run_pure(processor, events)
    whole_snapshot = processor.snapshot(whole.state)
    for cut in range(0, len(events) + 1, 7):
        first = run_pure(scenario_processor(), events[:cut])
        restored = round_trip(processor, first.state)
        assert restored == first.state
        rest = run_pure(scenario_processor(), events[cut:], state=restored)
        assert [e.model_dump() for e in first.decisions + rest.decisions] == [e.model_dump() for e in whole.decisions]
        assert first.rejected + rest.rejected == whole.rejected
        assert processor.snapshot(rest.state) == whole_snapshot


def test_snapshot_is_json_ready_and_versioned() -> None:
    processor = scenario_processor()
    state = run_pure(processor, scenario()).state
    snapshot = processor.snapshot(state)
    assert orjson.loads(orjson.dumps(snapshot)) == snapshot
    assert snapshot["version"] == 1
    assert processor.restore(snapshot) == state
    with pytest.raises(SupervisorSnapshotError, match="version 99"):
        processor.restore({**snapshot, "version": 99})
    with pytest.raises(SupervisorSnapshotError, match="malformed"):
        processor.restore({"version": 1, "tenants": {"acme": {"tenant": "acme"}}})


def test_same_input_gives_identical_decision_ids() -> None:
    events = scenario()
    first = run_pure(scenario_processor(), events)
    second = run_pure(scenario_processor(), events)
    assert [e.id for e in first.decisions] == [e.id for e in second.decisions]
    assert [e.model_dump() for e in first.decisions] == [e.model_dump() for e in second.decisions]
    assert len({e.id for e in first.decisions}) == len(first.decisions)


def test_partitioned_like_the_runner_gives_the_same_decisions() -> None:
    events = scenario()
    _, one = run_partitioned(scenario_processor(), events, partitions=1)
    parts, many = run_partitioned(scenario_processor(), events, partitions=8)
    assert sorted(e.id for e in one.decisions) == sorted(e.id for e in many.decisions)
    assert sorted(e.id for e in one.decisions) == sorted(e.id for e in run_pure(scenario_processor(), events).decisions)
    assert len(parts) == 2  # acme and globex hash apart with 8 partitions


# --- query helpers ---------------------------------------------------------------------------------


def test_query_helpers_over_states_and_snapshots() -> None:
    processor = scenario_processor()
    events = scenario()
    parts, _ = run_partitioned(processor, events, partitions=8)
    states = [part.state for part in parts.values()]
    snapshots = [processor.snapshot(s) for s in states]

    rows = session_rows(states)
    assert rows == session_rows(snapshots)
    assert [(r["tenant"], r["session"]) for r in rows] == [("acme", "s1"), ("acme", "s2"), ("globex", "g1")]
    s2 = rows[1]
    assert s2["status"] in {"running", "idle", "compacted"}
    assert (s2["node"], s2["project"], s2["agent"], s2["killed"]) == ("node-b", "checkout", "claude-code", True)
    assert s2["last_command"] == "kill (kill-on-cost-exceeded)"
    assert session_rows(states, tenant="globex", status="idle")[0]["session"] == "g1"
    assert session_rows(states, project="billing") == []  # s3 expired after its retention
    assert orjson.loads(orjson.dumps(rows)) == rows

    detail = session_detail(states, "s2")
    assert detail is not None
    assert detail["kill_reason"] == "session cost $12.00 exceeds the session limit $10.00"
    assert detail["cost_by_day"] == {DAY: 12.0}
    assert set(detail["retries"]) == {"restart-on-compaction"}
    assert detail["last_command"]["at"].endswith("Z")
    assert session_detail(snapshots, "nope") is None
    assert session_detail(states, "g1", tenant="acme") is None

    nodes = node_rows(states)
    assert [(n["tenant"], n["node"], n["status"]) for n in nodes] == [
        ("acme", "node-a", "online"),
        ("acme", "node-b", "online"),
        ("globex", "gn", "online"),
    ]
    node_b = next(n for n in nodes if n["node"] == "node-b")
    assert node_b["sessions"] == 1 and node_b["interval_s"] == 30.0 and node_b["missed"] == 0
    assert node_rows(snapshots, status="offline") == []


def test_handle_returns_only_a_reject_for_an_illegal_transition() -> None:
    feed = Feed()
    feed.started("s1", 0)
    feed.state("s1", "completed", 1)
    bad = feed.state("s1", "idle", 2)
    processor = supervisor()
    state = processor.initial_state()
    outputs = [processor.handle(state, e) for e in feed.events]
    (only,) = outputs[-1]
    assert isinstance(only, Reject) and only.kind == "rejected"
    assert bad.id in only.reason
