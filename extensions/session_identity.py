"""``GET {base_url}bioimage-gateway/identity?challenge=C``: the session proves it is itself.

Several users share a compute node, and anything that listens there answers them all: the
hub does not take a 200 on a reported port as this session's.  It sends a fresh challenge
and expects :func:`bioimage_gateway.extensions.session_proof.proof` of it under the
session's own API token, for this user, server name and the port this server listens on.
The request carries no credential (it may reach someone else's server), so the handler
is open; it only ever gives proofs for its own port.

The server binds a port the kernel chose (the launcher starts it on port 0), so the
address JupyterHub gave it (``JUPYTERHUB_SERVICE_URL``) says port 0; this extension puts
the port the server listens on in its place, for the kernels it starts (a kernel reaches
its own server there, e.g. to start the desktop).
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

from jupyter_server.auth.decorator import allow_unauthenticated
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web

from .session_proof import PATH, proof, valid_challenge

SERVICE_URL = "JUPYTERHUB_SERVICE_URL"


class IdentityHandler(JupyterHandler):
    @allow_unauthenticated
    def get(self):
        challenge = self.get_argument("challenge", "")
        if not valid_challenge(challenge):
            raise web.HTTPError(400, "challenge: 32 to 128 characters of A-Z, a-z, 0-9, _ and -")
        identity = self.settings["bioimage_gateway_identity"]
        self.set_header("Cache-Control", "no-store")
        self.finish({"proof": proof(identity["token"], user=identity["user"],
                                    server_name=identity["server_name"], port=self.serverapp.port,
                                    challenge=challenge)})


def with_port(url: str, port: int) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{port}"))


def _jupyter_server_extension_points():
    return [{"module": "bioimage_gateway.extensions.session_identity"}]


def _load_jupyter_server_extension(serverapp) -> None:
    token = os.environ.get("JUPYTERHUB_API_TOKEN")
    if not token:
        serverapp.log.warning("bioimage-gateway: not a JupyterHub session, no identity to prove")
        return
    serverapp.web_app.settings["bioimage_gateway_identity"] = {
        "token": token,
        "user": os.environ.get("JUPYTERHUB_USER", ""),
        "server_name": os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
    }
    route = url_path_join(serverapp.web_app.settings["base_url"], PATH)
    serverapp.web_app.add_handlers(".*$", [(route, IdentityHandler)])


async def _start_jupyter_server_extension(serverapp) -> None:
    # Extensions start once the event loop runs: the server is listening on its port by
    # then (it exits if it cannot bind it), and no kernel has started yet.
    url = os.environ.get(SERVICE_URL)
    if url and not serverapp.sock:
        os.environ[SERVICE_URL] = with_port(url, serverapp.port)
