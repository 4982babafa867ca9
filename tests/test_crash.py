"""SIGKILL a real `spine run cost` process mid-stream, again and again: totals and decisions stay exact."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

import streams
from processors.cost import Budget, CostConfig, CostProcessor, ModelPrice, PriceTable
from schemas import Event
from streams.embedded import NatsServer
from streams.processing import run_partitioned
from streams.runner import decode_checkpoint
from tests.test_runner import calls

SPINE = str(Path(sys.executable).parent / "spine")
pytestmark = [pytest.mark.nats, pytest.mark.slow]

PRICES = PriceTable(
    version="crash-test-1",
    prices={
        "gpt-4o": ModelPrice(input=2.5e-6, output=1e-5, cache_read=1.25e-6),
        "anthropic/claude": ModelPrice(input=3e-6, output=1.5e-5),
    },
)
BUDGETS = (Budget(name="daily", scope="tenant", soft_usd=0.5, hard_usd=1.0),)

CONFIG_TOML = """
[cost]
update_step_usd = 0.01

[[cost.budgets]]
name = "daily"
scope = "tenant"
soft_usd = 0.5
hard_usd = 1.0

[cost.prices]
version = "crash-test-1"

[cost.prices.prices."gpt-4o"]
input = 2.5e-6
output = 1e-5
cache_read = 1.25e-6

[cost.prices.prices."anthropic/claude"]
input = 3e-6
output = 1.5e-5
"""


def _processor() -> CostProcessor:
    return CostProcessor(CostConfig(prices=PRICES, budgets=BUDGETS, update_step_usd=0.01))


def test_sigkill_mid_stream_loses_nothing_and_counts_nothing_twice(tmp_path: Path) -> None:
    # A broker of its own: the runner reads every tenant, so other tests' events must not be there.
    with NatsServer(tmp_path / "nats") as nats_server:
        _crash_and_check(nats_server, tmp_path)


def _crash_and_check(nats_server: NatsServer, tmp_path: Path) -> None:
    tenant = f"crash-{uuid.uuid4().hex[:8]}"
    group = f"cost-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "processors.toml"
    config.write_text(CONFIG_TOML)
    events: list[Event] = [e.model_copy(update={"tenant": tenant}) for e in calls(3000, tenants=("x",))]
    # Several tenants' worth of keys inside one test tenant would need several tenants; use sub-tenants.
    events = [e.model_copy(update={"tenant": f"{tenant}-{i % 5}"}) for i, e in enumerate(events)]

    async def publish() -> None:
        async with streams.connect(nats_server.url) as bus:
            for i in range(0, len(events), 500):
                await bus.publish_many(events[i : i + 500])

    asyncio.run(publish())
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env |= {"SPINE_BROKER_URL": nats_server.url, "SPINE_DATA_DIR": str(tmp_path / "data")}
    args = [
        SPINE,
        "run",
        "cost",
        "--group",
        group,
        "--config",
        str(config),
        "--batch-max",
        "10",
        "--tenant",
        "*",
        "--json",
    ]

    async def handled_so_far() -> int:
        async with streams.connect(nats_server.url) as bus:
            store = await bus.checkpoints()
            total = 0
            for key in await store.keys(f"{group}.p"):
                raw = await store.get(key)
                total += int(decode_checkpoint(raw)["handled"]) if raw else 0
            return total

    rng = random.Random(7)
    mid_stream_kills = 0
    for _ in range(4):
        before = asyncio.run(handled_so_far())
        proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline and asyncio.run(handled_so_far()) == before:
            time.sleep(0.05)  # wait for its first checkpoint...
        time.sleep(rng.uniform(0.0, 0.6))  # ...then kill it at a random point
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        if before < asyncio.run(handled_so_far()) < len(events):
            mid_stream_kills += 1
    assert mid_stream_kills >= 2, "the kills should land while the stream is being processed"
    final = subprocess.run(
        [*args, "--until-idle", "3"], env=env, capture_output=True, text=True, timeout=180, check=True
    )
    assert '"handled"' in final.stdout

    parts, pure = run_partitioned(_processor(), events)
    expected_ids = {e.id for e in pure.decisions}

    async def read_back() -> tuple[list[str], dict[int, dict[str, object]]]:
        async with streams.connect(nats_server.url) as bus:
            ids = [
                r.event.id
                async for r in bus.replay("DECISIONS", pattern=">", tenant="*")
                if r.event.tenant.startswith(tenant)
            ]
            store = await bus.checkpoints()
            snaps = {}
            for key in await store.keys(f"{group}.p"):
                raw = await store.get(key)
                assert raw is not None
                doc = decode_checkpoint(raw)
                snaps[int(doc["partition"])] = doc["state"]
        return ids, snaps

    ids, snaps = asyncio.run(read_back())
    assert len(ids) == len(set(ids)), f"{len(ids) - len(set(ids))} decisions stored twice"
    assert set(ids) == expected_ids
    processor = _processor()
    assert snaps == {p: processor.snapshot(part.state) for p, part in parts.items()}
