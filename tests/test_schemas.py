"""Schemas: every type round-trips, exported JSON Schemas validate samples, errors name fields."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest

from schemas import EVENT_TYPES, SchemaError, decode, derived_id, encode, make_event, uuid7
from schemas.export import export_json_schemas
from schemas.ids import uuid7_time_ms
from schemas.samples import SAMPLES, sample_subject

ALL_TYPES = sorted(EVENT_TYPES)


def test_every_type_has_a_sample() -> None:
    assert set(SAMPLES) == set(EVENT_TYPES)


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_every_event_round_trips(type_name: str) -> None:
    event = make_event(type_name, SAMPLES[type_name], subject=sample_subject(type_name), tenant="acme")
    raw = encode(event)
    back = decode(raw)
    assert back == event
    assert type(back) is type(event)
    assert encode(back) == raw
    doc = json.loads(raw)
    assert doc["specversion"] == "1.0"
    assert doc["dataschema"] == f"spine:{type_name}:1"
    assert doc["type"] == type_name
    assert doc["time"].endswith("Z")
    for attr in ("tenant", "traceparent", "causationid", "correlationid"):
        assert attr in doc


@pytest.mark.parametrize("type_name", ALL_TYPES)
def test_exported_schema_validates_the_sample_and_rejects_garbage(type_name: str, tmp_path: Path) -> None:
    export_json_schemas(tmp_path)
    schema = json.loads((tmp_path / f"{type_name}.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    event = make_event(type_name, SAMPLES[type_name], subject=sample_subject(type_name))
    jsonschema.validate(json.loads(encode(event)), schema)
    bad = json.loads(encode(event))
    bad["data"]["unexpected_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    wrong_type = json.loads(encode(event)) | {"type": "something.else"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wrong_type, schema)


def test_decode_errors_name_the_field() -> None:
    event = make_event("llm.call", SAMPLES["llm.call"])
    doc = json.loads(encode(event))
    doc["data"]["input_tokens"] = -1
    with pytest.raises(SchemaError) as info:
        decode(json.dumps(doc))
    assert info.value.field == "data.input_tokens"
    assert "data.input_tokens" in str(info.value) and "-1" in str(info.value)

    doc = json.loads(encode(event))
    doc["data"]["api_key"] = "sk-123"
    with pytest.raises(SchemaError) as info:
        decode(json.dumps(doc))
    assert info.value.field == "data.api_key"

    with pytest.raises(SchemaError) as info:
        decode(b"not json")
    assert info.value.field is None and "not valid JSON" in str(info.value)

    with pytest.raises(SchemaError) as info:
        decode(b'{"type": "no.such.type"}')
    assert info.value.field == "type"

    with pytest.raises(SchemaError) as info:
        decode(b"[1, 2]")
    assert "JSON object" in str(info.value)


def test_unsupported_schema_version_is_rejected() -> None:
    doc = json.loads(encode(make_event("market.tick", SAMPLES["market.tick"])))
    doc["dataschema"] = "spine:market.tick:9"
    with pytest.raises(SchemaError) as info:
        decode(json.dumps(doc))
    assert info.value.field == "dataschema"


def test_subject_defaults_to_the_natural_key_and_is_required_otherwise() -> None:
    assert make_event("market.tick", SAMPLES["market.tick"]).subject == "BTC-USD"
    assert make_event("llm.call", SAMPLES["llm.call"]).subject == "openai/gpt-4o"
    with pytest.raises(SchemaError) as info:
        make_event("market.tick", {"venue": "x", "price": 1.0})
    assert info.value.field in ("subject", "data.symbol")


def test_time_is_normalised_to_utc_and_naive_times_are_rejected() -> None:
    local = datetime(2026, 11, 21, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    event = make_event("market.tick", SAMPLES["market.tick"], time=local)
    assert event.time == local and event.time.tzinfo == UTC
    with pytest.raises(SchemaError) as info:
        make_event("market.tick", SAMPLES["market.tick"], time=datetime(2026, 11, 21, 12, 0))
    assert info.value.field == "time"


def test_tenant_and_traceparent_are_validated() -> None:
    with pytest.raises(SchemaError) as info:
        make_event("market.tick", SAMPLES["market.tick"], tenant="Bad Tenant")
    assert info.value.field == "tenant"
    with pytest.raises(SchemaError):
        make_event("market.tick", SAMPLES["market.tick"], traceparent="nope")


def test_events_are_frozen() -> None:
    event = make_event("market.tick", SAMPLES["market.tick"])
    with pytest.raises(Exception, match="frozen"):
        event.subject = "ETH"  # type: ignore[misc]


def test_uuid7_is_version_7_time_ordered_and_unique() -> None:
    ids = [uuid7() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)
    assert all(uuid.UUID(i).version == 7 for i in ids[:10])
    now_ms = datetime.now(UTC).timestamp() * 1000
    assert abs(uuid7_time_ms(ids[-1]) - now_ms) < 5_000


def test_derived_ids_are_uuid5_over_processor_cause_and_index() -> None:
    """derived_id skips the UUID object for speed; it must stay exactly uuid5."""
    import random
    import uuid

    from schemas.ids import SPINE_NAMESPACE

    r = random.Random(7)
    for i in range(2000):
        processor = r.choice(["cost", "supervisor", "drop-rule", "é-ü"])
        cause = str(uuid.UUID(int=r.getrandbits(128))) + "x" * (i % 3)
        index = r.randint(0, 300)
        expected = uuid.uuid5(SPINE_NAMESPACE, f"{processor}\x1f{cause}\x1f{index}")
        assert derived_id(processor, cause, index) == str(expected)


def test_derived_ids_are_deterministic_and_distinct() -> None:
    a = derived_id("cost", "event-1", 0)
    assert a == derived_id("cost", "event-1", 0)
    assert uuid.UUID(a).version == 5
    assert (
        len({a, derived_id("cost", "event-1", 1), derived_id("cost", "event-2", 0), derived_id("alerts", "event-1", 0)})
        == 4
    )
