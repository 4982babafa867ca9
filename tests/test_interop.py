"""Interop with clients nobody here wrote: kcat on Kafka, raw nats-py on NATS.

Each side writes or reads CloudEvents JSON (structured mode) on the documented
topic/subject and key, and the real `spine` entry point reads or writes it.

kcat in Debian 12 links librdkafka 2.0.2, which mis-skips tagged fields in
responses (fixed in librdkafka 2.2.0, confluentinc/librdkafka#4278). Tansu's
ApiVersions v3 response carries four tagged fields, all at their defaults (a
Kafka broker omits those), and librdkafka 2.0.2 then fails the handshake with
"Read underflow". For such a kcat, `_ApiVersionsShim` sits between kcat and a
Tansu of its own and drops exactly those tagged fields; every other byte passes
unchanged. A newer kcat talks to Tansu directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import nats
import pytest

from streams.embedded import NatsServer, free_port
from streams.embedded_kafka import TansuBroker

SPINE = str(Path(sys.executable).parent / "spine")
KCAT = shutil.which("kcat")
needs_kcat = pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt-get install kcat; .ci/run does)")


# -- helpers ---------------------------------------------------------------------------


def spine(url: str, data_dir: Path, *args: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPINE_")}
    env |= {"SPINE_DATA_DIR": str(data_dir), "SPINE_BUS__KAFKA__IDEMPOTENCE": "false", "NO_COLOR": "1"}
    proc = subprocess.run(
        [SPINE, "--url", url, *args], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert proc.returncode == 0, f"spine {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def kcat(bootstrap: str, *args: str, stdin: str | None = None) -> str:
    assert KCAT is not None
    proc = subprocess.run(
        [KCAT, "-b", bootstrap, *args], input=stdin, capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.returncode == 0, f"kcat {' '.join(args)} exited {proc.returncode}: {proc.stderr}"
    return proc.stdout


def hand_written_tick(tenant: str) -> dict[str, Any]:
    """A CloudEvents JSON document as a third party would write it, not built by Spine."""
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "type": "market.tick",
        "source": "urn:example:feed",
        "subject": "BTC-USD",
        "time": "2026-11-21T10:00:00.123Z",
        "datacontenttype": "application/json",
        "dataschema": "spine:market.tick:1",
        "tenant": tenant,
        "data": {"venue": "kraken", "symbol": "BTC-USD", "price": 97123.5, "volume": 0.25},
    }


def assert_cloudevent(doc: dict[str, Any]) -> None:
    """CloudEvents 1.0 JSON format: required attributes, naming, types, RFC 3339 time."""
    assert doc["specversion"] == "1.0"
    for required in ("id", "source", "type"):
        assert isinstance(doc[required], str) and doc[required], required
    for name in doc:
        assert name == "data" or re.fullmatch(r"[a-z0-9]{1,20}", name), f"bad attribute name {name!r}"
    assert doc.get("datacontenttype") == "application/json" and isinstance(doc["data"], dict)
    assert datetime.fromisoformat(doc["time"].replace("Z", "+00:00")).tzinfo is not None


def consume_one(url: str, data_dir: Path, tenant: str) -> dict[str, Any]:
    out = spine(url, data_dir, "consume", "market.>", "--group", f"interop-{uuid.uuid4().hex[:8]}",
                "--tenant", tenant, "--from-start", "--limit", "1", "--wait", "30", "--json")  # fmt: skip
    (event,) = json.loads(out)
    return event  # type: ignore[no-any-return]


# -- the ApiVersions shim for librdkafka < 2.2 --------------------------------------------


def _uvarint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _without_top_level_tags(body: bytes) -> bytes:
    """ApiVersions v3+ response body (after the correlation id) with no tagged fields at the end."""
    i = 2  # error_code
    count, i = _uvarint(body, i)
    for _ in range(count - 1):  # compact array: N + 1
        i += 6  # api_key, min_version, max_version
        tags, i = _uvarint(body, i)
        for _ in range(tags):
            _, i = _uvarint(body, i)
            size, i = _uvarint(body, i)
            i += size
    i += 4  # throttle_time_ms
    return body[:i] + b"\x00"


class _ApiVersionsShim:
    """A TCP proxy that drops the default-valued tagged fields of ApiVersions responses."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "shim did not start"

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()
            self._loop.run_until_complete(server.wait_closed())
            tasks = asyncio.all_tasks(self._loop)
            for task in tasks:
                task.cancel()
            self._loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        requests: dict[int, tuple[int, int]] = {}

        async def frame(reader: asyncio.StreamReader) -> bytes:
            (size,) = struct.unpack(">i", await reader.readexactly(4))
            return await reader.readexactly(size)

        async def upward() -> None:
            while True:
                request = await frame(client_r)
                key, version, correlation = struct.unpack(">hhi", request[:8])
                requests[correlation] = (key, version)
                server_w.write(struct.pack(">i", len(request)) + request)
                await server_w.drain()

        async def downward() -> None:
            while True:
                response = await frame(server_r)
                (correlation,) = struct.unpack(">i", response[:4])
                key, version = requests.pop(correlation, (-1, -1))
                if key == 18 and version >= 3:
                    response = response[:4] + _without_top_level_tags(response[4:])
                client_w.write(struct.pack(">i", len(response)) + response)
                await client_w.drain()

        try:
            await asyncio.gather(upward(), downward())
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            client_w.close()
            server_w.close()


def _librdkafka_needs_shim() -> bool:
    assert KCAT is not None
    version = subprocess.run([KCAT, "-V"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"librdkafka (\d+)\.(\d+)", version)
    return found is None or (int(found[1]), int(found[2])) < (2, 2)


@pytest.fixture(scope="module")
def kafka_for_kcat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Tansu that kcat can talk to; yields its bootstrap address (kcat and Spine share it)."""
    if KCAT is None:
        pytest.skip("kcat is not installed")
    shim: _ApiVersionsShim | None = None
    broker = TansuBroker(Path(tmp_path_factory.mktemp("tansu-kcat")))
    if _librdkafka_needs_shim():
        shim = _ApiVersionsShim(broker.port)
        broker.advertised_port = shim.port
        shim.start()
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
        if shim is not None:
            shim.stop()


# -- Kafka -------------------------------------------------------------------------------


@pytest.mark.kafka
@needs_kcat
def test_kcat_publishes_cloudevents_json_and_spine_consume_reads_a_typed_event(
    kafka_for_kcat: str, tmp_path: Path
) -> None:
    url = f"kafka://{kafka_for_kcat}"
    spine(url, tmp_path, "streams", "apply", "--json")  # Spine's topics, partitions and configs
    tenant = f"kcat-{uuid.uuid4().hex[:8]}"
    doc = hand_written_tick(tenant)
    kcat(kafka_for_kcat, "-P", "-t", "spine.market", "-k", f"{tenant}/BTC-USD",
         "-H", f"id={doc['id']}", "-H", "type=market.tick", stdin=json.dumps(doc) + "\n")  # fmt: skip
    event = consume_one(url, tmp_path, tenant)
    assert event["id"] == doc["id"] and event["type"] == "market.tick" and event["tenant"] == tenant
    assert event["subject"] == "BTC-USD" and event["source"] == "urn:example:feed"
    assert {k: event["data"][k] for k in doc["data"]} == doc["data"]  # validated into MarketTick
    assert event["time"].startswith("2026-11-21T10:00:00.123")


@pytest.mark.kafka
@needs_kcat
def test_kcat_without_key_or_headers_still_reaches_spine(kafka_for_kcat: str, tmp_path: Path) -> None:
    """A producer that sets neither key nor headers: Spine reads the routing from the body."""
    url = f"kafka://{kafka_for_kcat}"
    spine(url, tmp_path, "streams", "apply", "--json")
    tenant = f"kcat-{uuid.uuid4().hex[:8]}"
    doc = hand_written_tick(tenant)
    kcat(kafka_for_kcat, "-P", "-t", "spine.market", stdin=json.dumps(doc) + "\n")
    assert consume_one(url, tmp_path, tenant)["id"] == doc["id"]


@pytest.mark.kafka
@needs_kcat
def test_an_event_published_by_spine_is_cloudevents_json_to_kcat(kafka_for_kcat: str, tmp_path: Path) -> None:
    url = f"kafka://{kafka_for_kcat}"
    tenant = f"kcat-{uuid.uuid4().hex[:8]}"
    data = '{"venue": "binance", "symbol": "ETH-USD", "price": 3500.25}'
    (ack,) = json.loads(spine(url, tmp_path, "publish", "market.tick", "--data", data, "--tenant", tenant, "--json"))
    lines = kcat(kafka_for_kcat, "-C", "-t", "spine.market", "-o", "beginning", "-e", "-J", "-q").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    (record,) = [r for r in records if r["key"] == f"{tenant}/ETH-USD"]
    doc = json.loads(record["payload"])
    assert_cloudevent(doc)
    assert doc["id"] == ack["id"] and doc["type"] == "market.tick" and doc["subject"] == "ETH-USD"
    assert doc["tenant"] == tenant and doc["data"]["price"] == 3500.25
    headers = dict(zip(record["headers"][::2], record["headers"][1::2], strict=True))
    assert headers["id"] == doc["id"] and headers["type"] == "market.tick"
    assert headers["content-type"] == "application/cloudevents+json"


# -- NATS --------------------------------------------------------------------------------


@pytest.mark.nats
async def test_raw_nats_client_publishes_cloudevents_json_and_spine_consume_reads_it(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    spine(nats_server.url, tmp_path, "streams", "apply", "--json")
    tenant = f"nats-{uuid.uuid4().hex[:8]}"
    doc = hand_written_tick(tenant)
    nc = await nats.connect(nats_server.url)
    try:
        ack = await nc.jetstream().publish(
            f"spine.{tenant}.market.tick.BTC-USD", json.dumps(doc).encode(), headers={"Nats-Msg-Id": doc["id"]}
        )
    finally:
        await nc.close()
    assert ack.stream == "MARKET"
    event = await asyncio.to_thread(consume_one, nats_server.url, tmp_path, tenant)
    assert event["id"] == doc["id"] and event["tenant"] == tenant and event["subject"] == "BTC-USD"
    assert {k: event["data"][k] for k in doc["data"]} == doc["data"]


@pytest.mark.nats
async def test_an_event_published_by_spine_is_cloudevents_json_to_a_raw_nats_client(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    tenant = f"nats-{uuid.uuid4().hex[:8]}"
    data = '{"venue": "binance", "symbol": "ETH-USD", "price": 3500.25}'
    out = await asyncio.to_thread(
        spine, nats_server.url, tmp_path, "publish", "market.tick", "--data", data, "--tenant", tenant, "--json"
    )
    (ack,) = json.loads(out)
    nc = await nats.connect(nats_server.url)
    try:
        msg = await nc.jetstream().get_last_msg("MARKET", f"spine.{tenant}.market.tick.ETH-USD")
    finally:
        await nc.close()
    doc = json.loads(msg.data or b"")
    assert_cloudevent(doc)
    assert doc["id"] == ack["id"] and doc["tenant"] == tenant and doc["data"]["price"] == 3500.25
    assert (msg.headers or {})["Nats-Msg-Id"] == doc["id"]
