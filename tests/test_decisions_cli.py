"""`spine routes`, `spine alerts` and `spine run routing|alerting|scaling` through the real entry point,
against a real nats-server; and the example processors config file."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import streams
from processors.cost import CostConfig
from schemas import Event
from streams.embedded import NatsServer
from tests.decisions_support import call, tick

SPINE = str(Path(sys.executable).parent / "spine")
EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "processors.example.toml"

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def spine(nats_server: NatsServer, tmp_path: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env |= {"SPINE_BROKER_URL": nats_server.url, "SPINE_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1"}

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([SPINE, *args], capture_output=True, text=True, env=env, timeout=90, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"spine {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    return run


def publish(url: str, events: list[Event]) -> None:
    async def go() -> None:
        async with streams.connect(url) as bus:
            await bus.provision()
            await bus.publish_many(events)

    asyncio.run(go())


@pytest.mark.nats
def test_run_routing_then_spine_routes_shows_tables_and_breakers(spine: Run, nats_server: NatsServer) -> None:
    tenant = f"r{uuid.uuid4().hex[:10]}"
    events = [call(0, "openai/east", tenant=tenant, latency_ms=700), call(1, "azure/west", tenant=tenant)]
    events += [call(2 + i, "openai/east", tenant=tenant, status="error", error="timeout") for i in range(5)]
    publish(nats_server.url, events)
    group = f"routing-{tenant}"
    health = json.loads(
        spine("run", "routing", "--tenant", tenant, "--group", group, "--until-idle", "1", "--json").stdout
    )
    assert health[0]["handled"] == 7 and health[0]["emitted"] == 3
    rows = json.loads(spine("routes", "--group", group, "--json").stdout)
    assert [(r["deployment"], r["breaker"], r["weight"], r["version"]) for r in rows] == [
        ("azure/west", "closed", 1.0, 3),
        ("openai/east", "open", 0.0, 3),
    ]
    east = rows[1]
    assert east["requests"] == 6 and east["errors"] == {"timeout": 5} and east["open_until"].endswith("Z")
    assert "5 failures in 60s" in east["changed"]
    text = spine("routes", "--group", group, "--model-group", "gpt-4o").stdout
    assert "openai/east" in text and "open" in text and "gpt-4o" in text
    assert json.loads(spine("routes", "--group", group, "--tenant", "nobody", "--json").stdout) == []
    proc = spine("routes", "--group", f"none-{tenant}", check=False)
    assert proc.returncode == 2 and "no state yet" in proc.stderr and "spine run routing" in proc.stderr


@pytest.mark.nats
def test_run_alerting_from_the_example_config_then_spine_alerts(spine: Run, nats_server: NatsServer) -> None:
    tenant = f"a{uuid.uuid4().hex[:10]}"
    prices = [97_000.0] * 6 + [95_000.0, 93_000.0, 91_500.0, 91_000.0]  # -6.2% within the hour
    publish(nats_server.url, [tick(300 * i, p, tenant=tenant) for i, p in enumerate(prices)])
    spine("run", "alerting", "-c", str(EXAMPLE), "--tenant", tenant, "--group", f"al-{tenant}", "--until-idle", "1")
    rows = json.loads(spine("alerts", "--open", "--tenant", tenant, "--json").stdout)
    assert [(r["dedup_key"], r["status"], r["severity"]) for r in rows] == [
        ("btc-drop-5pct-1h/BTC-USD", "firing", "critical")
    ]
    assert rows[0]["labels"] == {"team": "trading", "symbol": "BTC-USD"} and rows[0]["notifications"] == 1
    assert "BTC-USD fell" in spine("alerts", "--tenant", tenant).stdout


@pytest.mark.nats
def test_bad_processor_configs_are_one_line_naming_key_and_value(spine: Run, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[scaling]\n[[scaling.workloads]]\nname = "w"\nmax_replicas = -1\n')
    proc = spine("run", "scaling", "-c", str(bad), check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "bad [scaling] config: workloads.0.max_replicas: Input should be greater than or equal to 1 (got -1)" in (
        proc.stderr
    )
    bad.write_text("[routing.breaker]\ncooldown = 5\n")
    proc = spine("run", "routing", "-c", str(bad), check=False)
    assert proc.returncode == 2 and "breaker.cooldown: Extra inputs are not permitted (got 5)" in proc.stderr


@pytest.mark.parametrize("command", [["routes"], ["alerts"]])
def test_help_has_an_example(command: list[str]) -> None:
    proc = subprocess.run([SPINE, *command, "--help"], capture_output=True, text=True, timeout=60, check=True)
    assert "Example" in proc.stdout and "--json" in proc.stdout


def test_the_example_config_builds_every_processor() -> None:
    from spine.processes import build_processor, processor_config
    from spine.settings import load_settings

    doc: dict[str, Any] = tomllib.loads(EXAMPLE.read_text())
    assert set(doc) == {"cost", "supervisor", "routing", "alerting", "scaling"}
    settings = load_settings()
    for name in ("supervisor", "routing", "alerting", "scaling"):
        processor = build_processor(name, settings, processor_config(name, EXAMPLE))
        assert processor.name == name
    CostConfig.model_validate({**doc["cost"], "prices": {"version": "test"}})
    alerting = build_processor("alerting", settings, doc["alerting"])
    assert set(alerting.inputs) == {"market.tick", "llm.call", "session.>", "node.heartbeat", "decision.budget"}
