"""`bioimage-gateway demo`: ready for a user, and gone without a trace on SIGTERM."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.processes import alive, free_port, run

CLI = str(Path(sys.executable).parent / "bioimage-gateway")


def test_demo_serves_a_session_and_leaves_nothing_behind_on_sigterm(devstack):
    """(``devstack``: the tests' own stack, whose users' ~/.irods the demo's stack rewrites.)"""
    try:
        run_demo_and_stop()
    finally:
        devstack.write_client_files()


def run_demo_and_stop():
    state_dir = Path(tempfile.mkdtemp(prefix="gw-demo-", dir="/tmp"))
    port = free_port()
    demo = subprocess.Popen(
        [CLI, "demo", "--port", str(port), "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        ready_line = ""
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            line = demo.stdout.readline()
            if not line:
                break
            if "BioImage Gateway ready at" in line:
                ready_line = line.strip()
                break
        assert ready_line == f"BioImage Gateway ready at http://127.0.0.1:{port}"

        users = json.loads((state_dir / "demo-users.json").read_text())
        assert {"username", "password", "groups"} <= set(users[0])
        alice = next(u for u in users if u["username"] == "alice")
        client = HubClient(f"http://127.0.0.1:{port}", "alice", alice["password"])
        client.login()
        response = client.submit_form(
            {"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"}
        )
        assert response.status_code == 302
        assert client.progress()[-1].get("ready")
        assert client.open_lab().status_code == 200

        record = json.loads((state_dir / "devstack.json").read_text())
        env = {**os.environ, "SLURM_CONF": record["slurm"]["conf"]}
        assert run(["squeue", "-h", "-u", "alice", "-o", "%i"], env=env).stdout.split()

        demo.send_signal(signal.SIGTERM)
        assert demo.wait(timeout=120) == 0
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    for name, pid in record["pids"].items():
        assert not alive(pid), f"{name} ({pid}) still running"
    # The compute nodes, their bridge and the hub account's sudo rules went with it.
    namespaces = run(["ip", "netns", "list"]).stdout
    assert not any(node["netns"] in namespaces for node in record["network"]["nodes"])
    assert record["network"]["bridge"] not in run(["ip", "-o", "link", "show"]).stdout
    assert not Path(record["sudo_rules"]).exists()
    # No session left: no process of alice's job survives the demo.
    leftover = run(["pgrep", "-u", "alice", "-f", "jupyterhub-singleuser"], check=False)
    assert leftover.stdout.strip() == ""
    assert run(["pgrep", "-f", f"configurable-http-proxy.*{port}"], check=False).stdout == ""
    shutil.rmtree(state_dir, ignore_errors=True)
