"""Read-only queries answered by the process that holds the archive for writing.

The writer listens on 127.0.0.1 (a free port) and records ``{pid, port,
token}`` in ``<archive file>.serve.json`` (mode 0600, so only the file's owner
can ask). A request is one JSON document; the answer is an Arrow IPC stream
or an error. Each query runs on a fresh cursor in a worker thread, so the
sink keeps writing while it runs (see ``store`` for why this exists).

    request:  b"SPQ1" + u32 length + {"token", "sql", "params"}
    answer:   b"A" + u64 length + Arrow IPC stream
              b"E" + u32 length + {"kind": "query"|"archive", "message", "hint"}
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import os
import secrets
import socket
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pyarrow as pa

from connectors.archive.errors import ArchiveError, QueryError
from streams.embedded import pid_alive

if TYPE_CHECKING:
    from connectors.archive.store import Archive

log = logging.getLogger("spine.archive.serve")

MAGIC = b"SPQ1"
_MAX_REQUEST = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ServeState:
    """Where a writer answers queries."""

    pid: int
    host: str
    port: int
    token: str


def state_file(path: Path) -> Path:
    return path.with_name(path.name + ".serve.json")


def read_state(path: Path) -> ServeState | None:
    """The live query server of the archive at ``path``, if its process still runs."""
    try:
        doc = orjson.loads(state_file(path).read_bytes())
        state = ServeState(int(doc["pid"]), str(doc["host"]), int(doc["port"]), str(doc["token"]))
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None
    return state if pid_alive(state.pid) else None


def ping(state: ServeState, timeout: float = 2.0) -> bool:
    """True if the server answers (a stale state file names a dead port)."""
    try:
        query(state, "SELECT 1", [], timeout=timeout)
    except (OSError, ArchiveError):
        return False
    return True


def _encode_param(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$datetime": value.isoformat()}
    return value


def _decode_param(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$datetime"}:
        return datetime.fromisoformat(value["$datetime"])
    return value


def query(state: ServeState, sql: str, params: list[Any], timeout: float | None = None) -> pa.Table:
    """Ask the server at ``state``; raises ``QueryError``/``ArchiveError`` as the server did."""
    body = orjson.dumps({"token": state.token, "sql": sql, "params": [_encode_param(p) for p in params]})
    with socket.create_connection((state.host, state.port), timeout=timeout or 5.0) as sock:
        sock.settimeout(timeout)  # None once connected: a long query may take its time
        sock.sendall(MAGIC + len(body).to_bytes(4, "big") + body)
        status = _recv(sock, 1)
        if status == b"A":
            size = int.from_bytes(_recv(sock, 8), "big")
            with pa.ipc.open_stream(pa.py_buffer(_recv(sock, size))) as reader:
                return reader.read_all()
        size = int.from_bytes(_recv(sock, 4), "big")
        doc = orjson.loads(_recv(sock, size))
    cls = QueryError if doc.get("kind") == "query" else ArchiveError
    raise cls(str(doc.get("message")), hint=doc.get("hint"))


def _recv(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        chunk = sock.recv(min(size - len(chunks), 1 << 20))
        if not chunk:
            raise ArchiveError("the archive's query server closed the connection mid-answer")
        chunks += chunk
    return bytes(chunks)


class QueryServer:
    """Serves read-only queries on ``archive`` (a writer) until ``close``, each stopped after
    ``timeout_s`` and refused beyond ``max_rows`` (``Archive.read_only_query``)."""

    def __init__(self, archive: Archive, *, timeout_s: float | None = 60.0, max_rows: int | None = 1_000_000) -> None:
        self.archive = archive
        self.timeout_s = timeout_s
        self.max_rows = max_rows
        self.token = secrets.token_hex(16)
        self.port = 0
        self.queries = 0
        self._server: asyncio.Server | None = None

    async def start(self) -> ServeState:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        state = ServeState(os.getpid(), "127.0.0.1", self.port, self.token)
        target = state_file(self.archive.path)
        tmp = target.with_name(target.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps({"pid": state.pid, "host": state.host, "port": state.port, "token": state.token}))
        tmp.replace(target)
        return state

    async def close(self) -> None:
        if self._server is None:
            return
        self._server.close()
        await self._server.wait_closed()
        self._server = None
        mine = read_state(self.archive.path)
        if mine is not None and mine.port == self.port and mine.pid == os.getpid():
            with contextlib.suppress(OSError):
                state_file(self.archive.path).unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readexactly(8)
            size = int.from_bytes(head[4:], "big")
            if head[:4] != MAGIC or size > _MAX_REQUEST:
                return
            request = orjson.loads(await reader.readexactly(size))
            if not hmac.compare_digest(str(request.get("token", "")), self.token):
                self._error(writer, "archive", "bad token for the archive's query server", None)
                return
            params = [_decode_param(p) for p in request.get("params") or []]
            try:
                table = await asyncio.to_thread(
                    functools.partial(
                        self.archive.read_only_query,
                        str(request.get("sql", "")),
                        params,
                        timeout_s=self.timeout_s,
                        max_rows=self.max_rows,
                    )
                )
            except ArchiveError as exc:
                kind = "query" if isinstance(exc, QueryError) else "archive"
                self._error(writer, kind, exc.message, exc.hint)
                return
            self.queries += 1
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as ipc:
                ipc.write_table(table)
            payload = sink.getvalue()
            writer.write(b"A" + payload.size.to_bytes(8, "big"))
            writer.write(memoryview(payload))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, orjson.JSONDecodeError) as exc:
            log.debug("query connection dropped: %s", exc)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    @staticmethod
    def _error(writer: asyncio.StreamWriter, kind: str, message: str, hint: str | None) -> None:
        doc = orjson.dumps({"kind": kind, "message": message, "hint": hint})
        writer.write(b"E" + len(doc).to_bytes(4, "big") + doc)
