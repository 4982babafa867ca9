"""The Bus contract: one suite every transport must pass.

Subclass ``BusContract`` and provide the ``connect`` fixture: an async factory
returning a new, connected member of the same broker each time it is called
(two calls = two members of one process fleet). Each test runs in a tenant of
its own, so a shared broker needs no cleanup between tests.

Where transports differ (e.g. the granularity of redelivery) the test checks
the guarantee all of them meet, and says so.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas import Event, decode, make_event
from schemas.envelope import DeadLetterEvent
from streams import Bus, BusConfig, InvalidArgument, StreamNotFound
from streams.bus import Delivery

Connect = Callable[[], Awaitable[Bus]]

# Short timings so redelivery tests finish quickly; transports read them from here.
CONTRACT_CONFIG = BusConfig(ack_wait_s=1.0, max_deliver=3, fetch_batch=5, publish_window=64)


def tick(tenant: str, price: float, symbol: str = "BTC-USD", **attrs: Any) -> Event:
    data = {"venue": "test", "symbol": symbol, "price": price}
    return make_event("market.tick", data, tenant=tenant, source="tests", **attrs)


async def take(it: AsyncIterator[Delivery], n: int, timeout: float = 15.0) -> list[Delivery]:
    """The next ``n`` deliveries, or fail after ``timeout`` seconds."""
    got: list[Delivery] = []

    async def run() -> None:
        while len(got) < n:
            got.append(await anext(it))

    try:
        await asyncio.wait_for(run(), timeout)
    except TimeoutError:
        pytest.fail(f"expected {n} deliveries within {timeout}s, got {len(got)}")
    return got


async def nothing_within(it: AsyncIterator[Delivery], seconds: float) -> bool:
    """True if no delivery arrives within ``seconds`` (the iterator is spent after)."""
    try:
        await asyncio.wait_for(anext(it), seconds)
    except TimeoutError:
        return True
    return False


async def dead_letters(bus: Bus, tenant: str, at_least: int = 1, timeout: float = 10.0) -> list[DeadLetterEvent]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [r.event async for r in bus.replay("DLQ", tenant=tenant)]
        letters = [e for e in found if isinstance(e, DeadLetterEvent)]
        if len(letters) >= at_least or asyncio.get_running_loop().time() > deadline:
            return letters
        await asyncio.sleep(0.1)


class BusContract:
    """Subclass me and provide ``connect``."""

    @pytest.fixture
    def tenant(self) -> str:
        return f"t-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    def group(self) -> str:
        return f"g-{uuid.uuid4().hex[:12]}"

    @pytest.fixture
    async def bus(self, connect: Connect) -> AsyncIterator[Bus]:
        bus = await connect()
        yield bus
        await bus.aclose()

    # -- publish / consume ---------------------------------------------------------

    async def test_round_trip_preserves_the_event(self, bus: Bus, tenant: str, group: str) -> None:
        sent = [tick(tenant, 100.0 + i, traceparent=f"00-{'a' * 32}-{'b' * 16}-01") for i in range(3)]
        acks = await bus.publish_many(sent)
        assert [a.stream for a in acks] == ["MARKET"] * 3
        assert acks[0].seq < acks[1].seq < acks[2].seq
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        got = await take(it, 3)
        assert [d.event for d in got] == sent
        assert all(d.stream == "MARKET" and d.attempt == 1 for d in got)
        for d in got:
            await d.ack()
        await it.aclose()  # type: ignore[attr-defined]

    async def test_publish_returns_after_the_broker_stored_it(self, bus: Bus, tenant: str) -> None:
        event = tick(tenant, 1.0)
        ack = await bus.publish(event)
        stored = [r async for r in bus.replay("MARKET", start=ack.seq, end=ack.seq)]
        assert [r.event for r in stored] == [event]

    async def test_subject_keys_with_dots_and_wildcards_round_trip(self, bus: Bus, tenant: str, group: str) -> None:
        event = make_event("llm.call", {"provider": "openai", "model": "gpt-4.1 *mini>"}, tenant=tenant, source="tests")
        assert event.subject == "openai/gpt-4.1 *mini>"
        await bus.publish(event)
        it = bus.subscribe("llm.call", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        assert d.event == event
        await d.ack()
        await it.aclose()  # type: ignore[attr-defined]

    async def test_pattern_and_tenant_filter(self, bus: Bus, tenant: str, group: str) -> None:
        other = f"{tenant}-other"
        await bus.publish_many(
            [tick(other, 1.0), tick(tenant, 2.0, symbol="ETH-USD"), tick(tenant, 3.0, symbol="BTC-USD")]
        )
        it = bus.subscribe("market.tick.BTC-USD", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        assert d.event.tenant == tenant and d.event.subject == "BTC-USD"
        await d.ack()
        assert await nothing_within(it, 1.5)

    async def test_start_new_skips_history(self, bus: Bus, tenant: str, group: str) -> None:
        await bus.publish(tick(tenant, 1.0))
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="new")
        first = asyncio.ensure_future(anext(it))
        await asyncio.sleep(0.5)  # let the group be created before the next publish
        later = tick(tenant, 2.0)
        await bus.publish(later)
        d = await asyncio.wait_for(first, 10)
        assert d.event == later
        await d.ack()

    async def test_multi_stream_pattern(self, bus: Bus, tenant: str, group: str) -> None:
        llm = make_event("llm.call", {"provider": "p", "model": "m"}, tenant=tenant, source="t")
        await bus.publish_many([tick(tenant, 1.0), llm])
        it = bus.subscribe(">", group=group, tenant=tenant, start="all")
        got = await take(it, 2)
        assert {d.event.type for d in got} == {"market.tick", "llm.call"}
        assert {d.stream for d in got} == {"MARKET", "LLM"}
        for d in got:
            await d.ack()
        await it.aclose()  # type: ignore[attr-defined]

    # -- consumer groups ---------------------------------------------------------------

    async def test_two_members_split_the_work_without_handling_twice(
        self, connect: Connect, tenant: str, group: str
    ) -> None:
        """Members of one group share the work, and each event is handled by one of them, once.

        How work is split differs: NATS and memory hand the next event to any member;
        Kafka gives each member whole partitions, after a rebalance that takes seconds,
        so only events with different keys spread. The guarantee all meet: with events
        of many keys arriving, both members get a share, and across the joins and
        rebalances every event is handled exactly once.
        """
        a, b = await connect(), await connect()
        try:
            sent = [tick(tenant, float(i + 1), symbol=f"SYM-{i}") for i in range(40)]
            await a.publish_many(sent)
            handled: dict[str, list[str]] = {"a": [], "b": []}

            async def member(name: str, bus: Bus) -> None:
                async for d in bus.subscribe("market.>", group=group, tenant=tenant, start="all"):
                    handled[name].append(d.event.id)
                    await asyncio.sleep(0.01)  # real work takes time: the other member gets a turn
                    await d.ack()

            tasks = [asyncio.create_task(member("a", a)), asyncio.create_task(member("b", b))]
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 30
            while not (handled["a"] and handled["b"]) and loop.time() < deadline:
                more = [tick(tenant, float(len(sent) + i + 1), symbol=f"SYM-{len(sent) + i}") for i in range(4)]
                await a.publish_many(more)
                sent += more
                await asyncio.sleep(0.1)
            deadline = loop.time() + 20
            while len(handled["a"]) + len(handled["b"]) < len(sent) and loop.time() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.5)  # anything handled twice would show up now
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            all_ids = handled["a"] + handled["b"]
            assert sorted(all_ids) == sorted(e.id for e in sent)  # each exactly once
            assert handled["a"] and handled["b"], "both members should get a share"
        finally:
            await a.aclose()
            await b.aclose()

    async def test_unacked_event_is_redelivered_after_ack_wait(self, bus: Bus, tenant: str, group: str) -> None:
        event = tick(tenant, 1.0)
        await bus.publish(event)
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (first,) = await take(it, 1)  # not acked: the member "crashed" mid-handling
        (again,) = await take(it, 1, timeout=CONTRACT_CONFIG.ack_wait_s + 10)
        assert again.event == event and again.seq == first.seq
        assert again.attempt == 2
        await again.ack()
        assert await nothing_within(it, CONTRACT_CONFIG.ack_wait_s + 1)

    async def test_nak_redelivers(self, bus: Bus, tenant: str, group: str) -> None:
        event = tick(tenant, 1.0)
        await bus.publish(event)
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (first,) = await take(it, 1)
        await first.nak(delay=0.2)
        (again,) = await take(it, 1)
        assert again.event == event and again.attempt == 2
        await again.ack()

    async def test_duplicate_id_is_stored_once(self, bus: Bus, tenant: str, group: str) -> None:
        """A repeated id published through one bus within the duplicate window is stored once.

        NATS drops it in the broker, for every client; Kafka has no dedup by id, so the
        bus drops repeats it sent itself. Across processes consumers stay idempotent on id.
        """
        event = tick(tenant, 1.0)
        first = await bus.publish(event)
        second = await bus.publish(event)
        assert not first.duplicate and second.duplicate and second.seq == first.seq
        [again] = await bus.publish_many([event])
        assert again.duplicate
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        await d.ack()
        assert await nothing_within(it, 1.5)

    # -- dead letters ------------------------------------------------------------------

    async def test_poison_event_goes_to_dlq_after_max_deliver_and_group_moves_on(
        self, bus: Bus, tenant: str, group: str
    ) -> None:
        poison, good = tick(tenant, 666.0), tick(tenant, 1.0)
        await bus.publish_many([poison, good])
        attempts = 0
        handled_good = asyncio.Event()

        async def handler() -> None:
            nonlocal attempts
            async for d in bus.subscribe("market.>", group=group, tenant=tenant, start="all"):
                if d.event.id == poison.id:
                    attempts += 1
                    await d.nak()  # the handler fails on it every time
                else:
                    await d.ack()
                    handled_good.set()

        task = asyncio.create_task(handler())
        try:
            letters = await dead_letters(bus, tenant, timeout=30)
            await asyncio.wait_for(handled_good.wait(), 10)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        assert [e.type for e in letters] == ["dlq.max_deliver"]
        letter = letters[0].data
        assert letter.original_id == poison.id and letter.group == group
        assert decode(letter.original) == poison
        assert letter.source_stream == "MARKET" and letter.source_sequence is not None
        assert "max_deliver" in letter.reason
        # Exactly max_deliver handling attempts (a transport may show it once more after
        # the last nak only to dead-letter it; the handler never sees that one).
        assert attempts == CONTRACT_CONFIG.max_deliver

    async def test_undecodable_payload_goes_to_dlq_and_never_reaches_the_handler(
        self, bus: Bus, tenant: str, group: str
    ) -> None:
        garbage = b'{"specversion": "1.0", "type": "market.tick", "data": {"price": "lots"}}'
        await bus.publish_raw(f"spine.{tenant}.market.tick.BTC-USD", garbage, msg_id=str(uuid.uuid4()))
        await bus.publish_raw(f"spine.{tenant}.market.tick.BTC-USD", b"\xff\xfe not json", msg_id=str(uuid.uuid4()))
        good = tick(tenant, 1.0)
        await bus.publish(good)
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        assert d.event == good
        await d.ack()
        letters = await dead_letters(bus, tenant, at_least=2)
        assert sorted(e.data.original for e in letters) == sorted([garbage, b"\xff\xfe not json"])
        assert all(e.type == "dlq.undecodable" and e.tenant == tenant for e in letters)
        reasons = " | ".join(e.data.reason for e in letters)
        assert "not valid JSON" in reasons and "subject" in reasons  # names the missing field

    async def test_term_dead_letters_with_the_reason(self, bus: Bus, tenant: str, group: str) -> None:
        event = tick(tenant, 1.0)
        await bus.publish(event)
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        await d.term("price feed blacklisted")
        (letter,) = await dead_letters(bus, tenant)
        assert letter.type == "dlq.rejected"
        assert letter.data.reason == "price feed blacklisted"
        assert letter.data.original_id == event.id
        assert await nothing_within(it, CONTRACT_CONFIG.ack_wait_s + 1)  # not redelivered

    async def test_redrive_puts_the_original_bytes_back(self, bus: Bus, tenant: str, group: str) -> None:
        event = tick(tenant, 1.0)
        await bus.publish(event)
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        await d.term("try later")
        (letter,) = await dead_letters(bus, tenant)
        await bus.publish_raw(letter.data.source_subject, letter.data.original, msg_id=f"redrive-{letter.id}")
        (again,) = await take(it, 1)
        assert again.event == event
        await again.ack()

    # -- replay and lag ----------------------------------------------------------------

    async def test_replay_from_sequence_with_end(self, bus: Bus, tenant: str) -> None:
        events = [tick(tenant, float(i + 1)) for i in range(10)]
        acks = await bus.publish_many(events)
        got = [r async for r in bus.replay("MARKET", start=acks[4].seq, tenant=tenant)]
        assert [r.event for r in got] == events[4:]
        got = [r async for r in bus.replay("MARKET", start=acks[2].seq, end=acks[5].seq, tenant=tenant)]
        assert [r.event for r in got] == events[2:6]
        assert [r.seq for r in got] == [a.seq for a in acks[2:6]]

    async def test_replay_from_time(self, bus: Bus, tenant: str) -> None:
        early = [tick(tenant, 1.0), tick(tenant, 2.0)]
        await bus.publish_many(early)
        await asyncio.sleep(1.1)
        cut = datetime.now(UTC)
        await asyncio.sleep(0.1)
        late = [tick(tenant, 3.0), tick(tenant, 4.0)]
        await bus.publish_many(late)
        got = [r.event async for r in bus.replay("MARKET", start=cut, tenant=tenant)]
        assert got == late
        got = [r.event async for r in bus.replay("MARKET", end=cut, tenant=tenant)]
        assert got == early
        future = [r async for r in bus.replay("MARKET", start=cut + timedelta(hours=1), tenant=tenant)]
        assert future == []

    async def test_lag_counts_pending_and_unacked(self, bus: Bus, tenant: str, group: str) -> None:
        """Lag grows by what is published after the group's last ack, and counts unacked events.

        NATS and memory count only the events the group's filter matches; Kafka counts
        every record of the topic past the group's commit (it cannot tell tenants apart
        without reading them). So the check is on the growth, which all agree on.
        """
        await bus.publish(tick(tenant, 1.0))
        it = bus.subscribe("market.>", group=group, tenant=tenant, start="all")
        (d,) = await take(it, 1)
        await d.ack()
        await it.aclose()  # type: ignore[attr-defined]
        for _ in range(50):  # until the broker has taken the ack
            before = await bus.lag(group)
            if before.ack_pending == 0:
                break
            await asyncio.sleep(0.1)
        await bus.publish_many([tick(tenant, float(i + 2)) for i in range(4)])

        async def growth() -> int:
            for _ in range(50):
                lag = await bus.lag(group)
                if lag.total - before.total == 4:
                    break
                await asyncio.sleep(0.1)
            return lag.total - before.total

        assert await growth() == 4
        lag = await bus.lag(group)
        assert lag.pending - before.pending == 4 and lag.ack_pending == 0 and set(lag.streams) == {"MARKET"}
        it = bus.subscribe("market.>", group=group, tenant=tenant)
        (unacked,) = await take(it, 1)
        for _ in range(50):  # NATS also counts what its client fetched ahead: at least the one in hand
            if (await bus.lag(group)).ack_pending >= 1:
                break
            await asyncio.sleep(0.1)
        assert (await bus.lag(group)).ack_pending >= 1
        await unacked.ack()
        await it.aclose()  # type: ignore[attr-defined]

    async def test_lag_of_unknown_group(self, bus: Bus) -> None:
        with pytest.raises(StreamNotFound, match="no consumer group"):
            await bus.lag("never-existed")

    async def test_bad_names_are_rejected(self, bus: Bus) -> None:
        with pytest.raises(InvalidArgument, match="group"):
            await anext(bus.subscribe("market.>", group="has space"))
        with pytest.raises(InvalidArgument, match=r"outside|pattern|subject"):
            await bus.publish_raw("not.spine", b"{}")

    async def test_describe_lists_every_stream(self, bus: Bus) -> None:
        names = {s.name for s in await bus.describe()}
        assert names == {"MARKET", "SESSIONS", "LLM", "CONFIG", "DECISIONS", "DLQ"}

    async def test_checkpoints_keep_the_latest_value_and_list_keys_by_prefix(self, bus: Bus) -> None:
        store = await bus.checkpoints()
        group = f"c{uuid.uuid4().hex[:10]}"
        assert await store.keys(f"{group}.") == [] and await store.get(f"{group}.p0") is None
        for p in (1, 0, 2):
            await store.put(f"{group}.p{p}", b"first")
        await store.put(f"{group}.p1", b"second")
        await store.put(f"{group}x.p0", b"another group")
        assert await store.keys(f"{group}.") == [f"{group}.p0", f"{group}.p1", f"{group}.p2"]
        assert await store.get(f"{group}.p1") == b"second"
