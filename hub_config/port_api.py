"""The one thing a starting session may tell the hub: the port it listens on.

The session's launcher posts ``{"port": N}`` to ``/hub/api/batchspawner``, the path
batchspawner's own callback used (``extensions/session_launcher.py``).  batchspawner's handler
there set *any* spawner attribute named in the request body, with the job's token; since the
job runs as the user, a user could have changed the commands the hub runs (``cmd``, ...).
The handler here accepts a port and nothing else, only from the session's own token, and
only while that session is starting.

A reported port is not yet trusted: nodes are shared, and another user's server may
listen there.  The spawner routes to it only once the server there proves it holds the
session's token (``GatewaySpawner._check_identity``, ``extensions/session_proof.py``).
"""

from __future__ import annotations

import hmac
import json

from jupyterhub import apihandlers
from jupyterhub.apihandlers import APIHandler
from tornado import web

PORT_API_PATH = r"/api/batchspawner"


def _spawner_for_token(user, token: str | None):
    if not token:
        return None
    for spawner in user.spawners.values():
        own = getattr(spawner, "api_token", None)
        if own and hmac.compare_digest(own.encode(), token.encode()):
            return spawner
    return None


def parse_port(body: object) -> int:
    if not isinstance(body, dict) or set(body) != {"port"}:
        keys = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise web.HTTPError(400, f"only {{'port': N}} is accepted, got {keys}")
    port = body["port"]
    if isinstance(port, bool) or not isinstance(port, int) or not 1024 <= port <= 65535:
        raise web.HTTPError(400, f"port must be an integer from 1024 to 65535, got {port!r}")
    return port


def accept_port(user, token: str | None, body: object):
    """The starting session (spawner) that ``token`` belongs to and the port it reports;
    HTTPError 403 (not a session's own token), 400 (not exactly a valid port) or 409 (that
    session is not waiting for a port)."""
    if getattr(user, "kind", None) != "user":
        raise web.HTTPError(403, "only a user's own starting session may report a port")
    spawner = _spawner_for_token(user, token)
    if spawner is None:
        raise web.HTTPError(403, "only the session's own token may report its port")
    port = parse_port(body)
    if spawner.pending != "spawn" or spawner.port:
        raise web.HTTPError(409, "this session is not waiting for a port")
    return spawner, port


class SessionPortHandler(APIHandler):
    """POST {"port": N} from a starting session's job."""

    @web.authenticated
    def post(self):
        spawner, port = accept_port(self.current_user, self.get_auth_token(),
                                    self.get_json_body())
        spawner.port = port
        self.log.info("Session %s reported port %d", spawner._log_name, port)
        self.set_status(201)
        self.finish(json.dumps({"port": port}))


def install() -> None:
    """Put the handler among the hub's API routes, ahead of any other at its path (idempotent).

    JupyterHub builds its routes from this list, as batchspawner's import extends it; tornado
    takes the first route that matches, so ours answers even if batchspawner is imported in
    the hub's process after this (the gateway's spawner no longer imports it)."""
    routes = apihandlers.default_handlers
    routes[:] = [route for route in routes if route[0] != PORT_API_PATH]
    routes.insert(0, (PORT_API_PATH, SessionPortHandler))
