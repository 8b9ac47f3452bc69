"""Helpers the tests share: logged-in clients, Slurm job listings, extra hubs."""

from __future__ import annotations

from pathlib import Path

import yaml

from bioimage_gateway.devstack.demo import HubProcess
from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.processes import free_port, run
from bioimage_gateway.devstack.stack import DEMO_USERS, dummy_settings

PASSWORDS = {u["username"]: u["password"] for u in DEMO_USERS}


def logged_in(hub_url: str, username: str) -> HubClient:
    client = HubClient(hub_url, username, PASSWORDS[username])
    client.login()
    return client


def jobs_of(slurm, username: str) -> list[str]:
    """The user's jobs still in the queue (any state)."""
    result = run(["squeue", "-h", "-u", username, "-o", "%i"], env=slurm.env, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def job_names_of(slurm, username: str) -> list[str]:
    """The names of the user's jobs in the queue."""
    result = run(["squeue", "-h", "-u", username, "-o", "%j"], env=slurm.env, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def job_records_of(slurm, username: str) -> list[str]:
    """Every job of the user the controller remembers, finished ones included."""
    result = run(["scontrol", "-o", "show", "jobs"], env=slurm.env, check=False)
    assert result.returncode == 0, result.stderr
    return [
        line.split()[0].split("=", 1)[1]
        for line in result.stdout.splitlines()
        if f" UserId={username}(" in line
    ]


def session_env(username: str) -> dict[str, str]:
    """The environment of the user's running session, as the user can read it."""
    pids = run(["pgrep", "-u", username, "-f", "bioimage-gateway-session"], check=False)
    for pid in pids.stdout.split():
        items = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        return dict(item.decode().split("=", 1) for item in items if b"=" in item)
    raise AssertionError(f"no running session process of {username}")


def start_hub(devstack, name: str = "hub", auth_changes: dict | None = None,
              port: int | None = None, slurm_changes: dict | None = None,
              culler: dict | None = None, hub_changes: dict | None = None,
              **session_changes) -> HubProcess:
    """A hub on the devstack; a name other than "hub" gets its own ports and database."""
    record = devstack.record()
    settings_path = Path(record["gateway_yaml"])
    if name != "hub":
        settings = yaml.safe_load(settings_path.read_text())
        port = port or free_port()
        settings["hub"].update(
            port=port, public_url=f"http://127.0.0.1:{port}", api_port=free_port(),
            proxy_api_port=free_port(), data_dir=str(devstack.state_dir / name),
        )
        settings["session"].update(session_changes)
        settings["slurm"].update(slurm_changes or {})
        settings["hub"].update(hub_changes or {})
        if culler:
            settings["idle_culler"] = culler
        if auth_changes is None:
            # Extra hubs test the spawner; they sign users in with local passwords.
            settings["auth"] = dummy_settings(devstack.state_dir)
        else:
            settings["auth"].update(auth_changes)
        settings_path = devstack.state_dir / f"{name}.yaml"
        settings_path.write_text(yaml.safe_dump(settings))
    process = HubProcess(settings_path, devstack.state_dir,
                         log_path=devstack.state_dir / f"{name}.log", run_as=record["hub_account"],
                         network=devstack.network())
    process.start()
    return process
