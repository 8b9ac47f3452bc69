"""A minimal single-user server for load tests: answers HTTP on the session's port.

Scale benchmarks start hundreds of sessions through the real spawner, batch
script, launcher and port callback; a JupyterLab for each would not fit on a
2-core machine, so the job runs this instead (about 15 MB, started in 0.1 s).
It reads its address from JUPYTERHUB_SERVICE_URL as jupyterhub-singleuser does.
"""

from __future__ import annotations

import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's naming
        # Like jupyterhub-singleuser, answer only under this session's own prefix.
        if not self.path.startswith(os.environ.get("JUPYTERHUB_SERVICE_PREFIX", "/")):
            self.send_error(404)
            return
        body = f"tiny session of {os.environ.get('JUPYTERHUB_USER', '?')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main() -> int:
    url = urlparse(os.environ["JUPYTERHUB_SERVICE_URL"])
    server = ThreadingHTTPServer((url.hostname or "0.0.0.0", url.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
