"""The spawner's decisions without a cluster: what it does when the scheduler says a job is
pending, running, gone or says nothing; that a start which fails in any way leaves no job
behind; that sessions started before an upgrade are found by their saved state; that the hub's
shared poller is one per hub; and that settings it would ignore are refused.

The scheduler here is :class:`ScriptedSlurm`, an object with SlurmClient's methods whose
queue the tests set, given to the spawner the way the hub gives it the real client
(``SharedServices(settings, slurm=...)`` in ``c.GatewaySpawner.shared``).  The server a session
reports is a real HTTP server on loopback that answers the hub's identity challenge.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from importlib import resources
from types import SimpleNamespace

import pytest
import yaml
from jupyterhub.objects import Hub, Server
from tornado import httpserver, netutil, web
from traitlets.config import Config

from bioimage_gateway.extensions import session_proof
from bioimage_gateway.hub_config.shared import SharedServices
from bioimage_gateway.hub_config.spawner import (
    GatewaySpawner,
    InapplicableSettings,
    JobState,
    SessionStartError,
)
from bioimage_gateway.settings import parse_settings
from bioimage_gateway.slurm import JobInfo, SchedulerUnavailable, SubmitError

EXAMPLE = resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml")
# Jobs are submitted as the user the spawner starts sessions for: an account of this machine.
USER = pwd.getpwuid(os.getuid()).pw_name
TOKEN = "session-token-of-the-test"
WAIT = 10  # seconds any condition below may take


def site_settings(tmp_path, poll_interval=0.05, start_poll_interval=0.02):
    data = yaml.safe_load(EXAMPLE.read_text())
    data.pop("auth")
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=site\n")
    data["slurm"].update(conf=str(conf), bin_dir=str(tmp_path / "no-slurm-commands"),
                         poll_interval=poll_interval, start_poll_interval=start_poll_interval)
    data["session"] = {"environment": str(tmp_path / "session-env")}
    return parse_settings(data)


class ScriptedSlurm:
    """SlurmClient's methods over a queue the test sets: ``queue`` (job id -> JobInfo) is
    what squeue lists, ``records`` how jobs that left it ended; ``down`` makes every query
    fail as an unreachable slurmctld does."""

    def __init__(self, tmp_path):
        self.conf = tmp_path / "slurm.conf"
        self.bin_dir = tmp_path / "no-slurm-commands"  # the cluster-info queries find nothing
        self.env = {"SLURM_CONF": str(self.conf), "PATH": "/usr/bin:/bin"}
        self.queue: dict[str, JobInfo] = {}
        self.records: dict[str, JobInfo] = {}
        self.down = False
        self.log_tail = ""
        self.refuse_with: str | None = None
        self.hold_submit: asyncio.Event | None = None  # set: sbatch answers
        self.submitting = False
        self.next_id = 101
        self.submitted: list[tuple[str, str, dict]] = []
        self.cancelled: list[str] = []
        self.queries: list[set[str]] = []

    def set(self, job_id: str, state: str, node: str = "", reason: str = "") -> None:
        self.queue[job_id] = JobInfo(job_id, state, node=node, reason=reason)

    def end(self, job_id: str, state: str, exit_code: str = "0:0") -> None:
        self.queue.pop(job_id, None)
        self.records[job_id] = JobInfo(job_id, state, exit_code=exit_code, end_time="now")

    async def make_user_dir(self, username, path):
        pass

    async def submit(self, username, script, env):
        if self.refuse_with:
            raise SubmitError(self.refuse_with)
        self.submitting = True
        if self.hold_submit is not None:
            await self.hold_submit.wait()
        job_id = str(self.next_id)
        self.next_id += 1
        self.submitted.append((username, script, dict(env)))
        self.set(job_id, "PENDING", reason="Priority")
        return job_id

    async def cancel(self, username, job_id):
        if self.down:
            raise SchedulerUnavailable("slurm_load_jobs error: Unable to contact slurm controller")
        self.cancelled.append(job_id)
        if job_id in self.queue:
            self.end(job_id, "CANCELLED")

    async def jobs(self, job_ids):
        if self.down:
            raise SchedulerUnavailable("slurm_load_jobs error: Unable to contact slurm controller")
        self.queries.append(set(job_ids))
        return {j: self.queue[j] for j in job_ids if j in self.queue}

    async def job_records(self, job_ids):
        return {j: self.records[j] for j in job_ids if j in self.records}

    async def job_record(self, job_id):
        return self.records.get(job_id)

    async def node_address(self, node):
        return "127.0.0.1"

    async def tail_file(self, username, path, lines=30):
        return self.log_tail


def a_spawner(shared: SharedServices, config: Config | None = None, **options) -> GatewaySpawner:
    config = config or Config()
    config.GatewaySpawner.shared = shared
    user = SimpleNamespace(name=USER, escaped_name=USER, url=f"/user/{USER}/", spawners={},
                           groups=[SimpleNamespace(name="imaging")])
    spawner = GatewaySpawner(config=config, user=user, api_token=TOKEN,
                             hub=Hub(ip="127.0.0.1", port=8081, base_url="/hub/"),
                             user_options={"profile": "cpu", **options})
    spawner.server = Server(base_url=f"/user/{USER}/")
    user.spawners[""] = spawner
    return spawner


class IdentityHandler(web.RequestHandler):
    """What a session's server answers the hub's challenge (extensions/session_identity.py),
    under the token it was given."""

    def get(self, _path):
        challenge = self.get_argument("challenge")
        port = self.settings["port"]()
        self.finish({"proof": session_proof.proof(self.settings["token"], user=USER,
                                                  server_name="", port=port,
                                                  challenge=challenge)})


def a_server(token: str) -> tuple[httpserver.HTTPServer, int]:
    """A server on a free loopback port that proves it holds ``token``."""
    [sock] = netutil.bind_sockets(0, "127.0.0.1")
    port = sock.getsockname()[1]
    app = web.Application([(r"(.*)", IdentityHandler)], token=token, port=lambda: port)
    server = httpserver.HTTPServer(app)
    server.add_sockets([sock])
    return server, port


async def until(condition, what: str):
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.01)


async def run_until_running(slurm, spawner, port: int) -> tuple[str, int]:
    """Start; the job runs on node1 and the session there reports ``port``."""
    start = asyncio.ensure_future(spawner.start())
    await until(lambda: spawner.job_id, "the job was submitted")
    slurm.set(spawner.job_id, "RUNNING", node="node1")
    await until(lambda: spawner.job_info and spawner.job_info.running, "the hub saw it running")
    spawner.port = port  # what the port API does when the session reports it
    return await start


@pytest.fixture
def slurm(tmp_path):
    return ScriptedSlurm(tmp_path)


@pytest.fixture
def shared(tmp_path, slurm):
    return SharedServices(site_settings(tmp_path), slurm=slurm)


# --- starting --------------------------------------------------------------------------------

def test_a_session_starts_once_its_job_runs_and_its_server_proves_it_is_the_session(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared)
        server, port = a_server(TOKEN)
        try:
            start = asyncio.ensure_future(spawner.start())
            await until(lambda: spawner.job_info and spawner.job_info.pending, "seen pending")
            # Pending: still starting, and the page says why.
            assert not start.done()
            assert "is pending (reason: Priority)" in spawner._progress_message(spawner.job_info)
            slurm.set(spawner.job_id, "RUNNING", node="node1")
            await until(lambda: spawner.job_info.running, "seen running")
            # Running, but no port reported yet: not up.
            await shared.poller.next_answer()
            assert not start.done()
            spawner.port = port
            return await start, spawner
        finally:
            server.stop()

    (ip, port), spawner = asyncio.run(scenario())
    assert (ip, port) == ("127.0.0.1", spawner.port)
    assert slurm.cancelled == []
    # The job id is kept in the hub's database, under batchspawner's keys.
    assert spawner.get_state() == {"job_id": "101", "job_status": "RUNNING node1"}
    # What was submitted: the checked profile, as the user, with the session's token.
    username, script, env = slurm.submitted[0]
    assert username == USER and "#SBATCH --partition=interactive" in script
    assert env["JUPYTERHUB_API_TOKEN"] == TOKEN and "PATH" not in env


def test_a_job_that_ends_before_its_port_fails_the_start_with_how_and_its_log(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared)
        slurm.log_tail = "module load failed: no such module microscopy/9.9\n"
        start = asyncio.ensure_future(spawner.start())
        await until(lambda: spawner.job_id, "submitted")
        slurm.end(spawner.job_id, "FAILED", exit_code="3:0")
        with pytest.raises(SessionStartError) as failed:
            await start
        return spawner, failed.value

    spawner, error = asyncio.run(scenario())
    assert "Slurm job 101 ended (FAILED, exit code 3:0)" in str(error)
    assert "no such module microscopy/9.9" in error.jupyterhub_message
    assert "no such module" not in str(error)  # the user's log lines are not the hub's
    # Gone: nothing to cancel, nothing kept.
    assert slurm.cancelled == [] and spawner.get_state() == {}


def test_a_scheduler_that_does_not_answer_is_waited_out_not_read_as_the_job_ending(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared)
        server, port = a_server(TOKEN)
        try:
            start = asyncio.ensure_future(spawner.start())
            await until(lambda: spawner.job_info, "seen pending")
            slurm.down = True
            calls = shared.poller.calls
            await until(lambda: shared.poller.calls >= calls + 3, "three failed queries")
            assert await spawner.job_state() is JobState.UNKNOWN
            assert not start.done()
            slurm.down = False
            slurm.set(spawner.job_id, "RUNNING", node="node1")
            await until(lambda: spawner.job_info.running, "seen running")
            spawner.port = port
            return await start
        finally:
            server.stop()

    assert asyncio.run(scenario())[0] == "127.0.0.1"
    assert slurm.cancelled == []


@pytest.mark.parametrize("answer", ["wrong token", "nothing listens"])
def test_a_server_that_cannot_prove_it_is_the_session_fails_the_start_and_the_job_is_cancelled(
        slurm, shared, answer):
    async def scenario():
        spawner = a_spawner(shared)
        # Another user's server on the node, which does not hold the session's token...
        server, port = a_server("another users token")
        if answer == "nothing listens":  # ...or a port where nothing listens any more
            server.stop()
            await server.close_all_connections()
        try:
            with pytest.raises(SessionStartError) as failed:
                await run_until_running(slurm, spawner, port)
        finally:
            server.stop()
        return spawner, failed.value

    spawner, error = asyncio.run(scenario())
    assert "could not prove it is this session" in str(error)
    assert "nothing was routed to it, and Slurm job 101 is cancelled" in str(error)
    assert slurm.cancelled == ["101"]


def test_refused_options_submit_nothing(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared, cpus="999")
        with pytest.raises(Exception) as refused:
            await spawner.start()
        return refused.value

    error = asyncio.run(scenario())
    assert error.jupyterhub_message == "Not started: CPUs: 999 is more than the 16 allowed for CPU"
    assert slurm.submitted == [] and slurm.cancelled == []


def test_sbatch_refusing_the_job_is_reported_with_slurms_words(slurm, shared):
    slurm.refuse_with = "sbatch: error: Batch job submission failed: Invalid account"
    with pytest.raises(SessionStartError, match="Slurm refused the session: .*Invalid account"):
        asyncio.run(a_spawner(shared).start())
    assert slurm.cancelled == []


def test_a_start_given_up_on_while_pending_cancels_its_job(slurm, shared):
    """JupyterHub's start_timeout cancels start() (asyncio.wait_for)."""
    async def scenario():
        spawner = a_spawner(shared)
        start = asyncio.ensure_future(spawner.start())
        await until(lambda: spawner.job_info, "seen pending")
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start

    asyncio.run(scenario())
    assert slurm.cancelled == ["101"]


def test_a_start_given_up_on_while_sbatch_runs_cancels_the_job_sbatch_then_made(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared)
        slurm.hold_submit = asyncio.Event()
        start = asyncio.ensure_future(spawner.start())
        await until(lambda: slurm.submitting, "sbatch runs")
        start.cancel()
        await asyncio.sleep(0)  # the cancellation reaches start() while sbatch still runs
        assert not start.done()
        slurm.hold_submit.set()  # sbatch queued the job after all
        with pytest.raises(asyncio.CancelledError):
            await start

    asyncio.run(scenario())
    assert slurm.cancelled == ["101"]


def test_a_failed_cancel_after_a_failed_start_is_left_for_stop_to_try_again(slurm, shared):
    """The scheduler is away when a start is given up on: the job id stays, so the hub's
    cleanup (stop) cancels it."""
    async def scenario():
        spawner = a_spawner(shared)
        start = asyncio.ensure_future(spawner.start())
        await until(lambda: spawner.job_info, "seen pending")
        slurm.down = True
        start.cancel()
        with pytest.raises(asyncio.CancelledError):
            await start
        assert spawner.job_id == "101" and slurm.cancelled == []
        slurm.down = False
        await spawner.stop()
        return spawner

    spawner = asyncio.run(scenario())
    assert slurm.cancelled == ["101"]
    assert "101" in spawner.poller.ended  # stop waited until Slurm no longer listed it


# --- running: poll, stop, restart --------------------------------------------------------------

def test_poll_reads_queued_running_unknown_as_alive_and_gone_as_ended(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared)
        # A session started before the hub restarted: only its saved state is known.
        spawner.load_state({"job_id": "77", "job_status": "RUNNING node2"})
        answers = []
        for change in (lambda: slurm.set("77", "RUNNING", node="node2"),
                       lambda: setattr(slurm, "down", True),
                       lambda: (setattr(slurm, "down", False), slurm.set("77", "SUSPENDED"))):
            change()
            await shared.poller.next_answer()
            await shared.poller.next_answer()
            answers.append(await spawner.poll())
        slurm.end("77", "TIMEOUT")
        await until(lambda: "77" in shared.poller.ended, "seen gone")
        answers.append(await spawner.poll())
        return spawner, answers

    spawner, answers = asyncio.run(scenario())
    assert answers == [None, None, None, 1]
    assert spawner.job_id == "" and spawner.get_state() == {}


def test_a_session_started_by_the_batchspawner_based_spawner_is_found_after_the_upgrade(slurm, shared):
    """Before this change the spawner was batchspawner's SlurmSpawner, whose get_state wrote
    {"job_id", "job_status"}; the hub's database keeps that for a running session."""
    batchspawner_state = {"job_id": "4242", "job_status": "RUNNING node1"}

    async def scenario():
        spawner = a_spawner(shared)
        spawner.load_state(batchspawner_state)
        slurm.set("4242", "RUNNING", node="node1")
        alive = await spawner.poll()
        await spawner.stop()
        return spawner, alive

    spawner, alive = asyncio.run(scenario())
    assert alive is None
    assert slurm.cancelled == ["4242"]
    assert "4242" in spawner.poller.ended  # stop waited until Slurm no longer listed it


def test_stop_cancels_and_waits_until_the_queue_no_longer_runs_the_job(slurm, shared):
    async def scenario():
        spawner = a_spawner(shared)
        spawner.load_state({"job_id": "55"})
        slurm.set("55", "RUNNING", node="node1")
        assert await spawner.poll() is None
        real_cancel = slurm.cancel

        async def cancel_that_takes_a_while(username, job_id):
            # scancel returns while the job is still completing on its node
            slurm.cancelled.append(job_id)
            slurm.set(job_id, "COMPLETING", node="node1")
            asyncio.get_running_loop().call_later(0.3, slurm.end, job_id, "CANCELLED")

        slurm.cancel = cancel_that_takes_a_while
        started = time.monotonic()
        await spawner.stop()
        took = time.monotonic() - started
        slurm.cancel = real_cancel
        return took

    took = asyncio.run(scenario())
    assert slurm.cancelled == ["55"]
    assert 0.3 <= took < 5


def test_stop_without_a_job_does_nothing(slurm, shared):
    asyncio.run(a_spawner(shared).stop())
    assert slurm.cancelled == []


# --- one poller per hub ------------------------------------------------------------------------

def test_all_of_a_hubs_sessions_are_watched_in_one_query_per_interval(slurm, shared):
    async def scenario():
        spawners = [a_spawner(shared) for _ in range(3)]
        for number, spawner in enumerate(spawners):
            spawner.load_state({"job_id": str(10 + number)})
            slurm.set(str(10 + number), "RUNNING", node="node1")
        await asyncio.gather(*(s.poll() for s in spawners))
        await shared.poller.next_answer()
        return spawners

    spawners = asyncio.run(scenario())
    # Each spawner got its own copy of the configuration, and the same poller.
    assert len({id(s.poller) for s in spawners}) == 1
    assert {"10", "11", "12"} in slurm.queries
    assert max(len(q) for q in slurm.queries) == 3


def test_two_hubs_in_one_process_each_have_their_own_poller_with_their_own_interval(tmp_path):
    first = SharedServices(site_settings(tmp_path, poll_interval=30), slurm=ScriptedSlurm(tmp_path))
    second = SharedServices(site_settings(tmp_path, poll_interval=5), slurm=ScriptedSlurm(tmp_path))
    assert first.poller is not second.poller
    assert (first.poller.interval, second.poller.interval) == (30, 5)
    assert a_spawner(second).poller is second.poller


# --- settings it would ignore --------------------------------------------------------------------

def test_batchspawner_settings_and_unknown_ones_are_refused_by_name(shared):
    config = Config()
    config.SlurmSpawner.req_memory = "64G"
    config.GatewaySpawner.exec_prefix = "sudo -E -u {username}"
    config.Spawner.port = 8888
    with pytest.raises(InapplicableSettings) as refused:
        a_spawner(shared, config)
    message = str(refused.value)
    assert "c.SlurmSpawner.req_memory (batchspawner's)" in message
    assert "c.GatewaySpawner.exec_prefix (no such setting)" in message
    assert "c.Spawner.port (a session listens on a port its node's kernel picks" in message
    assert "profiles in gateway.yaml" in message


def test_the_settings_configure_hub_makes_are_accepted(shared):
    config = Config()
    config.Spawner.env_keep = ["LANG", "LC_ALL"]
    config.Spawner.default_url = "/lab"
    config.Spawner.start_timeout = 300
    config.GatewaySpawner.pass_access_token = True
    spawner = a_spawner(shared, config)
    assert spawner.pass_access_token and spawner.start_timeout == 300


def test_the_job_script_has_only_checked_values(slurm, shared):
    spawner = a_spawner(shared, cpus="2", memory_gb="4")
    request = asyncio.run(spawner.session_request())
    script = spawner.job_script(request, ["JUPYTERHUB_API_TOKEN", "PATH"])
    assert "#SBATCH --cpus-per-task=2\n" in script and "#SBATCH --mem=4G\n" in script
    assert "#SBATCH --export=JUPYTERHUB_API_TOKEN,PATH\n" in script
