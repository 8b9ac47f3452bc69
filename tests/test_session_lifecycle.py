"""Sessions survive what they should (hub and slurmctld restarts) and fail fast when they die."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import requests
from support import jobs_of, logged_in, session_env, start_hub

from bioimage_gateway.devstack.processes import run

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}


def start_session(client) -> None:
    response = client.submit_form(CPU)
    assert response.status_code == 302, response.text[-500:]
    events = client.progress()
    assert events[-1].get("ready"), events[-1]


def session_token(username: str) -> str:
    """The hub token a running session holds: the user can read it from their own job."""
    return session_env(username)["JUPYTERHUB_API_TOKEN"]


def test_port_callback_accepts_only_a_port_from_a_starting_session(alice, hub):
    start_session(alice)
    before = alice.server()
    token = session_token("alice")
    url = f"{hub.url}/hub/api/batchspawner"
    as_session = {"Authorization": f"token {token}"}

    # batchspawner's own handler would set these on the spawner; ours refuses them.
    for body in (
        {"cmd": ["/bin/sh", "-c", "id > /tmp/owned"]},
        {"batch_submit_cmd": "sh -c 'id'"},
        {"exec_prefix": "sudo -u root"},
        {"port": 4444, "cmd": ["/bin/false"]},
        {"port": "8888"},
        {"port": 80},
        [4444],
    ):
        response = requests.post(url, json=body, headers=as_session, timeout=10)
        assert response.status_code == 400, (body, response.text)
    # A running session cannot re-point the hub at another port.
    response = requests.post(url, json={"port": 4444}, headers=as_session, timeout=10)
    assert response.status_code == 409
    # The user's own API token is not a session's token.
    user_token = alice.new_token()
    response = requests.post(
        url, json={"port": 4444}, headers={"Authorization": f"token {user_token}"}, timeout=10
    )
    assert response.status_code == 403
    assert alice.server()["url"] == before["url"]
    assert alice.open_lab().status_code == 200

    # The spawner's commands were not touched: a new session starts as before.
    alice.stop()
    start_session(alice)
    assert alice.open_lab().status_code == 200


def _slurm_time(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


@pytest.fixture(scope="module")
def broken_hub(devstack):
    """A hub whose session environment fails at start, as a broken module load would."""
    process = start_hub(
        devstack, "broken-hub",
        prologue='echo "module load failed: no such module microscopy/9.9" >&2\nexit 3',
    )
    yield process
    process.stop()


def test_job_that_dies_at_start_fails_the_spawn_within_two_polls(broken_hub, slurm, devstack):
    bob = logged_in(broken_hub.url, "bob")
    started = time.monotonic()
    response = bob.submit_form(CPU)
    assert response.status_code == 302
    events = bob.progress(timeout=60)
    failed_after = time.monotonic() - started
    final = events[-1]
    assert final.get("failed"), final
    message = final["message"]
    assert "FAILED" in message and "exit code 3:0" in message
    assert "module load failed: no such module microscopy/9.9" in message
    # Far from the 180 s start timeout: the job ran ~1 s, then at most two 1 s polls.
    assert failed_after < 15, failed_after
    job_id = message.split("Slurm job ")[1].split()[0]
    record = run(["scontrol", "-o", "show", "job", job_id], env=slurm.env).stdout
    end = _slurm_time(record.split("EndTime=")[1].split()[0])
    assert time.time() - end < 2 * 1.0 + 2  # two poll intervals, and Slurm's 1 s clock
    assert bob.server() is None
    assert jobs_of(slurm, "bob") == []
    # The log's lines are bob's, for bob: the hub's log names the job and how it ended only.
    hub_log = (devstack.state_dir / "broken-hub.log").read_text()
    assert f"Slurm job {job_id} ended (FAILED" in hub_log and "exit code 3:0" in hub_log
    assert "no such module microscopy/9.9" not in hub_log


def test_job_cancelled_while_starting_is_reported(bob, slurm):
    response = bob.submit_form(CPU)
    assert response.status_code == 302
    deadline = time.monotonic() + 30
    while not jobs_of(slurm, "bob") and time.monotonic() < deadline:
        time.sleep(0.1)
    run(["scancel", *jobs_of(slurm, "bob")], env=slurm.env)
    final = bob.progress(timeout=60)[-1]
    assert final.get("failed"), final
    assert "CANCELLED" in final["message"]
    assert bob.server() is None


def test_session_survives_hub_restart_and_is_still_stoppable(devstack, hub, alice, slurm):
    start_session(alice)
    job = jobs_of(slurm, "alice")
    hub.stop()
    hub.start()
    alice = logged_in(hub.url, "alice")
    assert alice.server()["ready"]
    assert alice.open_lab().status_code == 200
    assert jobs_of(slurm, "alice") == job
    alice.stop()
    assert jobs_of(slurm, "alice") == []


def test_session_survives_slurmctld_restart(devstack, alice, slurm):
    start_session(alice)
    job = jobs_of(slurm, "alice")
    # Down for longer than the hub's poll interval (5 s here): polls fail meanwhile.
    devstack.restart_controller(down_for=8)
    assert alice.server()["ready"]
    assert alice.open_lab().status_code == 200
    assert jobs_of(slurm, "alice") == job


def test_pending_job_shows_state_and_reason_until_it_starts(alice, slurm):
    """While Slurm holds the job, the spawn page says so, with Slurm's reason."""
    run(["scontrol", "update", "PartitionName=largemem", "State=DOWN"], env=slurm.env)
    try:
        response = alice.submit_form({**CPU, "profile": "large-memory"})
        assert response.status_code == 302
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs = jobs_of(slurm, "alice")
            if jobs:
                reason = run(["squeue", "-h", "-j", jobs[0], "-o", "%r"], env=slurm.env).stdout
                if "PartitionDown" in reason:
                    break
            time.sleep(0.2)
        else:
            raise AssertionError("the job never showed as held by the down partition")
        time.sleep(2.5)  # at least two start polls see it pending
    finally:
        run(["scontrol", "update", "PartitionName=largemem", "State=UP"], env=slurm.env)
    events = alice.progress()
    messages = [e.get("message", "") for e in events]
    assert any("is pending (reason: PartitionDown)" in m for m in messages), messages
    assert any("is running on" in m for m in messages), messages
    assert events[-1].get("ready")
