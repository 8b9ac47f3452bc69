"""A session is its own on a shared node: the hub routes a user's URL only to the server that
proves it is that session, the server listens on its node's address alone, and the folder a
session keeps per user in the node's temporary space is the user's alone.

Other users are real ones (bob), running their processes on alice's node (``node.argv``).
Sessions of the "gated" hub wait in their job, before the launcher runs, while a hold file
exists, so that a test can act in that moment; their temporary space (``TMPDIR``) is a
sticky folder of this stack's, not the machine's shared ``/tmp``."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
from support import jobs_of, logged_in, start_hub

from bioimage_gateway.devstack.processes import run, wait_until

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}

# bob's server: answers 200 to everything, with something shaped like a proof, and tells
# the test (one JSON line each) what it was asked and with which credentials.
FAKE_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, HTTPServer

class Fake(BaseHTTPRequestHandler):
    def answer(self):
        print(json.dumps({"path": self.path, "authorization": self.headers.get("Authorization"),
                          "cookie": self.headers.get("Cookie")}), flush=True)
        body = json.dumps({"proof": "0" * 64, "server": "bob's"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = answer
    def log_message(self, *args):
        pass

server = HTTPServer((sys.argv[1], 0), Fake)
print(json.dumps({"port": server.server_address[1]}), flush=True)
server.serve_forever()
"""


class FakeServer:
    """bob's server on ``node``, and the requests it received."""

    def __init__(self, node, user: str = "bob"):
        self.proc = subprocess.Popen(
            node.argv(["sudo", "-n", "-u", user, "/usr/bin/python3", "-c", FAKE_SERVER, node.address]),
            stdout=subprocess.PIPE, text=True, cwd="/tmp")
        self.port = json.loads(self.proc.stdout.readline())["port"]
        self.requests: list[dict] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.requests.append(json.loads(line))

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def node_tmp(devstack) -> Path:
    """The gated hub's sessions' TMPDIR: sticky and writable by all, as /tmp is."""
    folder = devstack.state_dir / "node-tmp"
    folder.mkdir(exist_ok=True)
    folder.chmod(0o1777)
    return folder


@pytest.fixture(scope="module")
def hold_file(devstack) -> Path:
    return devstack.state_dir / "hold-gated-sessions"


@pytest.fixture(scope="module")
def gated_hub(devstack, node_tmp, hold_file):
    process = start_hub(devstack, "gated-hub", prologue=(
        f"export TMPDIR={node_tmp}\n"
        f"while [ -e {hold_file} ]; do sleep 0.1; done"))
    yield process
    process.stop()


@contextmanager
def held(hold_file: Path):
    hold_file.touch()
    try:
        yield
    finally:
        hold_file.unlink(missing_ok=True)


def processes_of(username: str, slurm) -> dict[int, dict[str, str]]:
    """The user's processes in this stack's jobs (by SLURM_CONF): pid -> environment."""
    uid = pwd.getpwnam(username).pw_uid
    mark = f"SLURM_CONF={slurm.conf}".encode()
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if entry.stat().st_uid != uid:
                continue
            items = Path(entry.path, "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if mark in items:
            found[int(entry.name)] = dict(i.decode().split("=", 1) for i in items if b"=" in i)
    return found


def job_environment(username: str, slurm, job: str) -> dict[str, str]:
    """The environment of the user's job ``job`` (its batch script, held before the launcher)."""
    def envs():
        return [env for env in processes_of(username, slurm).values()
                if env.get("SLURM_JOB_ID") == job and "JUPYTERHUB_API_TOKEN" in env]
    wait_until(lambda: envs(), 60, f"a process of {username}'s job {job}")
    return envs()[0]


def running_job(slurm, username: str) -> str:
    def running():
        out = run(["squeue", "-h", "-u", username, "-t", "R", "-o", "%i"], env=slurm.env).stdout
        return out.split()
    wait_until(lambda: running(), 60, f"a running job of {username}")
    return running()[0]


def start_session(client) -> None:
    assert client.submit_form(CPU).status_code == 302
    events = client.progress()
    assert events[-1].get("ready"), events[-1]


def test_a_port_another_user_listens_on_is_refused_and_her_session_still_starts(
        gated_hub, devstack, slurm, hold_file):
    alice = logged_in(gated_hub.url, "alice")
    fake = None
    try:
        with held(hold_file):
            assert alice.submit_form(CPU).status_code == 302
            job = running_job(slurm, "alice")
            token = job_environment("alice", slurm, job)["JUPYTERHUB_API_TOKEN"]
            node = devstack.node_of_job(job)
            fake = FakeServer(node, "bob")  # bob, on alice's node, on a port of his
            # ...and that port reaches the hub as alice's session's, with her token
            reported = requests.post(f"{gated_hub.url}/hub/api/batchspawner", json={"port": fake.port},
                                     headers={"Authorization": f"token {token}"}, timeout=30)
            assert reported.status_code == 201, reported.text
            final = alice.progress(timeout=120)[-1]
        assert final.get("failed"), final
        message = final["message"]
        assert f"the server on port {fake.port} of its node ({node.name})" in message
        assert "could not prove it is this session" in message and f"Slurm job {job}" in message
        # no job left, no route: alice's URL does not reach bob's server
        wait_until(lambda: jobs_of(slurm, "alice") == [], 30, "alice's job to be cancelled")
        assert alice.server() is None
        page = alice.http.get(alice.url("/user/alice/api/status"), timeout=30)
        assert "bob's" not in page.text
        # bob's server was asked for a proof, and got no credential of alice's with it
        wait_until(lambda: fake.requests, 10, "what bob's server was asked")
        assert [r["path"].split("?")[0] for r in fake.requests] == ["/user/alice/bioimage-gateway/identity"]
        assert fake.requests[0]["authorization"] is None and fake.requests[0]["cookie"] is None

        # alice's own session then starts, and is hers
        start_session(alice)
        lab = alice.open_lab()
        assert lab.status_code == 200 and "JupyterLab" in lab.text
        assert len(fake.requests) == 1
    finally:
        if fake:
            fake.stop()
        alice.stop()


def listening_sockets(node, pid: int) -> list[str]:
    """The local addresses (address:port) of the TCP sockets ``pid`` listens on, on ``node``."""
    out = subprocess.run(node.argv(["ss", "-H", "-ltnp"]), capture_output=True, text=True,
                         check=True).stdout
    return [line.split()[3] for line in out.splitlines() if f"pid={pid}," in line]


def session_server(username: str, slurm) -> tuple[int, dict[str, str]]:
    """The Jupyter server of the user's session in this stack: pid, environment."""
    for pid, env in processes_of(username, slurm).items():
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if any(a.endswith(b"/jupyterhub-singleuser") for a in argv[:2]):
            return pid, env
    raise AssertionError(f"no session server of {username}")


def test_the_server_listens_on_its_nodes_address_alone(alice, slurm, devstack):
    start_session(alice)
    job = jobs_of(slurm, "alice")[0]
    node = devstack.node_of_job(job)
    pid, _ = session_server("alice", slurm)
    sockets = listening_sockets(node, pid)
    assert len(sockets) == 1 and sockets[0].startswith(f"{node.address}:"), sockets
    port = int(sockets[0].rsplit(":", 1)[1])
    # another user on the node finds nothing on loopback
    probe = subprocess.run(node.argv([
        "sudo", "-n", "-u", "bob", "/usr/bin/python3", "-c",
        "import socket, sys\n"
        "try:\n socket.create_connection(('127.0.0.1', int(sys.argv[1])), timeout=5); print('open')\n"
        "except OSError as e:\n print(type(e).__name__)", str(port)]),
        capture_output=True, text=True, timeout=60, cwd="/tmp")
    assert probe.stdout.strip() == "ConnectionRefusedError", probe
    assert alice.open_lab().status_code == 200


def test_a_runtime_folder_another_user_made_is_refused(gated_hub, devstack, slurm, node_tmp):
    path = node_tmp / "bioimage-gateway-alice"
    if path.is_symlink() or path.exists():
        shutil.rmtree(path) if not path.is_symlink() else path.unlink()
    node = devstack.node("node1")
    bob = ["sudo", "-n", "-u", "bob"]
    alice = logged_in(gated_hub.url, "alice")
    try:
        # bob makes alice's runtime folder first, open to all; then a link to one of his
        run(node.argv([*bob, "mkdir", "-m", "0777", str(path)]))
        assert alice.submit_form(CPU).status_code == 302
        final = alice.progress(timeout=120)[-1]
        assert final.get("failed"), final
        assert f"refused {path} as the session's runtime folder: it belongs to bob" in final["message"]
        assert alice.server() is None and jobs_of(slurm, "alice") == []

        run(node.argv([*bob, "rmdir", str(path)]))
        run(node.argv([*bob, "mkdir", "-m", "0777", str(node_tmp / "bobs")]))
        run(node.argv([*bob, "ln", "-s", str(node_tmp / "bobs"), str(path)]))
        assert alice.submit_form(CPU).status_code == 302
        final = alice.progress(timeout=120)[-1]
        assert final.get("failed"), final
        assert f"refused {path} as the session's runtime folder: it is a symbolic link" in final["message"]
        assert list((node_tmp / "bobs").iterdir()) == []  # nothing of alice's went there

        # removed: alice's session makes it, hers alone, and uses it
        path.unlink()
        start_session(alice)
        info = os.lstat(path)
        assert stat.S_ISDIR(info.st_mode) and info.st_uid == pwd.getpwnam("alice").pw_uid
        assert stat.S_IMODE(info.st_mode) == 0o700
        _, env = session_server("alice", slurm)
        assert env["XDG_RUNTIME_DIR"] == str(path)
    finally:
        alice.stop()
