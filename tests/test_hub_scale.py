"""The hub is gentle on Slurm and shows the cluster as it is, without waiting on it."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from support import PASSWORDS, logged_in, start_hub

from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.processes import run
from bioimage_gateway.devstack.slurm_calls import count_calls, counting_bin_dir

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"}


@pytest.fixture(scope="module")
def counting_hub(devstack):
    log = counting_bin_dir(devstack.state_dir / "counting-bin")
    hub = start_hub(devstack, "counting-hub",
                    slurm_changes={"bin_dir": str(devstack.state_dir / "counting-bin"),
                                   "poll_interval": 2.0, "start_poll_interval": 1.0})
    hub.calls_log = log
    yield hub
    hub.stop()


def test_one_queue_query_per_interval_whatever_the_number_of_sessions(counting_hub, slurm):
    users = ["alice", "bob", "ada"]
    clients = [logged_in(counting_hub.url, u) for u in users]
    try:
        for client in clients:
            assert client.submit_form(CPU).status_code == 302
        for client in clients:
            assert client.progress()[-1].get("ready")
        time.sleep(2)
        jobs = run(["squeue", "-h", "-t", "all", "-o", "%i %T"], env=slurm.env).stdout
        since = time.time()
        time.sleep(10)
        counts = count_calls(counting_hub.calls_log, since, time.time())
        # Five 2 s intervals: one squeue each for all three sessions (jitter: 4 to 6).
        assert 4 <= counts["squeue"] <= 6, counts
        # Watching is all it did: no job submitted or cancelled meanwhile.
        assert run(["squeue", "-h", "-t", "all", "-o", "%i %T"], env=slurm.env).stdout == jobs
    finally:
        for client in clients:
            client.stop()


def test_spawn_form_shows_free_cpus_of_each_profiles_partition(hub, slurm, devstack):
    alice = logged_in(hub.url, "alice")
    alice.spawn_form()  # the first view starts the background fetch
    time.sleep(1)
    form = alice.spawn_form().text
    idle_total = run(["sinfo", "-h", "-p", "interactive", "-o", "%C"], env=slurm.env).stdout
    total = idle_total.strip().split("/")[3]
    assert f"of {total} CPUs" in form
    assert "Now free in interactive:" in form and "Now free in largemem:" in form


def test_form_never_waits_for_a_scheduler_that_does_not_answer(hub, devstack):
    alice = logged_in(hub.url, "alice")
    alice.spawn_form()
    time.sleep(1)
    devstack.stop_controller()
    try:
        time.sleep(2.5)  # past the live-data TTL (2 s)
        started = time.monotonic()
        first = alice.spawn_form()
        assert time.monotonic() - started < 1.0
        time.sleep(3)  # the background refresh times out (2 s)
        started = time.monotonic()
        page = alice.spawn_form()
        assert time.monotonic() - started < 1.0
        assert first.status_code == page.status_code == 200
        assert "Live cluster data is unavailable (Slurm did not answer" in page.text
        # The last answer is still shown, and the form still works.
        assert "Now free in interactive:" in page.text and 'name="profile"' in page.text
    finally:
        devstack.start_controller()


def test_announcement_is_on_the_home_and_spawn_pages(hub):
    alice = logged_in(hub.url, "alice")
    text = "Local demo cluster: sessions end when the demo stops."
    assert text in alice.http.get(alice.url("/hub/home"), timeout=30).text
    assert text in alice.spawn_form().text


def test_spawn_form_lists_the_active_reservations_open_to_the_user(hub, slurm):
    """A trainer's course reservation shows on the form of its users, not on others'."""
    node = run(["sinfo", "-h", "-o", "%N"], env=slurm.env).stdout.split()[0]
    run(["scontrol", "create", "reservation", "ReservationName=course-demo", "Users=tom",
         "StartTime=now", "Duration=60", f"Nodes={node}", "Flags=IGNORE_JOBS"], env=slurm.env)
    try:
        tom = logged_in(hub.url, "tom")
        alice = logged_in(hub.url, "alice")
        for client in (tom, alice):
            client.spawn_form()
        time.sleep(3)  # past the live-data TTL: the next view has the fresh answer
        for client in (tom, alice):
            client.spawn_form()
        time.sleep(1)
        assert "Active reservation open to you: <strong>course-demo</strong>" in tom.spawn_form().text
        assert "course-demo" not in alice.spawn_form().text
    finally:
        run(["scontrol", "delete", "ReservationName=course-demo"], env=slurm.env, check=False)


def test_a_class_signing_in_at_the_same_moment_all_reach_the_spawn_form(hub):
    """24 browsers sign in through the IdP at once: no error page, each lands on its form."""
    users = ["alice", "bob", "tom", "ada"] * 6
    start = threading.Barrier(len(users))

    def sign_in(username: str) -> tuple[int, str]:
        client = HubClient(hub.url, username, PASSWORDS[username])
        start.wait()
        client.http.get(client.url("/hub/login"), timeout=60)
        response = client.login_oidc(check=False)
        return response.status_code, response.text

    with ThreadPoolExecutor(len(users)) as pool:
        answers = list(pool.map(sign_in, users))
    failed = [(status, text[:200]) for status, text in answers
              if status != 200 or 'name="profile"' not in text]
    assert not failed, failed
