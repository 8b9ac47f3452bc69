"""Jupyter server extension: ``{base_url}dask-dashboard/<cluster>/...``, the dashboards of the
user's Dask clusters, proxied from their Unix sockets.

A :class:`~bioimage_gateway.dask_clusters.GatewayCluster`'s scheduler serves its dashboard
and HTTP routes on a Unix socket in the cluster's private folder
(``~/<dask.runtime_directory>/<cluster>/dashboard.sock``, 0600 in a 0700 folder of the
user's), never on a TCP port that other users on the node could reach.  This handler, in the
session's Jupyter server behind the hub's login, proxies HTTP and websockets to that socket
with jupyter-server-proxy's ``ProxyHandler`` (made for such subclasses; its ``unix_socket``).
A cluster name from the URL is checked before it becomes a path: one of this user's clusters,
in a folder of the user's alone; else 404.

Enabled in the session environment by
``etc/jupyter/jupyter_server_config.d/bioimage_gateway_dask.json``.
"""

from __future__ import annotations

import os
import pwd
import stat
from pathlib import Path

from jupyter_server.utils import url_path_join
from jupyter_server_proxy.handlers import ProxyHandler
from tornado import web

from bioimage_gateway.dask_security import CLUSTER_NAME, DASHBOARD_SOCKET
from bioimage_gateway.dask_settings import load_dask_settings

ROUTE = "dask-dashboard"


def _is_own(path: Path, kind: int, private: bool) -> bool:
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if stat.S_IFMT(info.st_mode) != kind or info.st_uid != os.geteuid():
        return False
    return not (private and info.st_mode & 0o077)


def dashboard_socket(runtime_directory: Path, cluster: str) -> str | None:
    """The socket of this user's cluster ``cluster``; None unless the name is one of the user's
    clusters and folder and socket are the user's alone (nothing else is ever connected to)."""
    user = pwd.getpwuid(os.geteuid()).pw_name
    if not CLUSTER_NAME.match(cluster) or not cluster.startswith(f"{user}-"):
        return None
    folder = runtime_directory / cluster
    socket_path = folder / DASHBOARD_SOCKET
    if not (_is_own(runtime_directory, stat.S_IFDIR, True) and _is_own(folder, stat.S_IFDIR, True)
            and _is_own(socket_path, stat.S_IFSOCK, False)):
        return None
    return str(socket_path)


class DaskDashboardHandler(ProxyHandler):
    """HTTP and websockets of ``dask-dashboard/<cluster>/<path>`` to the cluster's socket."""

    def initialize(self, runtime_directory: Path):
        self.runtime_directory = runtime_directory

    def _aim(self, cluster: str) -> None:
        socket_path = dashboard_socket(self.runtime_directory, cluster)
        if socket_path is None:
            raise web.HTTPError(404, f"no Dask dashboard {cluster!r} in this session")
        self.unix_socket = socket_path
        # Redirects of the dashboard (/ -> /status) are rewritten below this prefix.
        self.proxy_base = url_path_join(ROUTE, cluster)

    def proxy(self, cluster, proxied_path):
        self._aim(cluster)
        return super().proxy("localhost", 0, proxied_path)

    async def http_get(self, cluster, proxied_path):
        return await self.proxy(cluster, proxied_path)

    async def open(self, cluster, proxied_path):
        self._aim(cluster)
        return await super().proxy_open("localhost", 0, proxied_path)

    def post(self, cluster, proxied_path):
        return self.proxy(cluster, proxied_path)

    def put(self, cluster, proxied_path):
        return self.proxy(cluster, proxied_path)

    def delete(self, cluster, proxied_path):
        return self.proxy(cluster, proxied_path)

    def head(self, cluster, proxied_path):
        return self.proxy(cluster, proxied_path)

    def patch(self, cluster, proxied_path):
        return self.proxy(cluster, proxied_path)

    def options(self, cluster, proxied_path):
        return self.proxy(cluster, proxied_path)


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.dask_dashboard"}]


def _load_jupyter_server_extension(serverapp) -> None:
    home = Path(pwd.getpwuid(os.geteuid()).pw_dir)
    runtime_directory = home / load_dask_settings().runtime_directory
    route = url_path_join(serverapp.web_app.settings["base_url"], ROUTE, r"([^/]+)/(.*)")
    serverapp.web_app.add_handlers(
        ".*$", [(route, DaskDashboardHandler, {"runtime_directory": runtime_directory})])
