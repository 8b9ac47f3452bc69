"""A minimal single-user server for load tests: answers HTTP on the session's port.

Scale benchmarks start hundreds of sessions through the real spawner, batch
script, launcher and port callback; a JupyterLab for each would not fit on a
2-core machine, so the job runs this instead (about 15 MB, started in 0.1 s).
Like jupyterhub-singleuser under the gateway's launcher, it listens where
``--ServerApp.ip=`` and ``--ServerApp.port=`` say (port 0: one the kernel picks), and
answers the hub's identity challenge (``extensions.session_proof``) for the port it holds.
"""

from __future__ import annotations

import os
import signal
import sys
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from bioimage_gateway.extensions.session_proof import PATH, proof, valid_challenge


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        # Like jupyterhub-singleuser, answer only under this session's own prefix.
        prefix = os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")
        if not self.path.startswith(prefix):
            self.send_error(404)
            return
        url = urlparse(self.path)
        if url.path == prefix + PATH:
            self._identity(parse_qs(url.query).get("challenge", [""])[0])
            return
        self._send(f"tiny session of {os.environ.get('JUPYTERHUB_USER', '?')}\n".encode(), "text/plain")

    def _identity(self, challenge: str) -> None:
        if not valid_challenge(challenge):
            self.send_error(400)
            return
        answer = proof(os.environ["JUPYTERHUB_API_TOKEN"], user=os.environ.get("JUPYTERHUB_USER", ""),
                       server_name=os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
                       port=self.server.server_address[1], challenge=challenge)
        self._send(json.dumps({"proof": answer}).encode(), "application/json")

    def _send(self, body: bytes, kind: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _option(argv: list[str], name: str) -> str | None:
    for arg in argv:
        if arg.startswith(f"--ServerApp.{name}="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    host = _option(argv, "ip") or url.hostname or "0.0.0.0"
    port = _option(argv, "port")
    server = ThreadingHTTPServer((host, int(port) if port is not None else url.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
