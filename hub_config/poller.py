"""One squeue per interval for every session the hub runs.

Stock batchspawner asks Slurm about each job separately, at every poll of
every spawner: N sessions cost N scheduler calls per interval.  Here one
:class:`QueuePoller` per hub watches the job ids of all sessions, asks about
all of them in a single ``squeue -j id,id,...`` call per interval (with
jitter, so that many hubs do not beat in step), and asks how jobs that left
the queue ended in one sacct call for all of them (no sudo: slurmdbd shows
every user's jobs unless the site sets PrivateData), then the controller's
records where accounting is off, does not answer, or has not yet recorded a
job's end (``SlurmClient.job_records``).  Spawners read the shared answer.
A failed query is retried at the next interval and never read as "job gone":
spawners see the scheduler as unavailable, not their job as ended.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time

from bioimage_gateway.slurm import JobInfo, SchedulerUnavailable, SlurmClient

log = logging.getLogger("bioimage_gateway.poller")


class QueuePoller:
    """The queue as the hub last saw it, for every job it watches (one per hub:
    ``shared.SharedServices``)."""

    def __init__(self, client: SlurmClient, interval: float, start_interval: float | None = None,
                 jitter: float = 0.1):
        self.client = client
        self.interval = interval
        # While a user waits on a job (a session starting or stopping), ask more often.
        self.start_interval = min(start_interval or interval, interval)
        self.jitter = jitter
        self.watched: set[str] = set()
        self.waited_on: set[str] = set()
        self._wake = asyncio.Event()
        self.jobs: dict[str, JobInfo] = {}
        self.ended: dict[str, JobInfo | None] = {}
        self.error: str | None = None
        self.refreshed_at = 0.0
        self.calls = 0  # scheduler calls made, for benchmarks and logs
        self._task: asyncio.Task | None = None
        self._fresh = asyncio.Event()

    def watch(self, job_id: str, waiting: bool = False) -> None:
        """Include the job in every query; ``waiting``: a user waits on it (ask soon and often)."""
        self.watched.add(job_id)
        self.ended.pop(job_id, None)
        if waiting:
            self.waited_on.add(job_id)
            self._wake.set()  # do not sleep out a long interval while a user waits
        if self._task is None or self._task.done():
            self._task = asyncio.ensure_future(self._run())

    def done_waiting(self, job_id: str) -> None:
        self.waited_on.discard(job_id)

    def unwatch(self, job_id: str) -> None:
        self.watched.discard(job_id)
        self.waited_on.discard(job_id)
        self.jobs.pop(job_id, None)
        self.ended.pop(job_id, None)

    async def _run(self) -> None:
        while self.watched:
            await self.refresh()
            interval = self.start_interval if self.waited_on else self.interval
            self._wake = asyncio.Event()
            delay = interval * random.uniform(1 - self.jitter, 1 + self.jitter)
            # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
            # arrives as the wake-up does, and the loop would then never end.
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                continue
            await asyncio.sleep(self.start_interval * random.uniform(0.5, 1.0))

    async def refresh(self) -> None:
        ids = set(self.watched)
        try:
            self.calls += 1
            queue = await self.client.jobs(ids)
            gone = ids - set(queue) - set(self.ended)
            ended = {}
            if gone:
                self.calls += 1
                ended = await self.client.job_records(gone)
        except SchedulerUnavailable as exc:
            # Keep the last answer; spawners see "unknown", never "gone".
            if self.error is None:
                log.warning("Slurm did not answer (%s); retrying every %.0f s", exc, self.interval)
            self.error = str(exc)
        else:
            if self.error is not None:
                log.info("Slurm answers again")
            self.error = None
            self.jobs = queue
            for job_id in gone:
                self.ended[job_id] = ended.get(job_id)
            self.refreshed_at = time.monotonic()
        finally:
            self._fresh.set()
            self._fresh = asyncio.Event()

    async def next_answer(self, timeout: float | None = None) -> None:
        """Wait for the next refresh (whatever its outcome)."""
        event = self._fresh
        wait = self.start_interval if self.waited_on else self.interval
        try:
            async with asyncio.timeout(timeout or wait * 3):
                await event.wait()
        except TimeoutError:
            pass

    def status(self, job_id: str) -> tuple[str, JobInfo | None]:
        """("queued", info) / ("ended", record or None) / ("unknown", last info)."""
        if job_id in self.jobs and not self.error:
            return "queued", self.jobs[job_id]
        if job_id in self.ended and not self.error:
            return "ended", self.ended[job_id]
        return "unknown", self.jobs.get(job_id)
