"""The one thing a starting session may tell the hub: the port it listens on.

batchspawner's own ``/hub/api/batchspawner`` handler sets *any* spawner
attribute named in the request body, with the job's token; since the job runs
as the user, a user could change the commands the hub runs (``cmd``,
``batch_submit_cmd``, ``exec_prefix``...).  This module takes that handler
out of the hub and puts one in its place that accepts a port and nothing else,
only from the session's own token, and only while that session is starting.

A reported port is not yet trusted: nodes are shared, and another user's server may
listen there.  The spawner routes to it only once the server there proves it holds the
session's token (``GatewaySpawner._check_identity``, ``extensions/session_proof.py``).
"""

from __future__ import annotations

import hmac
import json

import batchspawner.api
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


class SessionPortHandler(APIHandler):
    """POST {"port": N} from a starting session's job."""

    @web.authenticated
    def post(self):
        user = self.current_user
        if getattr(user, "kind", None) != "user":
            raise web.HTTPError(403, "only a user's own starting session may report a port")
        spawner = _spawner_for_token(user, self.get_auth_token())
        if spawner is None:
            raise web.HTTPError(403, "only the session's own token may report its port")
        port = parse_port(self.get_json_body())
        if spawner.pending != "spawn" or spawner.port:
            raise web.HTTPError(409, "this session is not waiting for a port")
        spawner.port = port
        self.log.info("Session %s reported port %d", spawner._log_name, port)
        self.set_status(201)
        self.finish(json.dumps({"port": port}))


def install() -> None:
    """Replace batchspawner's handler in the hub's API routes (idempotent)."""
    stock = batchspawner.api.BatchSpawnerAPIHandler
    apihandlers.default_handlers[:] = [
        route
        for route in apihandlers.default_handlers
        if route[1] is not stock and route[1] is not SessionPortHandler
    ]
    apihandlers.default_handlers.append((PORT_API_PATH, SessionPortHandler))
