"""A cluster started in alice's real session (through the hub): the session's
defaults reach it, its dashboard is hers alone through the hub's proxy, and
the session's start swept worker jobs left from an earlier session."""

from __future__ import annotations

import os

import pytest
from support import session_env
from support_dask import UserPython, jobs_named, squeue, wait_for

from bioimage_gateway.devstack.processes import free_port, run

pytestmark = pytest.mark.slurm

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}


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
    port = free_port()
    # The kernel runs beside its session's server, on the session's node.
    python = UserPython("alice", kernel_env, node=devstack.node_of_job(session_job))
    try:
        link = python(
            "from bioimage_gateway.dask_clusters import new_cluster\n"
            f"cluster = new_cluster(workers=1, dashboard_port={port})\n"
            "cluster.wait_for_workers(1, timeout=90)\n"
            "result = cluster.dashboard_link"
        )
        assert link == f"/user/alice/proxy/{port}/status"
        rows = squeue(alice_env, "-u", "alice", "-n", f"dask-worker-alice-{session_job}",
                      "-o", "%P|%l")
        assert len(rows) == 1 and rows[0][0] == "interactive"
        assert rows[0][1].startswith("5"), rows  # the session's time left: under an hour

        url = f"{hub.url}/user/alice/proxy/{port}/status"
        mine = alice.http.get(url, timeout=60)
        assert mine.status_code == 200, mine.status_code
        assert "Dask" in mine.text and "bokeh" in mine.text.lower()
        theirs = bob.http.get(url, timeout=60, allow_redirects=True)
        assert theirs.status_code == 403, (theirs.status_code, theirs.url)
        assert "Dask" not in theirs.text
        python("cluster.close()")
        wait_for(lambda: jobs_named(alice_env, "alice") == [], 30, "the worker jobs to leave the queue")
    finally:
        python.close()
        alice.stop()
