"""Cheap decoding inside (streams.rows) and the Kafka follow's time-ordered merge, without a broker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import orjson
import pytest

from processors.cost import CostProcessor
from schemas import SchemaError, decode, encode, make_event
from streams.bus import Record, RowRecord, Undecodable, follow_item
from streams.rows import RowDecoder, row_decoder
from streams.transports.kafka_readers import TimeMerge
from tests.contracts.bus_contract import tick
from tests.test_runner import T0, calls


def _full_values(event: Any) -> tuple[Any, ...]:
    return tuple(getattr(event.data, name) for name in CostProcessor.row_input.fields)


def _decoder() -> RowDecoder:
    decoder = row_decoder(CostProcessor())
    assert decoder is not None
    return decoder


def test_a_row_carries_what_the_full_decode_gives_for_the_fields_it_reads() -> None:
    decoder = _decoder()
    traced = make_event(
        "llm.call",
        {"provider": "openai", "model": "gpt-4o", "project": "p", "cost_usd": 2, "input_tokens": 3},
        tenant="acme",
        traceparent=f"00-{'a' * 32}-{'b' * 16}-01",
        correlationid="c-1",
        time=T0,
    )
    for event in [*calls(9), traced]:
        row = decoder.decode(encode(event))
        assert tuple(row.values()) == _full_values(event)
        for name in ("id", "type", "subject", "time", "tenant", "traceparent", "causationid", "correlationid"):
            assert getattr(row, name) == getattr(event, name), name
    assert isinstance(decoder.decode(encode(traced)).values()[7], float)  # cost_usd 2 -> 2.0, as in the model


def test_what_a_row_cannot_take_goes_through_the_full_decode() -> None:
    decoder = _decoder()
    (event,) = calls(1)
    doc = orjson.loads(encode(event))
    bad_tokens = {**doc, "data": {**doc["data"], "input_tokens": -1}}
    no_id = {k: v for k, v in doc.items() if k != "id"}
    other_type = encode(tick("acme", 1.0))
    for raw in (orjson.dumps(bad_tokens), orjson.dumps(no_id), other_type, b"{broken"):
        with pytest.raises(SchemaError):
            decoder.decode(raw)
    # follow_item: the full schema's reason for an invalid field, a full event where it fills a default
    item = follow_item("LLM", 1, "s", orjson.dumps(bad_tokens), decoder)
    assert isinstance(item, Undecodable) and "input_tokens" in item.reason
    assert isinstance(follow_item("LLM", 2, "s", orjson.dumps(no_id), decoder), Record)
    assert isinstance(follow_item("LLM", 3, "s", encode(event), decoder), RowRecord)
    assert isinstance(follow_item("LLM", 4, "s", encode(event), None), Record)


def test_fields_the_processor_does_not_read_are_left_to_the_edge() -> None:
    """Inside, only what the fold reads is checked: the edge (every producer) validated the rest."""
    decoder = _decoder()
    (event,) = calls(1)
    doc = orjson.loads(encode(event))
    unread_invalid = orjson.dumps({**doc, "data": {**doc["data"], "http_status": 999}})
    with pytest.raises(SchemaError):
        decode(unread_invalid)
    assert tuple(decoder.decode(unread_invalid).values()) == _full_values(event)


def test_only_a_processor_reading_one_row_type_gets_a_decoder() -> None:
    assert row_decoder(CostProcessor()) is not None

    class TwoInputs(CostProcessor):
        inputs = ("llm.call", "decision.budget")

    assert row_decoder(TwoInputs()) is None
    assert row_decoder(object()) is None


# -- the time-ordered merge of a topic's partitions ----------------------------------------


def _records(partition: int, minutes: list[int]) -> list[Record]:
    out = []
    for offset, minute in enumerate(minutes):
        event = tick("acme", 1.0, time=T0 + timedelta(minutes=minute))
        out.append(Record("MARKET", offset + 1, "s", event, partition))
    return out


def test_the_merge_releases_the_earliest_head_while_every_partition_can_answer() -> None:
    ends = {0: 3, 1: 3}
    merge = TimeMerge({0: 0, 1: 0}, ends.get)
    for record in _records(0, [1, 2, 9]):
        merge.push(record)
    merge.fetched(0, 3)
    assert merge.release(0.0) == []  # partition 1 has records on the broker, none fetched yet
    for record in _records(1, [3, 4, 5]):
        merge.push(record)
    merge.fetched(1, 3)
    out = merge.release(0.0)
    assert [(r.partition, r.time.minute) for r in out] == [(0, 1), (0, 2), (1, 3), (1, 4), (1, 5), (0, 9)]
    assert merge.pending == 0


def test_the_merge_stops_where_a_partition_with_lag_runs_dry() -> None:
    ends = {0: 2, 1: 5}
    merge = TimeMerge({0: 0, 1: 0}, ends.get)
    for record in [*_records(0, [1, 8]), *_records(1, [2, 3])]:
        merge.push(record)
    merge.fetched(0, 2)
    merge.fetched(1, 2)  # three more of partition 1 on the broker
    assert [r.time.minute for r in merge.release(0.0)] == [1, 2, 3]  # not 8: partition 1 may go on before it
    assert merge.pending == 1


def test_the_merge_stops_waiting_for_a_partition_that_brings_nothing() -> None:
    ends: dict[int, int | None] = {0: 1, 1: None}  # partition 1 never answered
    merge = TimeMerge({0: 0, 1: 0}, ends.get, max_wait_s=5.0)
    for record in _records(0, [1]):
        merge.push(record)
    merge.fetched(0, 1)
    assert merge.release(100.0) == []
    assert merge.release(104.0) == []
    assert [r.time.minute for r in merge.release(105.5)] == [1]
