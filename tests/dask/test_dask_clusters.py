"""Dask clusters whose workers are Slurm jobs of the user, on the real local Slurm."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from support_dask import UserPython, jobs_named, squeue, wait_for

from bioimage_gateway.devstack.processes import run

pytestmark = pytest.mark.slurm

START = "from bioimage_gateway.dask_clusters import new_cluster, DaskLimitError\n"


def test_two_workers_reduce_an_ome_zarr_level_then_scale_and_close(
    as_alice, alice_env, ome_zarr_image
):
    as_alice(START + "cluster = new_cluster(workers=2)\n"
             "cluster.wait_for_workers(2, timeout=90)\n"
             "client = cluster.get_client()")
    jobs = jobs_named(alice_env, "alice")
    assert len(jobs) == 2
    rows = squeue(alice_env, "-u", "alice", "-o", "%i|%j|%P|%C|%m|%l|%k")
    for _id, name, partition, cpus, mem, limit, comment in rows:
        assert name == "dask-worker-alice-nosession"  # whose, and which session's
        assert partition == "interactive" and cpus == "1" and mem == "1G"
        assert limit == "2:00:00"  # the group's walltime limit (no session: no time left)
        assert comment.startswith("bioimage-gateway-dask:alice-nosession-")
    script = as_alice("result = cluster.job_script()")
    assert "--local-directory ${TMPDIR:-/tmp}/dask-alice" in script  # node-local, hers alone

    # A level of the OME-Zarr pyramid, loaded lazily, reduced on the workers.
    reduced = as_alice(f"""
import numpy as np, zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
node = next(iter(Reader(parse_url({str(ome_zarr_image)!r}))()))
level = node.data[1]                      # a dask array: nothing read yet
assert level.npartitions > 4, level.chunks
total, mean = client.compute([level.sum(dtype="u8"), level.astype("f8").mean()], sync=True)
where = client.run(lambda: 1)             # the workers that exist
expected = np.asarray(zarr.open_group({str(ome_zarr_image)!r}, mode="r")["s1"][:])
result = dict(total=int(total), mean=float(mean), workers=len(where),
              expected_total=int(expected.sum(dtype="u8")), expected_mean=float(expected.mean()),
              chunks=level.npartitions)
""")
    assert reduced["workers"] == 2
    assert reduced["total"] == reduced["expected_total"]
    assert reduced["mean"] == pytest.approx(reduced["expected_mean"])

    as_alice("cluster.scale(3); cluster.wait_for_workers(3, timeout=90)")
    assert len(jobs_named(alice_env, "alice")) == 3
    as_alice("cluster.scale(1)")
    wait_for(lambda: len(jobs_named(alice_env, "alice")) == 1, 30, "scale down to one job")
    wait_for(lambda: as_alice("result = len(cluster.scheduler_info['workers'])") == 1, 30,
             "one connected worker")
    assert as_alice("result = cluster.slurm_status().describe()").startswith(
        "1 of 1 workers connected, 1 job(s) running")

    folder = as_alice("result = str(cluster.credentials.directory)")
    assert os.path.isdir(folder)
    as_alice("client.close(); cluster.close()")
    wait_for(lambda: jobs_named(alice_env, "alice") == [], 30, "the worker jobs to leave the queue")
    assert not os.path.lexists(folder)  # its TLS key went with it
    # The reaper stopped with the cluster.
    assert run(["pgrep", "-u", "alice", "-f", "dask_watch reaper"], check=False).stdout == ""


def test_adaptive_bounds_are_kept(as_alice, alice_env):
    as_alice(START + "cluster = new_cluster()\n"
             "adaptive = cluster.adapt(minimum=1, maximum=2)")
    wait_for(lambda: len(jobs_named(alice_env, "alice")) == 1, 30, "the adaptive minimum")
    refused = as_alice.run("cluster.adapt(minimum=0, maximum=9)", check=False)
    assert refused["type"] == "DaskLimitError"
    assert "adapt maximum: 9 is more than your groups' limit of 4 workers" in refused["error"]
    as_alice("cluster.close()")


def _job_count(slurm_env) -> int:
    out = run(["scontrol", "-o", "show", "jobs"], env={**os.environ, **slurm_env},
              check=False).stdout
    return len([line for line in out.splitlines() if line.startswith("JobId=")])


@pytest.mark.parametrize(
    "request_, message",
    [
        ("workers=5", "Dask workers: 5 is more than your groups' limit of 4 workers "
                      "(dask max_workers); no job was submitted"),
        ("workers=1, cores=2", "Dask worker cores: 2 is more than your groups' limit of 1 "
                               "cores per worker (dask max_worker_cores)"),
        ("workers=1, memory='3 GiB'", "Dask worker memory: 3.00 GiB is more than your "
                                      "groups' limit of 2 GiB per worker"),
        ("workers=1, walltime='3:00:00'", "Dask worker walltime: 3:00:00 is more than your "
                                          "groups' limit of 2 hours"),
        ("groups=['nobody-special'], workers=2", "Dask workers: 2 is more than your "
                                                 "groups' limit of 1 workers"),
    ],
)
def test_limits_exceeded_are_refused_before_any_job_is_submitted(
    as_alice, alice_env, request_, message
):
    before = _job_count(alice_env)
    answer = as_alice.run(START + f"cluster = new_cluster({request_})", check=False)
    assert answer["type"] == "DaskLimitError", answer
    assert message in answer["error"]
    assert _job_count(alice_env) == before  # Slurm never saw a job


def test_scaling_past_the_limit_is_refused_and_submits_nothing(as_alice, alice_env):
    before = _job_count(alice_env)
    as_alice(START + "cluster = new_cluster()")
    refused = as_alice.run("cluster.scale(7)", check=False)
    assert refused["type"] == "DaskLimitError"
    assert "Dask workers: 7 is more than your groups' limit of 4 workers" in refused["error"]
    time.sleep(1)
    assert _job_count(alice_env) == before
    as_alice("cluster.close()")


def test_kernel_killed_with_kill_9_leaves_no_worker_jobs(as_alice, alice_env):
    folder = as_alice(START + "cluster = new_cluster(workers=2)\n"
                      "cluster.wait_for_workers(2, timeout=90)\n"
                      "result = str(cluster.credentials.directory)")
    assert len(jobs_named(alice_env, "alice")) == 2
    assert os.path.isfile(f"{folder}/tls.key")
    killed = time.monotonic()
    as_alice.kill9()
    wait_for(lambda: not jobs_named(alice_env, "alice"), 60, "worker jobs to be cancelled")
    print(f"worker jobs gone {time.monotonic() - killed:.1f} s after kill -9")
    # No key of a dead cluster is left behind in her home.
    wait_for(lambda: not os.path.lexists(folder), 30, "the cluster's private folder to go")
    wait_for(lambda: run(["pgrep", "-u", "alice", "-f", "dask_watch reaper"],
                         check=False).returncode == 1, 30, "the reaper to exit")


def test_pending_jobs_say_why_and_are_cancelled_when_the_kernel_dies(as_alice, alice_env):
    """Jobs Slurm holds show its reason; the reaper cancels them, pending as they are."""
    slurm_env = {**os.environ, **alice_env}
    run(["scontrol", "update", "PartitionName=largemem", "State=DOWN"], env=slurm_env)
    try:
        as_alice(START + "cluster = new_cluster(workers=2, queue='largemem')")
        reasons = wait_for(
            lambda: (lambda r: r if len(r) == 2 else None)(
                as_alice("result = cluster.pending_reasons()")), 30, "two pending jobs"
        )
        assert len(reasons) == 2 and set(reasons.values()) == {"PartitionDown"}, reasons
        described = as_alice("result = cluster.slurm_status().describe()")
        assert described == "0 of 2 workers connected, 2 job(s) pending (reason: PartitionDown)"
        as_alice.kill9()
        wait_for(lambda: not jobs_named(alice_env, "alice"), 60, "pending jobs to be cancelled")
    finally:
        run(["scontrol", "update", "PartitionName=largemem", "State=UP"], env=slurm_env)


def _sbatch(alice_env, *args: str) -> str:
    out = subprocess.run(
        ["sudo", "-n", "-u", "alice", "--", "/usr/bin/env", f"SLURM_CONF={alice_env['SLURM_CONF']}",
         "sbatch", "--parsable", "-o", "/dev/null", "--chdir=/tmp", "--mem=100M", *args],
        capture_output=True, text=True, check=True,
    ).stdout
    return out.strip().split(";")[0]


def test_worker_jobs_end_with_the_session_job(alice_env):
    """Workers of a session, with its defaults; its job ends -> they cancel themselves."""
    session = _sbatch(alice_env, "--job-name=jupyter-session-alice", "--time=1:00:00",
                      "--wrap", "sleep 600")
    wait_for(lambda: squeue(alice_env, "-j", session, "-o", "%T") == [["RUNNING"]], 30,
             "the stand-in session job to run")
    python = UserPython("alice", {**alice_env, "SLURM_JOB_ID": session})
    try:
        python(START + "cluster = new_cluster(workers=2)\n"
               "cluster.wait_for_workers(2, timeout=90)")
        rows = squeue(alice_env, "-u", "alice", "-n", f"dask-worker-alice-{session}",
                      "-o", "%i|%l")
        assert len(rows) == 2
        # The session's time left (under an hour), not the group's 2 hours.
        assert all(limit.startswith(("59:", "58:", "1:00:00")) for _id, limit in rows), rows
        run(["scancel", session], env={**os.environ, **alice_env})
        ended = time.monotonic()
        wait_for(lambda: not jobs_named(alice_env, "alice"), 30,
                 "worker jobs to follow their session")
        print(f"worker jobs gone {time.monotonic() - ended:.1f} s after the session ended")
        python("cluster.close()")
    finally:
        python.close()


def test_sweep_at_session_start_cancels_workers_of_ended_sessions(alice_env):
    live = _sbatch(alice_env, "--job-name=jupyter-session-alice", "--wrap", "sleep 600")
    stale = _sbatch(alice_env, "--job-name=dask-worker-alice-999999", "--wrap", "sleep 600")
    kept = _sbatch(alice_env, f"--job-name=dask-worker-alice-{live}", "--wrap", "sleep 600")
    python = UserPython("alice", {**alice_env, "SLURM_JOB_ID": "424242"})
    try:
        outcome = python("from bioimage_gateway.extensions.dask_sweep import sweep\n"
                         "r = sweep(); result = [r.cancelled, r.message]")
        assert outcome[0] == {stale: "999999"}
        assert outcome[1] == (f"Cancelled 1 Dask worker job(s) left from your previous "
                              f"session(s) 999999: {stale}")
        # A cancelled job can stay listed as completing while slurmd ends its processes.
        ids = lambda: [row[0] for row in squeue(alice_env, "-u", "alice", "-o", "%i")]  # noqa: E731
        wait_for(lambda: stale not in ids(), 30, f"cancelled job {stale} to leave the queue")
        assert kept in ids() and live in ids()
    finally:
        python.close()
        run(["scancel", live, stale, kept], env={**os.environ, **alice_env})
