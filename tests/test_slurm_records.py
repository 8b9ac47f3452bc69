"""How the hub reads a job's record: another user's job cannot forge it.

Users choose their jobs' names and comments.  ``scontrol -o show job`` prints them as they
are, newlines included, so a comment such as ``x\\nJobId=<bob's job> JobState=FAILED`` made a
line that read as bob's record, and the hub would have ended bob's session."""

from __future__ import annotations

import asyncio
import time

import pytest

from bioimage_gateway.devstack.processes import run
from bioimage_gateway.slurm import SlurmClient, parse_job_record


def submit_as(slurm, user: str, *options: str) -> str:
    argv = ["sudo", "-n", "-u", user, "--preserve-env=SLURM_CONF", "sbatch", "--parsable", "-p", "interactive",
            "--mem=64M", "-o", "/dev/null", *options, "--wrap", "sleep 300"]
    return run(argv, env=slurm.env).stdout.strip().split(";")[0]


def queue_state(slurm, job_id: str) -> str:
    return run(["squeue", "-h", "-t", "all", "-j", job_id, "-o", "%T"], env=slurm.env).stdout.strip()


@pytest.fixture
def bobs_job_and_alices_forgery(slurm):
    bobs = submit_as(slurm, "bob")
    forged = f"JobId={bobs} JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 BatchHost=evil EndTime=2026-01-01T00:00:00"
    alices = submit_as(slurm, "alice", "--job-name", f"n {forged}", f"--comment=x\n{forged}")
    # The forgery is there for anyone who reads scontrol's text.
    shown = run(["scontrol", "-o", "show", "job"], env=slurm.env).stdout
    assert f"\n{forged}" in shown
    yield bobs, alices
    run(["scancel", bobs, alices], env=slurm.env, check=False)


def test_another_users_job_comment_cannot_forge_a_sessions_record(slurm, bobs_job_and_alices_forgery):
    bobs, alices = bobs_job_and_alices_forgery
    client = SlurmClient(conf=slurm.conf)
    record = asyncio.run(client.job_record(bobs))
    assert record is not None and record.job_id == bobs
    assert record.state == queue_state(slurm, bobs) and record.state != "FAILED"
    assert record.node != "evil" and record.exit_code == "0:0"
    # The hub's read for jobs that left the queue (sacct has no end for them yet) says the same.
    records = asyncio.run(client.job_records([bobs]))
    assert records[bobs].state != "FAILED" and records[bobs].node != "evil"
    # alice's own job is read as hers, whatever its name and comment say.
    assert asyncio.run(client.job_record(alices)).job_id == alices


def test_an_ended_jobs_record_says_how_it_ended(slurm):
    job = run(["sudo", "-n", "-u", "bob", "--preserve-env=SLURM_CONF", "sbatch", "--parsable", "-p",
               "interactive", "--mem=64M", "-o", "/dev/null", "--wrap", "exit 3"], env=slurm.env).stdout.strip()
    deadline = time.monotonic() + 60
    while queue_state(slurm, job) not in ("FAILED", "COMPLETED") and time.monotonic() < deadline:
        time.sleep(0.2)
    record = asyncio.run(SlurmClient(conf=slurm.conf).job_record(job))
    assert record.state == "FAILED" and record.exit_code == "3:0"
    assert record.describe() == "FAILED, reason: NonZeroExitCode, exit code 3:0"
    assert record.end_time  # an ISO time: when it ended


def test_only_slurms_own_fields_make_a_record():
    assert parse_job_record("123   RUNNING   node1   2026-12-03T20:00:00   0   None") is not None
    for line in ("JobId=4 JobState=FAILED Reason=NonZeroExitCode ExitCode=1:0 BatchHost=evil",
                 "x", "", "abc RUNNING node1 N/A 0 None"):
        assert parse_job_record(line) is None
