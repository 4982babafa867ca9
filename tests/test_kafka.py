"""What only the Kafka transport has: its bookkeeping (pure), and its Kafka-specific behaviour on Tansu.

The shared behaviour is the contract suite (tests/contracts/test_kafka.py).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import streams
from schemas import encode
from schemas.envelope import DeadLetterEvent
from streams import Bus, BusConfig, InvalidArgument, StreamError, StreamNotFound
from streams.bus import PublishAck, Record, Undecodable
from streams.catalog import STREAMS
from streams.config import KafkaSettings, StreamSettings
from streams.embedded_kafka import TansuBroker
from streams.transports.kafka import KafkaBus, bootstrap_servers, topic_configs
from streams.transports.kafka_ledger import (
    PartitionLedger,
    RecentIds,
    fallback_subject,
    position,
    split_key,
    split_position,
    split_subject,
    subject_of_record,
)
from tests.contracts.bus_contract import take, tick
from tests.contracts.test_kafka import KAFKA_CONFIG

# -- bookkeeping, no broker ---------------------------------------------------------------


def test_positions_are_one_based_and_ordered_within_a_partition() -> None:
    assert position(0, 0) == 1 and split_position(1) == (0, 0)
    assert split_position(position(3, 41)) == (3, 41)
    assert position(1, 0) < position(1, 1) < position(2, 0)
    assert split_position(position(2, 0) - 1) == (2, -1)  # "nothing seen yet" in partition 2


def test_the_commit_offset_is_the_lowest_unsettled_record() -> None:
    ledger = PartitionLedger("spine.market", 0, "MARKET", next_offset=10, committed=10)
    assert ledger.commit_due() is None
    for offset in (10, 11, 12):
        assert ledger.take(offset)
        ledger.hold(offset)
    assert not ledger.take(11)  # a refetch after a seek is not taken twice
    assert ledger.commit_offset == 10
    ledger.settle(11)
    ledger.settle(12)
    assert ledger.commit_offset == 10  # 10 is still in the handler's hands
    ledger.settle(10)
    assert ledger.commit_due() == 13
    ledger.take(13)  # filtered out: settled at once
    assert ledger.commit_due() == 14


def test_recent_ids_drop_repeats_within_the_window_and_forget_beyond_capacity() -> None:
    ids = RecentIds(capacity=2)
    ack = PublishAck("MARKET", 7)
    ids.add("a", ack, now=100.0)
    assert ids.get("a", window_s=120, now=150.0) == PublishAck("MARKET", 7, duplicate=True)
    assert ids.get("a", window_s=120, now=221.0) is None  # outside the window
    ids.add("b", ack, now=100.0)
    ids.add("c", ack, now=100.0)
    assert ids.get("a", 120, 100.0) is None and len(ids) == 2
    off = RecentIds(capacity=0)
    off.add("a", ack, 1.0)
    assert off.get("a", 120, 1.0) is None


def test_keys_headers_and_subjects() -> None:
    assert split_key(b"acme/openai/gpt-4o") == ("acme", "openai/gpt-4o")
    assert split_key(b"no-slash") is None and split_key(None) is None and split_key(b"Bad Tenant/x") is None
    assert split_subject("spine.acme.llm.call.openai/gpt-4%2E1") == ("acme", "llm.call", "openai/gpt-4.1")
    assert subject_of_record(b"acme/BTC-USD", {"type": b"market.tick"}) == "spine.acme.market.tick.BTC-USD"
    assert subject_of_record(b"acme/BTC-USD", {}) is None
    assert fallback_subject(None, STREAMS["MARKET"]) == "spine.default.market.%"


def test_kafka_urls() -> None:
    assert bootstrap_servers("kafka://a:9092,b:9093") == "a:9092,b:9093"
    assert bootstrap_servers("kafka://a") == "a:9092"
    assert bootstrap_servers("kafka://[::1]:9092") == "[::1]:9092"
    for bad in ("kafka://", "kafka://a:notaport", "nats://a:4222"):
        with pytest.raises(InvalidArgument, match=r"Kafka URL|broker address"):
            bootstrap_servers(bad)


def test_topic_configs_follow_the_stream_settings() -> None:
    config = BusConfig()
    assert topic_configs(STREAMS["CONFIG"], config.stream("CONFIG"))["cleanup.policy"] == "compact"
    market = topic_configs(STREAMS["MARKET"], StreamSettings(max_age_s=0, max_bytes=3000, partitions=3))
    assert market == {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "1000"}
    assert config.stream("DLQ").partitions == 1


# -- on Tansu -----------------------------------------------------------------------------


@pytest.fixture
async def bus(tansu_broker: TansuBroker) -> AsyncIterator[Bus]:
    async with streams.connect(tansu_broker.url, KAFKA_CONFIG) as bus:
        yield bus


@pytest.fixture
def tenant() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


@pytest.mark.kafka
async def test_the_idempotent_producer_refused_by_the_broker_is_one_clear_error(tansu_broker: TansuBroker) -> None:
    config = KAFKA_CONFIG.model_copy(update={"kafka": KafkaSettings(idempotence=True)})
    with pytest.raises(StreamError, match="refused the idempotent") as caught:
        async with streams.connect(tansu_broker.url, config) as bus:
            await bus.publish(tick("acme", 1.0))
    assert "SPINE_BUS__KAFKA__IDEMPOTENCE=false" in (caught.value.hint or "")


@pytest.mark.kafka
async def test_records_carry_key_and_headers(bus: Bus, tenant: str) -> None:
    event = tick(tenant, 1.0, traceparent=f"00-{'a' * 32}-{'b' * 16}-01")
    ack = await bus.publish(event)
    assert isinstance(bus, KafkaBus)
    partition, offset = split_position(ack.seq)
    records, _ = await bus.read_partition("spine.market", partition, offset)
    (rec,) = records[:1]
    assert rec.key == f"{tenant}/BTC-USD".encode() and rec.value == encode(event)
    assert dict(rec.headers) == {
        "id": event.id.encode(),
        "type": b"market.tick",
        "content-type": b"application/cloudevents+json",
        "traceparent": event.traceparent.encode() if event.traceparent else b"",
    }


@pytest.mark.kafka
async def test_follow_resumes_after_positions_per_partition_and_yields_undecodable(bus: Bus, tenant: str) -> None:
    events = [tick(tenant, float(i + 1), symbol=f"S{i}") for i in range(12)]
    acks = await bus.publish_many(events)
    await bus.publish_raw(f"spine.{tenant}.market.tick.S0", b"{broken")
    got: list[Record | Undecodable] = []

    async def read(after: dict[int, int] | None, n: int) -> list[Record | Undecodable]:
        out: list[Record | Undecodable] = []
        async for item in bus.follow("MARKET", after=after, tenant=tenant):
            out.append(item)
            if len(out) == n:
                break
        return out

    got = await asyncio.wait_for(read(None, 13), 20)
    records = [r for r in got if isinstance(r, Record)]
    assert sorted(r.event.id for r in records) == sorted(e.id for e in events)
    assert all(split_position(r.seq)[0] == r.partition for r in records)
    (bad,) = [r for r in got if isinstance(r, Undecodable)]
    assert bad.raw == b"{broken" and bad.subject == f"spine.{tenant}.market.tick.S0"
    # Resume: everything after the first record of each partition.
    after: dict[int, int] = {}
    for ack in acks:
        p = split_position(ack.seq)[0]
        after[p] = min(after.get(p, ack.seq), ack.seq)
    again = await asyncio.wait_for(read(after, 13 - len(after)), 20)
    assert {r.seq for r in again} == {r.seq for r in got} - set(after.values())


@pytest.mark.kafka
async def test_follow_merges_the_partitions_into_event_time_order(bus: Bus, tenant: str) -> None:
    """Read back to back, partitions come in chunks: a watermark would call one partition's events late."""
    start = datetime(2026, 11, 20, tzinfo=UTC)
    events = [tick(tenant, 1.0, symbol=f"S{i % 12}", time=start + timedelta(seconds=i)) for i in range(600)]
    acks = await bus.publish_many(events)
    assert len({split_position(a.seq)[0] for a in acks}) > 1

    async def read() -> list[Record | Undecodable]:
        out: list[Record | Undecodable] = []
        async for item in bus.follow("MARKET", tenant=tenant):
            out.append(item)
            if len(out) == len(events):
                break
        return out

    got = await asyncio.wait_for(read(), 30)
    assert [r.event.id for r in got if isinstance(r, Record)] == [e.id for e in events]


@pytest.mark.kafka
async def test_checkpoints_are_shared_between_processes(tansu_broker: TansuBroker) -> None:
    key = f"proc-{uuid.uuid4().hex[:8]}.p0"
    async with streams.connect(tansu_broker.url, KAFKA_CONFIG) as one:
        store = await one.checkpoints()
        assert await store.get(key) is None
        await store.put(key, b"v1")
        await store.put(key, b"v2")
    async with streams.connect(tansu_broker.url, KAFKA_CONFIG) as two:
        store = await two.checkpoints()
        assert await store.get(key) == b"v2"
        assert key in await store.keys(key.split(".", maxsplit=1)[0])


@pytest.mark.kafka
async def test_delete_marks_a_dead_letter_and_other_streams_refuse(bus: Bus, tenant: str) -> None:
    group = f"g-{uuid.uuid4().hex[:8]}"
    await bus.publish(tick(tenant, 1.0))
    it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
    (d,) = await take(it, 1)
    await d.term("bad feed")
    await it.aclose()  # type: ignore[attr-defined]
    (record,) = [r async for r in bus.replay("DLQ", tenant=tenant)]
    assert isinstance(record.event, DeadLetterEvent) and record.event.data.source_partition is not None
    await bus.delete("DLQ", record.seq)
    assert [r async for r in bus.replay("DLQ", tenant=tenant)] == []
    with pytest.raises(StreamNotFound):
        await bus.delete("DLQ", record.seq + 10_000)
    with pytest.raises(StreamError, match="cannot delete one record"):
        await bus.delete("MARKET", 1)


@pytest.mark.kafka
async def test_a_new_owner_resumes_at_the_first_unsettled_record(tansu_broker: TansuBroker, tenant: str) -> None:
    """Kafka's redelivery granularity: records acked after an unsettled one come again."""
    group = f"g-{uuid.uuid4().hex[:8]}"
    events = [tick(tenant, float(i + 1)) for i in range(3)]  # one key: one partition, in order
    async with streams.connect(tansu_broker.url, KAFKA_CONFIG) as first:
        await first.publish_many(events)
        it = first.subscribe("market.>", group=group, tenant=tenant, start="all")
        got = await take(it, 3)
        for d in got[1:]:
            await d.ack()  # the first stays in the handler's hands: the member "crashes"
    async with streams.connect(tansu_broker.url, KAFKA_CONFIG) as second:
        it = second.subscribe("market.>", group=group, tenant=tenant, start="all")
        again = await take(it, 3)
        assert [d.event for d in again] == events and all(d.attempt == 1 for d in again)
        for d in again:
            await d.ack()
        await it.aclose()  # type: ignore[attr-defined]


@pytest.mark.kafka
async def test_provision_is_idempotent_and_says_what_this_broker_cannot_change(tansu_broker: TansuBroker) -> None:
    async with streams.connect(tansu_broker.url, KAFKA_CONFIG) as bus:
        assert {r.action for r in await bus.provision()} == {"unchanged"}
    fewer = KAFKA_CONFIG.model_copy(update={"streams": {"MARKET": StreamSettings(partitions=1)}})
    async with streams.connect(tansu_broker.url, fewer) as bus:
        with pytest.raises(InvalidArgument, match="has 3 partitions, the settings say 1") as caught:
            await bus.provision()
        assert "cannot remove partitions" in (caught.value.hint or "")
    longer = KAFKA_CONFIG.model_copy(update={"streams": {"LLM": StreamSettings(max_age_s=86400)}})
    async with streams.connect(tansu_broker.url, longer) as bus:
        with pytest.raises(StreamError, match="does not support"):
            await bus.provision()


# -- the runner's exactly-once protocol, without idempotence or transactions ---------------


@pytest.fixture
def own_tansu(tmp_path: Path) -> Iterator[TansuBroker]:
    """A broker of its own: the runner tests read whole streams."""
    with TansuBroker(tmp_path) as broker:
        yield broker


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("step", ["folded", "published", "checkpointing"])
async def test_a_runner_crash_loses_nothing_and_counts_nothing_twice(own_tansu: TansuBroker, step: str) -> None:
    """The runner's crash test on Kafka, the producer neither idempotent nor transactional.

    The second runner is a new process (a new bus): no client-side dedup helps. A
    crash after publishing re-sends the same decisions, which Kafka stores again;
    they are the same events (same ids and content), so consumers that are
    idempotent on id see each decision once, and the state counts each input once.
    """
    from processors.cost import CostProcessor
    from streams.processing import run_partitioned
    from streams.runner import RunnerConfig
    from tests.test_runner import calls, cost_processor, run_until, states

    events = calls(30)
    seen = {"batches": 0}

    class Crash(Exception):
        pass

    def fault(at: str) -> None:
        if at == "read":
            seen["batches"] += 1
        if at == step and seen["batches"] == 2:
            raise Crash(f"crash at {step}")

    config = RunnerConfig(batch_max=7, partitions=4)
    async with streams.connect(own_tansu.url, KAFKA_CONFIG) as bus:
        await bus.publish_many(events)
        with pytest.raises(Crash):
            await run_until(bus, cost_processor(), config, lambda r: False, fault)
    async with streams.connect(own_tansu.url, KAFKA_CONFIG) as bus:
        assert isinstance(bus, KafkaBus)
        ends = await bus.offsets(await bus.partitions(["spine.llm"]), end=True)
        last = {f"LLM/{tp.partition}": position(tp.partition, end - 1) for tp, end in ends.items() if end}

        def caught_up(runner: Any) -> bool:
            seen_at = dict(runner.health.positions)
            for part in runner.parts.values():
                for key, seq in part.positions.items():
                    seen_at[key] = max(seen_at.get(key, 0), seq)
            return all(seen_at.get(key, 0) >= seq for key, seq in last.items())

        await run_until(bus, cost_processor(), config, caught_up)
        parts, pure = run_partitioned(cost_processor(), events, partitions=4)
        live = [r.event async for r in bus.replay("DECISIONS")]
        by_id: dict[str, Any] = {}
        for decision in live:
            assert by_id.setdefault(decision.id, decision) == decision, "one id, two different decisions"
        assert set(by_id) == {e.id for e in pure.decisions}
        # Kafka keeps order per key, not across keys (tenants span keys): compare the
        # states as sets of rows, which is what counting each input once means here.
        processor: CostProcessor = cost_processor()
        live_states = await states(bus, processor, 4)
        pure_states = {p: processor.snapshot(part.state) for p, part in parts.items()}
        assert _unordered(live_states) == _unordered(pure_states)


def _unordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unordered(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_unordered(v) for v in value), key=repr)
    return value
