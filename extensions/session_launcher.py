"""Job-side start of a session: run the server, report its port once it answers.

Runs inside the Slurm job as ``bioimage-gateway-session jupyterhub-singleuser
[args]``.  It picks a free port, starts the server on it and tells the hub the
port only when the server answers HTTP.  If the server exits first (broken
environment, missing package), this exits with the server's status, the job
ends, and the hub reports the failure at its next poll instead of waiting for
a server that will never come.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import urlparse, urlunparse

READY_TIMEOUT = float(os.environ.get("BIOIMAGE_GATEWAY_READY_TIMEOUT", "300"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def answers_http(port: int, path: str) -> bool:
    """True once a server answers 200 at ``path``: the session's own base path, so that
    another user's server that happens to hold the port never passes for ours."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


def report_port(port: int) -> None:
    api_url = os.environ["JUPYTERHUB_API_URL"].rstrip("/")
    request = urllib.request.Request(
        f"{api_url}/batchspawner",
        data=json.dumps({"port": port}).encode(),
        headers={
            "Authorization": f"token {os.environ['JUPYTERHUB_API_TOKEN']}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()


# A free port can be taken by another job between our check and the server's
# bind; a server that exits before answering is started again on a new port.
START_ATTEMPTS = 3


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: bioimage-gateway-session COMMAND [ARGS...]", file=sys.stderr)
        return 2
    for attempt in range(1, START_ATTEMPTS + 1):
        status = run_once(command)
        if status != EXITED_BEFORE_ANSWER:
            return status
        if attempt == START_ATTEMPTS or _stopping:
            return 1
        print(f"bioimage-gateway-session: starting again on another port "
              f"(attempt {attempt + 1} of {START_ATTEMPTS})", file=sys.stderr, flush=True)
    return 1


EXITED_BEFORE_ANSWER = -1000
_stopping = False  # Slurm (scancel, walltime) asked us to stop: never start again


def run_once(command: list[str]) -> int:
    port = free_port()
    env = dict(os.environ)
    service_url = urlparse(env.get("JUPYTERHUB_SERVICE_URL", "http://0.0.0.0:0/"))
    env["JUPYTERHUB_SERVICE_URL"] = urlunparse(
        service_url._replace(netloc=f"{service_url.hostname}:{port}")
    )
    base_path = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    server = subprocess.Popen(command, env=env)

    def forward(signum, _frame):
        global _stopping
        _stopping = True
        server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    deadline = time.monotonic() + READY_TIMEOUT
    while not (answers_http(port, base_path + "api") and server.poll() is None):
        if server.poll() is not None:
            print(f"bioimage-gateway-session: {command[0]} exited with status "
                  f"{server.returncode} before it answered", file=sys.stderr, flush=True)
            return EXITED_BEFORE_ANSWER
        if time.monotonic() > deadline:
            print(f"bioimage-gateway-session: no answer on port {port} after "
                  f"{READY_TIMEOUT:.0f} s", file=sys.stderr, flush=True)
            server.terminate()
            server.wait()
            return 1
        time.sleep(0.2)
    try:
        report_port(port)
    except Exception as exc:  # noqa: BLE001 - any failure means the hub will not connect
        print(f"bioimage-gateway-session: the hub refused the port: {exc}", file=sys.stderr,
              flush=True)
        server.terminate()
        server.wait()
        return 1
    print(f"bioimage-gateway-session: serving on port {port}", flush=True)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
