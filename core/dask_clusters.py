"""Dask clusters whose workers are Slurm jobs, sized to fit the user's session.

    from bioimage_gateway.dask_clusters import new_cluster
    cluster = new_cluster(workers=2)          # or GatewayCluster(...)
    client = cluster.get_client()
    cluster.scale(4); cluster.adapt(minimum=0, maximum=4); cluster.close()

Built on ``dask_jobqueue.SLURMCluster``; what this adds:

* defaults from the session the kernel runs in: the profile's partition,
  account, QoS and reservation (``BIOIMAGE_GATEWAY_*`` variables the spawner
  sets), the session's time left as the workers' walltime, the session's own
  Python (``sys.executable``);
* the site's limits (``dask:`` in gateway.yaml, per group) checked before any
  job is submitted, for the cluster's creation, ``scale`` and ``adapt``: a
  refusal raises :class:`DaskLimitError` naming the limit, and Slurm never
  sees a job;
* on shared nodes the cluster is its user's alone: scheduler, workers and
  client talk TLS with the cluster's own certificate and key (mutual, 0600 in
  a 0700 folder of the user's, ``dask.runtime_directory``); the scheduler's
  and workers' HTTP servers listen on Unix sockets, not TCP, and the
  dashboard is reached through the hub only
  (:mod:`bioimage_gateway.dask_security`);
* the scheduler's scratch folder (on its process's ``sys.path``) lies in the
  cluster's private folder, not in the node's shared ``/tmp``;
* workers spill to node-local disk, into a folder of the user's alone
  (``$TMPDIR/dask-<user>``, else ``/tmp/dask-<user>``): each worker job makes
  it 0700 or refuses one that someone else made, and ``wait_for_workers``
  raises that refusal (:class:`PrivatePathError`, naming folder and owner);
  job scripts and logs stay in the user's private folders too;
* job names ``dask-worker-<user>-<session job id>``, and a comment
  ``bioimage-gateway-dask:<cluster tag>`` that ties each job to its cluster;
* no orphans: ``close()`` cancels the jobs (dask-jobqueue); a reaper process
  started with the cluster cancels them when the process holding the cluster
  (kernel, or Jupyter server for dask-labextension) dies, even by ``kill -9``;
  each worker job cancels itself when the session's job has ended; the
  session's server extension sweeps jobs left by earlier sessions;
* ``pending_reasons()`` / ``slurm_status()``: why jobs wait, in Slurm's words;
* the dashboard link goes through the hub and the session's Jupyter server:
  ``{JUPYTERHUB_SERVICE_PREFIX}dask-dashboard/<cluster>/status``
  (:mod:`bioimage_gateway.extensions.dask_dashboard`).
"""

from __future__ import annotations

import logging
import math
import os
import pwd
import re
import shlex
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dask.utils import format_bytes, parse_bytes, parse_timedelta
from dask_jobqueue import SLURMCluster
from dask_jobqueue.slurm import SLURMJob

from .dask_security import ClusterCredentials, GatewayScheduler
from .dask_settings import (
    DaskLimits,
    DaskSettings,
    effective_dask_limits,
    load_dask_settings,
    session_groups,
)
from .dask_watch import COMMENT_PREFIX
from .private_paths import PrivatePathError, private_directory
from .slurm import JOB_ID, POSIX_USERNAME, parse_squeue_line

log = logging.getLogger(__name__)

GiB = 1024**3
JOB_NAME_PREFIX = "dask-worker-"
NO_SESSION = "nosession"
# squeue: id, state, host, start, reason (as slurm.SQUEUE_FORMAT), then name and comment.
SQUEUE_FORMAT = "%i|%T|%B|%S|%r|%j|%k"
_SLURM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
WORKER_CLASS = "bioimage_gateway.dask_security.GatewayWorker"
# A spill folder as the job's shell expands it (in double quotes): $TMPDIR, ${TMPDIR:-/tmp}.
_SHELL_PATH = re.compile(r"^(/|\$\{?[A-Z_][A-Z0-9_]*(:-/[A-Za-z0-9_.\-/]*)?\}?/)[A-Za-z0-9_.\-/]*$")
REFUSAL_POLL = 2.0  # seconds between looks for workers' refusals while waiting for them
# What the cluster sets itself: TLS with its own credentials, its own scheduler.
FIXED_OPTIONS = ("security", "protocol", "scheduler_cls", "shared_temp_directory", "job_cls")


class DaskLimitError(ValueError):
    """A request beyond the site's Dask limits; nothing was submitted."""


# ---- the session the kernel runs in --------------------------------------


@dataclass(frozen=True)
class SessionContext:
    """What the gateway's session job tells its kernels (environment variables)."""

    user: str
    session_job_id: str | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    reservation: str | None = None
    profile: str | None = None
    service_prefix: str | None = None
    env: dict[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "SessionContext":
        env = dict(os.environ if environ is None else environ)
        user = pwd.getpwuid(os.getuid()).pw_name

        def name(key: str) -> str | None:
            value = env.get(f"BIOIMAGE_GATEWAY_{key}", "").strip()
            return value if value and _SLURM_NAME.match(value) else None

        job = env.get("SLURM_JOB_ID", "").strip()
        return cls(
            user=user,
            session_job_id=job if JOB_ID.match(job) else None,
            partition=name("PARTITION"),
            account=name("ACCOUNT"),
            qos=name("QOS"),
            reservation=name("RESERVATION"),
            profile=name("PROFILE"),
            service_prefix=env.get("JUPYTERHUB_SERVICE_PREFIX") or None,
            env=env,
        )

    @property
    def job_name(self) -> str:
        return f"{JOB_NAME_PREFIX}{self.user}-{self.session_job_id or NO_SESSION}"


def _slurm_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    return dict(os.environ if environ is None else environ)


def _run(argv: list[str], env: dict[str, str] | None = None, timeout: float = 30):
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, env=_slurm_env(env), check=False
    )


def parse_time_left(text: str) -> int | None:
    """squeue's ``%L`` (``[D-]HH:MM:SS``, ``MM:SS``) in seconds; None if unlimited/unknown."""
    text = text.strip()
    match = re.fullmatch(r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)", text)
    if not match:
        return None
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def session_time_left(job_id: str | None, env: dict[str, str] | None = None) -> int | None:
    """Seconds the session's job has left, from Slurm; None outside a session or if unknown."""
    if not job_id:
        return None
    try:
        result = _run(["squeue", "-h", "-j", job_id, "-o", "%L"], env=env, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return parse_time_left(result.stdout)


def format_walltime(seconds: int) -> str:
    minutes = max(1, seconds // 60)
    return f"{minutes // 60:d}:{minutes % 60:02d}:00"


def parse_walltime(value: Any) -> int:
    """Seconds from a Slurm time (``"1:30:00"``, ``"2-00:00:00"``, ``"90"`` minutes) or hours (int)."""
    if isinstance(value, bool):
        raise DaskLimitError(f"walltime: {value!r} is not a time")
    if isinstance(value, (int, float)):
        return int(value * 3600)
    text = str(value).strip()
    if re.fullmatch(r"\d+", text):
        return int(text) * 60  # Slurm reads a bare number as minutes
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not match:
        raise DaskLimitError(f"walltime: {value!r} is not a Slurm time such as 1:30:00")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def _memory_bytes(memory: Any) -> int:
    if isinstance(memory, bool):
        raise DaskLimitError(f"memory: {memory!r} is not an amount of memory")
    if isinstance(memory, (int, float)):
        return int(memory * GiB)  # a plain number is GiB, like the spawn form
    try:
        return parse_bytes(str(memory))
    except ValueError:
        raise DaskLimitError(f"memory: {memory!r} is not an amount such as '2 GiB'") from None


# ---- limits ----------------------------------------------------------------


def check_worker_shape(limits: DaskLimits, cores: int, memory_bytes: int, walltime_s: int) -> None:
    if cores < 1:
        raise DaskLimitError(f"Dask worker cores: {cores} is less than 1")
    if limits.max_worker_cores is not None and cores > limits.max_worker_cores:
        raise DaskLimitError(
            f"Dask worker cores: {cores} is more than your groups' limit of "
            f"{limits.max_worker_cores} cores per worker (dask max_worker_cores); "
            "no job was submitted"
        )
    if limits.max_worker_memory_gb is not None and memory_bytes > limits.max_worker_memory_gb * GiB:
        raise DaskLimitError(
            f"Dask worker memory: {format_bytes(memory_bytes)} is more than your groups' "
            f"limit of {limits.max_worker_memory_gb} GiB per worker (dask max_worker_memory_gb); "
            "no job was submitted"
        )
    if limits.max_walltime_hours is not None and walltime_s > limits.max_walltime_hours * 3600:
        raise DaskLimitError(
            f"Dask worker walltime: {format_walltime(walltime_s)} is more than your groups' "
            f"limit of {limits.max_walltime_hours} hours (dask max_walltime_hours); "
            "no job was submitted"
        )


def check_worker_count(limits: DaskLimits, workers: int, what: str = "workers") -> None:
    if workers < 0:
        raise DaskLimitError(f"Dask {what}: {workers} is less than 0")
    if limits.max_workers is not None and workers > limits.max_workers:
        raise DaskLimitError(
            f"Dask {what}: {workers} is more than your groups' limit of "
            f"{limits.max_workers} workers (dask max_workers); no job was submitted"
        )


# ---- the cluster -----------------------------------------------------------


@dataclass(frozen=True)
class WorkerJob:
    job_id: str
    state: str
    node: str
    reason: str

    @property
    def pending(self) -> bool:
        return self.state in ("PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED")


@dataclass(frozen=True)
class ClusterStatus:
    requested: int  # workers asked for (scale/adapt target)
    connected: int  # workers connected to the scheduler
    pending: dict[str, str]  # job id -> Slurm reason
    running: list[str]  # job ids Slurm runs
    dashboard_link: str
    refused: dict[str, str] = field(default_factory=dict)  # job id -> why it did not start

    def describe(self) -> str:
        text = f"{self.connected} of {self.requested} workers connected"
        if self.running:
            text += f", {len(self.running)} job(s) running"
        if self.pending:
            reasons = sorted(set(self.pending.values()))
            text += f", {len(self.pending)} job(s) pending (reason: {', '.join(reasons)})"
        for job_id, why in sorted(self.refused.items()):
            text += f"; job {job_id} refused to start {why}"
        return text


def _local_directory(template: str, user: str) -> str:
    if template == "$TMPDIR":
        # Expanded by the worker job's shell, on the worker's node; a folder of the user's
        # own, as $TMPDIR may be shared by everyone on the node (/tmp, /scratch).
        return "${TMPDIR:-/tmp}/dask-" + user
    return template.replace("{user}", user)


class GatewaySLURMJob(SLURMJob):
    """dask-jobqueue's Slurm job, its batch script written into the cluster's private folder
    (a new 0600 file, ``mkstemp``) rather than reopened by name in the node's shared /tmp."""

    def __init__(self, *args, script_directory: str | None = None, **kwargs):
        self.script_directory = script_directory
        super().__init__(*args, **kwargs)

    @contextmanager
    def job_file(self):
        fd, path = tempfile.mkstemp(prefix="job-", suffix=".sh", dir=self.script_directory)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.job_script())
            yield path
        finally:
            with suppress(FileNotFoundError):
                os.unlink(path)


class GatewayCluster(SLURMCluster):
    """A ``SLURMCluster`` with the session's defaults and the site's limits.

    Keyword arguments are SLURMCluster's; ``workers`` (or ``n_workers``),
    ``cores``, ``memory`` (str, or GiB as a number) and ``walltime`` are
    checked against the limits.  ``settings`` (GatewaySettings or
    DaskSettings) and ``groups`` override where the limits come from.
    TLS, the scheduler and the job class are the cluster's own: ``security``,
    ``protocol``, ``scheduler_cls``, ``shared_temp_directory`` and ``job_cls``
    are refused.
    """

    job_cls = GatewaySLURMJob

    def __init__(
        self,
        *,
        workers: int | None = None,
        n_workers: int | None = None,
        cores: int | None = None,
        memory: Any = None,
        walltime: Any = None,
        settings: Any = None,
        groups: list[str] | None = None,
        reaper: bool = True,
        session: SessionContext | None = None,
        **kwargs: Any,
    ):
        self._reaper: subprocess.Popen | None = None
        self.credentials: ClusterCredentials | None = None
        for key in FIXED_OPTIONS:
            if key in kwargs:
                raise ValueError(f"GatewayCluster sets {key} itself (TLS with the cluster's own "
                                 "credentials); leave it out")
        self.session = session or SessionContext.from_env()
        if not POSIX_USERNAME.match(self.session.user):
            raise ValueError(f"{self.session.user!r} is not a POSIX account name")
        self.dask_settings: DaskSettings = load_dask_settings(settings)
        if settings is None and groups is None:
            # Resolved by the spawner (env), else gateway.yaml and the session's groups.
            self.limits: DaskLimits = effective_dask_limits()
        else:
            self.limits = self.dask_settings.limits_for(
                groups if groups is not None else session_groups()
            )
        if not self.dask_settings.enabled:
            raise DaskLimitError("Dask clusters are not offered on this site (dask.enabled)")

        # -- what each worker job asks for, checked before anything starts
        cores = int(cores if cores is not None else self.dask_settings.worker_cores)
        memory_bytes = _memory_bytes(
            memory if memory is not None else self.dask_settings.worker_memory_gb
        )
        self.session_time_left = session_time_left(self.session.session_job_id, self.session.env)
        if walltime is not None:
            walltime_s = parse_walltime(walltime)
        else:
            cap = self.limits.max_walltime_hours or self.dask_settings.default_walltime_hours
            walltime_s = cap * 3600 if self.session_time_left is None else min(
                cap * 3600, self.session_time_left
            )
        check_worker_shape(self.limits, cores, memory_bytes, walltime_s)
        if self.session_time_left is not None:
            if self.session_time_left < 120:
                raise DaskLimitError(
                    "Dask workers: your session has less than 2 minutes left; "
                    "no job was submitted"
                )
            # Workers never outlive the session they belong to.
            walltime_s = min(walltime_s, self.session_time_left)
        processes = int(kwargs.pop("processes", 1))
        self._processes = max(1, processes)
        target = n_workers if n_workers is not None else workers
        if target is not None:
            check_worker_count(self.limits, int(target))

        self.tag = f"{self.session.user}-{self.session.session_job_id or NO_SESSION}-" \
                   f"{uuid.uuid4().hex[:8]}"
        user = self.session.user
        home = pwd.getpwnam(user).pw_dir
        python = kwargs.pop("python", None) or sys.executable
        directives = list(kwargs.pop("job_extra_directives", None) or [])
        directives.append(f"--comment={COMMENT_PREFIX}{self.tag}")
        for option, value in (("--qos", self.session.qos),
                              ("--reservation", self.session.reservation)):
            key = option.lstrip("-")
            value = kwargs.pop(key, value)
            if value:
                directives.append(f"{option}={value}")
        prologue = list(kwargs.pop("job_script_prologue", None) or [])
        if self.session.session_job_id:
            # The worker job cancels itself once the session's job has ended.
            guard = [python, "-m", "bioimage_gateway.dask_watch", "guard",
                     "--session-job", self.session.session_job_id,
                     "--interval", str(self.dask_settings.guard_interval)]
            prologue.append(" ".join(shlex.quote(part) for part in guard) + " &")
        local_directory = kwargs.pop("local_directory", None) or _local_directory(
            self.dask_settings.local_directory, user)
        if not _SHELL_PATH.match(local_directory):
            raise ValueError(f"local_directory {local_directory!r}: use an absolute path "
                             "of letters, digits, '_.-/' and ${{VARIABLE}}s")
        log_directory = str(private_directory(
            os.path.join(home, self.dask_settings.log_directory), "Dask log directory",
            create_parents=True))
        # Nothing of the cluster exists before this folder: its TLS key, the dashboard's socket.
        self.credentials = ClusterCredentials.create(
            Path(home) / self.dask_settings.runtime_directory, self.tag)
        try:
            super().__init__(n_workers=0, **self._options(
                kwargs, directives, prologue, python, local_directory, log_directory,
                cores, memory_bytes, walltime_s))
        except BaseException:
            self.credentials.remove()
            raise
        self.walltime_s = walltime_s
        if reaper:
            self._start_reaper()
        if target:
            self.scale(int(target))

    def _options(self, kwargs: dict, directives: list[str], prologue: list[str], python: str,
                 local_directory: str, log_directory: str, cores: int, memory_bytes: int,
                 walltime_s: int) -> dict[str, Any]:
        """SLURMCluster's keywords: the session's defaults, the caller's, then the cluster's own
        (TLS, the scheduler and workers with their HTTP on Unix sockets, private paths)."""
        credentials = self.credentials
        # First in the job: the spill folder is the user's alone, or the job ends, saying why.
        spill = [python, "-m", "bioimage_gateway.dask_watch", "spill-directory"]
        prologue.insert(0, " ".join(shlex.quote(part) for part in spill)
                        + f' "{local_directory}" --report '
                        + shlex.quote(credentials.refusal_prefix) + "$SLURM_JOB_ID || exit 1")
        scheduler_options = dict(kwargs.pop("scheduler_options", None) or {})
        # The scheduler's scratch folder goes on its process's sys.path: in the node's shared
        # /tmp (distributed's default, dask-scratch-space) another user could swap it.
        scheduler_options.update(dashboard_socket=credentials.dashboard_socket, dashboard=True,
                                 local_directory=str(credentials.directory))
        worker_extra_args = [*(kwargs.pop("worker_extra_args", None) or []),
                             "--worker-class", WORKER_CLASS, "--no-dashboard"]
        options = dict(
            queue=self.session.partition,
            account=self.session.account,
            cores=cores,
            memory=f"{memory_bytes}B",
            processes=self._processes,
            walltime=format_walltime(walltime_s),
            job_name=self.session.job_name,
            python=python,
            death_timeout=self.dask_settings.death_timeout,
            interface=self.dask_settings.interface,
        )
        options.update(kwargs)
        options.update(
            job_extra_directives=directives,
            job_script_prologue=prologue,
            scheduler_options=scheduler_options,
            worker_extra_args=worker_extra_args,
            local_directory=local_directory,
            log_directory=log_directory,
            security=credentials.security(),
            scheduler_cls=GatewayScheduler,
            script_directory=str(credentials.directory),
        )
        return options

    # -- limits on scaling ---------------------------------------------------

    def scale(self, n=None, jobs=0, memory=None, cores=None):
        if n is not None:
            jobs = int(math.ceil(n / self._processes))
        elif memory is not None:
            jobs = int(math.ceil(parse_bytes(memory) / self._dummy_job.worker_memory))
            memory = None
        elif cores is not None:
            jobs = int(math.ceil(cores / self._dummy_job.worker_cores))
            cores = None
        check_worker_count(self.limits, jobs * self._processes)
        return super().scale(jobs=jobs)

    def adapt(self, minimum: int = 0, maximum: int | None = None, *,
              minimum_jobs: int | None = None, maximum_jobs: int | None = None, **kwargs):
        if minimum_jobs is not None:
            minimum = minimum_jobs * self._processes
        if maximum_jobs is not None:
            maximum = maximum_jobs * self._processes
        if maximum is None or maximum == math.inf:
            if self.limits.max_workers is None:
                raise DaskLimitError("Dask adapt: give a maximum number of workers")
            maximum = self.limits.max_workers
        if minimum > maximum:
            raise DaskLimitError(f"Dask adapt: minimum {minimum} is more than maximum {maximum}")
        check_worker_count(self.limits, int(minimum), "adapt minimum")
        check_worker_count(self.limits, int(maximum), "adapt maximum")
        return super().adapt(minimum=minimum, maximum=maximum, **kwargs)

    # -- what Slurm says about our jobs -------------------------------------

    def worker_jobs(self) -> list[WorkerJob]:
        """This cluster's jobs in Slurm's queue (any state)."""
        result = _run(["squeue", "-h", "-u", self.session.user, "-n", self.session.job_name,
                       "-o", SQUEUE_FORMAT], env=self.session.env)
        if result.returncode != 0:
            raise RuntimeError(f"squeue failed: {result.stderr.strip()}")
        jobs = []
        for line in result.stdout.splitlines():
            parts = line.strip().split("|")
            if len(parts) < 7 or parts[6] != COMMENT_PREFIX + self.tag:
                continue
            info = parse_squeue_line("|".join(parts[:5]))
            jobs.append(WorkerJob(info.job_id, info.state, info.node, info.reason))
        return jobs

    def pending_reasons(self) -> dict[str, str]:
        """Job id -> Slurm's reason, for each of this cluster's jobs still pending."""
        return {job.job_id: job.reason for job in self.worker_jobs() if job.pending}

    def slurm_status(self) -> ClusterStatus:
        jobs = self.worker_jobs()
        try:
            connected = len(self.scheduler_info.get("workers", {}))
        except Exception:  # noqa: BLE001 - no scheduler info yet
            connected = 0
        return ClusterStatus(
            requested=len(self.worker_spec) * self._processes,
            connected=connected,
            pending={j.job_id: j.reason for j in jobs if j.pending},
            running=[j.job_id for j in jobs if not j.pending],
            dashboard_link=self.dashboard_link,
            refused=self.worker_refusals(),
        )

    # -- workers that refused to start ---------------------------------------

    def worker_refusals(self) -> dict[str, str]:
        """Job id -> why that worker job refused to start (its spill folder), as it said."""
        return self.credentials.refusals() if self.credentials else {}

    def _raise_refusals(self) -> None:
        refused = self.worker_refusals()
        if refused:
            job_id, why = min(refused.items())
            others = f" (and {len(refused) - 1} more job(s))" if len(refused) > 1 else ""
            raise PrivatePathError(f"Dask worker job {job_id}{others} refused to start {why}",
                                   path="", owner=None)

    def wait_for_workers(self, n_workers: int, timeout: float | None = None) -> None:
        """Wait until ``n_workers`` are connected; a worker job that refused to start (a spill
        folder of someone else's on its node) raises :class:`PrivatePathError` at once."""
        if self.asynchronous:
            return super().wait_for_workers(n_workers, timeout=timeout)
        deadline = None if timeout is None else time.monotonic() + parse_timedelta(timeout)
        while True:
            self._raise_refusals()
            left = None if deadline is None else deadline - time.monotonic()
            step = REFUSAL_POLL if left is None else max(0.1, min(REFUSAL_POLL, left))
            try:
                return super().wait_for_workers(n_workers, timeout=step)
            except TimeoutError:
                if left is not None and left <= REFUSAL_POLL:
                    self._raise_refusals()
                    raise

    # -- the dashboard: a Unix socket, reached through the hub ----------------

    @property
    def dashboard_socket(self) -> str | None:
        """The Unix socket the scheduler's HTTP server (the dashboard) listens on."""
        return self.credentials.dashboard_socket if self.credentials else None

    @property
    def dashboard_link(self) -> str:
        """Through the hub and the session's Jupyter server; "" outside a session, where the
        dashboard is only on its socket (``curl --unix-socket``)."""
        prefix = self.session.service_prefix
        if not prefix:
            return ""
        return f"{prefix.rstrip('/')}/dask-dashboard/{self.tag}/status"

    # -- the reaper: jobs die with the process that holds the cluster --------

    def _start_reaper(self) -> None:
        argv = [sys.executable, "-m", "bioimage_gateway.dask_watch", "reaper",
                "--pid", str(os.getpid()), "--user", self.session.user,
                "--name", self.session.job_name, "--tag", self.tag,
                "--directory", str(self.credentials.directory)]
        self._reaper = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, env=_slurm_env(self.session.env),
            # Its own session: it survives the kernel's process group being killed.
            start_new_session=True, close_fds=True,
        )

    def _stop_reaper(self) -> None:
        reaper, self._reaper = self._reaper, None
        if reaper is not None and reaper.poll() is None:
            reaper.terminate()
            try:
                reaper.wait(timeout=5)
            except subprocess.TimeoutExpired:
                reaper.kill()
                reaper.wait()

    async def _close(self):
        try:
            return await super()._close()
        finally:
            self._stop_reaper()
            if self.credentials is not None:
                self.credentials.remove()


def new_cluster(**overrides: Any) -> GatewayCluster:
    """A Dask cluster on Slurm with this session's defaults; see :class:`GatewayCluster`."""
    return GatewayCluster(**overrides)


__all__ = [
    "ClusterStatus",
    "DaskLimitError",
    "GatewayCluster",
    "GatewaySLURMJob",
    "PrivatePathError",
    "SessionContext",
    "WorkerJob",
    "new_cluster",
]
