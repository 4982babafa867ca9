"""The scaling processor's state: the clock, every workload's signals and history, live sessions.

Times are epoch seconds of event time. ``recent`` is a monotonic queue of
(time, recommendation), highest first, so the stabilized recommendation (the
highest of the trailing window, as the HPA computes it) is its head. The
snapshot is JSON-ready and restores exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processors.rolling import RollingCounts, RollingSeries


@dataclass(slots=True)
class WorkloadState:
    current: int
    last_change: float | None = None
    last_up: float | None = None
    decisions: int = 0
    recent: list[list[float]] = field(default_factory=list)  # [[ts, recommendation], ...], decreasing
    series: dict[str, RollingSeries] = field(default_factory=dict)  # volatility signals and floor rules
    rates: dict[str, RollingCounts] = field(default_factory=dict)  # event-rate signals
    backlog: dict[str, list[Any]] = field(default_factory=dict)  # backlog signal -> [ts, pending, in_flight]
    floors: dict[str, list[Any]] = field(default_factory=dict)  # rule -> [last time it held, in force]

    def remember(self, now: float, recommendation: int, window_s: float) -> None:
        """Add a recommendation; drop those that left the window or that it outranks."""
        recent = self.recent
        while recent and recent[-1][1] <= recommendation:
            recent.pop()
        recent.append([now, recommendation])
        while recent[0][0] < now - window_s:
            recent.pop(0)

    def stabilized(self) -> int:
        return int(self.recent[0][1]) if self.recent else self.current


@dataclass(slots=True)
class ScalingState:
    clock: float | None = None
    next_eval: float | None = None
    late: int = 0
    workloads: dict[str, WorkloadState] = field(default_factory=dict)
    # "<tenant>/<session id>" -> [state, state time, agent, project, tenant]; completed ones are dropped
    sessions: dict[str, list[Any]] = field(default_factory=dict)


def snapshot_state(state: ScalingState) -> dict[str, Any]:
    return {
        "v": 1,
        "clock": state.clock,
        "next_eval": state.next_eval,
        "late": state.late,
        "sessions": dict(sorted(state.sessions.items())),
        "workloads": {
            name: {
                "current": w.current,
                "last_change": w.last_change,
                "last_up": w.last_up,
                "decisions": w.decisions,
                "recent": w.recent,
                "series": {k: [s.size_s, s.buckets, *s.dump()] for k, s in sorted(w.series.items())},
                "rates": {k: [c.size_s, c.buckets, *c.dump()] for k, c in sorted(w.rates.items())},
                "backlog": dict(sorted(w.backlog.items())),
                "floors": dict(sorted(w.floors.items())),
            }
            for name, w in sorted(state.workloads.items())
        },
    }


def restore_state(doc: dict[str, Any]) -> ScalingState:
    state = ScalingState(
        clock=doc["clock"],
        next_eval=doc["next_eval"],
        late=doc["late"],
        sessions={k: list(v) for k, v in doc["sessions"].items()},
    )
    for name, w in doc["workloads"].items():
        state.workloads[name] = WorkloadState(
            current=w["current"],
            last_change=w["last_change"],
            last_up=w["last_up"],
            decisions=w["decisions"],
            recent=[list(r) for r in w["recent"]],
            series={k: RollingSeries.load(s[0], s[1], s[2:]) for k, s in w["series"].items()},
            rates={k: RollingCounts.load(c[0], c[1], c[2:]) for k, c in w["rates"].items()},
            backlog={k: list(v) for k, v in w["backlog"].items()},
            floors={k: list(v) for k, v in w["floors"].items()},
        )
    return state
