"""The local cluster's network: compute nodes as network namespaces on a private bridge.

A site's compute nodes are other hosts on a cluster network; here each is a network namespace
(``ip netns``) with its own address, joined to the service host (this machine's own namespace,
where the hub, the proxy, slurmctld and the data services run) by a veth pair on a bridge::

    service host  gwb<id>  10.213.<k>.1/24
    node1         gw<id>n1 10.213.<k>.11     (its slurmd, and the jobs it starts)
    node2         gw<id>n2 10.213.<k>.12

Everything else is shared as on a cluster with a shared file system: ``/home``, ``/opt``, the
state directory (scratch, slurm.conf, the munge socket).  Each node also gets its own host
name (a UTS namespace per slurmd), so ``hostname`` in a job says which node it runs on.

Traffic stays on this machine: the bridge has no uplink and nothing is forwarded.  Every
stack records what it made outside its state directory in ``REGISTRY`` (its nodes, its bridge,
its hub account's sudo rules); ``up`` first removes what a crashed stack left.
"""

from __future__ import annotations

import ipaddress
import json
import os
import pwd
import random
import secrets
import socket
from dataclasses import dataclass
from pathlib import Path

from .processes import alive, run, stop_pid

SUBNET_BASE = "10.213"  # 10.213.<k>.0/24, k chosen free per stack
REGISTRY = Path("/run/bioimage-gateway-devstack")
SUDOERS_DIR = Path("/etc/sudoers.d")


@dataclass(frozen=True)
class Node:
    name: str  # Slurm's NodeName and the node's host name
    address: str
    netns: str
    hosts_file: str  # the cluster's /etc/hosts, as the node sees it

    def argv(self, argv: list[str]) -> list[str]:
        """``argv`` run on this node: in its network namespace, under its host name, with the
        cluster's hosts file (programs such as vncserver resolve their own host name)."""
        # nsenter, not `ip netns exec`: that remounts /sys, without the cgroup file system
        # that slurmd needs.
        return ["nsenter", f"--net=/run/netns/{self.netns}",
                "unshare", "--uts", "--mount", "--propagation", "private", "sh", "-c",
                'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"',
                self.name, self.hosts_file, *argv]


@dataclass
class NodeNetwork:
    stack_id: str
    subnet: int
    node_count: int = 2
    hosts_file: Path = Path("/nonexistent")

    @classmethod
    def new(cls, state_dir: Path, node_count: int = 2) -> "NodeNetwork":
        return cls(secrets.token_hex(3), _free_subnet(), node_count, Path(state_dir) / "hosts")

    @classmethod
    def from_record(cls, record: dict) -> "NodeNetwork":
        return cls(record["id"], int(record["subnet"]), len(record["nodes"]),
                   Path(record.get("hosts_file", "/nonexistent")))

    @property
    def bridge(self) -> str:
        return f"gwb{self.stack_id}"

    @property
    def service_address(self) -> str:
        return f"{SUBNET_BASE}.{self.subnet}.1"

    @property
    def cidr(self) -> str:
        return f"{SUBNET_BASE}.{self.subnet}.0/24"

    @property
    def nodes(self) -> list[Node]:
        return [Node(f"node{i}", f"{SUBNET_BASE}.{self.subnet}.{10 + i}", f"gw{self.stack_id}n{i}",
                     str(self.hosts_file))
                for i in range(1, self.node_count + 1)]

    def record(self, state_dir: Path) -> dict:
        return {"id": self.stack_id, "subnet": self.subnet, "bridge": self.bridge, "owner_pid": os.getpid(),
                "hosts_file": str(self.hosts_file),
                "service_address": self.service_address, "cidr": self.cidr, "state_dir": str(state_dir),
                "nodes": [{"name": n.name, "address": n.address, "netns": n.netns} for n in self.nodes]}

    def up(self, state_dir: Path) -> None:
        """Make the bridge and the nodes, and register them for cleanup after a crash."""
        _register(self.record(state_dir))
        try:
            self.hosts_file.write_text("".join(
                f"{address}\t{name}\n" for address, name in [
                    ("127.0.0.1", "localhost"), (self.service_address, socket.gethostname()),
                    *((n.address, n.name) for n in self.nodes)]))
            self.hosts_file.chmod(0o644)
            run(["ip", "link", "add", self.bridge, "type", "bridge"])
            run(["ip", "addr", "add", f"{self.service_address}/24", "dev", self.bridge])
            run(["ip", "link", "set", self.bridge, "up"])
            for i, node in enumerate(self.nodes, 1):
                host_side = f"gwv{self.stack_id}n{i}"
                run(["ip", "netns", "add", node.netns])
                run(["ip", "link", "add", host_side, "type", "veth", "peer", "name", "eth0",
                     "netns", node.netns])
                run(["ip", "link", "set", host_side, "master", self.bridge, "up"])
                run(["ip", "-n", node.netns, "addr", "add", f"{node.address}/24", "dev", "eth0"])
                run(["ip", "-n", node.netns, "link", "set", "eth0", "up"])
                run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
                # As on a cluster network, a default route (via the service host, which forwards
                # nothing): programs that find "their" address by routing, as Dask does, find
                # the node's own.
                run(["ip", "-n", node.netns, "route", "add", "default", "via", self.service_address])
        except BaseException:
            self.down()
            raise

    def service_argv(self, argv: list[str], user: str | None = None) -> list[str]:
        """``argv`` on the service host with the cluster's hosts file (the node names resolve,
        as through a site's DNS), as ``user`` when given (the hub's account)."""
        drop = []
        if user is not None:
            account = pwd.getpwnam(user)
            drop = ["setpriv", f"--reuid={account.pw_uid}", f"--regid={account.pw_gid}", "--clear-groups", "--"]
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                'mount --bind "$0" /etc/hosts && exec "$@"', str(self.hosts_file), *drop, *argv]

    @property
    def sudo_alias(self) -> str:
        """The prefix of this stack's sudo command aliases (one per stack: stacks side by side)."""
        return f"GATEWAY_{self.stack_id.upper()}"

    @property
    def sudo_rules_path(self) -> Path:
        return SUDOERS_DIR / f"bioimage-gateway-devstack-{self.stack_id}"

    def install_sudo_rules(self, text: str) -> Path:
        """The hub account's sudo rules for this stack, checked by ``visudo`` (removed by
        ``down`` and by the cleanup after a crash, like the nodes)."""
        from bioimage_gateway.hub_config.sudoers import install
        install(self.sudo_rules_path, text)
        return self.sudo_rules_path

    def down(self) -> None:
        """Stop whatever still runs on the nodes, remove them, the bridge and the sudo rules."""
        remove(self.record(Path("")))


def remove(record: dict) -> None:
    for node in record.get("nodes", []):
        netns = node["netns"]
        pids = run(["ip", "netns", "pids", netns], check=False).stdout.split()
        for pid in pids:
            stop_pid(int(pid), timeout=5)
        run(["ip", "netns", "delete", netns], check=False)
    run(["ip", "link", "delete", record["bridge"]], check=False)
    (SUDOERS_DIR / f"bioimage-gateway-devstack-{record['id']}").unlink(missing_ok=True)
    (REGISTRY / f"{record['id']}.json").unlink(missing_ok=True)


def _register(record: dict) -> None:
    REGISTRY.mkdir(mode=0o700, exist_ok=True)
    path = REGISTRY / f"{record['id']}.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)


def remove_stale(is_live) -> list[str]:
    """Remove the networks of stacks that are gone: the process that made them has ended and
    ``is_live(state_dir)`` is False.  Returns their ids.  A crashed ``up`` or a killed demo
    leaves namespaces and links behind."""
    removed = []
    if not REGISTRY.is_dir():
        return removed
    for path in sorted(REGISTRY.glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not alive(record.get("owner_pid")) and not is_live(Path(record.get("state_dir", ""))):
            remove(record)
            removed.append(record["id"])
    return removed


def _used_subnets() -> set[int]:
    out = run(["ip", "-o", "-4", "addr", "show"], check=False).stdout
    used = set()
    base = ipaddress.ip_network(f"{SUBNET_BASE}.0.0/16")
    for line in out.splitlines():
        for word in line.split():
            if "/" in word:
                try:
                    address = ipaddress.ip_interface(word).ip
                except ValueError:
                    continue
                if address in base:
                    used.add(int(str(address).split(".")[2]))
    return used


def _free_subnet() -> int:
    used = _used_subnets()
    free = [k for k in range(1, 255) if k not in used]
    if not free:
        raise RuntimeError(f"no free {SUBNET_BASE}.<k>.0/24 subnet for the local cluster's nodes")
    return random.choice(free)


__all__ = ["Node", "NodeNetwork", "remove_stale", "REGISTRY"]
