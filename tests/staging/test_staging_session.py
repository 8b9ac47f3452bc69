"""The site's ``staging:`` settings reach a real session (a Slurm job of alice's, started through
the hub) the way the Dask limits do: the spawner hands them over resolved for the user, and
staging in the session, here the session's own REST endpoint, uses that cache."""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

import pytest
import yaml
from support import logged_in

from bioimage_gateway import staging
from bioimage_gateway.devstack.demo import HubProcess
from bioimage_gateway.devstack.processes import free_port, run
from bioimage_gateway.devstack.stack import dummy_settings
from bioimage_gateway.staging_settings import StagingSettings

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "gpus": "0", "walltime_hours": "1"}
STAGING = {"cache_dir": "{scratch_root}/{user}/gw-staging", "quota": "2G", "parallel_transfers": 3,
           "journal_fsync": "each"}


@pytest.fixture(scope="module")
def staging_hub(devstack):
    """A hub whose gateway.yaml has a ``staging:`` section (local passwords, its own ports)."""
    settings = yaml.safe_load(Path(devstack.record()["gateway_yaml"]).read_text())
    port = free_port()
    settings["hub"].update(port=port, public_url=f"http://127.0.0.1:{port}", api_port=free_port(),
                           proxy_api_port=free_port(), data_dir=str(devstack.state_dir / "staging-hub"))
    settings["auth"] = dummy_settings(devstack.state_dir)
    settings["staging"] = STAGING
    path = devstack.state_dir / "staging-hub.yaml"
    path.write_text(yaml.safe_dump(settings))
    hub = HubProcess(path, devstack.state_dir, log_path=devstack.state_dir / "staging-hub.log",
                     run_as=devstack.record()["hub_account"], network=devstack.network())
    hub.api_port = settings["hub"]["api_port"]
    hub.start()
    yield hub, Path(settings["scratch_root"])
    hub.stop()


def session_env_of(username: str, hub) -> dict[str, str]:
    """The environment of the user's session started by ``hub`` (other stacks on this machine
    may run sessions of the same demo user at the same time)."""
    pids = run(["pgrep", "-u", username, "-f", "bioimage-gateway-session"], check=False)
    for pid in pids.stdout.split():
        try:
            items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        env = dict(item.decode().split("=", 1) for item in items if b"=" in item)
        if f":{hub.api_port}/" in env.get("JUPYTERHUB_API_URL", ""):
            return env
    raise AssertionError(f"no running session of {username} from the hub on {hub.url}")


@pytest.fixture
def alice_scratch(staging_hub, tmp_path):
    """alice's scratch directory, made by the site as sites do (hers, mode 0700), holding one
    staged copy in the cache the settings name."""
    _, scratch_root = staging_hub
    account = pwd.getpwnam("alice")
    scratch = scratch_root / "alice"
    scratch.mkdir(mode=0o700)
    try:
        source = tmp_path / "results"
        source.mkdir()
        (source / "table.csv").write_text("cell,area\n1,20\n")
        copy = staging.stage(source, cache_dir=scratch / "gw-staging")
        for folder, dirs, files in os.walk(scratch):
            for name in [folder, *(os.path.join(folder, n) for n in dirs + files)]:
                os.chown(name, account.pw_uid, account.pw_gid)
        yield scratch, copy
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def test_the_session_gets_the_sites_staging_settings_resolved_for_its_user(staging_hub, alice_scratch):
    hub, scratch_root = staging_hub
    scratch, copy = alice_scratch
    alice = logged_in(hub.url, "alice")
    try:
        response = alice.submit_form(CPU)
        assert response.status_code == 302, response.text[-500:]
        assert alice.progress()[-1].get("ready")

        env = session_env_of("alice", hub)
        passed = StagingSettings.model_validate_json(env["BIOIMAGE_GATEWAY_STAGING"])
        assert passed.cache_dir == f"{scratch_root}/alice/gw-staging"
        assert passed.quota == 2 << 30 and passed.parallel_transfers == 3 and passed.journal_fsync == "each"

        # staging in the session (its REST endpoint, in alice's Jupyter server) finds the copy
        # in that cache: the settings are the ones it uses
        assert alice.open_lab().status_code == 200
        jobs = alice.http.get(f"{hub.url}/user/alice/bioimage-gateway/staging", timeout=30).json()["jobs"]
        assert [(j["path"], j["state"]) for j in jobs] == [(str(copy), "complete")]
    finally:
        alice.stop()
