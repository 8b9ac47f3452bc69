"""Helpers for the POSIX, HTTP and OME-Zarr catalog tests: a small sample image, a web site
served by Debian's nginx on loopback (generated configuration, stopped by PID)."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import requests

from bioimage_gateway.devstack.processes import alive, free_port, stop_pid

NGINX = "/usr/sbin/nginx"

# The image every access path reads: odd sizes so that edge chunks are partial.
IMAGE = dict(name="test-embryo", shape_tczyx=(2, 2, 5, 70, 90), levels=3,
             channel_names=["nuclei", "membrane"], chunks=(1, 1, 2, 32, 32), seed=7,
             pixel_size_um=(2.0, 0.5, 0.5),
             rembi={"rembi:biosample.organism": "Mus musculus",
                    "rembi:image_acquisition.modality": "light-sheet",
                    "rembi:image_data.pixel_size_xy": ("0.5", "um")})
IMAGE_DIR = "test-embryo.ome.zarr"

RAW = random.Random(5).randbytes(300_000)  # an object to read in byte ranges
UNICODE_NAME = "Zellkern ü #1 & 10% ✓.tif"


def sha2_of(content: bytes) -> str:
    return "sha2:" + base64.b64encode(hashlib.sha256(content).digest()).decode()


def make_tree(root: Path) -> None:
    """The files both the POSIX and the HTTP tests look at (the image is added by the fixture)."""
    (root / "study1").mkdir(parents=True)
    (root / "study1" / "raw.bin").write_bytes(RAW)
    (root / "study1" / "notes.txt").write_text("light-sheet run 3\n")
    (root / "study1" / "sub").mkdir()
    (root / "unicode").mkdir()
    (root / "unicode" / UNICODE_NAME).write_bytes(b"nucleus")
    (root / "private").mkdir()
    (root / "private" / "secret.bin").write_bytes(b"not for you")
    (root / "digest").mkdir()
    (root / "digest" / "raw.bin").write_bytes(RAW)
    (root / "digest" / "old.bin").write_bytes(b"old style")
    (root / "noranges").mkdir()
    (root / "noranges" / "raw.bin").write_bytes(RAW)
    (root / "locked").mkdir()
    (root / "locked" / "secret.bin").write_bytes(b"mode 600")
    (root / "login").mkdir()
    (root / "login" / "data.bin").write_bytes(b"behind a password")
    for folder, _, files in os.walk(root):
        os.chmod(folder, 0o755)
        for f in files:
            os.chmod(Path(folder, f), 0o644)
    os.chmod(root / "locked" / "secret.bin", 0o600)  # nginx's workers (nobody) may not read it


@contextlib.contextmanager
def nginx_serving(root: Path, server_class: type | None = None):
    """Nginx on ``root`` for the length of a block; stopped by PID, and checked gone."""
    server = (server_class or Nginx)(root).start()
    try:
        yield server
    finally:
        pid = server.pid
        server.stop()
        assert not server.running, f"nginx pid {pid} still running"


class Nginx:
    """Debian's nginx serving ``root`` on 127.0.0.1 with JSON directory indexes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.dir = Path(tempfile.mkdtemp(prefix="gw-nginx-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.port = free_port()
        self.pid: int | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        d = self.dir
        raw_digest = base64.b64encode(hashlib.sha256(RAW).digest()).decode()
        old_digest = base64.b64encode(hashlib.sha256(b"old style").digest()).decode()
        user = "user nobody nogroup;" if os.geteuid() == 0 else ""
        (d / "htpasswd").write_text("reader:{PLAIN}reader-secret\n")
        return f"""
{user}
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 64; }}
http {{
    log_format gw '$connection $connection_requests "$request" $status "$http_user_agent"';
    access_log {d}/access.log gw;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    types {{ application/json json; text/plain txt; }}
    default_type application/octet-stream;
    large_client_header_buffers 4 4k;
    server {{
        listen 127.0.0.1:{self.port};
        root {self.root};
        autoindex on;
        autoindex_format json;
        location /private/ {{ deny all; }}
        location /broken/ {{ return 503; }}
        location /login/ {{ auth_basic "data"; auth_basic_user_file {d}/htpasswd; }}
        location /noranges/ {{ max_ranges 0; }}
        location = /digest/raw.bin {{ add_header Repr-Digest "sha-256=:{raw_digest}:"; }}
        location = /digest/old.bin {{ add_header Digest "SHA-256={old_digest}"; }}
        location /html/ {{ autoindex_format html; alias {self.root}/study1/; }}
{self.locations()}
    }}
{self.servers()}
}}
"""

    def locations(self) -> str:
        """More ``location`` blocks for the server (none here)."""
        return ""

    def servers(self) -> str:
        """More ``server`` blocks (none here)."""
        return ""

    def start(self, timeout: float = 15) -> "Nginx":
        conf = self.dir / "nginx.conf"
        conf.write_text(self.config())
        log = open(self.dir / "stderr.log", "wb")
        proc = subprocess.Popen([NGINX, "-p", str(self.dir), "-e", str(self.dir / "error.log"),
                                 "-c", str(conf), "-g", "daemon off;"],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        log.close()
        self._proc, self.pid = proc, proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                logs = "".join(p.read_text() for p in (self.dir / "stderr.log", self.dir / "error.log")
                               if p.exists())
                raise RuntimeError(f"nginx exited with {proc.returncode}: {logs}")
            try:
                requests.head(self.url + "/", timeout=1)
                return self
            except requests.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not answer on {self.url} within {timeout:.0f} s")

    def log(self) -> list[str]:
        """Access log lines: ``<connection> <request on it> "<request>" <status> "<agent>"``."""
        log = self.dir / "access.log"
        return log.read_text().splitlines() if log.exists() else []

    def requests_logged(self) -> int:
        return len(self.log())

    def stop(self) -> None:
        if self.pid:
            stop_pid(self.pid, timeout=10)
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.pid = None
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def running(self) -> bool:
        return alive(self.pid)


# --- a hostile web server ----------------------------------------------------------------------

HOSTILE_LISTINGS = {  # the raw JSON a hostile server sends as a directory listing
    "dotdot": '[{"name": "..", "type": "directory", "mtime": "Mon, 01 Jan 2024 00:00:00 GMT"}]',
    "escaped-slash": '[{"name": "..\\/..\\/00-x.py", "type": "file", "size": 5}]',
    "unicode-dots": '[{"name": "\\u002e\\u002e\\u002f00-x.py", "type": "file", "size": 5}]',
    "nul": '[{"name": "a\\u0000b", "type": "file", "size": 5}]',
    "absolute": '[{"name": "/etc/passwd", "type": "file", "size": 5}]',
}
HOSTILE_NAMES = {"dotdot": "..", "escaped-slash": "../../00-x.py", "unicode-dots": "../00-x.py",
                 "nul": "a\0b", "absolute": "/etc/passwd"}
PAYLOAD = "print('this ran as the user who staged it')\n"
# Where the redirects below lead, as seen from a staging entry (<scratch>/bioimage-gateway/staging/<key>):
# the scratch folder's parent, "home/alice/...": a would-be IPython start-up file.
ESCAPE = "../../../../home/alice/.ipython/profile_default/startup/00-x.py"
# How a server may spell "../" in a redirect's target; nginx resolves each of them itself.
ESCAPE_ENCODINGS = {"..%2F": ("..", "%2F"), "%2E%2E%2F": ("%2E%2E", "%2F"), "%2e%2e%2f": ("%2e%2e", "%2f"),
                    "..%2f": ("..", "%2f"), "%2E.%2F": ("%2E.", "%2F")}


def escaping_location(encoding: str) -> str:
    """A redirect target that nginx serves (it resolves the ``..`` below ``/d/d/...`` itself)
    and whose last segment, decoded, is ``ESCAPE``."""
    dots, sep = ESCAPE_ENCODINGS[encoding]
    segments = ESCAPE.split("/")
    hops = segments.count("..")
    return "/d" * hops + "/" + sep.join(dots if s == ".." else s for s in segments)


class HostileNginx(Nginx):
    """Debian's nginx answering as a hostile server would, beside ``root``'s ordinary files:

    * ``/moved?to=LOCATION`` redirects (302) to ``LOCATION``, as given (nginx's ``$arg_to``:
      not decoded), e.g. ``/d/d/..%2F..%2Fhome%2Fx`` (which nginx itself resolves to ``/home/x``);
    * ``/loop`` redirects to itself;
    * ``/escape/N`` redirects to ``escaping_location(ESCAPE_ENCODINGS key N)`` (fixed here, as
      requests rewrites ``%2E`` to ``.`` in what it sends, so ``/moved`` cannot carry it);
    * anything under ``/home/`` answers with ``PAYLOAD`` (a would-be IPython start-up file);
    * ``/listing/NAME/`` is ``HOSTILE_LISTINGS[NAME]``, served as ``application/json`` (and
      ``/listing/NAME`` redirects there, as for a folder);
    * on ``https_url`` (a self-signed certificate, ``cert``), ``/down?to=URL`` redirects to ``URL``.
    """

    def __init__(self, root: Path):
        super().__init__(root)
        self.https_port = free_port()
        self.https_url = f"https://127.0.0.1:{self.https_port}"
        self.cert = self.dir / "cert.pem"
        listings = Path(root) / "listings"
        listings.mkdir(mode=0o755, exist_ok=True)
        for name, text in HOSTILE_LISTINGS.items():
            (listings / f"{name}.json").write_text(text)
            (listings / f"{name}.json").chmod(0o644)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(self.dir / "key.pem"), "-out", str(self.cert)],
                       check=True, capture_output=True)
        (self.dir / "key.pem").chmod(0o644)  # read by nginx's workers (a throw-away test key)

    def locations(self) -> str:
        escapes = "".join(f"        location = /escape/{n} {{ return 302 {escaping_location(encoding)}; }}\n"
                          for n, encoding in enumerate(ESCAPE_ENCODINGS))
        return f"""
        location = /moved {{ return 302 $arg_to; }}
        location = /loop {{ return 302 /loop; }}
{escapes}
        location /home/ {{ default_type text/x-python; return 200 "{PAYLOAD.strip()}\\n"; }}
        location ~ ^/listing/(?<which>[a-z-]+)/$ {{
            default_type application/json; try_files /listings/$which.json =404; }}
        location ~ ^/listing/([a-z-]+)$ {{ return 301 /listing/$1/; }}
"""

    def servers(self) -> str:
        d = self.dir
        return f"""
    server {{
        listen 127.0.0.1:{self.https_port} ssl;
        ssl_certificate {d}/cert.pem; ssl_certificate_key {d}/key.pem;
        root {self.root};
        location = /down {{ return 302 $arg_to; }}
    }}
"""
