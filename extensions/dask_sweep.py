"""Jupyter server extension: at session start, cancel Dask worker jobs left by earlier sessions.

Worker jobs are named ``dask-worker-<user>-<session job id>``.  When a
session starts, any such job of the user whose session job is no longer in
Slurm's queue belongs to a session that ended (a node crash, a kill the
watchdogs could not see): it is cancelled, and the server's log says which.
Jobs of the user's other live sessions, and jobs started outside a session,
are left alone.

Enabled in the session environment by
``etc/jupyter/jupyter_server_config.d/bioimage_gateway_dask.json``
(``images/session/jupyter_server_config.d/``)::

    {"ServerApp": {"jpserver_extensions": {"bioimage_gateway.extensions.dask_sweep": true}}}
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import subprocess
import threading
from dataclasses import dataclass

NAME = re.compile(r"^dask-worker-(?P<user>[a-z_][a-z0-9_.-]{0,31})-(?P<session>[0-9]{1,12})$")
JOB_ID = re.compile(r"^[0-9]{1,12}$")
LIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING",
               "SUSPENDED"}

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SweepResult:
    cancelled: dict[str, str]  # worker job id -> the ended session's job id
    message: str


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)


def sweep(user: str | None = None) -> SweepResult:
    """Cancel the user's Dask worker jobs whose session job has left the queue."""
    user = user or pwd.getpwuid(os.getuid()).pw_name
    result = _run(["squeue", "-h", "-u", user, "-o", "%i|%j|%T"])
    if result.returncode != 0:
        return SweepResult({}, f"Dask sweep skipped: squeue failed: {result.stderr.strip()}")
    live: set[str] = set()
    workers: dict[str, str] = {}
    for line in result.stdout.splitlines():
        job_id, name, state = (line.strip().split("|") + ["", "", ""])[:3]
        if not JOB_ID.match(job_id):
            continue
        if state in LIVE_STATES:
            live.add(job_id)
        match = NAME.match(name)
        if match and match["user"] == user:
            workers[job_id] = match["session"]
    current = os.environ.get("SLURM_JOB_ID", "")
    stale = {job: session for job, session in workers.items()
             if session not in live and session != current}
    if not stale:
        return SweepResult({}, "")
    cancelled = _run(["scancel", *sorted(stale)])
    if cancelled.returncode != 0 and "Invalid job id" not in cancelled.stderr:
        return SweepResult({}, f"Dask sweep could not cancel {', '.join(sorted(stale))}: "
                               f"{cancelled.stderr.strip()}")
    sessions = ", ".join(sorted(set(stale.values())))
    message = (f"Cancelled {len(stale)} Dask worker job(s) left from your previous "
               f"session(s) {sessions}: {', '.join(sorted(stale, key=int))}")
    return SweepResult(stale, message)


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.dask_sweep"}]


def _load_jupyter_server_extension(serverapp) -> None:
    logger = getattr(serverapp, "log", log)

    def run() -> None:
        try:
            outcome = sweep()
        except Exception as exc:  # noqa: BLE001 - a sweep must never stop the session
            logger.warning("bioimage-gateway: Dask sweep failed: %s", exc)
            return
        if outcome.message:
            logger.warning("bioimage-gateway: %s", outcome.message)

    # In the background: the session answers the hub without waiting on Slurm.
    threading.Thread(target=run, name="dask-sweep", daemon=True).start()
