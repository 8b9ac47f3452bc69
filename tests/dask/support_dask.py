"""Helpers for the Dask tests: Python processes run as a demo user, OME-Zarr data, Slurm queries."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

VENV_PYTHON = str(Path(sys.executable))

# The site's dask: section of the tests (gateway-dask.yaml).
DASK_SETTINGS = {
    "worker_cores": 1,
    "worker_memory_gb": 1,
    "guard_interval": 2,
    "death_timeout": 30,
    "default_limits": {"max_workers": 1, "max_worker_cores": 1, "max_worker_memory_gb": 1,
                       "max_walltime_hours": 1},
    "group_limits": {
        "imaging": {"max_workers": 4, "max_worker_cores": 1, "max_worker_memory_gb": 2,
                    "max_walltime_hours": 2},
    },
}

# A tiny line-oriented REPL: one JSON {"code": ...} per line in, one JSON answer per line out.
# The code runs in one namespace; it leaves its answer in `result` (JSON-able).
REPL = r'''
import json, os, sys, traceback
ns = {}
print(json.dumps({"ready": True, "pid": os.getpid()}), flush=True)
for line in sys.stdin:
    request = json.loads(line)
    ns["result"] = None
    try:
        exec(request["code"], ns)
        answer = {"ok": True, "result": ns.get("result")}
    except BaseException as exc:
        answer = {"ok": False, "type": type(exc).__name__, "error": str(exc),
                  "traceback": traceback.format_exc()}
    print(json.dumps(answer, default=str), flush=True)
'''


def user_env(username: str, base: dict[str, str]) -> dict[str, str]:
    account = pwd.getpwnam(username)
    env = {
        "HOME": account.pw_dir, "USER": username, "LOGNAME": username,
        "PATH": f"{Path(VENV_PYTHON).parent}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    env.update(base)
    return env


def sudo_argv(username: str, env: dict[str, str], argv: list[str]) -> list[str]:
    """``sudo -u USER env -i K=V ... ARGV``: the user's process with exactly ``env``."""
    return ["sudo", "-n", "-u", username, "--", "/usr/bin/env", "-i",
            *[f"{k}={v}" for k, v in env.items()], *argv]


class UserPython:
    """A Python process running as a demo user, driven from the test; on a compute ``node``
    of the stack (as a kernel of a session there runs) when one is given."""

    def __init__(self, username: str, env: dict[str, str], cwd: str = "/tmp", node=None):
        self.username = username
        argv = sudo_argv(username, user_env(username, env), [VENV_PYTHON, "-u", "-c", REPL])
        self.proc = subprocess.Popen(
            node.argv(argv) if node is not None else argv,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, cwd=cwd,
        )
        hello = json.loads(self.proc.stdout.readline() or '{"ready": false}')
        if not hello.get("ready"):
            raise RuntimeError(f"python as {username} did not start: {self.proc.stderr.read()}")
        self.pid = hello["pid"]  # the python process itself, not sudo

    def run(self, code: str, check: bool = True) -> dict:
        self.proc.stdin.write(json.dumps({"code": code}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"python as {self.username} died: {self.proc.stderr.read()}")
        answer = json.loads(line)
        if check and not answer["ok"]:
            raise AssertionError(answer["traceback"])
        return answer

    def __call__(self, code: str):
        return self.run(code)["result"]

    def kill9(self) -> None:
        subprocess.run(["kill", "-9", str(self.pid)], check=True)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except Exception:  # noqa: BLE001
                subprocess.run(["kill", "-9", str(self.pid)], check=False)
                self.proc.wait(timeout=30)


def run_python_as(username: str, code: str, *args: str, node=None, timeout: float = 120) -> dict:
    """``code`` run by ``username`` (on ``node`` when given); it prints one JSON object last."""
    argv = sudo_argv(username, user_env(username, {}), [VENV_PYTHON, "-c", code, *args])
    result = subprocess.run(node.argv(argv) if node is not None else argv, capture_output=True,
                            text=True, timeout=timeout, cwd="/tmp", check=False)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise AssertionError(f"python as {username} failed ({result.returncode}): "
                             f"{result.stderr[-3000:]}")
    return json.loads(lines[-1])


def tcp_listeners(node, pids: set[int]) -> list[tuple[str, int]]:
    """(address, port) of every TCP socket the processes ``pids`` listen on, on ``node``."""
    out = subprocess.run(node.argv(["ss", "-Hltnp"]), capture_output=True, text=True,
                         check=True).stdout
    found = []
    for line in out.splitlines():
        owners = {int(pid) for pid in re.findall(r"pid=(\d+),", line)}
        if not owners & pids:
            continue
        address, _, port = line.split()[3].rpartition(":")
        address = address.strip("[]")
        if address in ("0.0.0.0", "*"):
            address = node.address  # every address of the node: its own one will do
        elif address == "::":
            address = "::1"
        found.append((address, int(port)))
    return found


def squeue(env: dict[str, str], *args: str) -> list[list[str]]:
    result = subprocess.run(["squeue", "-h", *args], capture_output=True, text=True,
                            env={**os.environ, **env}, check=True)
    return [line.split("|") for line in result.stdout.splitlines() if line.strip()]


def jobs_named(env: dict[str, str], user: str, prefix: str = "dask-worker-") -> list[str]:
    return [row[0] for row in squeue(env, "-u", user, "-o", "%i|%j") if row[1].startswith(prefix)]


def wait_for(check, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def write_ome_zarr(path: Path, shape=(16, 256, 256), chunks=(4, 64, 64), seed: int = 0):
    """A small OME-Zarr image (a pyramid written by ome-zarr), readable by every user."""
    import numpy as np
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.writer import write_image

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 4096, size=shape, dtype=np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    root = zarr.group(store=parse_url(str(path), mode="w").store)
    write_image(image=data, group=root, axes="zyx", storage_options=dict(chunks=chunks))
    subprocess.run(["chmod", "-R", "a+rX", str(path.parent)], check=True)
    return path
