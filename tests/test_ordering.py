"""The runner's merge of several input streams into event-time order (streams.ordering)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Event, make_event
from streams.bus import Record, Undecodable
from streams.catalog import STREAM_ORDER
from streams.ordering import StreamMerge
from streams.processing import Output
from streams.runner import RunnerConfig
from tests.contracts.bus_contract import tick
from tests.test_runner import T0, fresh_bus, run_until


def _rec(stream: str, seq: int, minute: int) -> Record:
    return Record(stream, seq, "s", tick("acme", 1.0, time=T0 + timedelta(minutes=minute)))


def _give(merge: StreamMerge, items: list[Any]) -> list[Any]:
    for item in items:
        merge.yielded(item.stream)
    return items


def test_the_earliest_head_goes_first_while_every_stream_can_answer() -> None:
    merge = StreamMerge(["MARKET", "LLM"])
    first = _give(merge, [_rec("MARKET", 1, 1), _rec("MARKET", 2, 5)])
    assert merge.release(first, 0.0) == []  # LLM has said nothing yet
    llm = _give(merge, [_rec("LLM", 1, 2), _rec("LLM", 2, 3)])
    merge.caught_up("LLM")
    out = merge.release(llm, 0.1)
    assert [(r.stream, r.seq) for r in out] == [("MARKET", 1), ("LLM", 1), ("LLM", 2), ("MARKET", 2)]
    later = _give(merge, [_rec("LLM", 3, 7)])
    assert merge.release(later, 0.2) == []  # MARKET is behind and may bring something before minute 7
    merge.caught_up("MARKET")
    assert [(r.stream, r.seq) for r in merge.release([], 0.3)] == [("LLM", 3)]


def test_equal_times_go_by_stream_order_and_undecodables_at_once() -> None:
    merge = StreamMerge(["LLM", "MARKET"])
    bad = Undecodable("LLM", 9, "s", b"{", "not JSON")
    items = _give(merge, [_rec("LLM", 1, 1), bad, _rec("MARKET", 1, 1)])
    merge.caught_up("LLM")
    merge.caught_up("MARKET")
    out = merge.release(items, 0.0)
    assert out[0] is bad
    assert [(r.stream, r.seq) for r in out[1:]] == [("MARKET", 1), ("LLM", 1)]  # MARKET ranks before LLM


def test_a_stream_that_yields_after_catching_up_is_behind_again() -> None:
    merge = StreamMerge(["MARKET", "LLM"])
    merge.caught_up("LLM")
    _give(merge, [_rec("LLM", 1, 9)])  # yielded after the report, not received yet
    assert merge.release(_give(merge, [_rec("MARKET", 1, 1)]), 0.0) == []


def test_the_merge_stops_waiting_for_a_silent_stream() -> None:
    merge = StreamMerge(["MARKET", "LLM"], max_wait_s=2.0)
    items = _give(merge, [_rec("MARKET", 1, 1), _rec("MARKET", 2, 2)])
    assert merge.release(items, 10.0) == []
    assert merge.release([], 11.0) == []
    assert [r.seq for r in merge.release([], 12.5)] == [1, 2]


class OrderProbe:
    """Folds market ticks and LLM calls and remembers the event times in the order it saw them."""

    name = "order-probe"
    inputs = ("market.tick", "llm.call")

    def initial_state(self) -> list[str]:
        return []

    def handle(self, state: list[str], event: Event) -> list[Output]:
        state.append(event.time.isoformat())
        return []

    def snapshot(self, state: list[str]) -> dict[str, Any]:
        return {"seen": list(state)}

    def restore(self, snapshot: dict[str, Any]) -> list[str]:
        return list(snapshot["seen"])


async def test_a_runner_catching_up_folds_its_streams_in_event_time_order() -> None:
    bus = fresh_bus()
    ticks = [tick("acme", 1.0, time=T0 + timedelta(seconds=2 * i)) for i in range(40)]
    calls = [
        make_event(
            "llm.call", {"provider": "openai", "model": "m"}, tenant="acme", time=T0 + timedelta(seconds=2 * i + 1)
        )
        for i in range(40)
    ]
    await bus.publish_many(calls)  # stored first, but interleaved with the ticks in event time
    await bus.publish_many(ticks)
    runner = await run_until(bus, OrderProbe(), RunnerConfig(batch_max=7), lambda r: r.health.handled >= 80)
    (part,) = [p for p in runner.parts.values() if p.state]
    assert part.state == sorted(e.time.isoformat() for e in [*ticks, *calls])


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.lists(st.integers(0, 30), max_size=12), min_size=2, max_size=3),
    st.lists(st.integers(0, 2), max_size=60),
)
def test_any_arrival_keeps_each_stream_in_order_and_a_caught_up_merge_sorts_by_time(
    minutes: list[list[int]], arrivals: list[int]
) -> None:
    """Records arrive stream by stream in any interleaving, with caught-up reports at any point."""
    names = ["MARKET", "LLM", "DECISIONS"][: len(minutes)]
    streams = {
        name: [_rec(name, i + 1, m) for i, m in enumerate(sorted(ms))] for name, ms in zip(names, minutes, strict=True)
    }
    merge = StreamMerge(names)
    sent = dict.fromkeys(names, 0)
    out: list[Any] = []
    for pick in arrivals:  # deliver one record of a stream, or report it caught up when it has nothing left
        name = names[pick % len(names)]
        if sent[name] < len(streams[name]):
            merge.yielded(name)
            out += merge.release([streams[name][sent[name]]], 0.0)
            sent[name] += 1
        else:
            merge.caught_up(name)
            out += merge.release([], 0.0)
    rest = []
    for name in names:  # the rest, then every stream caught up: nothing may stay held
        for record in streams[name][sent[name] :]:
            merge.yielded(name)
            rest.append(record)
    tail = merge.release(rest, 0.0)
    for name in names:
        merge.caught_up(name)
    tail += merge.release([], 0.0)
    out += tail
    assert merge.held == 0 and len(out) == sum(len(s) for s in streams.values())
    for name in names:
        assert [r.seq for r in out if r.stream == name] == [r.seq for r in streams[name]]
    # Released only while every stream could answer: the whole output is in (time, stream rank) order.
    keys = [(r.time, STREAM_ORDER.index(r.stream)) for r in out]
    assert keys == sorted(keys)
