"""Sign-in through the site's Authentik (OIDC), on oauthenticator's GenericOAuthenticator.

What this adds to GenericOAuthenticator, and why:

* endpoints from Authentik's discovery document for the application slug;
* the ``groups`` claim decides who may enter and who is admin (re-read at each
  login, so a group removed at Authentik removes the right at next login);
* one identity, one account: the IdP username is mapped to the POSIX account
  that sessions run as (same name by default; a claim or a mapping file, with
  no fallback, otherwise); a name JupyterHub's normalisation would change
  (``Alice``, a Kelvin sign for ``K``) is refused rather than folded into
  another user's account, and so are system accounts (below the site's
  minimum uid, or on its deny list) and names with no account on the cluster,
  each with a page that says so;
* an unverified email is refused only where the site asks for it
  (``require_verified_email``): Authentik marks every address unverified by
  default since 2025.10;
* one request to the IdP per sign-in fewer: the user's claims are read from
  the ID token that comes with the tokens, once its signature checks out
  against the IdP's published keys (checks of stored tokens still ask the
  userinfo endpoint, which is what notices a revoked token);
* errors a user can meet (not in an allowed group, IdP down, a refused code)
  become pages that say what happened and what to do, never a stack trace.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import os
import pwd
import time
import unicodedata
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlencode

import jwt
import yaml
from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPClientError
from traitlets import Any, Bool, Float, Int, List, Unicode, default

from bioimage_gateway.settings import SYSTEM_ACCOUNTS
from bioimage_gateway.slurm import POSIX_USERNAME


# The token response this task has just received from the token endpoint.
_fresh_token_response: contextvars.ContextVar[dict | None] = contextvars.ContextVar(
    "fresh_token_response", default=None
)
# What an ID token says about the token itself rather than the user.
_JWT_FIELDS = {"iss", "aud", "exp", "iat", "nbf", "auth_time", "nonce", "at_hash", "c_hash",
               "azp", "sid", "acr", "amr", "jti"}

_REASONS = {403: "Not authorised", 500: "Sign-in not possible", 503: "Sign-in service unavailable"}


def page_error(status: int, message: str) -> web.HTTPError:
    """An HTTP error whose message JupyterHub shows as is on its error page."""
    # The reason is the page's short heading; the message is its text.
    error = web.HTTPError(status, log_message=message, reason=_REASONS.get(status))
    error.jupyterhub_message = message
    return error


def _readable(name: str) -> str:
    """A name with anything outside ASCII spelled as an escape (look-alikes stay visible)."""
    return name.encode("ascii", "backslashreplace").decode()


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


class UnverifiableIdToken(Exception):
    """The ID token's signature does not check out against the IdP's keys."""


class SigningKeysUnavailable(Exception):
    """The IdP's discovery document or key set could not be read."""


class IdTokenSignatures:
    """Checks ID tokens against the keys the IdP publishes (its JWKS).

    The discovery document names the key set and the algorithms the IdP signs
    ID tokens with; both are fetched with ``fetch_json`` (the authenticator's
    HTTP client) when first needed and kept. A token signed with a key the
    set does not list makes one new fetch (the IdP may have rotated its key),
    at most one per ``refetch_interval`` seconds, so that forged tokens cannot
    make the hub hammer the IdP. Symmetric algorithms (what Authentik uses
    when the provider has no signing key) check against the client secret.
    """

    def __init__(
        self,
        discovery_url: str,
        fetch_json: Callable[[str], Awaitable[dict]],
        client_secret: str = "",
        refetch_interval: float = 60.0,
    ):
        self.discovery_url = discovery_url
        self.refetch_interval = refetch_interval
        self._fetch_json = fetch_json
        self._client_secret = client_secret
        self._keys: list[dict] = []
        self._key_objects: dict[tuple[str | None, str], object] = {}  # parsed once per key
        self._algorithms: tuple[str, ...] = ()
        self._jwks_uri = ""
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def verify(self, id_token: str, *, audience: str, issuer: str = "") -> dict:
        """The token's claims. Raises UnverifiableIdToken for a bad signature,
        SigningKeysUnavailable when the keys cannot be read, and PyJWT's
        InvalidTokenError for a well-signed token that is expired or meant for
        another client or issuer."""
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.InvalidTokenError as exc:
            raise UnverifiableIdToken(f"not a signed JWT ({exc})") from None
        key, algorithm = await self._key_for(header)
        try:
            return jwt.decode(
                id_token, key, algorithms=[algorithm], audience=audience,
                issuer=issuer or None,
                options={"require": ["exp", "iat", "aud"], "verify_iss": bool(issuer)},
            )
        except (jwt.DecodeError, jwt.InvalidAlgorithmError, jwt.InvalidKeyError) as exc:
            # DecodeError includes InvalidSignatureError.
            raise UnverifiableIdToken(f"{exc} (key {header.get('kid')!r}, {algorithm})") from None

    async def _key_for(self, header: dict) -> tuple[object, str]:
        if self._fetched_at is None:
            async with self._lock:
                if self._fetched_at is None:
                    await self._load()
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:
            raise UnverifiableIdToken(
                f"signed with {algorithm!r}; the provider signs ID tokens with "
                f"{', '.join(self._algorithms)}"
            )
        if algorithm.startswith("HS"):
            if not self._client_secret:
                raise UnverifiableIdToken(f"signed with {algorithm} but no client secret is set")
            return self._client_secret, algorithm
        kid = header.get("kid")
        jwk = self._find(kid)
        if jwk is None and await self._reload_for(kid):
            jwk = self._find(kid)
        if jwk is None:
            raise UnverifiableIdToken(f"signed with key {kid!r}, which {self._jwks_uri} does not list")
        if (kid, algorithm) not in self._key_objects:
            try:
                self._key_objects[kid, algorithm] = jwt.PyJWK(jwk, algorithm=algorithm).key
            except (jwt.PyJWKError, jwt.InvalidKeyError) as exc:
                raise UnverifiableIdToken(f"key {kid!r} does not fit {algorithm}: {exc}") from None
        return self._key_objects[kid, algorithm], algorithm

    def _find(self, kid: str | None) -> dict | None:
        if kid is None:
            # A token without a key id names no key: only a set of one can have signed it.
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.get("kid") == kid), None)

    async def _reload_for(self, kid: str | None) -> bool:
        """Fetch the keys again for an unknown key id, unless that was done lately."""
        async with self._lock:
            if self._find(kid) is not None:
                return True  # another sign-in fetched them meanwhile
            if time.monotonic() - (self._fetched_at or 0) < self.refetch_interval:
                return False
            await self._load()
            return True

    async def _load(self) -> None:
        try:
            discovery = await self._fetch_json(self.discovery_url)
            jwks_uri = discovery["jwks_uri"]
            advertised = discovery.get("id_token_signing_alg_values_supported") or ["RS256"]
            jwks = await self._fetch_json(jwks_uri)
            keys = [k for k in jwks["keys"] if isinstance(k, dict)]
        except (HTTPClientError, OSError, ValueError, KeyError, TypeError) as exc:
            raise SigningKeysUnavailable(f"{type(exc).__name__}: {exc}") from None
        self._jwks_uri = str(jwks_uri)
        # "none" is no signature at all, whatever a discovery document says.
        self._algorithms = tuple(a for a in advertised if isinstance(a, str) and a != "none")
        self._keys = keys
        self._key_objects = {}
        self._fetched_at = time.monotonic()


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
    require_verified_email = Bool(
        False, help="Refuse users whose email_verified claim is not true"
    ).tag(config=True)
    posix_username_claim = Unicode(
        "", help="Claim holding the POSIX account name; empty: the username itself"
    ).tag(config=True)
    posix_map_file = Unicode(
        "", help="YAML/JSON mapping of IdP usernames to POSIX accounts; unlisted names are refused"
    ).tag(config=True)
    posix_min_uid = Int(1000, help="Accounts with a lower uid are never signed in as").tag(
        config=True
    )
    posix_denied_accounts = List(
        Unicode(), list(SYSTEM_ACCOUNTS),
        help="Accounts never signed in as (the hub's own account is always one of them)",
    ).tag(config=True)
    posix_account_uid = Any(
        help="Callable(name) -> the account's uid, or None where there is no such account; "
        "default: the passwd database"
    ).tag(config=True)
    id_token_keys_refetch_interval = Float(
        60.0, help="Seconds between fetches of the IdP's keys for an unknown key id"
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

    id_token_signatures = Any(help="The IdTokenSignatures that checks ID tokens")

    @default("id_token_signatures")
    def _default_id_token_signatures(self):
        return IdTokenSignatures(
            self.discovery_url, self._fetch_json, client_secret=self.client_secret,
            refetch_interval=self.id_token_keys_refetch_interval,
        )

    async def _fetch_json(self, url: str) -> dict:
        return await self.httpfetch(
            url, label="fetching the IdP's signing keys", method="GET",
            headers={"Accept": "application/json"}, request_timeout=10,
        )

    @staticmethod
    def _uid_in_passwd(name: str) -> int | None:
        try:
            return pwd.getpwnam(name).pw_uid
        except KeyError:
            return None

    def _denied_accounts(self) -> set[str]:
        denied = set(self.posix_denied_accounts)
        try:
            denied.add(pwd.getpwuid(os.geteuid()).pw_name)  # the hub's own account
        except KeyError:
            pass
        return denied

    def _mapped_name(self, idp_name: str) -> str | None:
        """The POSIX name the site's mapping file gives ``idp_name``; None if unlisted."""
        try:
            mapping = yaml.safe_load(Path(self.posix_map_file).read_text())
        except (OSError, yaml.YAMLError) as exc:
            self.log.error("Cannot read auth.posix.map_file %s: %s", self.posix_map_file, exc)
            raise page_error(
                500,
                "The gateway's list of cluster accounts cannot be read, so no one can sign "
                "in right now. Please tell the gateway's administrators.",
            ) from None
        if not isinstance(mapping, dict):
            self.log.error("auth.posix.map_file %s is not a mapping", self.posix_map_file)
            raise page_error(
                500,
                "The gateway's list of cluster accounts is not a list of names, so no one "
                "can sign in right now. Please tell the gateway's administrators.",
            )
        posix = mapping.get(idp_name)
        return posix if isinstance(posix, str) else None

    def _check_name_is_as_sent(self, idp_name: str) -> None:
        """Refuse a name that JupyterHub's normalisation (or NFKC) would change.

        ``Alice`` would become ``alice`` and a Kelvin sign ``K`` would become
        ``k``: another identity at the IdP must not land in someone's account."""
        folded = unicodedata.normalize("NFKC", self.normalize_username(idp_name))
        if folded == idp_name and self.normalize_username(folded) == folded:
            return
        raise page_error(
            403,
            f"You are signed in at {self.idp_name} as '{_readable(idp_name)}', which reads "
            f"as '{_readable(folded)}' once case and look-alike characters are folded: a "
            "different name, perhaps someone else's account, so you were not signed in. "
            f"Ask the administrators of {self.idp_name} for a username in lower case, "
            "without look-alike characters.",
        )

    def _posix_name(self, idp_name: str, user_info: dict) -> str:
        if self.posix_username_claim:
            return str(user_info.get(self.posix_username_claim) or "")
        self._check_name_is_as_sent(idp_name)
        if self.posix_map_file:
            posix = self._mapped_name(idp_name)
            if posix is None:
                raise page_error(
                    403,
                    f"You are signed in at {self.idp_name} as {idp_name!r}, but the gateway's "
                    "list of cluster accounts does not include you, so no session can run "
                    "for you. Ask the gateway's administrators to add you to it.",
                )
            return posix
        return idp_name

    def _check_account(self, idp_name: str, posix: str) -> None:
        uid = None
        if POSIX_USERNAME.fullmatch(posix):
            uid = (self.posix_account_uid or self._uid_in_passwd)(posix)
        if uid is None:
            raise page_error(
                403,
                f"You are signed in at {self.idp_name} as {idp_name!r}, but there is no "
                f"account {posix!r} on the compute cluster, so no session can run for you. "
                "Ask the cluster's user support to create your HPC account.",
            )
        if uid < self.posix_min_uid or posix in self._denied_accounts():
            why = (f"a system account (uid {uid}, below {self.posix_min_uid})"
                   if uid < self.posix_min_uid else "an account kept for the system")
            raise page_error(
                403,
                f"You are signed in at {self.idp_name} as {idp_name!r}, which would run your "
                f"sessions as the cluster account {posix!r}: {why}, which this gateway never "
                "runs sessions as. Ask the gateway's administrators to map you to your "
                "personal HPC account.",
            )

    def _check_email(self, user_info: dict) -> None:
        if not self.require_verified_email or user_info.get("email_verified") is True:
            return
        raise page_error(
            403,
            f"Your email address ({user_info.get('email', 'none given')}) is not marked as "
            f"verified by {self.idp_name}, and this gateway admits only verified addresses. "
            f"{self.idp_name} marks an address verified only if its administrators configure "
            "it: the gateway's provider needs a custom scope mapping for the scope 'email' "
            "that returns email_verified true for addresses the site has verified (Authentik "
            "2025.10 and later send false by default). Please tell the gateway's "
            "administrators.",
        )

    async def update_auth_model(self, auth_model):
        user_info = auth_model["auth_state"][self.user_auth_state_key]
        self._check_email(user_info)
        # The name as the IdP sent it; auth_model["name"] is already normalised.
        idp_name = self.user_info_to_username(user_info)
        if not isinstance(idp_name, str):
            raise page_error(403, f"{self.idp_name} sent no usable username, so you were not signed in.")
        posix = self._posix_name(idp_name, user_info)
        self._check_account(idp_name, posix)
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

    async def _claims_of_fresh_id_token(self, token_info: dict) -> dict | None:
        """The user's claims from the ID token of a response the token endpoint has
        just sent, once its signature checks out; None where the userinfo endpoint
        must be asked instead."""
        if _fresh_token_response.get() is not token_info:
            return None
        id_token = token_info.get("id_token")
        if not id_token:
            return None
        try:
            claims = await self.id_token_signatures.verify(
                id_token, audience=self.client_id, issuer=self.issuer
            )
        except UnverifiableIdToken as exc:
            self.log.error("Refused an ID token from %s: %s", self.token_url, exc)
            raise page_error(
                403,
                f"The sign-in service's ({self.idp_name}) answer did not carry a valid "
                "signature, so you were not signed in. Please sign in again; if this "
                "happens again, tell the gateway's administrators.",
            ) from None
        except SigningKeysUnavailable as exc:
            self.log.warning("Cannot read the IdP's signing keys (%s)", exc)
            raise page_error(
                503,
                f"The sign-in service ({self.idp_name}) did not give the keys its answers "
                "are signed with, so you cannot sign in right now. Please try again in a "
                "few minutes.",
            ) from None
        except jwt.InvalidTokenError as exc:
            self.log.warning("ID token not usable (%s); asking the userinfo endpoint", exc)
            return None
        if not self.claims_from_id_token:
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
        claims = await self._claims_of_fresh_id_token(token_info)
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
