"""``bioimage-gateway devstack up|down``: the local stack the tests and the demo run on.

``up`` starts munge and Slurm, creates the demo Unix users, checks that the
session environment is readable by them, and writes into the state directory:

* ``devstack.json``  what was started: endpoints, PIDs, users, paths;
* ``demo-users.json`` the demo accounts, passwords and groups;
* ``gateway.yaml``   site settings for a hub on this stack.

``down`` cancels every job and stops every daemon by the PIDs recorded there.

With ``accounting`` (the default) Slurm keeps its accounting in slurmdbd and a
private MariaDB, seeded with an account per group, the profiles' QoS and the
demo users' associations (:class:`.accounting.AccountingSeed`).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from bioimage_gateway.hub_config import sudoers as hub_sudoers

from .accounting import AccountingSeed
from .data_services import start_data_services, stop_data_services, write_irods_client_config
from .idp import LocalIdentityProvider, demo_users
from .processes import alive, free_port, run
from .network import Node, NodeNetwork, remove_stale
from .slurm import CLUSTER, LocalSlurm
from .trust import prepare_state_dir, read_trusted_json

# Passwords are for a stack on loopback only; they are listed in the README.  Besides
# their groups' accounts, users may be in Slurm project accounts (``slurm_projects``), as
# at a site where a lab's project pays for its members' sessions.
DEMO_USERS = [
    {"username": "alice", "password": "alice-demo", "groups": ["imaging"],
     "slurm_projects": ["lightsheet-lab"]},
    {"username": "bob", "password": "bob-demo", "groups": ["imaging"]},
    {"username": "tom", "password": "tom-demo", "groups": ["trainers"]},
    {"username": "ada", "password": "ada-demo", "groups": ["gateway-admins"]},
    {"username": "eve", "password": "eve-demo", "groups": []},
]


def ensure_unix_user(name: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--create-home", "--shell", "/bin/bash", "--user-group", name])
        return pwd.getpwnam(name)


# The account the hub runs as, as at a site: unprivileged, acting for users only through the
# sudo rules of hub_config/templates/sudoers.j2.
HUB_ACCOUNT = "gateway-hub"


def ensure_hub_account(name: str = HUB_ACCOUNT) -> pwd.struct_passwd:
    """A system account with no home and no login shell."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        run(["useradd", "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", name])
        return pwd.getpwnam(name)


def give_to(account: pwd.struct_passwd, *paths: Path) -> None:
    """Make files and folders the stack wrote for the hub belong to the hub's account."""
    for path in paths:
        os.chown(path, account.pw_uid, account.pw_gid, follow_symlinks=False)


def readable_by_others(path: Path) -> bool:
    """True if a user other than root can reach and read ``path``."""
    path = path.resolve()
    for parent in [*reversed(path.parents), path]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            return False
    return bool(path.stat().st_mode & stat.S_IROTH)


def check_session_environment(prefix: Path) -> Path:
    prefix = Path(prefix)
    needed = [prefix / "bin" / "jupyterhub-singleuser", prefix / "bin" / "bioimage-gateway-session"]
    missing = [str(p) for p in needed if not p.exists()]
    if missing:
        raise RuntimeError(
            f"session environment {prefix} lacks {', '.join(missing)}; "
            "install the project with its [session] extra there (make venv)"
        )
    python = (prefix / "bin" / "python").resolve()
    for path in [*needed, python, prefix / "lib"]:
        if not readable_by_others(path):
            raise RuntimeError(
                f"session environment {prefix}: {path} is not readable by other users, "
                "so Slurm jobs running as the demo users cannot use it. Build it from "
                "/usr/bin/python3 in a readable place (make venv puts it in /opt)."
            )
    return prefix


SLURM_DAEMONS = ("munged", "slurmctld", "mariadbd", "slurmdbd")  # and a slurmd-<node> per node
# On by default; BIOIMAGE_GATEWAY_DEVSTACK_ACCOUNTING=0 runs Slurm without slurmdbd
# (to compare with a site that has none).
ACCOUNTING = os.environ.get("BIOIMAGE_GATEWAY_DEVSTACK_ACCOUNTING", "1") != "0"
ALLOWED_GROUPS = ["imaging", "trainers", "gateway-admins"]
OIDC_CLIENT_ID = "bioimage-gateway"


def hub_urls(hub_port: int) -> dict[str, str]:
    base = f"http://127.0.0.1:{hub_port}"
    return {"public_url": base, "callback": f"{base}/hub/oauth_callback",
            "after_logout": f"{base}/hub/login"}


def authentik_settings(state_dir: Path, idp: LocalIdentityProvider) -> dict:
    return {
        "provider": "authentik",
        # The local IdP listens on loopback only, without TLS.
        "allow_insecure_http": True,
        "url": idp.base_url,
        "application_slug": idp.slug,
        "client_id": OIDC_CLIENT_ID,
        "client_secret_file": str(state_dir / "oidc-client-secret"),
        "allowed_groups": ALLOWED_GROUPS,
        "admin_groups": ["gateway-admins"],
        "crypt_key_file": str(state_dir / "crypt-key"),
        # The demo shows the opt-in: sessions get the user's token for services.
        "pass_access_token": True,
    }


def dummy_settings(state_dir: Path) -> dict:
    return {"provider": "dummy", "users_file": str(state_dir / "demo-users.json")}


def _write_secret(path: Path, value: str) -> None:
    """A file readable by root alone, created afresh (a link left at its name is replaced)."""
    _write_file(path, value + "\n", 0o600)


def _write_file(path: Path, text: str, mode: int = 0o644) -> None:
    """Written under a temporary name, then renamed: never through a link at ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def gateway_settings(
    state_dir: Path, slurm: LocalSlurm, session_env: Path, hub_port: int, auth: dict
) -> dict:
    """Site settings for a hub on this stack, sized to this machine."""
    slurm_settings = {
        "conf": str(slurm.conf),
        "poll_interval": 5.0,
        "start_poll_interval": 1.0,
        "live_data_ttl": 2,
        "query_timeout": 2,
        "default_walltime_hours": 2,
        "partitions": list(("interactive", "largemem")),
    }
    if slurm.accounting:
        # What the form shows when sacctmgr does not answer (and what profiles may name).
        slurm_settings.update(accounts=list(ALLOWED_GROUPS), qos=["normal", "workshop"])
    return {
        "hub": {
            "public_url": hub_urls(hub_port)["public_url"],
            "ip": "127.0.0.1",
            "port": hub_port,
            # The compute nodes reach the hub's API at the service host's cluster address.
            "api_ip": slurm.network.service_address,
            "api_port": free_port(),
            "proxy_api_port": free_port(),
            "data_dir": str(state_dir / "hub"),
            "announcement": "Local demo cluster: sessions end when the demo stops.",
        },
        "auth": auth,
        "slurm": slurm_settings,
        **site_resources(slurm),
        "scratch_root": str(state_dir / "scratch"),
        "session": {
            "environment": str(session_env),
            "start_timeout": 180,
            "http_timeout": 60,
        },
    }


def site_resources(slurm: LocalSlurm) -> dict:
    """Profiles and group limits sized to this machine; accounting is seeded from them."""
    cpus = slurm.cpus
    mem_gb = max(1, slurm.memory_mb // 1024)
    return {
        "profiles": [
            {
                "slug": "cpu",
                "display_name": "CPU",
                "description": "Interactive analysis on a compute node",
                "partition": "interactive",
                "cpus": {"default": 1, "max": cpus},
                "memory_gb": {"default": 1, "max": min(4, mem_gb)},
                "walltime_hours": {"default": 2, "max": 8},
                "groups": ["imaging", "trainers", "gateway-admins"],
            },
            {
                "slug": "large-memory",
                "display_name": "Large memory",
                "description": "For whole-volume processing",
                "partition": "largemem",
                "cpus": {"default": 1, "max": cpus},
                "memory_gb": {"default": min(4, mem_gb), "max": mem_gb},
                "walltime_hours": {"default": 4, "max": 24},
                "groups": ["imaging", "gateway-admins"],
            },
            {
                "slug": "workshop",
                "display_name": "Workshop",
                "description": "Small sessions for training courses",
                "partition": "interactive",
                "cpus": {"default": 1, "max": 1},
                "memory_gb": {"default": 1, "max": 2},
                "walltime_hours": {"default": 3, "max": 4},
                "groups": ["trainers", "gateway-admins"],
                # Course sessions run under the QoS trainers are given in accounting,
                # whichever QoS their association would allow besides.
                **({"qos": "workshop", "locked": ["qos"]} if slurm.accounting else {}),
            },
        ],
        "group_limits": {
            "imaging": {"max_sessions": 1, "max_cpus": cpus},
            "trainers": {"max_sessions": 1, "max_cpus": 1},
            "gateway-admins": {"max_sessions": 2},
        },
    }


def stack_is_live(state_dir: Path) -> bool:
    """Whether the stack recorded in ``state_dir`` still has a daemon running."""
    try:
        return Devstack(state_dir).running(any_daemon=True)
    except (RuntimeError, OSError, ValueError):  # gone, or a record that cannot be trusted
        return False


@dataclass
class Devstack:
    state_dir: Path

    @property
    def record_path(self) -> Path:
        return self.state_dir / "devstack.json"

    def record(self) -> dict | None:
        """What ``up`` recorded; None before it ran.  Read only from a state directory and a
        file that no user but root can have written (``trust.read_trusted_json``): ``down``
        kills the PIDs listed there."""
        return read_trusted_json(self.record_path)

    def slurm(self) -> LocalSlurm:
        rec = self.record()
        if rec is None:
            raise RuntimeError(f"no devstack recorded in {self.state_dir}")
        slurm = LocalSlurm(
            state_dir=self.state_dir,
            network=NodeNetwork.from_record(rec["network"]),
            ctld_port=rec["slurm"]["slurmctld_port"],
            slurmd_port=rec["slurm"]["slurmd_port"],
            cpus=rec["slurm"]["cpus"],
            memory_mb=rec["slurm"]["memory_mb"],
            pids={k: v for k, v in rec["pids"].items() if k in SLURM_DAEMONS or k.startswith("slurmd-")},
        )
        if rec.get("accounting"):
            slurm.enable_accounting(rec["accounting"]["mariadb_port"],
                                    rec["accounting"]["slurmdbd_port"])
        return slurm

    def network(self) -> NodeNetwork:
        return NodeNetwork.from_record(self.record()["network"])

    def node(self, name: str) -> Node:
        """A compute node of this stack, by its Slurm name (``node.argv`` runs a command there)."""
        for node in self.network().nodes:
            if node.name == name:
                return node
        raise LookupError(f"no node {name!r} in the stack of {self.state_dir}")

    def node_of_job(self, job_id: str) -> Node:
        """The node a running job of this stack runs on (its batch host)."""
        host = run(["squeue", "-h", "-j", job_id, "-o", "%B"], env=self.slurm().env).stdout.strip()
        return self.node(host)

    def running(self, any_daemon: bool = False) -> bool:
        rec = self.record()
        check = any if any_daemon else all
        return bool(rec) and check(alive(pid) for pid in rec["pids"].values())

    def up(
        self,
        session_env: Path | None = None,
        hub_port: int | None = None,
        node_cpus: int | None = None,
        idp_users: list[dict] | None = None,
        accounting: bool | None = None,
        idp_email_scope_mapping: str = "authentik-default",
        idp_clients: list[dict] | None = None,
    ) -> dict:
        """``idp_clients``: OIDC clients the IdP knows besides the stack's hub (other hubs on
        other ports: ``{"client_id", "client_secret", "redirect_uris", ...}``)."""
        if os.geteuid() != 0:
            raise RuntimeError("devstack up runs as root: it starts Slurm and creates Unix users")
        # Made here (0700), or one that only root can have written: never one a local user
        # prepared (a planted devstack.json, a symlink for root to write through).
        self.state_dir = prepare_state_dir(self.state_dir)
        # The demo users' Slurm jobs reach slurm.conf and the munge socket by name; they cannot
        # list the folder, and each file in it has its own mode.
        self.state_dir.chmod(0o711)
        if self.running():
            return self.record()
        session_env = check_session_environment(Path(session_env or sys.prefix))
        for entry in DEMO_USERS:
            ensure_unix_user(entry["username"])
        hub_account = ensure_hub_account()
        users_file = self.state_dir / "demo-users.json"
        _write_secret(users_file, json.dumps(DEMO_USERS, indent=2))
        (self.state_dir / "scratch").mkdir(exist_ok=True, mode=0o755)

        hub_port = hub_port or free_port()
        urls = hub_urls(hub_port)
        _write_secret(self.state_dir / "crypt-key", secrets.token_hex(32))
        # What a crashed stack left (namespaces, links), then this stack's compute nodes.
        remove_stale(stack_is_live)
        network = NodeNetwork.new(self.state_dir)
        network.up(self.state_dir)
        # The hub's sudo rules, from the template a site installs (removed with the network).
        sudo_rules = network.install_sudo_rules(hub_sudoers.render(
            hub_user=hub_account.pw_name, alias=network.sudo_alias))
        slurm = LocalSlurm(state_dir=self.state_dir, network=network)
        if node_cpus:
            slurm.cpus = node_cpus
        if (ACCOUNTING if accounting is None else accounting):
            slurm.enable_accounting()
        idp = LocalIdentityProvider(
            self.state_dir,
            users=demo_users() + list(idp_users or []),
            clients=[{
                "client_id": OIDC_CLIENT_ID,
                "redirect_uris": [urls["callback"]],
                "post_logout_redirect_uris": [urls["after_logout"]],
            }, *(idp_clients or [])],
            email_scope_mapping=idp_email_scope_mapping,
        )
        data_pids: dict = {}
        data_services: dict = {}

        def start_services():
            idp.start()
            # On the service host's cluster address: sessions on the nodes reach them there.
            record, pids = start_data_services(self.state_dir, DEMO_USERS, host=network.service_address)
            data_services.update(record)
            data_pids.update(pids)

        try:
            slurm.start(AccountingSeed.from_settings(
                site_resources(slurm), DEMO_USERS + list(idp_users or [])),
                alongside=start_services)
        except BaseException:
            stop_data_services(data_pids)
            idp.stop()
            try:
                slurm.stop()
            finally:
                network.down()
            raise
        _write_secret(self.state_dir / "oidc-client-secret", idp.clients[0]["client_secret"])
        # What the hub reads or writes as its own account: secrets, the demo accounts of the
        # local-password hubs, its data folder.
        hub_dir = self.state_dir / "hub"
        hub_dir.mkdir(mode=0o700, exist_ok=True)
        give_to(hub_account, hub_dir, users_file, self.state_dir / "crypt-key",
                self.state_dir / "oidc-client-secret")
        settings = gateway_settings(
            self.state_dir, slurm, session_env, hub_port, authentik_settings(self.state_dir, idp)
        )
        settings["catalogs"] = {"omero_url": data_services["omero"]["url"]}
        _write_file(self.state_dir / "gateway.yaml",
                    "# Generated by `bioimage-gateway devstack up` for this machine.\n"
                    + yaml.safe_dump(settings, sort_keys=False))
        rec = {
            "state_dir": str(self.state_dir),
            "network": network.record(self.state_dir),
            "hub_account": hub_account.pw_name,
            "sudo_rules": str(sudo_rules),
            "slurm": {
                "conf": str(slurm.conf),
                "cluster": CLUSTER,
                "nodes": [{"name": n.name, "address": n.address} for n in slurm.nodes],
                "cpus": slurm.cpus,
                "memory_mb": slurm.memory_mb,
                "slurmctld": f"127.0.0.1:{slurm.ctld_port}",
                "slurmctld_port": slurm.ctld_port,
                "slurmd_port": slurm.slurmd_port,
                "partitions": ["interactive", "largemem"],
            },
            "accounting": slurm.accounting and {
                "cluster": CLUSTER,
                "mariadb_port": slurm.accounting.db_port,
                "mariadb_socket": str(slurm.accounting.db_socket),
                "slurmdbd_port": slurm.accounting.dbd_port,
                "slurmdbd_conf": str(slurm.accounting.dbd_conf),
                "slurmdbd_log": str(slurm.accounting.dbd_log),
            },
            "munge_socket": str(slurm.munge_socket),
            "pids": {**slurm.pids, "idp": idp.pid, **data_pids},
            "data_services": data_services,
            "idp": {
                "issuer": idp.issuer,
                "discovery_url": idp.discovery_url,
                "end_session_url": idp.end_session_url,
                "port": idp.port,
                "users_file": str(idp.users_file),
                "email_scope_mapping": idp.email_scope_mapping,
            },
            "users": [
                {"username": u["username"], "groups": u["groups"]} for u in DEMO_USERS
            ],
            "users_file": str(users_file),
            "session_environment": str(session_env),
            "gateway_yaml": str(self.state_dir / "gateway.yaml"),
            "hub_url": settings["hub"]["public_url"],
        }
        _write_file(self.record_path, json.dumps(rec, indent=2) + "\n")
        return rec

    def stop_controller(self) -> None:
        self.slurm().stop_controller()

    def start_controller(self) -> None:
        slurm = self.slurm()
        slurm.start_slurmctld()
        rec = self.record()
        rec["pids"] = {**rec["pids"], "slurmctld": slurm.pids["slurmctld"]}
        _write_file(self.record_path, json.dumps(rec, indent=2) + "\n")

    def restart_controller(self, down_for: float = 0) -> None:
        """Stop slurmctld for ``down_for`` seconds, then start it again; record its new PID."""
        slurm = self.slurm()
        slurm.restart_controller(down_for)
        rec = self.record()
        rec["pids"] = {**rec["pids"], "slurmctld": slurm.pids["slurmctld"]}
        _write_file(self.record_path, json.dumps(rec, indent=2) + "\n")

    def stop_slurmdbd(self) -> None:
        """Stop the accounting daemon only (tests of an accounting outage)."""
        slurm = self.slurm()
        if slurm.accounting is None:
            raise RuntimeError(f"the devstack in {self.state_dir} runs without accounting")
        slurm.accounting.stop_slurmdbd()

    def start_slurmdbd(self) -> None:
        slurm = self.slurm()
        slurm.accounting.start_slurmdbd()
        rec = self.record()
        rec["pids"] = {**rec["pids"], "slurmdbd": slurm.pids["slurmdbd"]}
        _write_file(self.record_path, json.dumps(rec, indent=2) + "\n")

    def write_client_files(self) -> None:
        """(Re)write the demo users' ~/.irods files for this stack's iRODS stand-in.

        Homes are shared by every stack on the machine; the last `devstack up`
        wins, so a test that ran another stack puts this one's back."""
        irods = self.record()["data_services"]["irods"]
        for user in DEMO_USERS:
            write_irods_client_config(user, irods["host"], irods["port"])

    def idp(self) -> LocalIdentityProvider:
        """A handle on the running identity provider (to change its users in tests)."""
        rec = self.record()
        return LocalIdentityProvider(
            self.state_dir, port=rec["idp"]["port"], users=Path(rec["idp"]["users_file"])
        )

    def down(self) -> None:
        if self.record() is None:
            return
        record = self.record()
        try:
            self.idp().stop()
            stop_data_services(record["pids"])
        finally:
            try:
                self.slurm().stop()
            finally:
                NodeNetwork.from_record(record["network"]).down()
