"""Watchdogs that keep Dask worker jobs from outliving what they serve.

``python -m bioimage_gateway.dask_watch reaper --pid P --user U --name N --tag T [--directory D]``
    Started by :class:`~bioimage_gateway.dask_clusters.GatewayCluster` beside
    the process holding the cluster (the kernel, or the Jupyter server for
    dask-labextension), in its own process session.  It polls that process
    every second; once it is gone (closed, crashed or ``kill -9``), it cancels
    every job of the cluster, pending ones included, removes the cluster's
    private folder ``D`` (its TLS key, the dashboard's socket), and exits.  A
    normal ``close()`` stops it (the cluster removes its folder itself).

``python -m bioimage_gateway.dask_watch guard --session-job J``
    Runs in the background of each worker job (from the job script).  When
    the session's job has left the running state, it cancels its own job.

``python -m bioimage_gateway.dask_watch spill-directory PATH [--report FILE]``
    Runs first in each worker job: makes ``PATH`` (the worker's
    ``local_directory`` on its node) a folder of the user's alone, mode 0700,
    or refuses one that someone else made or a link there; the refusal names
    the folder and its owner, on stderr (the job's log) and in ``FILE`` (in
    the cluster's private folder, where the cluster reads it), and the job
    ends before any worker writes there.

Reaper and guard run Slurm's commands from argv lists, as the user, with
``SLURM_CONF`` from the environment; a scheduler that does not answer is
never read as "job gone".
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .private_paths import (
    PrivatePathError,
    private_directory,
    remove_private_directory,
    write_private_file,
)
from .slurm import JOB_ID, POSIX_USERNAME

COMMENT_PREFIX = "bioimage-gateway-dask:"
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
               "SUSPENDED"}


def _run(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), to tell it from a reused PID."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(") ", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


def cluster_jobs(user: str, name: str, tag: str) -> list[str] | None:
    """Ids of the cluster's jobs in the queue; None if Slurm did not answer."""
    try:
        result = _run(["squeue", "-h", "-u", user, "-n", name, "-o", "%i|%k"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    ids = []
    for line in result.stdout.splitlines():
        job_id, _, comment = line.strip().partition("|")
        if comment == COMMENT_PREFIX + tag and JOB_ID.match(job_id):
            ids.append(job_id)
    return ids


def cancel(job_ids: list[str]) -> bool:
    if not job_ids:
        return True
    try:
        result = _run(["scancel", *job_ids])
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 or "Invalid job id" in result.stderr


def reaper(pid: int, user: str, name: str, tag: str, interval: float = 1.0,
           give_up_after: float = 600, directory: str | None = None) -> int:
    stopping = False

    def stop(_signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    started = _start_time(pid)
    while not stopping and started is not None and _start_time(pid) == started:
        time.sleep(interval)
    if stopping:
        return 0  # the cluster closed normally and cancelled its own jobs
    # The process holding the cluster is gone: its private folder goes (no worker can
    # start without the key), then its jobs are cancelled until none is left.
    if directory:
        remove_private_directory(directory)
    deadline = time.monotonic() + give_up_after
    while time.monotonic() < deadline:
        jobs = cluster_jobs(user, name, tag)
        if jobs == []:
            return 0
        if jobs:
            print(f"bioimage-gateway: the process {pid} holding Dask cluster {tag} is gone; "
                  f"cancelling its jobs {', '.join(jobs)}", file=sys.stderr, flush=True)
            cancel(jobs)
        time.sleep(interval)
    return 1


def session_state(job_id: str) -> str | None:
    """The session job's state; "" once it left the queue; None if Slurm did not answer."""
    try:
        result = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return "" if "Invalid job id" in result.stderr else None
    return result.stdout.strip()


def guard(session_job: str, interval: float = 30) -> int:
    own = os.environ.get("SLURM_JOB_ID", "")
    while True:
        state = session_state(session_job)
        if state is not None and state not in LIVE_STATES:
            print(f"bioimage-gateway: session job {session_job} has ended "
                  f"({state or 'left the queue'}); cancelling Dask worker job {own}",
                  file=sys.stderr, flush=True)
            if JOB_ID.match(own):
                cancel([own])
            return 0
        time.sleep(interval)


def spill_directory(path: str, report: str | None = None) -> int:
    """Make ``path`` the user's private spill folder (0700); on a refusal, say why on stderr
    and in ``report`` (a new 0600 file), and return 1."""
    try:
        private_directory(path, "Dask spill directory")
    except (PrivatePathError, OSError) as exc:
        message = f"on {socket.gethostname()}: {exc}"
        print(f"bioimage-gateway: Dask worker job {os.environ.get('SLURM_JOB_ID', '')} refused "
              f"to start {message}", file=sys.stderr, flush=True)
        if report:
            folder, name = os.path.split(report)
            try:
                write_private_file(Path(folder), name, message.encode())
            except OSError as failed:
                print(f"bioimage-gateway: could not write {report}: {failed}", file=sys.stderr,
                      flush=True)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bioimage_gateway.dask_watch")
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reaper")
    r.add_argument("--pid", type=int, required=True)
    r.add_argument("--user", required=True)
    r.add_argument("--name", required=True)
    r.add_argument("--tag", required=True)
    r.add_argument("--interval", type=float, default=1.0)
    r.add_argument("--directory", help="the cluster's private folder, removed with it")
    g = sub.add_parser("guard")
    g.add_argument("--session-job", required=True)
    g.add_argument("--interval", type=float, default=30)
    s = sub.add_parser("spill-directory")
    s.add_argument("path")
    s.add_argument("--report")
    args = parser.parse_args(argv)
    if args.command == "reaper":
        if not POSIX_USERNAME.match(args.user):
            parser.error("--user is not a POSIX account name")
        if args.directory and not os.path.isabs(args.directory):
            parser.error("--directory is not an absolute path")
        return reaper(args.pid, args.user, args.name, args.tag, args.interval,
                      directory=args.directory)
    if args.command == "spill-directory":
        if not os.path.isabs(args.path):
            parser.error(f"{args.path!r} is not an absolute path")
        return spill_directory(args.path, args.report)
    if not JOB_ID.match(args.session_job):
        parser.error("--session-job is not a Slurm job id")
    return guard(args.session_job, args.interval)


if __name__ == "__main__":
    sys.exit(main())
