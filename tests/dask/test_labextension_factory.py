"""dask-labextension's "New cluster" (its REST API) starts a GatewayCluster in the session."""

from __future__ import annotations

import time

from support import jobs_of

from bioimage_gateway.devstack.processes import run

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"}


def dask_jobs(slurm, username: str) -> list[str]:
    out = run(["squeue", "-h", "-u", username, "-o", "%i %j"], env=slurm.env).stdout
    return [line.split()[1] for line in out.splitlines() if "dask-worker" in line]


def test_new_cluster_button_uses_the_gateway_factory(alice, slurm):
    assert alice.submit_form(CPU).status_code == 302
    assert alice.progress()[-1].get("ready")
    session_job = jobs_of(slurm, "alice")[0]
    assert alice.open_lab().status_code == 200
    xsrf = alice.http.cookies.get("_xsrf", path="/user/alice/")
    api = alice.url("/user/alice/dask/clusters")
    headers = {"X-XSRFToken": xsrf}

    created = alice.http.put(api, headers=headers, timeout=120)
    assert created.status_code == 200, created.text
    model = created.json()
    # The dashboard goes through the hub and the session's server, from its Unix socket.
    assert model["dashboard_link"].startswith("/user/alice/dask-dashboard/alice-")
    dashboard = alice.http.get(alice.url(model["dashboard_link"]), timeout=60)
    assert dashboard.status_code == 200 and "Dask" in dashboard.text
    scaled = alice.http.patch(f"{api}/{model['id']}", json={"workers": 1}, headers=headers,
                              timeout=60)
    assert scaled.status_code == 200, scaled.text
    deadline = time.monotonic() + 60
    while not dask_jobs(slurm, "alice") and time.monotonic() < deadline:
        time.sleep(1)
    # The worker is a Slurm job named for its user and session: the gateway's factory.
    assert dask_jobs(slurm, "alice") == [f"dask-worker-alice-{session_job}"]

    closed = alice.http.delete(f"{api}/{model['id']}", headers=headers, timeout=60)
    assert closed.status_code == 204
    deadline = time.monotonic() + 30
    while dask_jobs(slurm, "alice") and time.monotonic() < deadline:
        time.sleep(1)
    assert dask_jobs(slurm, "alice") == []
