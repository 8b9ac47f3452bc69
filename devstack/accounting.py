"""Slurm accounting for the local stack: a private MariaDB and slurmdbd on loopback.

With it, ``sacct`` tells how jobs ended long after the controller forgot
them, ``sacctmgr`` holds the users' accounts and QoS, and slurmctld enforces
them (``AccountingStorageEnforce``), as on a site's cluster.  Everything lives
in the state directory: the database (run as Debian's ``mysql`` account,
``--no-defaults`` so the system's MariaDB configuration plays no part), the
generated ``slurmdbd.conf`` (mode 0600, next to slurm.conf, where slurmdbd
looks for it), logs and PID files.  Both daemons are stopped by PID.
"""

from __future__ import annotations

import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .processes import alive, free_port, private_log, read_pid, run, stop_pid, wait_until

DATABASE = "slurm_acct_db"
DB_USER = "slurm"
# A throw-away database on loopback: durability is not worth the seconds at start.
MARIADB_OPTIONS = [
    "--skip-name-resolve",
    "--skip-log-bin",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-flush-log-at-trx-commit=0",
    "--innodb-doublewrite=0",
    "--innodb-flush-method=nosync",
    # slurmdbd warns below this (long schema conversions hold locks).
    "--innodb-lock-wait-timeout=900",
]
# slurmctld's view of accounting: who may run (associations), under which
# limits and QoS.  Jobs without --account run under the user's default account.
ENFORCE = "associations,limits,qos"


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} was not written)"


@dataclass(frozen=True)
class AccountingSeed:
    """What sacctmgr is told at start: accounts, QoS, and who may use which.

    Built from the stack's own gateway settings and users, so that the spawn
    form's live values and the profiles agree: an account per group that may
    start sessions, the QoS the profiles name (MaxWall from the profile), and
    each user associated with the accounts of their groups (the first is their
    default) and with the project accounts they are in (``slurm_projects``),
    with the QoS of the profiles open to their groups.
    """

    accounts: Mapping[str, str]  # name -> description
    qos: Mapping[str, int]  # name -> MaxWall in hours
    users: Mapping[str, tuple[tuple[str, ...], tuple[str, ...]]]  # user -> (accounts, qos)

    @classmethod
    def from_settings(cls, settings: Mapping, users: Iterable[Mapping]) -> "AccountingSeed":
        profiles = settings["profiles"]
        groups = [*settings.get("group_limits", {})] + [
            g for p in profiles for g in p.get("groups", [])]
        accounts = dict.fromkeys(groups, "gateway group")
        qos = {p["qos"]: p["walltime_hours"]["max"] for p in profiles if p.get("qos")}
        by_user = {}
        for user in users:
            mine = [g for g in user.get("groups", []) if g in accounts]
            if not mine:
                continue  # no group that runs sessions: no association, no jobs
            projects = [p for p in user.get("slurm_projects", []) if p not in mine]
            accounts.update(dict.fromkeys(projects, "project"))
            user_qos = ["normal"] + sorted({
                p["qos"] for p in profiles
                if p.get("qos") and (not p.get("groups") or set(mine) & set(p["groups"]))
            })
            by_user[user["username"]] = (tuple(mine + projects), tuple(user_qos))
        return cls(accounts, qos, by_user)

    def commands(self, cluster: str) -> list[list[str]]:
        """sacctmgr argument lists: accounts of one kind, and users with the same
        associations, each in one command."""
        out = [["add", "cluster", cluster]]
        for name, hours in self.qos.items():
            out.append(["add", "qos", name, f"MaxWall={hours:d}:00:00"])
        kinds: dict[str, list[str]] = {}
        for account, description in self.accounts.items():
            kinds.setdefault(description, []).append(account)
        for description, names in kinds.items():
            out.append(["add", "account", ",".join(names), f"cluster={cluster}",
                        f"description={description}", "organization=bioimage-gateway"])
        same: dict[tuple, list[str]] = {}
        for user, assoc in self.users.items():
            same.setdefault(assoc, []).append(user)
        for (accounts, qos), names in same.items():
            out.append(["add", "user", ",".join(names), f"account={','.join(accounts)}",
                        f"defaultaccount={accounts[0]}", f"qos={','.join(qos)}",
                        f"cluster={cluster}"])
        return out


@dataclass
class LocalAccounting:
    """MariaDB + slurmdbd for one local cluster; ``slurm_conf_lines()`` wires slurmctld to it."""

    state_dir: Path
    slurm_dir: Path
    munge_socket: Path
    cluster: str
    db_port: int = 0
    dbd_port: int = 0
    # The LocalSlurm's own dict when it runs us: devstack.json records one set of PIDs.
    pids: dict[str, int] = field(default_factory=dict)
    _db_proc: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def dir(self) -> Path:
        return self.state_dir / "accounting"

    @property
    def db_dir(self) -> Path:
        # Owned by mysql: its socket, PID file and log are written there too.
        return self.dir / "mariadb"

    @property
    def db_socket(self) -> Path:
        return self.db_dir / "mariadbd.sock"

    @property
    def db_log(self) -> Path:
        return self.db_dir / "mariadbd.log"

    @property
    def dbd_conf(self) -> Path:
        return self.slurm_dir / "slurmdbd.conf"

    @property
    def dbd_log(self) -> Path:
        return self.dir / "slurmdbd.log"

    @property
    def slurm_conf(self) -> Path:
        return self.slurm_dir / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.slurm_conf), "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def slurm_conf_lines(self) -> list[str]:
        self.db_port = self.db_port or free_port()
        self.dbd_port = self.dbd_port or free_port()
        return [
            "AccountingStorageType=accounting_storage/slurmdbd",
            "AccountingStorageHost=127.0.0.1",
            f"AccountingStoragePort={self.dbd_port}",
            # For slurmdbd connections this names the munge socket to use.
            f"AccountingStoragePass={self.munge_socket}",
            f"AccountingStorageEnforce={ENFORCE}",
            "JobAcctGatherType=jobacct_gather/none",
        ]

    # ---- MariaDB -----------------------------------------------------------

    def _mysql_user(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam("mysql")
        except KeyError:
            raise RuntimeError("Slurm accounting needs MariaDB: the mysql account is missing "
                               "(apt-get install mariadb-server)") from None

    def start_mariadb(self, timeout: float = 60) -> None:
        mysql = self._mysql_user()
        data = self.db_dir / "data"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dir.chmod(0o711)  # mysql reaches its data folder here; nobody lists it
        if not (data / "mysql").is_dir():
            shutil.rmtree(self.db_dir, ignore_errors=True)
            data.mkdir(parents=True)
            for path in (self.db_dir, data):
                shutil.chown(path, mysql.pw_uid, mysql.pw_gid)
                path.chmod(0o700)
            run(["mariadb-install-db", "--no-defaults", "--user=mysql", f"--datadir={data}",
                 "--auth-root-authentication-method=socket", "--skip-test-db",
                 *MARIADB_OPTIONS])
        self.db_log.unlink(missing_ok=True)
        with private_log(self.dir / "mariadbd.out") as out:
            proc = self._db_proc = subprocess.Popen(
                ["mariadbd", "--no-defaults", "--user=mysql", f"--datadir={data}",
                 f"--socket={self.db_socket}", f"--port={self.db_port}",
                 "--bind-address=127.0.0.1", f"--pid-file={self.db_dir / 'mariadbd.pid'}",
                 f"--log-error={self.db_log}", *MARIADB_OPTIONS],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.pids["mariadbd"] = proc.pid
        self._wait(lambda: self.sql("SELECT 1", check=False).returncode == 0, proc.pid,
                   timeout, "MariaDB", self.db_log)

    def sql(self, statements: str, check: bool = True) -> subprocess.CompletedProcess:
        """Statements as the database's root (unix-socket auth), on stdin: no secret in argv."""
        return run(["mariadb", "--no-defaults", f"--socket={self.db_socket}", "-u", "root",
                    "--batch"], input=statements, check=check)

    # ---- slurmdbd ----------------------------------------------------------

    def write_dbd_conf(self) -> None:
        password = secrets.token_urlsafe(24)
        # Quoted identifiers and a password of URL-safe characters only.
        self.sql(
            f"CREATE USER IF NOT EXISTS '{DB_USER}'@'127.0.0.1';\n"
            f"ALTER USER '{DB_USER}'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL ON `{DATABASE}`.* TO '{DB_USER}'@'127.0.0.1';\n"
        )
        lines = [
            "# Generated by bioimage-gateway devstack; slurmdbd on loopback.",
            "DbdHost=localhost",
            "DbdAddr=127.0.0.1",
            f"DbdPort={self.dbd_port}",
            "SlurmUser=root",
            "AuthType=auth/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"PidFile={self.dir / 'slurmdbd.pid'}",
            f"LogFile={self.dbd_log}",
            "StorageType=accounting_storage/mysql",
            "StorageHost=127.0.0.1",
            f"StoragePort={self.db_port}",
            f"StorageUser={DB_USER}",
            f"StoragePass={password}",
            f"StorageLoc={DATABASE}",
        ]
        self.dbd_conf.touch(mode=0o600)
        self.dbd_conf.chmod(0o600)  # slurmdbd refuses a readable file with a password
        self.dbd_conf.write_text("\n".join(lines) + "\n")

    def start_slurmdbd(self, timeout: float = 60) -> None:
        pid_file = self.dir / "slurmdbd.pid"
        pid_file.unlink(missing_ok=True)
        # slurmdbd finds slurmdbd.conf next to $SLURM_CONF; it daemonizes.
        run(["slurmdbd"], env=self.env)
        pid = self.pids["slurmdbd"] = read_pid(pid_file)
        # It creates its tables before it listens; sacctmgr answers once it does.
        self._wait(self.answers, pid, timeout, "slurmdbd", self.dbd_log)

    def answers(self) -> bool:
        return self.sacctmgr(["-n", "-P", "show", "cluster"], check=False).returncode == 0

    def sacctmgr(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess:
        return run(["sacctmgr", *argv], env=self.env, check=check, timeout=60)

    def seed(self, seed: AccountingSeed) -> None:
        for command in seed.commands(self.cluster):
            result = self.sacctmgr(["-i", *command], check=False)
            # A restarted stack finds what it added before: not an error.
            output = result.stdout + result.stderr
            if result.returncode != 0 and not (
                "Nothing new added" in output or "already exists" in output
            ):
                raise RuntimeError(f"sacctmgr {' '.join(command)} failed: "
                                   f"{(result.stderr or result.stdout).strip()}")

    def _wait(self, check, pid: int, timeout: float, what: str, log: Path) -> None:
        def ready() -> bool:
            if not alive(pid):
                raise RuntimeError(f"{what} exited at start; last lines of {log}:\n{_tail(log)}")
            return check()

        try:
            wait_until(ready, timeout, what)
        except RuntimeError as exc:
            if "exited at start" in str(exc):
                raise
            raise RuntimeError(f"{exc}; last lines of {log}:\n{_tail(log)}") from None

    # ---- the whole ---------------------------------------------------------

    def start(self, seed: AccountingSeed) -> None:
        """Database, slurmdbd, then the cluster's accounts (before slurmctld starts)."""
        try:
            self.start_mariadb()
            self.write_dbd_conf()
            self.start_slurmdbd()
            self.seed(seed)
        except BaseException:
            self.stop()
            raise

    def stop_slurmdbd(self) -> None:
        stop_pid(self.pids.get("slurmdbd"), timeout=30)

    def stop(self) -> None:
        self.stop_slurmdbd()
        stop_pid(self.pids.get("mariadbd"), timeout=30)
        if self._db_proc is not None:
            self._db_proc.poll()  # reap it when it was our child
