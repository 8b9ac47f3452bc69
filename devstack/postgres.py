"""A PostgreSQL server (Debian's) for the hub's database, in the state directory.

SQLite is the hub's default; sites with hundreds of users point
``hub.db_url`` at PostgreSQL.  Tests run the hub on both.  The cluster runs
as Debian's ``postgres`` account (initdb refuses root), listens on loopback
on a free port, trusts local connections, and is stopped by PID.
"""

from __future__ import annotations

import glob
import shutil
from dataclasses import dataclass
from pathlib import Path

from .processes import free_port, run, stop_pid, wait_until


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian package postgresql)")
    return found[-1]


@dataclass
class LocalPostgres:
    state_dir: Path
    port: int = 0
    database: str = "jupyterhub"
    pid: int | None = None

    @property
    def data_dir(self) -> Path:
        return self.state_dir / "postgres"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{self.database}"

    def _as_postgres(self, argv: list[str], **kwargs):
        return run(["/usr/sbin/runuser", "-u", "postgres", "--", *argv], **kwargs)

    def start(self) -> "LocalPostgres":
        self.port = self.port or free_port()
        if not (self.data_dir / "PG_VERSION").exists():
            self.data_dir.mkdir(parents=True, exist_ok=True)
            shutil.chown(self.data_dir, "postgres", "postgres")
            self.data_dir.chmod(0o700)
            self._as_postgres([_pg_bin("initdb"), "-D", str(self.data_dir), "-U", "postgres",
                               "--auth=trust", "--encoding=UTF8", "--no-instructions"])
        self._as_postgres([
            _pg_bin("pg_ctl"), "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
            "-o", f"-p {self.port} -k {self.data_dir} -c listen_addresses=127.0.0.1", "-w",
            "start",
        ])
        wait_until(self._answers, 30, "PostgreSQL")
        # postmaster.pid: the PID on the first line, then data dir, start time, port...
        self.pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        exists = self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}'")
        if exists.strip() != "1":
            self.psql(f"CREATE DATABASE {self.database}", database="postgres")
        return self

    def _answers(self) -> bool:
        result = run([_pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                     check=False)
        return result.returncode == 0

    def psql(self, sql: str, database: str = "postgres") -> str:
        result = run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                      "-d", database, "-tA", "-c", sql])
        return result.stdout

    def stop(self) -> None:
        stop_pid(self.pid, timeout=30)
