"""Sign-in through the site's Authentik (OIDC), on oauthenticator's GenericOAuthenticator.

What this adds to GenericOAuthenticator, and why:

* endpoints from Authentik's discovery document for the application slug;
* the ``groups`` claim decides who may enter and who is admin (re-read at each
  login, so a group removed at Authentik removes the right at next login);
* no admission on an unverified email;
* the IdP username is mapped to the POSIX account that sessions run as (same
  name by default; a claim or a mapping file otherwise), and a user with no
  account on the cluster gets a page saying so instead of a failed job;
* one request to the IdP per sign-in fewer: the user's claims are read from
  the ID token that comes with the tokens (checks of stored tokens still ask
  the userinfo endpoint, which is what notices a revoked token);
* errors a user can meet (not in an allowed group, IdP down, a refused code)
  become pages that say what happened and what to do, never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import pwd
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

import jwt
import yaml
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any, Bool, Int, Unicode, default

from bioimage_gateway.slurm import POSIX_USERNAME


# The token response this task has just received from the token endpoint.
_fresh_token_response: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "fresh_token_response", default=None
)
# What an ID token says about the token itself rather than the user.
_JWT_FIELDS = {"iss", "aud", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash", "c_hash",
               "azp", "sid", "acr", "amr", "jti"}

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
    # The one check in flight: a burst of logins (a class starting) waits for it
    # instead of sending the IdP a check each, which queued behind each other
    # in the hub's HTTP client until they timed out and said "down".
    _check: asyncio.Future | None = None
    # Its own connection: the check must not queue behind the sign-ins' token requests.
    _client: AsyncHTTPClient | None = None

    async def _idp_answers(self) -> bool:
        cls = type(self)
        if time.monotonic() - cls.checked_ok_at < cls.check_ttl:
            return True
        if cls._check is None or cls._check.done():
            cls._check = asyncio.ensure_future(self._check_idp(self.authenticator.discovery_url))
        return await asyncio.shield(cls._check)

    @classmethod
    async def _check_idp(cls, url: str) -> bool:
        if cls._client is None:
            cls._client = AsyncHTTPClient(force_instance=True, max_clients=1)
        try:
            await cls._client.fetch(url, request_timeout=3)
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
    issuer = Unicode("", help="The ID token's expected issuer (from discovery)").tag(config=True)
    claims_from_id_token = Bool(
        True,
        help="At sign-in, read the user's claims from the ID token of the token response "
        "(if it carries the username, groups and email_verified claims) instead of a "
        "request to the userinfo endpoint",
    ).tag(config=True)
    idp_connections = Int(
        64, help="Requests to the IdP in flight at once (tokens, userinfo)"
    ).tag(config=True)

    @default("http_client")
    def _default_http_client(self):
        # Tornado's shared client runs 10 requests at a time and fails the rest
        # after 20 s in its queue: a class of 200 signing in at once got errors.
        return AsyncHTTPClient(force_instance=True, max_clients=self.idp_connections)

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

    def _claims_of_fresh_id_token(self, token_info: dict) -> dict | None:
        """The user's claims from the ID token of a response the token endpoint has
        just sent; None where the userinfo endpoint must be asked instead."""
        if not self.claims_from_id_token or _fresh_token_response.get() is not token_info:
            return None
        id_token = token_info.get("id_token")
        if not id_token:
            return None
        # Received straight from the token endpoint, so its signature need not be
        # checked (OpenID Connect Core 3.1.3.7, item 6); audience, expiry and issuer are.
        try:
            claims = jwt.decode(
                id_token, audience=self.client_id, issuer=self.issuer or None,
                # Without the signature check PyJWT checks nothing unless asked.
                options={"verify_signature": False, "verify_aud": True, "verify_exp": True,
                         "verify_iat": True, "verify_iss": bool(self.issuer)},
            )
        except jwt.InvalidTokenError as exc:
            self.log.warning("ID token not usable (%s); asking the userinfo endpoint", exc)
            return None
        needed = self._claims_needed()
        if needed is None or not needed <= claims.keys():
            return None  # the IdP keeps some of them out of its ID tokens
        return {k: v for k, v in claims.items() if k not in _JWT_FIELDS}

    def _claims_needed(self) -> set[str] | None:
        """The claims sign-in decides on; None if they are not plain claim names."""
        if not isinstance(self.username_claim, str) or not isinstance(
            self.auth_state_groups_key, str
        ):
            return None
        needed = {self.username_claim, self.auth_state_groups_key.rsplit(".", 1)[-1]}
        if self.require_verified_email:
            needed.add("email_verified")
        if self.posix_username_claim:
            needed.add(self.posix_username_claim)
        return needed

    async def token_to_user(self, token_info):
        claims = self._claims_of_fresh_id_token(token_info)
        if claims is not None:
            return claims
        # Stored tokens (refresh_user): the userinfo endpoint tells whether the
        # access token still works.
        return await super().token_to_user(token_info)

    async def get_token_info(self, handler, params):
        try:
            token_info = await super().get_token_info(handler, params)
            _fresh_token_response.set(token_info)
            return token_info
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
