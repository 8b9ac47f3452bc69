"""Sign-in through the site's Authentik (OIDC), on oauthenticator's GenericOAuthenticator.

What this adds to GenericOAuthenticator, and why:

* endpoints from Authentik's discovery document for the application slug;
* the ``groups`` claim decides who may enter and who is admin (re-read at each
  login, so a group removed at Authentik removes the right at next login);
* no admission on an unverified email;
* the IdP username is mapped to the POSIX account that sessions run as (same
  name by default; a claim or a mapping file otherwise), and a user with no
  account on the cluster gets a page saying so instead of a failed job;
* errors a user can meet (not in an allowed group, IdP down, a refused code)
  become pages that say what happened and what to do, never a stack trace.
"""

from __future__ import annotations

import json
import pwd
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import yaml
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any, Bool, Unicode

from bioimage_gateway.slurm import POSIX_USERNAME


_REASONS = {403: "Not authorised", 503: "Sign-in service unavailable"}


def page_error(status: int, message: str) -> web.HTTPError:
    """An HTTP error whose message JupyterHub shows as is on its error page."""
    # The reason is the page's short heading; the message is its text.
    error = web.HTTPError(status, log_message=message, reason=_REASONS.get(status))
    error.jupyterhub_message = message
    return error


def authentik_endpoints(base_url: str, slug: str) -> dict[str, str]:
    """Authentik's endpoint layout for an application (used if discovery is unreachable)."""
    base = base_url.rstrip("/")
    return {
        "issuer": f"{base}/application/o/{slug}/",
        "authorization_endpoint": f"{base}/application/o/authorize/",
        "token_endpoint": f"{base}/application/o/token/",
        "userinfo_endpoint": f"{base}/application/o/userinfo/",
        "end_session_endpoint": f"{base}/application/o/{slug}/end-session/",
        "jwks_uri": f"{base}/application/o/{slug}/jwks/",
    }


def discovery_url(base_url: str, slug: str) -> str:
    return f"{base_url.rstrip('/')}/application/o/{slug}/.well-known/openid-configuration"


def fetch_discovery(base_url: str, slug: str, timeout: float = 5) -> dict[str, str]:
    with urllib.request.urlopen(discovery_url(base_url, slug), timeout=timeout) as response:
        return json.loads(response.read())


class AuthentikLoginHandler(OAuthLoginHandler):
    """Say so when Authentik is down, instead of sending the browser to a dead page."""

    # A check per login click would cost every sign-in a round trip to the IdP;
    # an answer from the last few seconds stands for all of them.
    checked_ok_at = 0.0
    check_ttl = 10.0

    async def _idp_answers(self) -> bool:
        cls = type(self)
        if time.monotonic() - cls.checked_ok_at < cls.check_ttl:
            return True
        try:
            await AsyncHTTPClient().fetch(self.authenticator.discovery_url, request_timeout=3)
        except Exception:  # noqa: BLE001 - refused, timed out, 5xx: all mean "down"
            return False
        cls.checked_ok_at = time.monotonic()
        return True

    async def get(self):
        auth = self.authenticator
        if not await self._idp_answers():
            raise page_error(
                503,
                f"The sign-in service ({auth.idp_name} at {auth.idp_base_url}) is not "
                "answering, so you cannot sign in right now. Please try again in a few "
                "minutes; if it lasts, tell the gateway's administrators.",
            )
        return super().get()


class AuthentikOAuthenticator(GenericOAuthenticator):
    login_service = Unicode("Authentik").tag(config=True)
    login_handler = AuthentikLoginHandler

    idp_name = Unicode("Authentik", help="Name of the identity provider shown to users").tag(
        config=True
    )
    idp_base_url = Unicode(help="Authentik's base URL").tag(config=True)
    discovery_url = Unicode(help="The application's OIDC discovery document").tag(config=True)
    require_verified_email = Bool(True).tag(config=True)
    posix_username_claim = Unicode(
        "", help="Claim holding the POSIX account name; empty: the username itself"
    ).tag(config=True)
    posix_map_file = Unicode(
        "", help="YAML/JSON mapping of IdP usernames to POSIX accounts"
    ).tag(config=True)
    posix_account_exists = Any(
        help="Callable(name) -> bool; default: the account is in the passwd database"
    ).tag(config=True)
    access_help = Unicode(
        "Ask your facility's gateway administrators to add you to one of them.",
    ).tag(config=True)

    def _default_posix_account_exists(self, name: str) -> bool:
        try:
            pwd.getpwnam(name)
            return True
        except KeyError:
            return False

    def _posix_name(self, idp_name: str, user_info: dict) -> str:
        if self.posix_username_claim:
            return str(user_info.get(self.posix_username_claim) or "")
        if self.posix_map_file:
            mapping = yaml.safe_load(Path(self.posix_map_file).read_text()) or {}
            return str(mapping.get(idp_name, idp_name))
        return idp_name

    async def update_auth_model(self, auth_model):
        user_info = auth_model["auth_state"][self.user_auth_state_key]
        if self.require_verified_email and user_info.get("email_verified") is not True:
            raise page_error(
                403,
                f"Your email address ({user_info.get('email', 'none given')}) is not verified "
                f"at {self.idp_name}. Verify it there, then sign in again.",
            )
        idp_name = auth_model["name"]
        posix = self._posix_name(idp_name, user_info)
        exists = self.posix_account_exists or self._default_posix_account_exists
        if not POSIX_USERNAME.match(posix) or not exists(posix):
            raise page_error(
                403,
                f"You are signed in at {self.idp_name} as {idp_name!r}, but there is no "
                f"account {posix!r} on the compute cluster, so no session can run for you. "
                "Ask the cluster's user support to create your HPC account.",
            )
        auth_model["name"] = posix
        return auth_model

    async def check_allowed(self, username, auth_model):
        if await super().check_allowed(username, auth_model):
            return True
        groups = ", ".join(sorted(self.allowed_groups)) or "(none configured)"
        raise page_error(
            403,
            f"You are signed in as {username!r}, but you are not a member of any group "
            f"that may use this gateway. Groups that give access: {groups}. "
            f"{self.access_help}",
        )

    async def refresh_user(self, user, handler=None, **kwargs):
        refreshed = await super().refresh_user(user, handler, **kwargs)
        if refreshed is False and handler is not None:
            # JupyterHub 6 reads this flag, which only token-authenticated
            # requests set; a browser page request has it unset and would 500.
            if not hasattr(handler, "_token_authenticated"):
                handler._token_authenticated = False
            if not handler._token_authenticated and handler.current_user is user:
                # Tokens are gone at the IdP: sign the browser out so the next
                # page goes to the login instead of failing again.
                handler.clear_login_cookie()
        return refreshed

    async def get_token_info(self, handler, params):
        try:
            return await super().get_token_info(handler, params)
        except HTTPClientError as exc:
            if exc.code == 599:
                raise page_error(
                    503,
                    f"The sign-in service ({self.idp_name}) stopped answering while you "
                    "were signing in. Please try again in a few minutes.",
                ) from None
            raise page_error(
                403,
                f"{self.idp_name} refused this sign-in (the login code was invalid, expired "
                "or already used). Please sign in again.",
            ) from None
        except OSError:
            raise page_error(
                503,
                f"The sign-in service ({self.idp_name}) is not answering. Please try again "
                "in a few minutes.",
            ) from None


def logout_url(end_session_endpoint: str, client_id: str, after_logout: str) -> str:
    """Authentik's end-session endpoint, coming back to the hub afterwards."""
    query = urlencode({"client_id": client_id, "post_logout_redirect_uri": after_logout})
    return f"{end_session_endpoint}?{query}"
