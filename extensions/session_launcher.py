"""Job-side start of a session: run the server on a port of its own, report that port.

Runs inside the Slurm job as ``bioimage-gateway-session jupyterhub-singleuser [args]``.
Several users share a compute node, and anything that listens there is reachable by all of
them, so:

* the server listens on the node's own address, the one the node reaches the hub from
  (or, where the site sets ``session.listen_ip`` to a network, the node's address in that
  network): never on loopback or on every address;
* it binds a port the kernel picks (port 0), and the port reported to the hub is read from
  the listening socket the server process itself holds (``psutil``, from ``/proc``), never
  one picked here and bound later, which another user's process could take in between;
* it is reported only once the server answers at its own base path on that address, and
  the hub then has the server prove it holds the session's token (``session_identity``);
* the session's runtime folder (``XDG_RUNTIME_DIR``: Qt's and the desktop's per-user files)
  is a private folder of the user's (:mod:`.private_folder`), or the session does not start.

If the server exits before it answers (broken environment, missing package), this exits
with status 1 after up to ``START_ATTEMPTS`` tries, the job ends, and the hub reports the
failure at its next poll instead of waiting for a server that will never come.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psutil

from .private_folder import UnsafeFolder, private_folder

READY_TIMEOUT = float(os.environ.get("BIOIMAGE_GATEWAY_READY_TIMEOUT", "300"))
# session.listen_ip, when the site gives a network (see bioimage_gateway.settings)
LISTEN_NETWORK = "BIOIMAGE_GATEWAY_LISTEN_NETWORK"
RUNTIME_DIR = "XDG_RUNTIME_DIR"


class LaunchError(RuntimeError):
    """The session cannot start here; the message says why (it ends up in the job's log)."""


# --- where the server listens -----------------------------------------------------------------

def hub_endpoint(api_url: str) -> tuple[str, int]:
    parts = urlsplit(api_url)
    return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def address_towards(host: str, port: int) -> str:
    """This node's address on its route to ``host`` (a UDP "connection" sends nothing)."""
    family, _, _, _, sockaddr = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        sock.connect(sockaddr)
        return sock.getsockname()[0]


def address_in(network: str) -> str:
    """This node's address in ``network`` (a site's cluster network, CIDR)."""
    net = ipaddress.ip_network(network)
    for addresses in psutil.net_if_addrs().values():
        for address in addresses:
            if address.family in (socket.AF_INET, socket.AF_INET6):
                ip = ipaddress.ip_address(address.address.split("%")[0])
                if ip in net:
                    return str(ip)
    raise LaunchError(f"this node ({socket.gethostname()}) has no address in {network} "
                      f"(session.listen_ip)")


def listen_address(environ=os.environ) -> str:
    network = environ.get(LISTEN_NETWORK)
    if network:
        return address_in(network)
    host, port = hub_endpoint(environ["JUPYTERHUB_API_URL"])
    try:
        return address_towards(host, port)
    except OSError as exc:
        raise LaunchError(f"no route from this node to the hub at {host}:{port}: {exc}") from None


def listening(pid: int) -> set[tuple[str, int]]:
    """The (address, port) pairs on which process ``pid`` itself holds a listening TCP socket."""
    try:
        connections = psutil.Process(pid).net_connections(kind="tcp")
    except psutil.NoSuchProcess:
        return set()
    return {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}


def own_port(pid: int, address: str) -> int | None:
    """The port the server ``pid`` listens on at ``address``; None while it listens nowhere."""
    sockets = listening(pid)
    if not sockets:
        return None
    if {ip for ip, _ in sockets} != {address} or len(sockets) != 1:
        shown = ", ".join(f"{ip}:{port}" for ip, port in sorted(sockets))
        raise LaunchError(f"the server listens on {shown}, not on {address} alone")
    return next(iter(sockets))[1]


def answers_http(address: str, port: int, path: str) -> bool:
    """True once the server answers 200 at ``path``, the session's own base path."""
    conn = http.client.HTTPConnection(address, port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status == 200
    except OSError:
        return False
    finally:
        conn.close()


# --- what the server is given ------------------------------------------------------------------

def runtime_dir(environ=os.environ) -> Path:
    """The user's private runtime folder on this node: ``$XDG_RUNTIME_DIR`` where the site sets
    one, else ``bioimage-gateway-<user>`` in ``$TMPDIR`` (``/tmp``); made or checked."""
    given = environ.get(RUNTIME_DIR)
    if given:
        return private_folder(given, "runtime folder")
    user = pwd.getpwuid(os.geteuid()).pw_name
    return private_folder(Path(tempfile.gettempdir()) / f"bioimage-gateway-{user}", "runtime folder")


def server_environment(environ, address: str, runtime: Path) -> dict[str, str]:
    env = dict(environ)
    env.pop(LISTEN_NETWORK, None)
    # jupyterhub-singleuser reads its address from here (and tiny servers do too); the port
    # is 0 until the server binds one (the session_identity extension then puts it here).
    service = urlsplit(env.get("JUPYTERHUB_SERVICE_URL", "http://:0/"))
    host = f"[{address}]" if ":" in address else address
    env["JUPYTERHUB_SERVICE_URL"] = urlunsplit(service._replace(netloc=f"{host}:0"))
    env[RUNTIME_DIR] = str(runtime)
    return env


def server_command(command: list[str], address: str) -> list[str]:
    # jupyterhub-singleuser reads port 0 in its service URL as "no port" (80): the port on
    # the command line, which its configuration puts above its own.
    return [*command, f"--ServerApp.ip={address}", "--ServerApp.port=0"]


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


# --- running it --------------------------------------------------------------------------------

# The server picks its port and binds it a moment later; if another process takes it in
# between, the server exits before it answers and is started again.
START_ATTEMPTS = 3
EXITED_BEFORE_ANSWER = -1000
_stopping = False  # Slurm (scancel, walltime) asked us to stop: never start again


def say(message: str) -> None:
    print(f"bioimage-gateway-session: {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    command = list(sys.argv[1:] if argv is None else argv)
    if not command:
        print("usage: bioimage-gateway-session COMMAND [ARGS...]", file=sys.stderr)
        return 2
    try:
        address = listen_address()
        runtime = runtime_dir()
    except (LaunchError, UnsafeFolder) as exc:
        say(str(exc))
        return 1
    for attempt in range(1, START_ATTEMPTS + 1):
        status = run_once(command, address, runtime)
        if status != EXITED_BEFORE_ANSWER:
            return status
        if attempt == START_ATTEMPTS or _stopping:
            return 1
        say(f"starting again (attempt {attempt + 1} of {START_ATTEMPTS})")
    return 1


def _stop(server: subprocess.Popen, status: int) -> int:
    server.terminate()
    server.wait()
    return status


def run_once(command: list[str], address: str, runtime: Path) -> int:
    env = server_environment(os.environ, address, runtime)
    base_path = env.get("JUPYTERHUB_SERVICE_PREFIX", "/")
    server = subprocess.Popen(server_command(command, address), env=env)

    def forward(signum, _frame):
        global _stopping
        _stopping = True
        server.send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, forward)

    deadline = time.monotonic() + READY_TIMEOUT
    port = None
    while True:
        if server.poll() is not None:
            say(f"{command[0]} exited with status {server.returncode} before it answered")
            return EXITED_BEFORE_ANSWER
        try:
            port = port or own_port(server.pid, address)
        except LaunchError as exc:
            say(str(exc))
            return _stop(server, 1)
        if port and answers_http(address, port, base_path + "api"):
            break
        if time.monotonic() > deadline:
            say(f"no answer from {command[0]} on {address} after {READY_TIMEOUT:.0f} s")
            return _stop(server, 1)
        time.sleep(0.2)
    try:
        report_port(port)
    except Exception as exc:  # noqa: BLE001 - any failure means the hub will not connect
        say(f"the hub refused the port: {exc}")
        return _stop(server, 1)
    print(f"bioimage-gateway-session: serving on {address}:{port}", flush=True)
    return server.wait()


if __name__ == "__main__":
    sys.exit(main())
