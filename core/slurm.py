"""Talking to Slurm: every command runs without a shell, from a fixed argv.

Queries run as the calling account (no sudo: anyone may read the queue);
only submitting, cancelling and reading a user's own files go through
``sudo -u USER``.  A query that fails for any reason other than "no such job"
raises :class:`SchedulerUnavailable`, so a busy or restarting slurmctld is
never mistaken for a job that has ended.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# \Z, not $: "$" also matches before a trailing newline, so "alice\n" would pass
# every caller that uses .match.
POSIX_USERNAME = re.compile(r"\A[a-z_][a-z0-9_.-]{0,31}\Z")
JOB_ID = re.compile(r"\A[0-9]{1,12}\Z")  # \Z: "$" would let "123\n" through
# A host name or an IPv4/IPv6 address, as Slurm's NodeAddr holds them.
NODE_ADDRESS = re.compile(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}")

PENDING_STATES = {"PENDING", "CONFIGURING", "REQUEUED", "RESIZING", "SUSPENDED"}
RUNNING_STATES = {"RUNNING", "COMPLETING"}
# squeue's format: id, state, batch host, (expected) start time, reason.
SQUEUE_FORMAT = "%i|%T|%B|%S|%r"


class SchedulerUnavailable(RuntimeError):
    """Slurm did not answer (controller down, busy or restarting)."""


class SubmitError(RuntimeError):
    """sbatch refused the job; the message is Slurm's own."""


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: str
    node: str = ""
    start_time: str = ""
    reason: str = ""
    exit_code: str = ""
    end_time: str = ""  # expected end while running (start + walltime); actual once ended

    @property
    def pending(self) -> bool:
        return self.state in PENDING_STATES

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def finished(self) -> bool:
        return not (self.pending or self.running)

    def describe(self) -> str:
        parts = [self.state]
        if self.reason and self.reason not in ("None", "(null)"):
            parts.append(f"reason: {self.reason}")
        if self.exit_code and self.exit_code != "0:0":
            parts.append(f"exit code {self.exit_code}")
        return ", ".join(parts)


def check_username(username: str) -> str:
    if not POSIX_USERNAME.match(username):
        raise ValueError(f"{username!r} is not a valid POSIX account name")
    return username


def check_job_id(job_id: str) -> str:
    if not JOB_ID.match(job_id):
        raise ValueError(f"{job_id!r} is not a Slurm job id")
    return job_id


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


async def run_argv(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float = 60,
    umask: int = -1,
) -> CommandResult:
    """Run a command from an argv list (never a shell) and collect its output."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=dict(env) if env is not None else None,
        umask=umask,
        stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(input.encode() if input is not None else None), timeout
        )
    except BaseException:
        # Timed out or cancelled: never leave the child behind.
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return CommandResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


class SlurmClient:
    """The Slurm commands the gateway needs, bound to one cluster's slurm.conf."""

    def __init__(
        self,
        conf: Path,
        bin_dir: Path = Path("/usr/bin"),
        sudo: str = "/usr/bin/sudo",
        timeout: float = 30,
    ):
        self.conf = Path(conf)
        self.bin_dir = Path(bin_dir)
        self.sudo = sudo
        self.timeout = timeout

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf), "PATH": os.environ.get("PATH", "/usr/bin:/bin")}

    def _bin(self, name: str) -> str:
        return str(self.bin_dir / name)

    def as_user(self, username: str, argv: Sequence[str], keep_env: Sequence[str] = ()) -> list[str]:
        """``sudo -u USER`` with an explicit list of variables kept, never ``-E``."""
        check_username(username)
        prefix = [self.sudo, "-n"]
        names = sorted({"SLURM_CONF", *keep_env})
        prefix.append("--preserve-env=" + ",".join(names))
        return [*prefix, "-u", username, *argv]

    async def submit(self, username: str, script: str, env: Mapping[str, str]) -> str:
        """Submit a batch script as the user; return the job id."""
        argv = self.as_user(username, [self._bin("sbatch"), "--parsable"], keep_env=list(env))
        full_env = {**self.env, **env}
        # sbatch passes its umask to the job (SLURM_UMASK), and sudo ORs its own 022 with the
        # caller's: 077 here makes the job's log, which may show tokens and paths, the user's alone.
        result = await run_argv(argv, env=full_env, input=script, timeout=self.timeout, umask=0o077)
        if result.returncode != 0:
            raise SubmitError(result.stderr.strip() or f"sbatch exited {result.returncode}")
        # --parsable prints "id" or "id;cluster"; Slurm may print warnings first.
        last = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else ""
        job_id = last.split(";")[0]
        return check_job_id(job_id)

    async def cancel(self, username: str, job_id: str) -> None:
        argv = self.as_user(username, [self._bin("scancel"), check_job_id(job_id)])
        result = await run_argv(argv, env=self.env, timeout=self.timeout)
        if result.returncode != 0 and "Invalid job id" not in result.stderr:
            raise SchedulerUnavailable(result.stderr.strip() or "scancel failed")

    async def job(self, job_id: str) -> JobInfo | None:
        """The job as the queue shows it; None once it has left the queue."""
        return (await self.jobs([job_id])).get(job_id)

    async def jobs(self, job_ids) -> dict[str, JobInfo]:
        """The queue's view of many jobs in one squeue call; jobs that left it are absent."""
        ids = sorted({check_job_id(j) for j in job_ids}, key=int)
        if not ids:
            return {}
        argv = [self._bin("squeue"), "-h", "-j", ",".join(ids), "-o", SQUEUE_FORMAT]
        result = await run_argv(argv, env=self.env, timeout=self.timeout)
        if result.returncode != 0:
            if "Invalid job id specified" in result.stderr:
                return {}
            raise SchedulerUnavailable(result.stderr.strip() or "squeue failed")
        infos = [parse_squeue_line(line) for line in result.stdout.splitlines() if line.strip()]
        return {info.job_id: info for info in infos}

    async def job_records(self, job_ids) -> dict[str, JobInfo]:
        """How jobs that left the queue ended: sacct where accounting runs, the
        controller's own records (kept MinJobAge seconds, ``squeue -t all``) for what sacct cannot
        tell: accounting off or slurmdbd not answering, or a job whose end has not
        reached the database yet (slurmctld sends it on asynchronously)."""
        ids = sorted({check_job_id(j) for j in job_ids}, key=int)
        if not ids:
            return {}
        records = await self._accounting_records(ids)
        missing = [job_id for job_id in ids if job_id not in records]
        if missing:
            records.update(await self._controller_records(missing))
        return records

    async def _accounting_records(self, ids: list[str]) -> dict[str, JobInfo]:
        """Finished jobs as sacct has them; nothing where accounting does not answer."""
        argv = [self._bin("sacct"), "-n", "-X", "-P", "-j", ",".join(ids),
                "-o", "JobID,State,NodeList,ExitCode,Reason,End"]
        try:
            result = await run_argv(argv, env=self.env, timeout=self.timeout)
        except asyncio.TimeoutError:
            return {}
        if result.returncode != 0:
            return {}
        records = {}
        for line in result.stdout.splitlines():
            job_id, state, node, exit_code, reason, end = (line.split("|") + [""] * 6)[:6]
            info = JobInfo(job_id=job_id, state=(state.split() or ["UNKNOWN"])[0],
                           node="" if node in ("None assigned", "(null)") else node,
                           exit_code=exit_code, reason=reason,
                           end_time="" if end in ("Unknown", "None") else end)
            # Until the job's end is in the database its state and exit code may be stale.
            if job_id in ids and info.finished and info.end_time:
                records[job_id] = info
        return records

    async def _controller_records(self, ids: list[str]) -> dict[str, JobInfo]:
        """The controller's records of these jobs, ended ones included (``squeue -t all``)."""
        argv = [self._bin("squeue"), "-h", "-t", "all", "-j", ",".join(ids), "-O", RECORD_FORMAT]
        result = await run_argv(argv, env=self.env, timeout=self.timeout)
        if result.returncode != 0:
            if "Invalid job id specified" in result.stderr:
                return {}
            raise SchedulerUnavailable(result.stderr.strip() or "squeue failed")
        wanted = set(ids)
        records = {}
        for line in result.stdout.splitlines():
            info = parse_job_record(line)
            if info and info.job_id in wanted:
                records[info.job_id] = info
        return records

    async def job_record(self, job_id: str) -> JobInfo | None:
        """How a job ended (or when it will end), from the controller's record (kept MinJobAge
        seconds after the end)."""
        return (await self._controller_records([check_job_id(job_id)])).get(job_id)

    async def node_address(self, node: str) -> str:
        """The address the hub reaches ``node`` at: its ``NodeAddr`` in slurm.conf (``sinfo %o``;
        the node's name itself where the site leaves NodeAddr unset and DNS resolves it)."""
        argv = [self._bin("sinfo"), "-h", "-N", "-n", node, "-o", "%N|%o"]
        result = await run_argv(argv, env=self.env, timeout=self.timeout)
        if result.returncode != 0:
            raise SchedulerUnavailable(result.stderr.strip() or "sinfo failed")
        for line in result.stdout.splitlines():
            name, _, address = line.strip().partition("|")
            if name == node and NODE_ADDRESS.fullmatch(address):
                return address
        raise SchedulerUnavailable(f"sinfo gave no address for node {node!r}")

    async def tail_file(self, username: str, path: str, lines: int = 30) -> str:
        """The last lines of a file the user owns (job logs live in their home)."""
        argv = self.as_user(username, ["/usr/bin/tail", "-n", str(int(lines)), "--", path])
        result = await run_argv(argv, env=self.env, timeout=self.timeout)
        return result.stdout if result.returncode == 0 else ""

    async def make_user_dir(self, username: str, path: str) -> None:
        argv = self.as_user(username, ["/usr/bin/mkdir", "-p", "-m", "0700", "--", path])
        result = await run_argv(argv, env=self.env, timeout=self.timeout)
        if result.returncode != 0:
            raise SubmitError(f"cannot create {path} as {username}: {result.stderr.strip()}")


def parse_squeue_line(line: str) -> JobInfo:
    job_id, state, node, start, reason = (line.strip().split("|", 4) + [""] * 5)[:5]
    return JobInfo(
        job_id=job_id,
        state=state,
        node="" if node in ("n/a", "(null)") else node,
        start_time="" if start in ("N/A", "Unknown", "(null)") else start,
        reason=reason,
    )


# The controller's record of a job, as ``squeue -t all -O`` prints it.  Only fields that Slurm
# itself writes, in fixed-width columns, the reason (which may hold spaces) last: a job's name,
# comment or output path, which its owner chooses, never reach this parser.  ``scontrol show
# job`` was parsed before, where a comment such as "x\nJobId=<another user's job>
# JobState=FAILED" made a record for someone else's session.
RECORD_FIELDS = (("JobID", 24), ("State", 24), ("BatchHost", 64), ("EndTime", 24), ("exit_code", 12),
                 ("Reason", 0))
RECORD_FORMAT = ",".join(f"{name}:{width}" if width else name for name, width in RECORD_FIELDS)
_RECORD_LINE = re.compile(r"^([0-9]+) +([A-Z_]+) +(\S+) +(\S+) +([0-9]+) +(.*?)\s*$")


def _exit_code(status: str) -> str:
    """squeue's raw wait status as Slurm's ``exit:signal`` (768 -> 3:0, 9 -> 0:9)."""
    value = int(status)
    return f"{value >> 8}:{value & 0x7F}"


def parse_job_record(line: str) -> JobInfo | None:
    """One line of ``squeue -h -t all -O RECORD_FORMAT``; None for anything else."""
    m = _RECORD_LINE.match(line)
    if m is None:
        return None
    job_id, state, node, end, status, reason = m.groups()
    return JobInfo(
        job_id=job_id,
        state=state,
        node="" if node in ("n/a", "(null)") else node,
        reason=reason,
        exit_code=_exit_code(status),
        end_time="" if end in ("N/A", "Unknown", "None", "(null)") else end,
    )
