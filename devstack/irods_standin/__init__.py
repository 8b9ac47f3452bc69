"""A stand-in for an iRODS server, for tests and the local demo stack (never for production).

It speaks the native iRODS protocol over TCP (XML packing, irodsProt 1) well enough for the
unmodified python-irodsclient: connection start-up and client/server negotiation (plain TCP),
native authentication (iRODS 4.3 JSON flow and the older AUTH_REQUEST/AUTH_RESPONSE one),
GenQuery (GEN_QUERY_AN) over collections, data objects, their AVUs and access rows, with
conditions, ordering, aggregates and paging by continueInx (at most 256 rows a page, as iRODS),
OBJ_STAT, collection create, data object create/open/read/write/seek/close/unlink (to the trash
unless forced)/checksum (``sha2:`` + base64 SHA-256), AVU add/set/rm, and access control
(ownership, read/write/own and the iRODS 4.3 levels, inheritance, groups). Its state is an
SQLite catalogue shaped after the ICAT and a vault directory.

Things the stand-in does differently from an iRODS server, on purpose or for lack of need:
no TLS, no PAM/GSI, one resource (``demoResc``) and one replica per object, no rules,
no tickets, no specific queries, no parallel transfer (ports), no federation. OBJ_STAT_AN on a
path the user may not read answers CAT_NO_ACCESS_PERMISSION (a real server's answer depends on
its ACL policy and version).

Use ``IrodsStandin`` to run one as a subprocess on 127.0.0.1 (a free port), stopped by PID;
use ``Catalogue`` (``seed_objects``, ``seed_metadata``, ``seed_access``) to fill it without
the protocol.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..processes import StandinProcess
from .catalogue import Catalogue, sha2
from .protocol import API

__all__ = ["IrodsStandin", "Catalogue", "sha2", "API"]


class IrodsStandin(StandinProcess):
    """One stand-in server process with its state in ``state_dir``."""

    label = "iRODS stand-in"

    def __init__(self, state_dir: Path | str, zone: str = "tempZone",
                 users: dict[str, str] | None = None, admins: dict[str, str] | None = None,
                 groups: dict[str, list[str]] | None = None, latency_ms: float = 0,
                 drop_after: int = -1, drop_api: str | None = None, drop_times: int = 1,
                 acl_policy: str = "strict", release: str = "rods4.3.4"):
        self.state_dir = Path(state_dir)
        self.zone = zone
        self.users = users or {}
        self.admins = admins or {"rods": "rods"}
        self.groups = groups or {}
        self.latency_ms = latency_ms
        self.drop_after, self.drop_api, self.drop_times = drop_after, drop_api, drop_times
        self.acl_policy = acl_policy
        self.release = release
        self.pid: int | None = None
        self.host = "127.0.0.1"
        self.port: int | None = None
        self._log = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-m", "bioimage_gateway.devstack.irods_standin", "serve",
                "--state-dir", str(self.state_dir), "--zone", self.zone,
                "--latency-ms", str(self.latency_ms), "--acl-policy", self.acl_policy,
                "--release", self.release]
        for flag, table in (("--user", self.users), ("--admin", self.admins)):
            for name, pw in table.items():
                argv += [flag, f"{name}:{pw}"]
        for group, members in self.groups.items():
            argv += ["--group", f"{group}:{','.join(members)}"]
        if self.drop_after >= 0:
            argv += ["--drop-after", str(self.drop_after), "--drop-times", str(self.drop_times)]
            if self.drop_api:
                argv += ["--drop-api", self.drop_api]
        return argv

    def start(self, timeout: float = 20) -> "IrodsStandin":
        self.state_dir.mkdir(parents=True, exist_ok=True)
        return self._spawn(timeout)

    def status(self) -> dict:
        """Counters the server keeps in status.json: requests, by_api, connections, drops..."""
        return json.loads((self.state_dir / "status.json").read_text())

    def catalogue(self) -> Catalogue:
        """The seeding API, writing straight into this stand-in's catalogue."""
        return Catalogue(self.state_dir, self.zone)

    def environment(self, user: str) -> dict:
        """An irods_environment.json for ``user``."""
        return {"irods_host": self.host, "irods_port": self.port, "irods_user_name": user,
                "irods_zone_name": self.zone, "irods_authentication_scheme": "native"}

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
