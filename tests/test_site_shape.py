"""The local cluster has a site's shape: an unprivileged hub on the service host, sessions on
compute nodes with their own addresses, reached over the cluster network, and the hub acting
for users only through the sudo rules a site installs."""

from __future__ import annotations

import json
import pwd
import sqlite3
import subprocess
import sys
from pathlib import Path

from support import jobs_of, logged_in, session_env

from bioimage_gateway.devstack.network import NodeNetwork, remove_stale
from bioimage_gateway.devstack.processes import run
from bioimage_gateway.devstack.stack import stack_is_live
from bioimage_gateway.hub_config import sudoers

CPU = {"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"}


def owner(pid: int) -> str:
    uid = int(next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("Uid:")).split()[1])
    return run(["id", "-nu", str(uid)]).stdout.strip()


def children(pid: int) -> list[int]:
    out = run(["pgrep", "-P", str(pid)], check=False).stdout.split()
    return [int(p) for p in out]


def server_addresses(devstack, hub) -> dict[str, tuple[str, int]]:
    """Where the hub's proxy sends each user's session: (ip, port) from the hub's database."""
    db = sqlite3.connect(f"file:{hub.data_dir / 'jupyterhub.sqlite'}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT users.name, servers.ip, servers.port FROM spawners "
                          "JOIN users ON spawners.user_id = users.id "
                          "JOIN servers ON spawners.server_id = servers.id").fetchall()
    finally:
        db.close()
    return {name: (ip, port) for name, ip, port in rows}


def test_the_hub_and_its_proxy_run_as_the_unprivileged_hub_account(devstack, hub):
    account = devstack.record()["hub_account"]
    assert account != "root" and owner(hub.proc.pid) == account
    proxy = [pid for pid in children(hub.proc.pid)
             if "configurable-http-proxy" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert proxy and owner(proxy[0]) == account
    # ...with exactly the rules rendered from the shipped template, which visudo accepts.
    installed = Path(devstack.record()["sudo_rules"])
    assert installed.read_text() == sudoers.render(hub_user=account, alias=devstack.network().sudo_alias)
    assert run(["visudo", "-cf", str(installed)], check=False).returncode == 0


def test_sessions_of_two_users_run_on_two_nodes_at_their_nodes_addresses(devstack, hub, slurm):
    alice, bob = logged_in(hub.url, "alice"), logged_in(hub.url, "bob")
    try:
        for client in (alice, bob):
            assert client.submit_form(CPU).status_code == 302
        for client in (alice, bob):
            assert client.progress()[-1].get("ready")
        nodes = {user: devstack.node_of_job(jobs_of(slurm, user)[0]) for user in ("alice", "bob")}
        assert nodes["alice"].name != nodes["bob"].name  # spread over the cluster
        where = server_addresses(devstack, hub)
        for user, node in nodes.items():
            ip, port = where[user]
            assert ip == node.address and not ip.startswith("127."), (user, ip, node)
            # the proxy reaches it over the cluster network: the lab answers through the hub
        assert alice.open_lab().status_code == 200 and bob.open_lab().status_code == 200
        # Each session's environment came through the hub account's sudo rules, whole.
        for user in ("alice", "bob"):
            env = session_env(user)
            assert env["SLURMD_NODENAME"] == nodes[user].name
            for name in ("JUPYTERHUB_API_TOKEN", "JUPYTERHUB_API_URL", "BIOIMAGE_GATEWAY_STAGING",
                         "DASK_DISTRIBUTED__DASHBOARD__LINK", "SLURM_CONF"):
                assert name in env, (user, name)
            assert env["JUPYTERHUB_API_URL"].startswith(f"http://{devstack.record()['network']['service_address']}:")
        assert "Not passed to" not in (devstack.state_dir / "hub.log").read_text()
        # Each job's log (tokens, paths) is its user's alone.
        for user in ("alice", "bob"):
            log = Path(pwd.getpwnam(user).pw_dir) / f".bioimage-gateway/logs/jupyter-session-{jobs_of(slurm, user)[0]}.log"
            assert log.stat().st_uid == pwd.getpwnam(user).pw_uid and log.stat().st_mode & 0o077 == 0, oct(log.stat().st_mode)
    finally:
        alice.stop()
        bob.stop()


def test_the_hub_account_can_never_act_as_root(devstack, slurm):
    account = devstack.record()["hub_account"]
    refused = subprocess.run(["/usr/sbin/runuser", "-u", account, "--", "sudo", "-n", "-u", "root",
                              "/usr/bin/sbatch", "--parsable"], input="#!/bin/sh\nid\n",
                             capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert refused.returncode != 0 and ("not allowed" in refused.stderr or "password" in refused.stderr)
    # and Slurm itself refuses root's jobs
    submitted = subprocess.run(["sbatch", "--parsable", "--wrap", "id"], capture_output=True, text=True,
                               env=slurm.env)
    assert submitted.returncode != 0 and "Invalid user id" in submitted.stderr


def test_a_crashed_stacks_nodes_are_removed_by_the_next_up(tmp_path):
    """A stack whose process died (no devstack.json, no daemons) leaves namespaces, a bridge
    and sudo rules; the cleanup that `up` runs first removes them, and nothing of live stacks."""
    made = subprocess.run([sys.executable, "-c", f"""
import json
from pathlib import Path
from bioimage_gateway.devstack.network import NodeNetwork
network = NodeNetwork.new(Path({str(tmp_path)!r}))
network.up(Path({str(tmp_path)!r}))
network.install_sudo_rules("# nothing\\n")
print(json.dumps(network.record(Path({str(tmp_path)!r}))))
"""], capture_output=True, text=True, check=True)
    record = json.loads(made.stdout)
    netns = run(["ip", "netns", "list"]).stdout
    assert all(node["netns"] in netns for node in record["nodes"])
    assert Path(f"/etc/sudoers.d/bioimage-gateway-devstack-{record['id']}").exists()
    removed = remove_stale(stack_is_live)  # what `devstack up` runs first
    assert record["id"] in removed
    netns = run(["ip", "netns", "list"]).stdout
    assert not any(node["netns"] in netns for node in record["nodes"])
    assert record["bridge"] not in run(["ip", "-o", "link", "show"]).stdout
    assert not Path(f"/etc/sudoers.d/bioimage-gateway-devstack-{record['id']}").exists()
    assert NodeNetwork.from_record(record).bridge == record["bridge"]
