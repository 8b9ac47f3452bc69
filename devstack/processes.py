"""Small helpers for daemons the local stack starts and stops by PID."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def read_pid(path: Path, timeout: float = 15) -> int:
    """Wait for a daemon's PID file and return the PID in it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text().strip()
            if text:
                return int(text)
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{path} did not appear within {timeout:.0f} s")


def stop_pid(pid: int | None, timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if the process is still there after ``timeout``."""
    if not alive(pid):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def private_log(path: Path):
    """A log file for appending, readable by root alone: the stack's daemons log requests,
    users and paths that the other users of the machine have no business reading."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.fchmod(fd, 0o600)  # one left by an older run
    return os.fdopen(fd, "ab")


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


def run(argv: list[str], **kwargs) -> subprocess.CompletedProcess:
    kwargs.setdefault("check", True)
    kwargs.setdefault("capture_output", True)
    kwargs.setdefault("text", True)
    try:
        return subprocess.run(argv, **kwargs)
    except subprocess.CalledProcessError as exc:
        raise RuntimeError(
            f"{' '.join(argv)} failed with status {exc.returncode}: {(exc.stderr or '').strip()}"
        ) from None


class StandinProcess:
    """A stand-in server of ours as a child process, its state in ``state_dir``.

    Subclasses give ``label`` and ``argv()``; the server writes
    ``state_dir/server.json`` ({"host", "port"}) once it listens.
    """

    label = "stand-in"
    state_dir: Path
    pid: int | None = None
    host = "127.0.0.1"
    port: int | None = None
    _log = None
    _proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def _spawn(self, timeout: float):
        # The stand-in's catalogue and log are the server's own: users reach it over TCP only.
        self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.state_dir.chmod(0o700)
        for name in ("server.json", "server.pid"):
            (self.state_dir / name).unlink(missing_ok=True)
        self._log = private_log(self.state_dir / "server.log")
        self._proc = subprocess.Popen([*self.argv(), "--host", self.host], stdout=self._log, stderr=subprocess.STDOUT,
                                      stdin=subprocess.DEVNULL, start_new_session=True)
        self.pid = self._proc.pid
        deadline = time.monotonic() + timeout
        info_path = self.state_dir / "server.json"
        while time.monotonic() < deadline:
            try:
                info = json.loads(info_path.read_text())
            except (OSError, ValueError):
                info = None
            if info:
                self.host, self.port = info["host"], info["port"]
                return self
            if self._proc.poll() is not None:
                raise RuntimeError(f"the {self.label} exited with {self._proc.returncode}; "
                                   f"see {self.state_dir / 'server.log'}")
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"the {self.label} did not start within {timeout:.0f} s")

    def stop(self) -> None:
        if self.pid:
            stop_pid(self.pid, timeout=10)
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    pass
        self.pid = None
        if self._log:
            self._log.close()
            self._log = None

    @property
    def running(self) -> bool:
        return alive(self.pid)
