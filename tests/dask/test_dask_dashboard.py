"""A cluster started in alice's real session (through the hub): the session's
defaults reach it, its dashboard (on a Unix socket of hers) is hers alone
through the hub and her session's Jupyter server, websockets included, and the
session's start swept worker jobs left from an earlier session."""

from __future__ import annotations

import asyncio
import json
import os
import re

import pytest
from support import session_env
from support_dask import UserPython, jobs_named, squeue, wait_for
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect

from bioimage_gateway.devstack.processes import run

pytestmark = pytest.mark.slurm

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}


def _bokeh_first_message(url: str, cookies: str, origin: str, token: str) -> dict:
    """The first message of the dashboard's Bokeh websocket (the server's ACK), its header."""
    async def first() -> str:
        request = HTTPRequest(url, headers={"Cookie": cookies, "Origin": origin},
                              request_timeout=60)
        ws = await websocket_connect(request, subprotocols=["bokeh", token])
        try:
            return await asyncio.wait_for(ws.read_message(), 60)
        finally:
            ws.close()
    return json.loads(asyncio.run(first()))


def test_dashboard_through_the_hub_for_its_owner_only(devstack, hub, alice, bob, alice_env):
    slurm_env = {**os.environ, "SLURM_CONF": alice_env["SLURM_CONF"]}
    # A worker job left by a session of alice's that is gone.
    leftover = run(
        ["sudo", "-n", "-u", "alice", "--", "/usr/bin/env", f"SLURM_CONF={alice_env['SLURM_CONF']}",
         "sbatch", "--parsable", "-o", "/dev/null", "--chdir=/tmp", "--mem=100M",
         "--job-name=dask-worker-alice-999997", "--wrap", "sleep 600"],
    ).stdout.strip()

    response = alice.submit_form(CPU)
    assert response.status_code == 302, response.text[-500:]
    assert alice.progress()[-1].get("ready")
    env = session_env("alice")
    session_job = env["SLURM_JOB_ID"]
    # What the spawner gives the session for its Dask clusters.
    assert env["BIOIMAGE_GATEWAY_PARTITION"] == "interactive"
    assert env["BIOIMAGE_GATEWAY_PROFILE"] == "cpu"
    assert env["BIOIMAGE_GATEWAY_GROUPS"] == "imaging"
    assert env["DASK_DISTRIBUTED__DASHBOARD__LINK"] == "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"

    # The session's server swept the leftover at start, and said so in its log.
    wait_for(lambda: leftover not in [r[0] for r in squeue(alice_env, "-u", "alice", "-o", "%i")],
             30, "the sweep to cancel the leftover worker job")
    record = run(["scontrol", "-o", "show", "job", session_job], env=slurm_env).stdout
    log_file = record.split("StdOut=")[1].split()[0]
    log_text = run(["cat", log_file]).stdout
    assert (f"Cancelled 1 Dask worker job(s) left from your previous session(s) 999997: "
            f"{leftover}") in log_text, log_text[-2000:]

    # A process of alice's with her session's environment (as her kernel has it).
    kernel_env = {k: v for k, v in env.items()
                  if k.startswith(("SLURM_", "JUPYTERHUB_SERVICE_PREFIX", "BIOIMAGE_GATEWAY_",
                                   "DASK_"))}
    kernel_env["BIOIMAGE_GATEWAY_CONFIG"] = alice_env["BIOIMAGE_GATEWAY_CONFIG"]
    # The kernel runs beside its session's server, on the session's node.
    python = UserPython("alice", kernel_env, node=devstack.node_of_job(session_job))
    try:
        link, name = python(
            "from bioimage_gateway.dask_clusters import new_cluster\n"
            "cluster = new_cluster(workers=1)\n"
            "cluster.wait_for_workers(1, timeout=90)\n"
            "result = [cluster.dashboard_link, cluster.tag]"
        )
        assert link == f"/user/alice/dask-dashboard/{name}/status"
        rows = squeue(alice_env, "-u", "alice", "-n", f"dask-worker-alice-{session_job}",
                      "-o", "%P|%l")
        assert len(rows) == 1 and rows[0][0] == "interactive"
        assert rows[0][1].startswith("5"), rows  # the session's time left: under an hour

        url = f"{hub.url}{link}"
        mine = alice.http.get(url, timeout=60)
        assert mine.status_code == 200, mine.status_code
        assert "Dask" in mine.text and "bokeh" in mine.text.lower()
        # The plots come over Bokeh's websocket: proxied to the socket as well.
        token = re.search(r'"token":"([^"]+)"', mine.text).group(1)
        cookies = "; ".join(f"{c.name}={c.value}" for c in alice.http.cookies)
        ws_url = url.replace("http://", "ws://", 1) + "/ws"
        header = _bokeh_first_message(ws_url, cookies, hub.url, token)
        assert header["msgtype"] == "ACK", header
        theirs = bob.http.get(url, timeout=60, allow_redirects=True)
        assert theirs.status_code == 403, (theirs.status_code, theirs.url)
        assert "Dask" not in theirs.text
        # Another of alice's clusters' names, or none of hers, is no way out of the folder.
        for other in ("bob-nosession-0123abcd", "%2E%2E", "alice-nosession-00000000"):
            missing = alice.http.get(f"{hub.url}/user/alice/dask-dashboard/{other}/status",
                                     timeout=60)
            assert missing.status_code == 404, (other, missing.status_code)
        python("cluster.close()")
        wait_for(lambda: jobs_named(alice_env, "alice") == [], 30, "the worker jobs to leave the queue")
    finally:
        python.close()
        alice.stop()
