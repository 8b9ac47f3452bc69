"""Turn the site's ``gateway.yaml`` into JupyterHub configuration.

``jupyterhub_config.py`` calls :func:`configure_hub`; everything a site can
change lives in the settings file, so a site writes YAML, not Python.
"""

from __future__ import annotations

import logging
import os
import posixpath
import secrets
import sys
from pathlib import Path

from jupyterhub.apihandlers.auth import OAuthAuthorizeHandler
from jupyterhub.log import log_request

from bioimage_gateway.settings import GatewaySettings

from . import collector, database, port_api
from .shared import SharedServices
from .spawner import GatewaySpawner


def _secret_file(path: Path, nbytes: int = 32) -> Path:
    if not path.exists():
        path.touch(mode=0o600)
        path.write_text(secrets.token_hex(nbytes))
    return path


def configure_hub(c, settings: GatewaySettings) -> None:
    hub = settings.hub
    data_dir = Path(hub.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    port_api.install()

    c.JupyterHub.bind_url = f"http://{hub.ip}:{hub.port}"
    c.JupyterHub.hub_bind_url = f"http://{hub.api_ip}:{hub.api_port}"
    c.JupyterHub.hub_connect_url = settings.hub_connect_url
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{hub.proxy_api_port}"
    c.ConfigurableHTTPProxy.pid_file = str(data_dir / "proxy.pid")
    c.JupyterHub.db_url = hub.db_url or f"sqlite:///{data_dir / 'jupyterhub.sqlite'}"
    # Each kept for what switching it off costs a sign-in burst (the figures are in
    # core/examples/gateway.example.yaml; benchmarks/scale.py --only logins --hubs ...).
    if hub.sqlite_wal and c.JupyterHub.db_url.startswith("sqlite"):
        c.JupyterHub.db_kwargs = database.sqlite_wal_kwargs()
    if hub.gc_freeze:
        collector.tune()
    c.JupyterHub.cookie_secret_file = str(_secret_file(data_dir / "cookie_secret"))
    c.JupyterHub.pid_file = str(data_dir / "jupyterhub.pid")
    # Sessions are Slurm jobs that outlive a hub restart; the hub must not stop them.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = True
    if hub.announcement:
        # JupyterHub's templates read these per page; home and spawn are where users act.
        c.JupyterHub.template_vars = {
            "announcement_home": hub.announcement,
            "announcement_spawn": hub.announcement,
        }

    c.JupyterHub.spawner_class = GatewaySpawner
    # One Slurm client, queue poller and cluster-info cache for all of this hub's spawners.
    c.GatewaySpawner.shared = SharedServices(settings)
    # Only these of the hub's variables reach a job (and sudo's env_keep lists them).
    c.Spawner.env_keep = ["LANG", "LC_ALL"]
    c.Spawner.default_url = settings.session.default_url
    c.Spawner.start_timeout = settings.session.start_timeout
    c.Spawner.http_timeout = settings.session.http_timeout
    # JupyterHub's own check of running servers reads the shared poller's answer.
    c.Spawner.poll_interval = max(1, int(settings.slurm.poll_interval))

    configure_idle_culler(c, settings)
    configure_admins(c, settings)

    auth = settings.auth
    if auth is not None and auth.provider == "authentik":
        configure_authentik(c, settings)
    elif auth is not None and auth.provider == "dummy":
        from .demo_auth import DemoAuthenticator, read_users

        c.JupyterHub.authenticator_class = DemoAuthenticator
        c.DemoAuthenticator.users_file = str(auth.users_file)
        c.Authenticator.manage_groups = True
        c.Authenticator.allowed_users = set(read_users(auth.users_file))


def configure_idle_culler(c, settings: GatewaySettings) -> None:
    culler = settings.idle_culler
    interval = culler.activity_interval_seconds
    # Sessions report activity (busy kernels and transfers included: see
    # extensions/activity.py) this often, and the hub records it as often.
    c.JupyterHub.last_activity_interval = interval
    c.Spawner.environment = {
        "JUPYTERHUB_ACTIVITY_INTERVAL": str(interval),
        "BIOIMAGE_GATEWAY_ACTIVITY_INTERVAL": str(max(5, interval // 2)),
    }
    if not culler.enabled:
        return
    c.JupyterHub.services = [{
        "name": "idle-culler",
        "command": [sys.executable, "-m", "jupyterhub_idle_culler",
                    f"--timeout={culler.timeout_seconds}",
                    f"--cull-every={culler.every_seconds}"],
    }]
    c.JupyterHub.load_roles = [{
        "name": "idle-culler",
        "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
        "services": ["idle-culler"],
    }]


ADMIN_ROLE = "gateway-admin"
# JupyterHub's own admin role, less what lets an admin act as another user:
# access:servers (their sessions), tokens (a token made out to them), shares
# (which include access:servers) and admin:users (renaming oneself onto
# another user's POSIX account; reading their IdP tokens in auth state).
ADMIN_SCOPES = (
    "admin-ui", "users", "delete:users", "read:roles", "admin:servers", "read:tokens",
    "admin:groups", "list:services", "read:services", "read:hub", "proxy", "shutdown",
    "access:services", "read:metrics", "read:shares", "users:shares", "groups:shares",
)
# What auth.admin_server_access adds: other users' sessions and sign-in tokens.
SERVER_ACCESS_SCOPES = ("access:servers", "admin:auth_state")


def admin_role(settings: GatewaySettings) -> dict:
    """The role of the site's admins: hub.admin_users and members of auth.admin_groups."""
    auth = settings.auth
    server_access = getattr(auth, "admin_server_access", False)
    return {
        "name": ADMIN_ROLE,
        "description": "The gateway's administrators"
        + (", with access to users' sessions" if server_access else ""),
        "scopes": list(ADMIN_SCOPES) + (list(SERVER_ACCESS_SCOPES) if server_access else []),
        "users": list(settings.hub.admin_users),
        "groups": list(getattr(auth, "admin_groups", [])),
    }


def configure_admins(c, settings: GatewaySettings) -> None:
    # Not JupyterHub's `admin` role (admin_users, Authenticator.admin_groups),
    # which can open every user's session.
    roles = list(c.JupyterHub.load_roles) if "load_roles" in c.JupyterHub else []
    c.JupyterHub.load_roles = [*roles, admin_role(settings)]
    tornado_settings = dict(c.JupyterHub.tornado_settings) if "tornado_settings" in c.JupyterHub else {}
    tornado_settings["log_function"] = log_requests_and_server_access
    c.JupyterHub.tornado_settings = tornado_settings


def log_requests_and_server_access(handler) -> None:
    """JupyterHub's request log, plus a line each time the hub lets a user into
    a server that is not theirs (an admin with auth.admin_server_access)."""
    log_request(handler)
    if not isinstance(handler, OAuthAuthorizeHandler) or handler.get_status() != 302:
        return
    user = handler.current_user
    client_id = handler.get_argument("client_id", "")
    if user is None or not client_id:
        return  # sent to the login page first
    client = handler.oauth_provider.fetch_by_client_id(client_id)
    spawner = getattr(client, "spawner", None)
    if spawner is None or spawner.user.name == user.name:
        return
    # The same check JupyterHub made before issuing the code.
    if not handler.get_scope_filter("access:servers")(spawner, kind="server"):
        return
    redirect_uri = handler.get_argument("redirect_uri", "")
    server_url = posixpath.dirname(redirect_uri.split("?", 1)[0]) + "/"
    handler.log.warning(
        "Server access: %s was let into %s's server %s at %s (OAuth client %s)",
        user.name, spawner.user.name, repr(spawner.name) if spawner.name else "(default)",
        server_url, client_id,
    )


def _read_secret(path: Path, what: str) -> str:
    try:
        value = Path(path).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"BioImage Gateway: cannot read {what} from {path}: {exc.strerror}")
    if not value:
        raise SystemExit(f"BioImage Gateway: {what} file {path} is empty")
    return value


def configure_authentik(c, settings: GatewaySettings) -> None:
    from .authenticator import (
        AuthentikOAuthenticator,
        authentik_endpoints,
        discovery_url,
        fetch_discovery,
        logout_url,
    )

    auth = settings.auth
    hub_url = settings.hub.public_url.rstrip("/")
    try:
        endpoints = fetch_discovery(auth.url, auth.application_slug)
    except Exception as exc:  # noqa: BLE001 - any failure: fall back, say so
        # The hub still starts; users get a clear page while Authentik is away.
        logging.getLogger("bioimage_gateway").warning(
            "Authentik discovery at %s failed (%s); using Authentik's standard endpoint paths",
            discovery_url(auth.url, auth.application_slug), exc,
        )
        endpoints = authentik_endpoints(auth.url, auth.application_slug)

    # Tokens kept in auth state are encrypted with this key.
    os.environ["JUPYTERHUB_CRYPT_KEY"] = _read_secret(auth.crypt_key_file, "the crypt key")

    c.JupyterHub.authenticator_class = AuthentikOAuthenticator
    a = c.AuthentikOAuthenticator
    a.idp_base_url = auth.url
    a.discovery_url = discovery_url(auth.url, auth.application_slug)
    a.client_id = auth.client_id
    a.client_secret = _read_secret(auth.client_secret_file, "the OIDC client secret")
    a.oauth_callback_url = f"{hub_url}/hub/oauth_callback"
    a.authorize_url = endpoints["authorization_endpoint"]
    a.token_url = endpoints["token_endpoint"]
    a.userdata_url = endpoints["userinfo_endpoint"]
    a.issuer = endpoints["issuer"]
    a.logout_redirect_url = logout_url(
        endpoints["end_session_endpoint"], auth.client_id,
        auth.after_logout_url or f"{hub_url}/hub/login",
    )
    a.scope = list(auth.scopes)
    a.username_claim = auth.username_claim
    a.enable_pkce = True
    a.enable_auth_state = True
    a.refresh_pre_spawn = True
    a.manage_groups = True
    a.auth_state_groups_key = "oauth_user.groups"
    a.allowed_groups = set(auth.allowed_groups)
    # Admins by group get the gateway's admin role (configure_admins), through the
    # groups the hub keeps from the IdP, not Authenticator.admin_groups (the full
    # `admin` role).
    a.require_verified_email = auth.require_verified_email
    a.posix_username_claim = auth.posix.claim or ""
    a.posix_map_file = str(auth.posix.map_file or "")
    a.posix_min_uid = auth.posix.min_uid
    a.posix_denied_accounts = list(auth.posix.denied_accounts)
    c.GatewaySpawner.pass_access_token = auth.pass_access_token
