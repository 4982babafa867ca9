"""The `spine` CLI through its real entry point, against a real nats-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from streams.embedded import NatsServer

SPINE = str(Path(sys.executable).parent / "spine")
pytestmark = pytest.mark.nats

Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def spine(nats_server: NatsServer, tmp_path: Path) -> Run:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env |= {"SPINE_BROKER_URL": nats_server.url, "SPINE_DATA_DIR": str(tmp_path / "data"), "NO_COLOR": "1"}

    def run(
        *args: str, check: bool = True, extra_env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [SPINE, *args], capture_output=True, text=True, env=env | (extra_env or {}), timeout=60, check=False
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"spine {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
        return proc

    return run


@pytest.fixture
def tenant() -> str:
    return f"cli-{uuid.uuid4().hex[:10]}"


def consume_json(spine: Run, tenant: str, pattern: str = ">", limit: int | None = None) -> list[dict[str, object]]:
    args = ["consume", pattern, "--group", f"g{uuid.uuid4().hex[:8]}", "--tenant", tenant, "--from-start", "--json"]
    args += ["--limit", str(limit)] if limit else ["--wait", "2"]
    return json.loads(spine(*args).stdout)  # type: ignore[no-any-return]


def test_publish_then_consume(spine: Run, tenant: str) -> None:
    data = '{"venue": "binance", "symbol": "BTC-USD", "price": 97000}'
    out = json.loads(spine("publish", "market.tick", "--data", data, "--tenant", tenant, "--json").stdout)
    assert out[0]["stream"] == "MARKET" and out[0]["duplicate"] is False
    events = consume_json(spine, tenant, "market.>", limit=1)
    assert events[0]["id"] == out[0]["id"]
    assert events[0]["subject"] == "BTC-USD" and events[0]["data"]["price"] == 97000


def test_bad_input_is_one_line_exit_2_and_publishes_nothing(spine: Run, tenant: str) -> None:
    proc = spine("publish", "market.tick", "--data", "{nope", "--tenant", tenant, check=False)
    assert proc.returncode == 2
    assert "not valid JSON" in proc.stderr and "Traceback" not in proc.stderr

    proc = spine(
        "publish",
        "market.tick",
        "--data",
        '{"venue": "x", "symbol": "B", "price": -3}',
        "--tenant",
        tenant,
        check=False,
    )
    assert proc.returncode == 2
    assert "data.price" in proc.stderr and "Traceback" not in proc.stderr

    proc = spine("publish", "no.such", "--data", "{}", check=False)
    assert proc.returncode == 2 and "unknown event type" in proc.stderr and "hint:" in proc.stderr
    assert consume_json(spine, tenant) == []


def test_publish_file_is_validated_in_full_first(spine: Run, tenant: str, tmp_path: Path) -> None:
    good = {"provider": "openai", "model": "gpt-4o", "input_tokens": 10}
    lines = [json.dumps(good), json.dumps(good), json.dumps(good | {"input_tokens": "many"}), json.dumps(good)]
    path = tmp_path / "calls.jsonl"
    path.write_text("\n".join(lines) + "\n")
    proc = spine("publish", "llm.call", "--file", str(path), "--tenant", tenant, check=False)
    assert proc.returncode == 2
    assert "calls.jsonl line 3" in proc.stderr and "data.input_tokens" in proc.stderr
    assert consume_json(spine, tenant) == []  # nothing from the file was published

    path.write_text("\n".join(lines[:2] + lines[3:]) + "\n")
    spine("publish", "llm.call", "--file", str(path), "--tenant", tenant)
    assert len(consume_json(spine, tenant, "llm.call")) == 3


def test_publish_file_of_cloudevents(spine: Run, tenant: str, tmp_path: Path) -> None:
    from schemas import encode, make_event
    from schemas.samples import SAMPLES, sample_subject

    events = [
        make_event(t, SAMPLES[t], subject=sample_subject(t), tenant=tenant) for t in ("market.tick", "session.started")
    ]
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"\n".join(encode(e) for e in events))
    out = json.loads(spine("publish", "--file", str(path), "--json").stdout)
    assert [o["id"] for o in out] == [e.id for e in events]
    again = json.loads(spine("publish", "--file", str(path), "--json").stdout)
    assert all(o["duplicate"] for o in again)
    assert {e["id"] for e in consume_json(spine, tenant)} == {e.id for e in events}


def test_dlq_list_show_redrive(spine: Run, tenant: str, nats_server: NatsServer) -> None:
    import asyncio

    import streams

    async def send_garbage() -> None:
        async with streams.connect(nats_server.url) as bus:
            await bus.publish_raw(f"spine.{tenant}.market.tick.X", b"garbage", msg_id=uuid.uuid4().hex)

    asyncio.run(send_garbage())
    assert consume_json(spine, tenant) == []  # the group skips it: it went to the DLQ
    letters = json.loads(spine("dlq", "list", "--json").stdout)
    mine = [row for row in letters if row["tenant"] == tenant]
    assert len(mine) == 1 and mine[0]["kind"] == "undecodable" and "not valid JSON" in mine[0]["reason"]
    shown = json.loads(spine("dlq", "show", str(mine[0]["seq"]), "--json").stdout)
    assert shown["original"] == "garbage"
    assert shown["original_subject"] == f"spine.{tenant}.market.tick.X"
    redriven = json.loads(spine("dlq", "redrive", str(mine[0]["seq"]), "--json").stdout)
    assert redriven[0]["stream"] == "MARKET"
    after = json.loads(spine("dlq", "list", "--json").stdout)
    assert mine[0]["seq"] not in [row["seq"] for row in after]
    assert spine("dlq", "show", "999999", check=False).returncode == 2
    assert spine("dlq", "redrive", check=False).returncode == 2


def test_streams_apply_is_idempotent_and_list_shows_groups(spine: Run, tenant: str) -> None:
    spine("streams", "apply")
    second = json.loads(spine("streams", "apply", "--json").stdout)
    assert {r["action"] for r in second} == {"unchanged"}
    spine("publish", "market.tick", "--data", '{"venue": "x", "symbol": "B", "price": 1}', "--tenant", tenant)
    spine("consume", "market.>", "--group", "listed-group", "--tenant", tenant, "--from-start", "--limit", "1")
    rows = json.loads(spine("streams", "list", "--json").stdout)
    market = next(r for r in rows if r["stream"] == "MARKET")
    assert market["messages"] >= 1 and "listed-group" in market["groups"]
    table = spine("streams", "list").stdout
    assert "MARKET" in table and "DLQ" in table


def test_streams_apply_changes_retention_from_settings(spine: Run) -> None:
    out = json.loads(
        spine("streams", "apply", "--json", extra_env={"SPINE_BUS__STREAMS__CONFIG__MAX_AGE_S": "3600"}).stdout
    )
    assert {"stream": "CONFIG", "action": "updated"} in out
    spine("streams", "apply")  # back to the defaults


def test_schemas_export_and_list(spine: Run, tmp_path: Path) -> None:
    spine("schemas", "export", str(tmp_path / "out"))
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    from schemas import EVENT_TYPES

    assert "llm.call.schema.json" in files and len(files) == len(EVENT_TYPES)
    rows = json.loads(spine("schemas", "list", "--json").stdout)
    assert {"type": "llm.call", "dataschema": "spine:llm.call:1", "stream": "LLM", "model": "LlmCall"} in rows


@pytest.mark.parametrize(
    "command",
    [
        ["publish"],
        ["consume"],
        ["broker", "start"],
        ["broker", "stop"],
        ["broker", "status"],
        ["streams", "apply"],
        ["streams", "list"],
        ["dlq", "list"],
        ["dlq", "show"],
        ["dlq", "redrive"],
        ["schemas", "export"],
        ["demo"],
    ],
)
def test_every_command_has_help_with_an_example(spine: Run, command: list[str]) -> None:
    out = spine(*command, "--help").stdout
    assert "Example" in out


def test_unreachable_broker_is_a_one_line_error(spine: Run) -> None:
    proc = spine(
        "streams",
        "list",
        check=False,
        extra_env={"SPINE_BROKER_URL": "nats://127.0.0.1:1", "SPINE_BUS__CONNECT_ATTEMPTS": "1"},
    )
    assert proc.returncode == 1
    assert "cannot connect" in proc.stderr and "hint:" in proc.stderr and "Traceback" not in proc.stderr


def test_bad_setting_names_key_and_value(spine: Run) -> None:
    proc = spine("streams", "list", check=False, extra_env={"SPINE_BUS__MAX_DELIVER": "zero"})
    assert proc.returncode == 2
    assert "bus.max_deliver" in proc.stderr and "zero" in proc.stderr


def test_embedded_broker_lifecycle_and_data_survive_restart(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")} | {
        "SPINE_DATA_DIR": str(tmp_path / "d"),
        "NO_COLOR": "1",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([SPINE, *args], capture_output=True, text=True, env=env, timeout=60, check=True)

    try:
        assert json.loads(run("broker", "status", "--json").stdout)["running"] is False
        started = json.loads(run("broker", "start", "--json").stdout)
        assert started["started"] is True and started["url"].startswith("nats://127.0.0.1:")
        assert json.loads(run("broker", "start", "--json").stdout)["started"] is False
        status = json.loads(run("broker", "status", "--json").stdout)
        assert status["running"] and status["healthy"] and status["url"] == started["url"]
        run("publish", "market.tick", "--data", '{"venue": "x", "symbol": "KEEP", "price": 1}', "--tenant", "keep")
        assert json.loads(run("broker", "stop", "--json").stdout)["stopped"] is True
        assert json.loads(run("broker", "status", "--json").stdout)["running"] is False
        # A command that needs the broker starts it again; the event is still there.
        out = json.loads(
            run("consume", ">", "--group", "after", "--tenant", "keep", "--from-start", "--limit", "1", "--json").stdout
        )
        assert out[0]["subject"] == "KEEP"
    finally:
        subprocess.run([SPINE, "broker", "stop"], env=env, capture_output=True, timeout=30, check=False)


def test_run_cost_then_query_it(spine: Run, tenant: str, tmp_path: Path) -> None:
    config = tmp_path / "processors.toml"
    config.write_text(
        '[cost]\nupdate_step_usd = 0.01\n[cost.prices]\nversion = "cli-test"\n'
        '[cost.prices.prices."gpt-4o"]\ninput = 2.5e-6\noutput = 1e-5\n'
    )
    lines = [
        json.dumps(
            {"provider": "openai", "model": "gpt-4o", "input_tokens": 1000, "output_tokens": 100, "project": "web"}
        ),
        json.dumps(
            {"provider": "openai", "model": "gpt-4o", "input_tokens": 3000, "output_tokens": 300, "project": "api"}
        ),
        json.dumps({"provider": "acme", "model": "mystery", "input_tokens": 10, "project": "web"}),
    ]
    (tmp_path / "calls.jsonl").write_text("\n".join(lines))
    spine("publish", "llm.call", "--file", str(tmp_path / "calls.jsonl"), "--tenant", tenant)
    group = f"cost-{tenant}"
    health = json.loads(
        spine(
            "run", "cost", "--group", group, "--tenant", tenant, "--config", str(config), "--until-idle", "2", "--json"
        ).stdout
    )
    assert health[0]["handled"] == 3 and health[0]["emitted"] >= 3
    rows = json.loads(spine("cost", "today", "--by", "project", "--tenant", tenant, "--group", group, "--json").stdout)
    assert {r["project"]: r["calls"] for r in rows} == {"api": 1, "web": 2}
    by_project = {r["project"]: r["cost_usd"] for r in rows}
    assert by_project["api"] == pytest.approx(3000 * 2.5e-6 + 300 * 1e-5)
    models = json.loads(spine("cost", "today", "--by", "model", "--tenant", tenant, "--group", group, "--json").stdout)
    assert {r["model"]: r["unpriced_calls"] for r in models} == {"openai/gpt-4o": 0, "acme/mystery": 1}
    # Running again does not count anything twice (positions are checkpointed with the state).
    spine("run", "cost", "--group", group, "--tenant", tenant, "--config", str(config), "--until-idle", "1")
    again = json.loads(spine("cost", "today", "--by", "project", "--tenant", tenant, "--group", group, "--json").stdout)
    assert again == rows
    bad = spine("cost", "fortnight", check=False)
    assert bad.returncode == 2 and "unknown period" in bad.stderr


def test_bad_processor_config_names_key_and_value(spine: Run, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[cost]\nupdate_step_usd = -1\n[cost.prices]\nversion = 'x'\n")
    proc = spine("run", "cost", "--config", str(config), "--until-idle", "1", check=False)
    assert proc.returncode == 2
    assert "update_step_usd" in proc.stderr and "-1" in proc.stderr and "Traceback" not in proc.stderr
    proc = spine("run", "nonesuch", check=False)
    assert proc.returncode == 2 and "unknown processor" in proc.stderr
