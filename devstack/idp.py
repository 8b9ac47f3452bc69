"""The local identity provider of the devstack and the tests: Authentik's face on `oidc-provider`.

The provider is the certified npm package ``oidc-provider`` run by
``idp_node/server.mjs`` (shipped inside this Python package), configured with
Authentik's URLs for one application slug::

    /application/o/<slug>/.well-known/openid-configuration   discovery
    /application/o/authorize/   /application/o/token/   /application/o/userinfo/
    /application/o/revoke/      /application/o/introspect/
    /application/o/<slug>/end-session/   /application/o/<slug>/jwks/
    /if/flow/<uid>/                                           login page

and Authentik's claims (``sub``, ``preferred_username``, ``name``, ``email``,
``email_verified``, ``groups``; ``groups`` comes with the ``profile`` scope).

``email_verified`` is what Authentik's scope mapping for ``email`` returns.
The mapping Authentik ships (``blueprints/system/providers-oauth2.yaml``,
managed ``goauthentik.io/providers/oauth2/scope-email``) returns
``"email_verified": False`` for every user since Authentik 2025.10 (changed by
goauthentik/authentik#16206; "Default OAuth scope mappings" in the 2025.10
release notes): Authentik cannot tell whether a user controls an address
(its docs, "Verify email addresses"; goauthentik/authentik#23390). That is
this provider's default too (``email_scope_mapping="authentik-default"``).
Sites that verify addresses configure a custom mapping, which the other modes
stand for: ``"verified"`` (the docs' mapping returning ``True``) and
``"user-attribute"`` (the docs' mapping returning the user's
``attributes["email_verified"]``, false when unset).

Users live in a JSON file (a list of ``{"username", "password", "groups",
"email"?, "name"?, "attributes"?}``) that the provider reads again on every
login and token request, so a change to a user's groups takes effect at the
next login without restarting anything (:meth:`LocalIdentityProvider.set_user`).

It listens on 127.0.0.1 only and keeps everything in memory: it is for a
machine's own devstack and for tests, never for a site.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import resources
from pathlib import Path
from typing import Any

from .processes import alive, private_log, stop_pid

# Beside the Python environment it serves (/opt/bioimage-gateway/venv ->
# /opt/bioimage-gateway/idp), so that each installation prefix has its own copy.
DEFAULT_PREFIX = Path(sys.prefix).parent / "idp"
NODE_FILES = ("package.json", "package-lock.json", "server.mjs", "login.html")
DEFAULT_SLUG = "bioimage-gateway"
EMAIL_DOMAIN = "example.org"
# Authentik's shipped scope mapping for 'email', and the custom ones sites configure.
EMAIL_SCOPE_MAPPINGS = ("authentik-default", "verified", "user-attribute")


def node_sources() -> Path:
    """The folder of the node app inside the installed package.

    ``BIOIMAGE_GATEWAY_IDP_SOURCE`` points elsewhere (a checkout's
    ``devstack/idp_node``) when working on the node app without reinstalling.
    """
    override = os.environ.get("BIOIMAGE_GATEWAY_IDP_SOURCE")
    if override:
        return Path(override)
    return Path(str(resources.files("bioimage_gateway.devstack").joinpath("idp_node")))


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ensure_installed(prefix: Path = DEFAULT_PREFIX, *, npm: str | None = None) -> Path:
    """Copy the node app to ``prefix`` and install its locked dependencies there.

    ``npm ci --omit=dev`` runs only when ``node_modules`` is missing or the lock
    file differs from the one it was installed from. Returns ``prefix``.
    """
    prefix = Path(prefix)
    source = node_sources()
    missing = [name for name in NODE_FILES if not (source / name).is_file()]
    if missing:
        raise RuntimeError(
            f"the identity provider's files are missing from {source}: {', '.join(missing)} "
            "(the package must ship devstack/idp_node as package data)"
        )
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name in NODE_FILES:
            src, dst = source / name, prefix / name
            if not dst.exists() or dst.read_bytes() != src.read_bytes():
                tmp = dst.with_name(f".{name}.tmp")
                shutil.copyfile(src, tmp)
                os.chmod(tmp, 0o644)
                os.replace(tmp, dst)
        stamp = prefix / "node_modules" / ".installed-from-lock"
        wanted = _digest(prefix / "package-lock.json")
        if stamp.is_file() and stamp.read_text().strip() == wanted:
            return prefix
        npm = npm or shutil.which("npm")
        if not npm:
            raise RuntimeError("npm is not installed; the local identity provider needs Node.js 20+ and npm")
        proc = subprocess.run(
            [npm, "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=prefix, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            raise RuntimeError(
                f"npm ci in {prefix} failed with status {proc.returncode}: {proc.stderr.strip()[-2000:]}"
            )
        stamp.write_text(wanted + "\n")
        return prefix


def demo_users() -> list[dict[str, Any]]:
    """The devstack's demo accounts (``stack.DEMO_USERS``) with Authentik's profile fields.

    Like users Authentik's administrators create, they have an address and no
    record of it being verified."""
    from .stack import DEMO_USERS

    return [
        {
            "username": u["username"],
            "password": u["password"],
            "groups": list(u["groups"]),
            "name": u["username"].capitalize(),
            "email": f"{u['username']}@{EMAIL_DOMAIN}",
        }
        for u in DEMO_USERS
    ]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


class LocalIdentityProvider:
    """``node server.mjs config.json`` as a child process, with its files in ``state_dir``.

    ``users`` is a list of user dicts (default: :func:`demo_users`) written to
    ``state_dir/idp-users.json``, or the path of an existing users file (such as
    the devstack's ``demo-users.json``), used in place. ``clients`` is a list of
    ``{"client_id", "client_secret"?, "redirect_uris", "post_logout_redirect_uris"}``;
    a missing secret is generated and can be read back from :attr:`clients`.
    ``email_scope_mapping`` is one of :data:`EMAIL_SCOPE_MAPPINGS` (see above).
    """

    def __init__(
        self,
        state_dir: Path,
        port: int = 0,
        slug: str = DEFAULT_SLUG,
        users: list[dict[str, Any]] | Path | str | None = None,
        clients: list[dict[str, Any]] | None = None,
        *,
        prefix: Path = DEFAULT_PREFIX,
        ttl: dict[str, int] | None = None,
        node: str | None = None,
        email_scope_mapping: str = "authentik-default",
    ):
        if email_scope_mapping not in EMAIL_SCOPE_MAPPINGS:
            raise ValueError(
                f"email_scope_mapping {email_scope_mapping!r} is not one of {', '.join(EMAIL_SCOPE_MAPPINGS)}"
            )
        self.email_scope_mapping = email_scope_mapping
        self.state_dir = Path(state_dir)
        self.port = int(port)
        self.slug = slug
        self.prefix = Path(prefix)
        self.ttl = dict(ttl or {})
        self.node = node
        if isinstance(users, (str, Path)):
            self.users_file = Path(users)
            self._initial_users = None
        else:
            self.users_file = self.state_dir / "idp-users.json"
            self._initial_users = copy.deepcopy(users) if users is not None else demo_users()
        self.clients = []
        for client in clients or []:
            client = dict(client)
            client.setdefault("client_secret", secrets.token_urlsafe(32))
            client.setdefault("post_logout_redirect_uris", [])
            self.clients.append(client)
        self.config_file = self.state_dir / "idp-config.json"
        self.ready_file = self.state_dir / "idp-ready.json"
        self.pid_file = self.state_dir / "idp.pid"
        self.log_path = self.state_dir / "idp.log"
        self.key_file = self.state_dir / "idp-signing-key.json"
        self.proc: subprocess.Popen | None = None
        self.pid: int | None = None

    # ------------------------------------------------------------------ URLs
    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("the identity provider has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def issuer(self) -> str:
        return f"{self.base_url}/application/o/{self.slug}/"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}.well-known/openid-configuration"

    @property
    def end_session_url(self) -> str:
        return f"{self.issuer}end-session/"

    @property
    def jwks_url(self) -> str:
        return f"{self.issuer}jwks/"

    @property
    def authorization_url(self) -> str:
        return f"{self.base_url}/application/o/authorize/"

    @property
    def token_url(self) -> str:
        return f"{self.base_url}/application/o/token/"

    @property
    def userinfo_url(self) -> str:
        return f"{self.base_url}/application/o/userinfo/"

    # ------------------------------------------------------------------ users
    def read_users(self) -> list[dict[str, Any]]:
        raw = json.loads(self.users_file.read_text())
        return raw if isinstance(raw, list) else raw["users"]

    def write_users(self, users: list[dict[str, Any]]) -> None:
        """Replace the users file atomically; the provider sees it at the next login."""
        tmp = self.users_file.with_name(f".{self.users_file.name}.tmp")
        with open(tmp, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(users, indent=2) + "\n")
        os.replace(tmp, self.users_file)

    def set_user(self, username: str, **fields: Any) -> None:
        """Change one user's fields, e.g. ``set_user("ada", groups=[])``."""
        users = self.read_users()
        for user in users:
            if user["username"] == username:
                user.update(fields)
                break
        else:
            raise KeyError(f"no user {username!r} in {self.users_file}")
        self.write_users(users)

    # ------------------------------------------------------------------ process
    def running(self) -> bool:
        return alive(self.pid)

    def start(self, timeout: float = 60) -> None:
        if self.running():
            return
        if not self.clients:
            raise ValueError("the identity provider needs at least one client")
        prefix = ensure_installed(self.prefix)
        node = self.node or shutil.which("node")
        if not node:
            raise RuntimeError("node is not installed; the local identity provider needs Node.js 20+")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self._initial_users is not None:
            # Each start begins from the users given here (a test's run-time
            # changes do not leak into the next start).
            self.write_users(self._initial_users)
        config = {
            "port": self.port,
            "host": "127.0.0.1",
            "slug": self.slug,
            "users_file": str(self.users_file),
            "ready_file": str(self.ready_file),
            "key_file": str(self.key_file),
            "clients": self.clients,
            "cookie_keys": [secrets.token_hex(32)],
            "ttl": self.ttl,
            "email_scope_mapping": self.email_scope_mapping,
        }
        with open(self.config_file, "w") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(json.dumps(config, indent=2) + "\n")
        self.ready_file.unlink(missing_ok=True)
        with private_log(self.log_path) as log:
            self.proc = subprocess.Popen(
                [node, str(prefix / "server.mjs"), str(self.config_file)],
                cwd=prefix, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pid = self.proc.pid
        self.pid_file.write_text(f"{self.pid}\n")
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the identity provider exited with status {self.proc.returncode} at start; "
                    f"log: {self.log_path}\n{self._log_tail()}"
                )
            if not self.port:
                with contextlib.suppress(OSError, ValueError, KeyError):
                    self.port = int(json.loads(self.ready_file.read_text())["port"])
            if self.port and _answers(self.discovery_url):
                return
            time.sleep(0.1)
        raise RuntimeError(
            f"the identity provider did not answer within {timeout:.0f} s; log: {self.log_path}\n{self._log_tail()}"
        )

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        pid = self.pid
        if pid is None and self.pid_file.exists():
            with contextlib.suppress(ValueError, OSError):
                recorded = int(self.pid_file.read_text().strip())
                # Only a process that is still this provider, not a reused PID.
                if str(self.config_file).encode() in Path(f"/proc/{recorded}/cmdline").read_bytes():
                    pid = recorded
        if pid:
            stop_pid(pid, timeout=10)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)
        self.proc = None
        self.pid = None
        self.pid_file.unlink(missing_ok=True)

    def __enter__(self) -> LocalIdentityProvider:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


__all__ = ["DEFAULT_PREFIX", "EMAIL_SCOPE_MAPPINGS", "LocalIdentityProvider", "demo_users",
           "ensure_installed"]
