"""The cost processor as a Faust agent on Kafka (Tansu) equals the native runner on the same input.

Kafka orders records per key (``<tenant>/<subject>``), not per tenant: a tenant's calls to two
models may be read in either order, and event-time state (watermarks, "late", the running cost
updates) depends on that order. So each tenant here calls one model: its calls are one key, read
in publish order, exactly as the native runner folds them.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import streams
from connectors.faust_app import FaustHost, FaustSettings, build_app, newest_checkpoints
from processors.cost import CostProcessor, CostState, cost_rows
from schemas import Event
from streams.config import KafkaSettings
from streams.embedded_kafka import TansuBroker
from streams.processing import run_partitioned
from streams.runner import encode_checkpoint
from tests.test_runner import calls, cost_processor

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

# Tansu refuses InitProducerId (no idempotent producer) and keeps a departed group member
# until its session times out: short group timings make a restarted worker rejoin fast.
BUS_CONFIG = streams.BusConfig(kafka=KafkaSettings(idempotence=False))


def _settings(broker: TansuBroker, app_id: str, data_dir: Path) -> FaustSettings:
    return FaustSettings(
        broker=broker.url,
        app_id=app_id,
        data_dir=data_dir,
        topic_partitions=4,
        batch_max=50,
        session_timeout_s=3.0,
        heartbeat_interval_s=0.3,
        commit_interval_s=0.2,
    )


def _mine(snapshot: dict[str, Any], tenants: set[str]) -> dict[str, Any]:
    """The parts of a cost snapshot that belong to ``tenants`` (the topic is shared with other tests)."""
    return {
        "max_event_ts": {t: ts for t, ts in snapshot["max_event_ts"].items() if t in tenants},
        "totals": sorted(row for row in snapshot["totals"] if row[0] in tenants),
        "open_buckets": sorted(row for row in snapshot["open_buckets"] if row[0] in tenants),
        "budgets_fired": sorted(m for m in snapshot["budgets_fired"] if m.split("|")[0] in tenants),
        "unpriced_models": sorted(m for m in snapshot["unpriced_models"] if m.split("|")[0] in tenants),
    }


def _states(parts: dict[int, Any], processor: CostProcessor, tenants: set[str]) -> list[dict[str, Any]]:
    merged: dict[str, Any] = {k: [] for k in ("totals", "open_buckets", "budgets_fired", "unpriced_models")}
    merged["max_event_ts"] = {}
    for part in parts.values():
        mine = _mine(processor.snapshot(part.state), tenants)
        merged["max_event_ts"].update(mine["max_event_ts"])
        for key in ("totals", "open_buckets", "budgets_fired", "unpriced_models"):
            merged[key].extend(mine[key])
    # Faust's route stage interleaves a tenant's source partitions as they arrive, so
    # its float sums may differ from the native fold's in the last bits: costs are
    # compared to 1e-9 USD (a call costs at least ~1e-4 here); counts exactly.
    merged["totals"] = [[round(x, 9) if isinstance(x, float) else x for x in row] for row in merged["totals"]]
    return [{k: sorted(v) if isinstance(v, list) else v for k, v in merged.items()}]


async def _run_until(host: FaustHost[CostState], done: int, tenants: set[str], timeout: float = 30.0) -> None:
    await host.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while _calls(host, tenants) < done:
            assert asyncio.get_running_loop().time() < deadline, f"folded {_calls(host, tenants)} of {done} calls"
            await asyncio.sleep(0.1)
    finally:
        await host.stop()


def _changelog_event(key: bytes, position: int | None) -> Any:
    """A changelog event as Faust hands it to a table's recovery (key, message.value)."""
    value = None if position is None else encode_checkpoint({"positions": {"repartition/0": position}})
    return SimpleNamespace(key=key, message=SimpleNamespace(value=value))


def test_changelog_recovery_never_moves_a_checkpoint_back() -> None:
    """Faust re-recovers the table on stop and rebalance, and on Tansu can stop short of the
    last writes: a changelog value behind the one held (or an earlier one in the batch) is dropped."""
    held = {b"a": encode_checkpoint({"positions": {"repartition/0": 40}})}
    batch = [
        _changelog_event(b"a", 30),  # older than held: dropped
        _changelog_event(b"a", 40),  # the same checkpoint again: applied (harmless)
        _changelog_event(b"b", 5),  # nothing held: applied
        _changelog_event(b"b", 9),
        _changelog_event(b"b", 7),  # behind the batch's own newer value: dropped
        _changelog_event(b"c", None),  # a delete always passes
    ]
    kept = newest_checkpoints(held.get, batch)
    assert kept == [batch[1], batch[2], batch[3], batch[5]]


def _calls(host: FaustHost[CostState], tenants: set[str]) -> int:
    total = 0
    for part in host.partitions().values():
        for (tenant, period, _, dim, _), t in part.state.totals.items():
            if tenant in tenants and period == "day" and dim == "tenant":  # days: weeks and months are sums of them
                total += t.calls
    return total


async def test_cost_processor_under_faust_equals_the_native_runner(tansu_broker: TansuBroker, tmp_path: Path) -> None:
    run = uuid.uuid4().hex[:8]
    tenants = tuple(f"faust-{run}-{i}" for i in range(3))  # calls() gives tenant i model i % 3
    events: list[Event] = calls(400, tenants=tenants)
    assert all(len({e.subject for e in events if e.tenant == t}) == 1 for t in tenants)
    async with streams.connect(tansu_broker.url, BUS_CONFIG) as bus:
        await bus.provision()
        await bus.publish_many(events)
        host = build_app(cost_processor(), _settings(tansu_broker, f"spine-test-{run}", tmp_path))
        await _run_until(host, len(events), set(tenants))
        published = {r.event.id async for r in bus.replay("DECISIONS", tenant="*") if r.event.tenant in set(tenants)}

    parts, pure = run_partitioned(cost_processor(), events)
    processor = cost_processor()
    assert host.health.errors == 0
    assert (tmp_path / f"spine-test-{run}").is_dir()  # Faust's files under data_dir, not the cwd
    assert _states(host.partitions(), processor, set(tenants)) == _states(parts, processor, set(tenants))
    assert published == {e.id for e in pure.decisions}
    for period, bucket in (("day", "2026-11-20"), ("month", "2026-11-01")):
        for by in ("tenant", "model", "project"):
            faust_rows = cost_rows([p.state for p in host.partitions().values()], period, bucket, by)  # type: ignore[arg-type]
            native_rows = cost_rows([p.state for p in parts.values()], period, bucket, by)  # type: ignore[arg-type]
            assert [r for r in faust_rows if r["tenant"] in tenants] == native_rows


async def _run_to(host: FaustHost[CostState], target: int, tenants: set[str], timeout: float = 20.0) -> int:
    """Start ``host``, stop it once it has folded ``target`` calls (or at ``timeout``); the calls folded."""
    await host.start()
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while _calls(host, tenants) < target and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)
        return _calls(host, tenants)
    finally:
        await host.stop()


async def test_restarts_mid_stream_lose_and_double_count_nothing(tansu_broker: TansuBroker, tmp_path: Path) -> None:
    """Three workers stopped mid-stream (inputs still arriving), a fourth finishes: the native fold's state.

    Each worker is a new app on the same group, so it resumes from what the previous one left:
    its table (recovered from the changelog) and the group's offsets.
    """
    run = uuid.uuid4().hex[:8]
    tenants = tuple(f"faust-{run}-{i}" for i in range(3))
    events: list[Event] = calls(150, tenants=tenants)
    mine = set(tenants)
    settings = _settings(tansu_broker, f"spine-restart-{run}", tmp_path)
    folded: list[int] = []
    async with streams.connect(tansu_broker.url, BUS_CONFIG) as bus:
        await bus.provision()
        sent = 0
        # (calls published before this worker starts, calls folded when it is stopped)
        for published, target in ((60, 20), (110, 60), (150, 110), (150, 150)):
            if published > sent:
                await bus.publish_many(events[sent:published])
                sent = published
            host = build_app(cost_processor(), settings)
            folded.append(await _run_to(host, target, mine))
        decisions = [r.event.id async for r in bus.replay("DECISIONS", tenant="*") if r.event.tenant in mine]

    parts, pure = run_partitioned(cost_processor(), events)
    processor = cost_processor()
    assert folded[-1] == len(events), f"calls folded when each worker stopped: {folded}"
    assert host.health.errors == 0
    assert _states(host.partitions(), processor, mine) == _states(parts, processor, mine)
    assert set(decisions) == {e.id for e in pure.decisions}
