"""What keeps a user's Dask cluster to that user on shared nodes.

Anything that listens on a compute node is reachable by every user there; hence:

* **TLS with per-cluster credentials** (:class:`ClusterCredentials`): each cluster gets its
  own self-signed certificate and key (``distributed.security.Security.temporary``), written
  0600 into a folder of the cluster's own (0700, the user's, on the shared file system, so that
  workers on other nodes read them).  Scheduler, workers and client require each other's
  certificate (mutual TLS), so a process without the key cannot talk to the cluster: the
  handshake fails, and plain TCP is refused as well.
* **No HTTP on TCP**: the scheduler's and the workers' HTTP servers (the dashboard and routes
  such as ``/api/v1/retire_workers``) listen on a Unix socket in a 0700 folder of the user's
  (:class:`GatewayScheduler`, :class:`GatewayWorker`); the session's Jupyter server reaches the
  scheduler's through jupyter-server-proxy (``bioimage_gateway.extensions.dask_dashboard``),
  behind the hub's login.
* **Private spill folders**: ``python -m bioimage_gateway.dask_watch spill-directory PATH``
  runs at the start of each worker job and makes the worker's ``local_directory`` a 0700 folder
  of the user's, or refuses one that someone else made (or a link), naming it and its owner
  (in the job's log and in the cluster's folder, where :meth:`ClusterCredentials.refusals`
  finds it).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from distributed import Scheduler, Worker
from distributed.http.routing import RoutingApplication
from distributed.security import Security
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_unix_socket

from .private_paths import (
    PrivatePathError,
    check_socket_path,
    new_private_directory,
    private_directory,
    read_private_file,
    remove_private_directory,
    write_private_file,
)

CERTIFICATE = "tls.crt"  # the cluster's self-signed certificate, also its CA
KEY = "tls.key"
DASHBOARD_SOCKET = "dashboard.sock"
WORKER_SOCKET = "http.sock"
REFUSAL_PREFIX = "refused-"  # as dask_watch's spill-directory writes it
CLUSTER_NAME = re.compile(r"^[a-z_][a-z0-9_.-]{0,31}-(?:[0-9]{1,12}|nosession)-[0-9a-f]{8}$")


# ---- the cluster's private folder and TLS credentials -----------------------


@dataclass(frozen=True)
class ClusterCredentials:
    """A cluster's private folder: its TLS certificate and key, the dashboard's socket, job
    scripts while they are submitted, and the workers' refusals."""

    directory: Path

    @classmethod
    def create(cls, runtime_directory: Path, name: str) -> "ClusterCredentials":
        """A new folder ``runtime_directory/name`` (both 0700 and the user's) with fresh
        credentials; ``PrivatePathError`` names a folder of someone else's or a link."""
        if not CLUSTER_NAME.match(name):
            raise ValueError(f"{name!r} is not a Dask cluster name of the gateway")
        base = private_directory(runtime_directory, "Dask credentials directory",
                                 create_parents=True)
        directory = new_private_directory(base, name, "Dask credentials directory")
        try:
            pems = Security.temporary()  # an in-memory self-signed certificate and key
            write_private_file(directory, CERTIFICATE, pems.tls_scheduler_cert.encode())
            write_private_file(directory, KEY, pems.tls_scheduler_key.encode())
            credentials = cls(directory)
            check_socket_path(credentials.dashboard_socket)
        except BaseException:
            remove_private_directory(directory)
            raise
        return credentials

    @property
    def certificate(self) -> str:
        return str(self.directory / CERTIFICATE)

    @property
    def key(self) -> str:
        return str(self.directory / KEY)

    @property
    def dashboard_socket(self) -> str:
        return str(self.directory / DASHBOARD_SOCKET)

    def security(self) -> Security:
        """Mutual TLS for every role, from the files (nothing is written anywhere else)."""
        return Security(
            require_encryption=True,
            tls_ca_file=self.certificate,
            tls_client_cert=self.certificate, tls_client_key=self.key,
            tls_scheduler_cert=self.certificate, tls_scheduler_key=self.key,
            tls_worker_cert=self.certificate, tls_worker_key=self.key,
        )

    @property
    def refusal_prefix(self) -> str:
        """A worker job reports why it refused to start in ``<prefix><job id>``."""
        return f"{self.directory}/{REFUSAL_PREFIX}"

    def refusals(self) -> dict[str, str]:
        """Job id -> why that worker job refused to start."""
        found = {}
        try:
            names = os.listdir(self.directory)
        except OSError:
            return found
        for name in names:
            job_id = name[len(REFUSAL_PREFIX):]
            if name.startswith(REFUSAL_PREFIX) and job_id.isdigit():
                text = read_private_file(self.directory / name)
                if text:
                    found[job_id] = text.decode(errors="replace").strip()
        return found

    def remove(self) -> bool:
        return remove_private_directory(self.directory)


# ---- HTTP servers on Unix sockets ------------------------------------------


class UnixSocketHttpServer:
    """For a distributed ``ServerNode`` (scheduler, worker): its HTTP server (the dashboard and
    the HTTP routes) listens on a Unix socket at ``http_socket_path()``, mode 0600 in a 0700
    folder, and on no TCP port.  ``dashboard_address`` is not used."""

    def http_socket_path(self) -> str:
        raise NotImplementedError

    def start_http_server(self, routes, dashboard_address, default_port=0, ssl_options=None):
        path = self.http_socket_path()
        check_socket_path(path)
        self.http_application = RoutingApplication(routes)
        self.http_server = HTTPServer(self.http_application)
        self.http_server.add_socket(bind_unix_socket(path, mode=0o600))
        # As distributed's own server records them: where it listens, and no TCP port.
        self.http_server.address, self.http_server.port = path, None
        self.services["dashboard"] = self.http_server  # stopped with the node's services


class GatewayScheduler(UnixSocketHttpServer, Scheduler):
    """The scheduler, its dashboard on the Unix socket ``dashboard_socket``."""

    def __init__(self, *args, dashboard_socket: str, **kwargs):
        self.dashboard_socket = dashboard_socket  # start_http_server runs in __init__
        super().__init__(*args, **kwargs)

    def http_socket_path(self) -> str:
        return self.dashboard_socket


class GatewayWorker(UnixSocketHttpServer, Worker):
    """A worker (``dask worker --worker-class``), its HTTP routes on a Unix socket in its own
    private work folder, inside the spill folder."""

    def http_socket_path(self) -> str:
        return os.path.join(self.local_directory, WORKER_SOCKET)


__all__ = ["ClusterCredentials", "GatewayScheduler", "GatewayWorker", "PrivatePathError",
           "UnixSocketHttpServer"]
