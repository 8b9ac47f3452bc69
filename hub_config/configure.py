"""Turn the site's ``gateway.yaml`` into JupyterHub configuration.

``jupyterhub_config.py`` calls :func:`configure_hub`; everything a site can
change lives in the settings file, so a site writes YAML, not Python.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from bioimage_gateway.settings import GatewaySettings

from . import port_api
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
    c.JupyterHub.cookie_secret_file = str(_secret_file(data_dir / "cookie_secret"))
    c.JupyterHub.pid_file = str(data_dir / "jupyterhub.pid")
    # Sessions are Slurm jobs that outlive a hub restart; the hub must not stop them.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = True
    c.JupyterHub.admin_users = set(hub.admin_users)
    c.JupyterHub.template_vars = {"announcement": hub.announcement} if hub.announcement else {}

    c.JupyterHub.spawner_class = GatewaySpawner
    c.GatewaySpawner.settings = settings
    # Only these of the hub's variables reach a job (and sudo's env_keep lists them).
    c.Spawner.env_keep = ["LANG", "LC_ALL"]
    c.Spawner.default_url = settings.session.default_url
    c.Spawner.start_timeout = settings.session.start_timeout
    c.Spawner.http_timeout = settings.session.http_timeout
    c.Spawner.poll_interval = max(1, int(settings.slurm.poll_interval * 6))

    auth = settings.auth
    if auth is not None and auth.provider == "dummy":
        from .demo_auth import DemoAuthenticator, read_users

        c.JupyterHub.authenticator_class = DemoAuthenticator
        c.DemoAuthenticator.users_file = str(auth.users_file)
        c.Authenticator.manage_groups = True
        c.Authenticator.allowed_users = set(read_users(auth.users_file))
