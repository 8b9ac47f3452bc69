"""The hub's spawner: a JupyterLab session as a Slurm job, from a profile.

Built on JupyterHub's own ``Spawner``, not on batchspawner.  This spawner was a batchspawner
1.3.0 ``SlurmSpawner`` that replaced nine of its methods and its script template; what it
still took from it was the job id kept in the hub's state (``get_state``/``load_state``/
``clear_state``, about twenty lines), ``poll`` (six) and ``stop`` (fifteen), while it carried
about thirty settings (``req_*``, ``exec_prefix``, ``batch_*_cmd``, ``state_*_re``...) that a
site could set with no effect, and a shell command runner it never used.  Those few lines are
here instead, with the same state keys (``job_id``, ``job_status``), so sessions started
before the change are still found after the hub restarts with it.  Settings meant for
batchspawner are refused when the spawner is built (:func:`inapplicable_settings`).

What the spawner does, and why:

* options are checked against the site's profiles and the user's own Slurm
  associations and reservations on the server
  (:func:`bioimage_gateway.session_request.resolve_request`) and only the
  checked integers, the site's own names and names Slurm gave for the user
  reach the job script;
* commands run from argv lists through ``sudo -u USER`` with an explicit list
  of variables, never a shell and never ``sudo -E``;
* one poller per hub asks Slurm about every session in one squeue per interval
  (:class:`~.shared.SharedServices`, made once by ``configure_hub``);
* starting watches the job every start poll interval until the session reports its
  port, so a job that dies at start fails the spawn at once with Slurm's
  state/reason and the tail of the job log;
* nodes are shared, so a reported port is routed to only once the server there
  proves it holds the session's own token (a challenge, ``session_proof``);
  a server that cannot fails the spawn and the job is cancelled;
* a start that fails in any way, or is given up on, cancels its job: none is left behind;
* a scheduler that does not answer is "unknown", never "job gone", so a
  restarting slurmctld does not stop running sessions.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import json
import pwd
import re
import secrets
import shlex
import time
from importlib import resources

from jinja2 import Environment, StrictUndefined
from jupyterhub.spawner import Spawner
from jupyterhub.utils import fmt_ip_url
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httputil import url_concat
from traitlets import Any, Bool, Instance, Unicode, default

from bioimage_gateway.extensions import session_proof
from bioimage_gateway.session_request import (
    InvalidRequest,
    SessionRequest,
    allowed_profiles,
    effective_limits,
    resolve_request,
)
from bioimage_gateway.settings import GatewaySettings
from bioimage_gateway.slurm import JobInfo, SchedulerUnavailable, SubmitError, check_username

from . import sudoers as hub_sudoers
from .cluster_info import ClusterInfo
from .form import render_options_form
from .poller import QueuePoller
from .shared import SharedServices

_SAFE_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_TEMPLATES = Environment(autoescape=False, undefined=StrictUndefined, keep_trailing_newline=True)
# How long stop() waits for Slurm to list a cancelled job as ended (batchspawner's 10 s).
STOP_WAIT_SECONDS = 10


@functools.cache
def _template(name: str):
    text = resources.files(__package__).joinpath("templates", name).read_text()
    return _TEMPLATES.from_string(text)


class SessionStartError(RuntimeError):
    """The session's job could not start.  The spawn page shows the message and ``for_user``
    after it (the job log's last lines); the hub's log (which JupyterHub writes from ``str()``)
    gets the message alone."""

    def __init__(self, message: str, for_user: str = ""):
        super().__init__(message)
        self.jupyterhub_message = f"{message}\n{for_user}" if for_user else message


class InapplicableSettings(ValueError):
    """The hub's configuration sets something this spawner would silently ignore."""


def refuse(exc: InvalidRequest) -> web.HTTPError:
    error = web.HTTPError(400, log_message=str(exc))
    error.jupyterhub_message = f"Not started: {exc}"
    return error


class JobState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    GONE = "gone"  # left the queue (or never submitted)
    UNKNOWN = "unknown"  # Slurm did not answer: never read as gone


# batchspawner's spawner classes: their configuration sections were read by this spawner
# while it was one of them, and did nothing.
BATCHSPAWNER_SECTIONS = ("BatchSpawnerBase", "BatchSpawnerRegexStates", "SlurmSpawner")
# JupyterHub's settings the session decides itself.
NOT_SETTABLE = {
    "ip": "a session listens on its node's address (session.listen_ip in gateway.yaml)",
    "port": "a session listens on a port its node's kernel picks, and reports it",
}


def inapplicable_settings(config, traits) -> list[str]:
    """The settings in a hub's configuration (a traitlets Config) that GatewaySpawner, whose
    configurable traits are ``traits``, would ignore: batchspawner's, names it does not
    have, and those in :data:`NOT_SETTABLE`."""
    found = []
    for section in BATCHSPAWNER_SECTIONS:
        if section in config:
            found += [f"c.{section}.{key} (batchspawner's)" for key in config[section]]
    for section in ("Spawner", "GatewaySpawner"):
        if section not in config:
            continue
        for key in config[section]:
            if key in NOT_SETTABLE:
                found.append(f"c.{section}.{key} ({NOT_SETTABLE[key]})")
            elif key not in traits and not key[:1].isupper():
                found.append(f"c.{section}.{key} (no such setting)")
    return found


class GatewaySpawner(Spawner):
    """Start a user's JupyterLab as a Slurm job chosen from the site's profiles."""

    shared = Instance(
        SharedServices, allow_none=True,
        help="The hub's settings, Slurm client, queue poller and cluster-info cache "
        "(one per hub; set by configure_hub).",
    ).tag(config=True)

    launcher = Unicode(
        help="Job-side command that starts the server and reports its port to the hub."
    ).tag(config=True)

    pass_access_token = Bool(
        False, help="Hand the user's OIDC access token to the session (site opt-in)."
    ).tag(config=True)

    # Kept in the hub's database (get_state), under batchspawner's keys.
    job_id = Unicode()
    job_status = Unicode()
    # The queue's last answer about the job (not kept).
    job_info = Any(None, allow_none=True)

    log_tail_lines = 30
    _access_token: str | None = None
    _request: SessionRequest | None = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        ignored = inapplicable_settings(self.config, set(self.trait_names(config=True)))
        if ignored:
            raise InapplicableSettings(
                "BioImage Gateway: the hub's configuration sets what its spawner "
                f"(GatewaySpawner, not batchspawner's) would ignore: {'; '.join(ignored)}. "
                "A session's resources, partition and account come from the profiles in "
                "gateway.yaml; remove these settings.")
        if self.shared is None:
            raise InapplicableSettings("BioImage Gateway: GatewaySpawner has no "
                                       "c.GatewaySpawner.shared (configure_hub sets it)")

    @default("launcher")
    def _default_launcher(self):
        return str(self.site.session.environment / "bin" / "bioimage-gateway-session")

    @default("cmd")
    def _default_cmd(self):
        return [str(self.site.session.environment / "bin" / "jupyterhub-singleuser")]

    @property
    def site(self) -> GatewaySettings:
        return self.shared.settings

    @property
    def slurm(self):
        return self.shared.slurm

    @property
    def poller(self) -> QueuePoller:
        return self.shared.poller

    @property
    def cluster_info(self) -> ClusterInfo:
        return self.shared.cluster_info

    def _groups(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", [])]

    # ---- the form -------------------------------------------------------

    @default("options_form")
    def _default_options_form(self):
        return self._render_form

    def _render_form(self, spawner: "GatewaySpawner") -> str:
        groups = self._groups()
        return render_options_form(
            allowed_profiles(self.site, groups),
            effective_limits(self.site, groups),
            # Cached; a stale answer is refreshed in the background, never awaited.
            self.cluster_info.snapshot(self.user.name),
        )

    async def _resolve(self, options) -> SessionRequest:
        # The user's associations and reservations as Slurm has them now (cached for the TTL).
        access = await self.cluster_info.access(self.user.name)
        try:
            return resolve_request(self.site, self._groups(), options, access)
        except InvalidRequest as exc:
            raise refuse(exc) from None

    async def options_from_form(self, formdata):
        # Reject here so the form comes back with the message and nothing is queued;
        # start() checks again for options that arrive through the REST API.
        # The hub's own XSRF field travels with the form; it is not an option.
        options = {k: v for k, v in formdata.items() if k != "_xsrf"}
        return (await self._resolve(options)).as_options()

    async def session_request(self) -> SessionRequest:
        """The checked request this spawn submits; the session's environment describes it."""
        self._request = await self._resolve(self.user_options or {})
        return self._request

    # ---- what the job gets ------------------------------------------------

    async def run_auth_state_hook(self, auth_state):
        # Refreshed just before spawn (refresh_pre_spawn), so the token is current.
        if self.pass_access_token:
            self._access_token = (auth_state or {}).get("access_token")
        await super().run_auth_state_hook(auth_state)

    def get_env(self):
        env = super().get_env()
        if self._access_token:
            env["BIOIMAGE_GATEWAY_ACCESS_TOKEN"] = self._access_token
        env["SLURM_CONF"] = str(self.site.slurm.conf)
        env.update(self._session_context_env())
        if self.site.session.listen_ip:  # a network: the job listens on its address there
            env["BIOIMAGE_GATEWAY_LISTEN_NETWORK"] = self.site.session.listen_ip
        # The hub's own PATH and virtualenv stay in the hub: the job starts with sudo's
        # secure_path, and the job script puts the session environment first.
        env.pop("PATH", None)
        return env

    def _session_context_env(self) -> dict[str, str]:
        """What code in the session needs to know of it: the profile, the checked Slurm
        names it is charged to and the user's groups (defaults and limits of Dask clusters,
        see bioimage_gateway.dask_clusters), and the dashboard link through the proxy."""
        env = {}
        request = self._request
        if request is not None:
            env["BIOIMAGE_GATEWAY_PROFILE"] = request.profile.slug
            env["BIOIMAGE_GATEWAY_PARTITION"] = request.profile.partition
            for key, name in vars(request.charge).items():
                if name:
                    env[f"BIOIMAGE_GATEWAY_{key.upper()}"] = name
        # Group names are validated by the settings model and the IdP claim filter.
        groups = sorted(g for g in self._groups() if _SAFE_NAME.fullmatch(g))
        env["BIOIMAGE_GATEWAY_GROUPS"] = ",".join(groups)
        if self.site.catalogs.omero_url:
            env["BIOIMAGE_GATEWAY_OMERO_URL"] = str(self.site.catalogs.omero_url)
        env["BIOIMAGE_GATEWAY_DASK_LIMITS"] = self.site.dask.limits_for(groups).model_dump_json()
        # The staging section with {user} and {scratch_root} filled in (bioimage_gateway.staging).
        env["BIOIMAGE_GATEWAY_STAGING"] = self.site.staging.for_user(
            self.user.name, self.site.scratch_root
        ).model_dump_json()
        env["DASK_DISTRIBUTED__DASHBOARD__LINK"] = "{JUPYTERHUB_SERVICE_PREFIX}proxy/{port}/status"
        env["BIOIMAGE_GATEWAY_WALLTIME_WARNING_MINUTES"] = str(
            self.site.session.walltime_warning_minutes
        )
        return env

    def _log_path(self, home: str) -> str:
        return f"{home}/{self.site.session.log_dir}/jupyter-session-%j.log"

    def job_script(self, request: SessionRequest, env_names: list[str]) -> str:
        unix_user = pwd.getpwnam(check_username(self.user.name))
        profile, charge = request.profile, request.charge
        session_env = self.site.session.environment
        command = [self.launcher, *self.cmd, *self.get_args()]
        return _template("session.sh.j2").render(
            username=unix_user.pw_name,
            home=unix_user.pw_dir,
            log_path=self._log_path(unix_user.pw_dir),
            log_dir=shlex.quote(f"{unix_user.pw_dir}/{self.site.session.log_dir}"),
            export=",".join(sorted(env_names)),
            partition=profile.partition,
            account=charge.account,
            qos=charge.qos,
            reservation=charge.reservation,
            cpus=request.cpus,
            memory_gb=request.memory_gb,
            gpus=request.gpus,
            walltime=request.walltime,
            profile=profile.slug,
            prologue=self.site.session.prologue,
            env_bin=shlex.quote(str(session_env / "bin")),
            command=" ".join(shlex.quote(part) for part in command),
        )

    def sudo_environment(self) -> dict[str, str]:
        """What reaches the job through ``sudo -u USER sbatch``: the spawner's environment, less
        what the hub account's sudo rules do not keep (sudo would refuse the whole command)."""
        env = self.get_env()
        passed = {name: value for name, value in env.items() if hub_sudoers.kept(name)}
        dropped = sorted(set(env) - set(passed) - hub_sudoers.SET_BY_SUDO)
        if dropped:
            self.log.warning("Not passed to %s's session (not kept by the sudo rules): %s",
                             self.user.name, ", ".join(dropped))
        return passed

    # ---- the job --------------------------------------------------------

    async def submit_job(self) -> str:
        request = await self.session_request()
        self._check_session_count()
        env = self.sudo_environment()
        home = pwd.getpwnam(self.user.name).pw_dir
        await self.slurm.make_user_dir(self.user.name, f"{home}/{self.site.session.log_dir}")
        # PATH is sudo's secure_path; the script puts the session environment first.
        script = self.job_script(request, [*env, "PATH"])
        self.log.info(
            "Submitting %s session for %s: %s", request.profile.slug, self.user.name,
            request.as_options(),
        )
        submission = asyncio.ensure_future(self.slurm.submit(self.user.name, script, env))
        try:
            self.job_id = await asyncio.shield(submission)
        except SubmitError as exc:
            raise SessionStartError(f"Slurm refused the session: {exc}") from None
        except asyncio.CancelledError:
            # Given up on (start_timeout) while sbatch ran: the job may be queued already.
            # Let sbatch answer, so that start() cancels the job it made.
            try:
                self.job_id = await submission
            except Exception:  # noqa: BLE001 - no job id, nothing to cancel
                pass
            raise
        self.log.info("Session of %s is Slurm job %s", self.user.name, self.job_id)
        return self.job_id

    def _check_session_count(self):
        limit = effective_limits(self.site, self._groups()).max_sessions
        others = [
            s for s in self.user.spawners.values() if s is not self and (s.active or s.ready)
        ]
        if len(others) >= limit:
            error = web.HTTPError(403, log_message="session limit")
            error.jupyterhub_message = (
                f"Not started: you already have {len(others)} session(s) running, "
                f"the limit for your groups is {limit}"
            )
            raise error

    def get_state(self):
        state = super().get_state()
        if self.job_id:
            state["job_id"] = self.job_id
        if self.job_status:
            state["job_status"] = self.job_status
        return state

    def load_state(self, state):
        super().load_state(state)
        self.job_id = state.get("job_id", "")
        self.job_status = state.get("job_status", "")

    def clear_state(self):
        if self.job_id:
            self.poller.unwatch(self.job_id)
        super().clear_state()
        self.job_id = ""
        self.job_status = ""
        self.job_info = None

    async def job_state(self) -> JobState:
        """The job as the hub's shared poller last saw it (no scheduler call of its own)."""
        if not self.job_id:
            self.job_status = ""
            return JobState.GONE
        poller = self.poller
        if self.job_id not in poller.watched:
            poller.watch(self.job_id)
            await poller.next_answer()
        where, info = poller.status(self.job_id)
        if where == "unknown":
            return JobState.UNKNOWN
        self.job_info = info
        if where == "ended":
            self.job_status = ""
            return JobState.GONE
        self.job_status = f"{info.state} {info.node}".strip()
        if info.running:
            return JobState.RUNNING
        if info.pending:
            return JobState.PENDING
        return JobState.GONE

    async def poll(self):
        """None while the job is queued, running or Slurm does not answer; 1 once it is gone."""
        if await self.job_state() is JobState.GONE:
            self.clear_state()
            return 1
        return None

    async def cancel_job(self):
        if self.job_id:
            self.log.info("Cancelling Slurm job %s of %s", self.job_id, self.user.name)
            await self.slurm.cancel(self.user.name, self.job_id)

    async def stop(self, now=False):
        """Cancel the job; unless ``now``, wait (a while) until Slurm no longer runs it."""
        job_id = self.job_id
        if not job_id:
            return
        await self.cancel_job()
        if now:
            return
        poller = self.poller
        poller.watch(job_id, waiting=True)  # the user waits: ask at the start interval
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        try:
            while time.monotonic() < deadline:
                # Only answers from after the cancel count.
                await poller.next_answer(timeout=max(0.1, deadline - time.monotonic()))
                if await self.job_state() not in (JobState.RUNNING, JobState.UNKNOWN):
                    return
        finally:
            poller.done_waiting(job_id)
        self.log.warning("Slurm job %s of %s still runs %d s after it was cancelled",
                         job_id, self.user.name, STOP_WAIT_SECONDS)

    async def _failure(self, summary: str) -> SessionStartError:
        """Describe how the job ended, with the tail of its log."""
        job_id = self.job_id
        record = self.job_info if self.job_info and self.job_info.finished else None
        if record is None:
            try:
                record = await self.slurm.job_record(job_id)
            except SchedulerUnavailable:
                pass
        how = record.describe() if record else "it left the queue"
        # The path the job script gave the job (--output), not one read back from Slurm.
        log_path = self._log_path(pwd.getpwnam(self.user.name).pw_dir).replace("%j", job_id)
        tail = await self.slurm.tail_file(self.user.name, log_path, self.log_tail_lines)
        message = f"{summary}: Slurm job {job_id} ended ({how})."
        # The hub's log names the job and how it ended; the log's lines are the user's (their
        # code's output, perhaps their data's names) and go to the user's page only.
        self.log.warning("Session of %s failed to start: %s (log: %s)", self.user.name, message, log_path)
        if tail.strip():
            return SessionStartError(message, f"Last lines of {log_path}:\n{tail.rstrip()}")
        return SessionStartError(message, f"The job wrote no log at {log_path}.")

    async def start(self):
        # The job finds where it listens (session_launcher: the node's own address) and
        # reports the port; the hub reaches it at the node's address from Slurm.
        self.ip = ""
        self.port = 0
        self.job_info = None
        if self.server:
            self.server.port = self.port
        try:
            await self.submit_job()
            return await self._wait_for_session()
        except BaseException:
            # Refused, timed out, cancelled or failed: leave no job behind.
            try:
                await self.cancel_job()
            except Exception as exc:  # noqa: BLE001
                self.log.error("Could not cancel job %s: %s", self.job_id, exc)
            raise

    async def _wait_for_session(self):
        self.poller.watch(self.job_id, waiting=True)
        try:
            return await self._poll_until_up()
        finally:
            self.poller.done_waiting(self.job_id)

    async def _node_address(self, node: str) -> str:
        for attempt in range(3):
            try:
                return await self.slurm.node_address(node)
            except SchedulerUnavailable:
                if attempt == 2:
                    raise SessionStartError(f"Slurm did not say where node {node} is") from None
                await self.poller.next_answer()

    async def _poll_until_up(self):
        while True:
            state = await self.job_state()
            if state is JobState.GONE:
                failure = await self._failure("The session did not start")
                self.clear_state()
                raise failure
            if state is JobState.RUNNING and self.port:
                break
            await self.poller.next_answer()
        # The node's address on the cluster network (NodeAddr), where the proxy reaches it.
        self.ip = await self._node_address(self.job_info.node)
        await self._check_identity()
        self.log.info(
            "Session of %s (job %s) is up at %s:%s", self.user.name, self.job_id, self.ip, self.port
        )
        return self.ip, self.port

    async def _check_identity(self):
        """The server at the reported port must prove it is this session before anything is
        routed to it: another user on the node may listen there (session_proof)."""
        where = f"{self.ip}:{self.port}"
        challenge = secrets.token_urlsafe(32)
        url = url_concat(f"http://{fmt_ip_url(self.ip)}:{self.port}"
                         f"{self.server.base_url}{session_proof.PATH}", {"challenge": challenge})
        # No credential goes with it: what answers may not be the session.
        request = HTTPRequest(url, request_timeout=min(30, self.http_timeout),
                              follow_redirects=False)
        try:
            response = await AsyncHTTPClient().fetch(request, raise_error=False)
        except Exception as exc:  # noqa: BLE001 - unreachable in any way: not proven
            answer, answered = None, f"no answer ({exc})"
        else:
            answer = _proof_in(response)
            answered = f"HTTP {response.code}, " + ("a wrong proof" if answer else "no proof")
        expected = session_proof.proof(self.api_token, user=self.user.name,
                                       server_name=self.name, port=self.port, challenge=challenge)
        if session_proof.matches(expected, answer):
            return
        self.log.warning("Session of %s (job %s): the server at %s is not the session's (%s)",
                         self.user.name, self.job_id, where, answered)
        raise SessionStartError(
            f"The session did not start: the server on port {self.port} of its node "
            f"({self.job_info.node}) could not prove it is this session ({answered}); "
            f"nothing was routed to it, and Slurm job {self.job_id} is cancelled.")

    async def progress(self):
        last = None
        while True:
            info: JobInfo | None = self.job_info
            message = self._progress_message(info)
            if message != last:
                yield {"message": message}
                last = message
            if info is not None and info.running and self.port:
                return
            await asyncio.sleep(min(1.0, self.poller.interval))

    def _progress_message(self, info: JobInfo | None) -> str:
        if not self.job_id:
            return "Submitting the session to Slurm..."
        if info is None:
            return f"Slurm job {self.job_id} submitted; waiting for the scheduler..."
        if info.pending:
            text = f"Slurm job {self.job_id} is {info.state.lower()}"
            if info.reason and info.reason != "None":
                text += f" (reason: {info.reason})"
            if info.start_time:
                text += f"; expected start {info.start_time}"
            return text
        if info.running:
            return f"Slurm job {self.job_id} is running on {info.node}; starting JupyterLab..."
        return f"Slurm job {self.job_id} is {info.state.lower()}"


def _proof_in(response) -> str | None:
    if response.code != 200:
        return None
    try:
        answer = json.loads(response.body)
    except ValueError:
        return None
    return answer.get("proof") if isinstance(answer, dict) else None
