"""Slurm accounting on the real stack: slurmdbd and MariaDB behind sacct and sacctmgr.

The devstack seeds an account per group, alice's project account, the profiles'
QoS and the demo users' associations, and slurmctld enforces them.  The spawn
form offers each user their own accounts and QoS as sacctmgr has them and the
reservations open to them; the hub refuses anything else before Slurm hears of
it, learns how ended jobs ended from sacct, and an accounting outage neither
blocks the form nor hides how a session ended.
"""

from __future__ import annotations

import html
import time
from pathlib import Path

import pytest
import yaml
from charging import FormChoices, SlurmSubmissions
from support import job_records_of, jobs_of, logged_in, start_hub

from bioimage_gateway.devstack.processes import run
from bioimage_gateway.devstack.slurm_calls import count_calls, counting_bin_dir

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}
WORKSHOP = {**CPU, "profile": "workshop"}


@pytest.fixture(scope="module", autouse=True)
def accounting(devstack):
    record = devstack.record().get("accounting")
    assert record, "the test stack runs without slurmdbd (Devstack.up(accounting=False))"
    return record


@pytest.fixture(scope="module")
def failing_hub(devstack):
    """A hub whose sessions die at start (exit 3), counting the Slurm commands it runs."""
    bin_dir = devstack.state_dir / "acct-counting-bin"
    log = counting_bin_dir(bin_dir)
    process = start_hub(devstack, "acct-hub", slurm_changes={"bin_dir": str(bin_dir)},
                        prologue='echo "no licence for this session" >&2\nexit 3')
    process.calls_log = log
    yield process
    process.stop()


def form_accounts(text: str) -> tuple[list[str], list[str]] | None:
    """The accounts the form offers, and the QoS of the one it preselects (None: no form)."""
    choices = FormChoices(text)
    if "account" not in choices.options:
        return None
    return choices.values("account"), [q for q in choices.values("qos") if q]


def wait_for_form(client, check, timeout: float = 20) -> str:
    """Reload the spawn form until ``check(text)`` holds (live data refresh in the background)."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = html.unescape(client.spawn_form().text)
        if check(text):
            return text
        time.sleep(0.5)
    raise AssertionError(f"the spawn form of {client.username} never showed what was expected:\n"
                         + text[:3000])


def sacctmgr_associations(slurm, user: str) -> tuple[list[str], list[str]]:
    """The user's accounts (their default first, then by name) and QoS, as sacctmgr has them."""
    default = run(["sacctmgr", "-n", "-P", "show", "user", user, "format=DefaultAccount"],
                  env=slurm.env).stdout.strip()
    out = run(["sacctmgr", "-n", "-P", "show", "assoc", f"user={user}", "format=Account,QOS"],
              env=slurm.env).stdout
    accounts, qos = [], []
    for line in out.splitlines():
        account, names = line.split("|")
        accounts.append(account)
        qos += [q for q in names.split(",") if q and q not in qos]
    return sorted(accounts, key=lambda a: (a != default, a)), qos


def create_reservation(slurm, name: str, **who: str) -> None:
    """An active reservation of one node for ``Users=`` or ``Accounts=``; jobs already on the
    node keep running."""
    run(["scontrol", "create", "reservation", f"ReservationName={name}", "StartTime=now",
         "Duration=30", "NodeCnt=1", "Flags=IGNORE_JOBS",
         *(f"{key.capitalize()}={value}" for key, value in who.items())], env=slurm.env)


def delete_reservation(slurm, name: str) -> None:
    run(["scontrol", "delete", f"ReservationName={name}"], env=slurm.env, check=False)


def session_env_of_job(username: str, job: str) -> dict[str, str]:
    """The environment of the session process that runs as Slurm job ``job``."""
    pids = run(["pgrep", "-u", username, "-f", "bioimage-gateway-session"], check=False)
    for pid in pids.stdout.split():
        try:
            items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue  # ended meanwhile
        env = dict(item.decode().split("=", 1) for item in items if b"=" in item)
        if env.get("SLURM_JOB_ID") == job:
            return env
    raise AssertionError(f"no session process of {username} in job {job}")


def sacct_end(slurm, job_id: str, timeout: float = 30) -> dict[str, str]:
    """The job's accounting record once its end has reached the database."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = run(["sacct", "-n", "-X", "-P", "-j", job_id,
                    "-o", "State,ExitCode,Account,QOS,End"], env=slurm.env).stdout.strip()
        if line and not line.endswith("|Unknown"):
            state, exit_code, account, qos, end = line.split("|")
            return {"state": state.split()[0], "exit_code": exit_code, "account": account,
                    "qos": qos}
        time.sleep(0.5)
    raise AssertionError(f"sacct never recorded the end of job {job_id}")


def test_spawn_form_shows_the_users_own_accounts_and_qos_from_sacctmgr(hub, slurm, devstack):
    alice, tom = logged_in(hub.url, "alice"), logged_in(hub.url, "tom")
    site_accounts = yaml.safe_load(Path(devstack.record()["gateway_yaml"]).read_text())[
        "slurm"]["accounts"]
    for client in (alice, tom):
        expected = sacctmgr_associations(slurm, client.username)
        text = wait_for_form(client, lambda t: form_accounts(t) == expected)  # noqa: B023
        assert "could not be read from accounting" not in text
    # Each sees their own accounts, not the site's whole list: alice her group's (her default,
    # preselected) and her project's.
    alice_form = FormChoices(alice.spawn_form().text)
    assert alice_form.values("account") == ["imaging", "lightsheet-lab"]
    assert alice_form.selected("account") == "imaging"
    assert form_accounts(tom.spawn_form().text) == (["trainers"], ["normal", "workshop"])
    assert sorted(site_accounts) != ["imaging"]

    # An account the site's Slurm administrators give alice shows on her form, not on bob's.
    bob = logged_in(hub.url, "bob")
    run(["sacctmgr", "-i", "add", "account", "course-2026", "cluster=gwdev"], env=slurm.env)
    try:
        run(["sacctmgr", "-i", "add", "user", "alice", "account=course-2026"], env=slurm.env)
        wait_for_form(alice, lambda t: "course-2026" in (form_accounts(t) or ([], []))[0])
        assert form_accounts(wait_for_form(bob, form_accounts)) == (["imaging"], ["normal"])
    finally:
        run(["sacctmgr", "-i", "delete", "user", "alice", "account=course-2026"],
            env=slurm.env, check=False)
        run(["sacctmgr", "-i", "delete", "account", "course-2026"], env=slurm.env, check=False)
    wait_for_form(alice, lambda t: form_accounts(t) == (["imaging", "lightsheet-lab"], ["normal"]))


def test_alice_charges_a_session_to_her_project_account_in_its_reservation(hub, slurm, alice):
    create_reservation(slurm, "lightsheet-course", accounts="lightsheet-lab")
    try:
        # Open to her with her project account: offered once the hub has read it.
        text = wait_for_form(alice, lambda t: "lightsheet-course" in t)
        assert "Active reservation open to you: <strong>lightsheet-course</strong>" in text
        response = alice.submit_form({**CPU, "account": "lightsheet-lab",
                                      "reservation": "lightsheet-course"})
        assert response.status_code == 302, response.text[-500:]
        assert alice.progress()[-1].get("ready")
        [job] = jobs_of(slurm, "alice")
        queued = run(["squeue", "-h", "-j", job, "-o", "%a|%v"], env=slurm.env).stdout.strip()
        assert queued == "lightsheet-lab|lightsheet-course"
        # Dask clusters started from the session are charged the same way.
        env = session_env_of_job("alice", job)
        assert env["BIOIMAGE_GATEWAY_ACCOUNT"] == "lightsheet-lab"
        assert env["BIOIMAGE_GATEWAY_RESERVATION"] == "lightsheet-course"
        alice.stop()
        assert sacct_end(slurm, job)["account"] == "lightsheet-lab"
    finally:
        delete_reservation(slurm, "lightsheet-course")


def test_names_that_are_not_alices_are_refused_by_form_and_api_before_slurm(hub, slurm):
    alice = logged_in(hub.url, "alice")
    # Real names, which Slurm itself would refuse her: tom's account, bob's reservation, and
    # her project's reservation while she charges her group's account.
    create_reservation(slurm, "bob-only", users="bob")
    create_reservation(slurm, "lightsheet-course", accounts="lightsheet-lab")
    try:
        wait_for_form(logged_in(hub.url, "bob"), lambda t: "bob-only" in t)
        wait_for_form(alice, lambda t: "lightsheet-course" in t)
        refused = [
            ({"account": "trainers"},
             "Slurm account 'trainers' is not one of yours (yours: imaging, lightsheet-lab)"),
            ({"account": "imaging", "qos": "workshop"},
             "QoS 'workshop' is not allowed for your account 'imaging' (allowed: normal)"),
            ({"reservation": "bob-only"},
             "reservation 'bob-only' is not an active reservation open to you"),
            ({"account": "imaging", "reservation": "lightsheet-course"},
             "reservation 'lightsheet-course' is not an active reservation open to you "
             "with account 'imaging'"),
        ]
        before = job_records_of(slurm, "alice")
        submissions = SlurmSubmissions(slurm)
        for names, message in refused:
            response = alice.submit_form({**CPU, **names})
            assert response.status_code == 400, names
            assert message in html.unescape(response.text), names
            assert 'name="account"' in response.text  # the form comes back
            response = alice.api("POST", "/users/alice/server", json={"profile": "cpu", **names})
            if response.status_code in (201, 202):
                final = alice.progress(timeout=30)[-1]
                assert final.get("failed") and message in final["message"], final
            else:
                assert message in response.json()["message"], names
            assert alice.server() is None
        assert submissions.count() == 0
        assert job_records_of(slurm, "alice") == before
    finally:
        delete_reservation(slurm, "bob-only")
        delete_reservation(slurm, "lightsheet-course")


def test_a_workshop_session_keeps_the_qos_its_profile_locks(hub, slurm):
    tom = logged_in(hub.url, "tom")
    # His association would allow "normal"; the workshop profile runs under "workshop" only.
    assert "normal" in form_accounts(wait_for_form(tom, form_accounts))[1]
    submissions = SlurmSubmissions(slurm)
    response = tom.submit_form({**WORKSHOP, "qos": "normal"})
    assert response.status_code == 400
    assert "QoS 'normal': Workshop sessions always use 'workshop'" in html.unescape(response.text)
    response = tom.api("POST", "/users/tom/server", json={"profile": "workshop", "qos": "normal"})
    assert response.status_code >= 400 or tom.progress(timeout=30)[-1].get("failed")
    assert tom.server() is None and submissions.count() == 0


def test_sessions_run_under_the_users_account_and_the_profiles_qos(hub, slurm):
    tom = logged_in(hub.url, "tom")
    response = tom.submit_form(WORKSHOP)
    assert response.status_code == 302, response.text[-500:]
    assert tom.progress()[-1].get("ready")
    [job] = jobs_of(slurm, "tom")
    queued = run(["squeue", "-h", "-j", job, "-o", "%a|%q"], env=slurm.env).stdout.strip()
    assert queued == "trainers|workshop"
    tom.stop()
    record = sacct_end(slurm, job)
    assert (record["account"], record["qos"], record["state"]) == (
        "trainers", "workshop", "CANCELLED")
    # Slurm itself refuses what accounting does not allow: alice has no workshop QoS.
    refused = run(["sudo", "-n", "--preserve-env=SLURM_CONF", "-u", "alice", "sbatch",
                   "--parsable", "-o", "/dev/null", "--chdir=/tmp", "--qos=workshop",
                   "--wrap", "true"], env=slurm.env, check=False)
    assert refused.returncode != 0 and "Invalid qos" in refused.stderr


def test_session_that_dies_is_reported_as_sacct_recorded_it(failing_hub, slurm):
    bob = logged_in(failing_hub.url, "bob")
    since = time.time()
    assert bob.submit_form(CPU).status_code == 302
    final = bob.progress(timeout=60)[-1]
    assert final.get("failed"), final
    message = final["message"]
    job = message.split("Slurm job ")[1].split()[0]
    record = sacct_end(slurm, job)
    assert (record["state"], record["exit_code"]) == ("FAILED", "3:0")
    assert f"ended ({record['state']}" in message and f"exit code {record['exit_code']}" in message
    assert "no licence for this session" in message
    counts = count_calls(failing_hub.calls_log, since, time.time())
    assert counts["sacct"] >= 1, counts  # asked accounting, without sudo
    assert bob.server() is None and jobs_of(slurm, "bob") == []


def test_accounting_outage_degrades_the_form_and_still_reports_failures(
        failing_hub, slurm, devstack):
    alice, tom, bob = (logged_in(failing_hub.url, u) for u in ("alice", "tom", "bob"))
    configured = yaml.safe_load(Path(devstack.record()["gateway_yaml"]).read_text())["slurm"]
    wait_for_form(alice, lambda t: form_accounts(t) == (["imaging", "lightsheet-lab"], ["normal"]))
    devstack.stop_slurmdbd()
    try:
        time.sleep(2.5)  # past the live-data TTL (2 s)
        started = time.monotonic()
        assert alice.spawn_form().status_code == 200
        assert time.monotonic() - started < 1.0
        # Alice: her last answer, said to be old.
        text = wait_for_form(alice, lambda t: "could not be read from accounting" in t)
        assert "showing those read" in text
        assert form_accounts(text) == (["imaging", "lightsheet-lab"], ["normal"])
        assert 'name="profile"' in text
        # Tom, who had not opened the form: the answer read for every user at once, said to be old.
        text = wait_for_form(tom, lambda t: "could not be read from accounting" in t)
        assert "showing those read" in text
        assert form_accounts(text) == (["trainers"], ["normal", "workshop"])
        assert form_accounts(text) != (configured["accounts"], configured["qos"])
        # A session that dies meanwhile is still reported, from the controller's records.
        assert bob.submit_form(CPU).status_code == 302
        final = bob.progress(timeout=60)[-1]
        assert final.get("failed"), final
        assert "FAILED" in final["message"] and "exit code 3:0" in final["message"]
    finally:
        devstack.start_slurmdbd()
    text = wait_for_form(alice, lambda t: "could not be read from accounting" not in t)
    assert form_accounts(text) == (["imaging", "lightsheet-lab"], ["normal"])
