"""``GET {base_url}bioimage-gateway/session``: the session's Slurm job and its end.

The JupyterLab extension (labextension/) asks every minute and warns the user
before the walltime ends.  The end time comes from Slurm once (it does not
move unless an admin extends the job, which the hourly re-read catches).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from pathlib import Path

from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join
from tornado import web

from bioimage_gateway.slurm import SchedulerUnavailable, SlurmClient

WARNING_ENV = "BIOIMAGE_GATEWAY_WALLTIME_WARNING_MINUTES"


class JobEnd:
    """The session job's end time, read from Slurm and kept for an hour."""

    def __init__(self, job_id: str | None, client: SlurmClient):
        self.job_id = job_id
        self.client = client
        self.end: dt.datetime | None = None
        self.read_at = 0.0
        self._lock = asyncio.Lock()

    async def get(self) -> dt.datetime | None:
        if not self.job_id:
            return None
        async with self._lock:
            if self.end is None or time.monotonic() - self.read_at > 3600:
                try:
                    record = await self.client.job_record(self.job_id)
                except SchedulerUnavailable:
                    return self.end
                if record and record.end_time:
                    self.end = dt.datetime.fromisoformat(record.end_time)
                    self.read_at = time.monotonic()
        return self.end


class SessionInfoHandler(APIHandler):
    @web.authenticated
    async def get(self):
        job_end: JobEnd = self.settings["bioimage_gateway_job_end"]
        end = await job_end.get()
        left = None if end is None else max(0, int((end - dt.datetime.now()).total_seconds()))
        self.finish({
            "job_id": job_end.job_id,
            "end_time": end.isoformat(sep=" ", timespec="minutes") if end else None,
            "seconds_left": left,
            "warning_seconds": int(float(os.environ.get(WARNING_ENV, "15")) * 60),
        })


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.session_info"}]


def _load_jupyter_server_extension(serverapp) -> None:
    client = SlurmClient(conf=Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf")))
    serverapp.web_app.settings["bioimage_gateway_job_end"] = JobEnd(
        os.environ.get("SLURM_JOB_ID"), client
    )
    route = url_path_join(serverapp.web_app.settings["base_url"], "bioimage-gateway/session")
    serverapp.web_app.add_handlers(".*$", [(route, SessionInfoHandler)])
