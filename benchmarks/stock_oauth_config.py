# JupyterHub configuration for the sign-in benchmark's peer: stock JupyterHub with
# oauthenticator's GenericOAuthenticator, configured plainly against the same identity
# provider as ours (the site settings in $BIOIMAGE_GATEWAY_CONFIG: the endpoints of the same
# discovery document, the same scopes, username claim and groups claim); JupyterHub's
# defaults otherwise.  Its spawn page is a plain options form naming the site's profiles:
# users land on a form, as on ours, and nothing is spawned.
import html
import json
import urllib.request
from pathlib import Path

from bioimage_gateway.settings import load_settings

s = load_settings()
auth = s.auth
discovery_url = (f"{auth.url.rstrip('/')}/application/o/{auth.application_slug}"
                 "/.well-known/openid-configuration")
with urllib.request.urlopen(discovery_url, timeout=10) as response:
    discovery = json.load(response)

c = get_config()  # noqa: F821 - provided by JupyterHub
c.JupyterHub.bind_url = f"http://{s.hub.ip}:{s.hub.port}"
c.JupyterHub.hub_bind_url = f"http://{s.hub.api_ip}:{s.hub.api_port}"
c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{s.hub.proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(s.hub.data_dir / "proxy.pid")
c.JupyterHub.db_url = f"sqlite:///{s.hub.data_dir}/jupyterhub.sqlite"

c.JupyterHub.authenticator_class = "generic-oauth"
g = c.GenericOAuthenticator
g.client_id = auth.client_id
g.client_secret = Path(auth.client_secret_file).read_text().strip()
g.oauth_callback_url = f"{s.hub.public_url.rstrip('/')}/hub/oauth_callback"
g.authorize_url = discovery["authorization_endpoint"]
g.token_url = discovery["token_endpoint"]
g.userdata_url = discovery["userinfo_endpoint"]
g.scope = list(auth.scopes)
g.username_claim = auth.username_claim
g.manage_groups = True
g.auth_state_groups_key = "oauth_user.groups"
g.allowed_groups = set(auth.allowed_groups)

c.Spawner.options_form = '<select name="profile">{}</select>'.format("".join(
    f'<option value="{html.escape(p.slug)}">{html.escape(p.display_name)}</option>'
    for p in s.profiles))
