"""Fixtures for the local identity provider's tests: the real node provider, driven over HTTP."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urljoin, urlparse

import jwt
import pytest
import requests

from bioimage_gateway.devstack.idp import DEFAULT_PREFIX, LocalIdentityProvider, demo_users

CLIENT_ID = "bioimage-gateway"
# Nothing listens here: the tests stop at the redirect to the client.
CALLBACK = "http://127.0.0.1:9/hub/oauth_callback"
LOGGED_OUT = "http://127.0.0.1:9/hub/logged-out"
SCOPE = "openid profile email offline_access"


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


def form_action(page: requests.Response) -> str:
    match = re.search(r'<form[^>]*id="login-form"[^>]*action="([^"]+)"', page.text)
    assert match, f"no login form in the page:\n{page.text[:500]}"
    return urljoin(page.url, match.group(1))


@dataclass
class Authorization:
    """One browser's authorization request, up to the redirect back to the client."""

    http: requests.Session
    verifier: str
    state: str
    nonce: str
    redirect_uri: str
    login_page: requests.Response | None = None
    callback: str | None = None
    hops: list[str] = field(default_factory=list)

    @property
    def params(self) -> dict[str, str]:
        assert self.callback, "the flow did not come back to the client"
        return {k: v[0] for k, v in parse_qs(urlparse(self.callback).query).items()}

    @property
    def code(self) -> str:
        return self.params["code"]


class Flow:
    """A requests-only relying party of the provider: what the hub's authenticator does."""

    def __init__(self, idp: LocalIdentityProvider):
        self.idp = idp
        self.client = idp.clients[0]
        self.client_id = self.client["client_id"]
        self.callback = self.client["redirect_uris"][0]
        self.logged_out = (self.client.get("post_logout_redirect_uris") or [None])[0]
        self.discovery = requests.get(idp.discovery_url, timeout=10).json()

    @property
    def secret(self) -> str:
        return self.client["client_secret"]

    def follow(self, auth: Authorization, response: requests.Response) -> requests.Response:
        """Follow redirects inside the provider; stop at the client's redirect URI."""
        while response.status_code in (301, 302, 303, 307):
            location = urljoin(response.url, response.headers["location"])
            auth.hops.append(location)
            if location.startswith(auth.redirect_uri):
                auth.callback = location
                return response
            response = auth.http.get(location, allow_redirects=False, timeout=10)
        return response

    def start(self, *, scope: str = SCOPE, redirect_uri: str | None = None, http: requests.Session | None = None,
              extra: dict[str, str] | None = None, drop: tuple[str, ...] = ()) -> tuple[Authorization, requests.Response]:
        redirect_uri = redirect_uri or self.callback
        verifier, challenge = pkce_pair()
        auth = Authorization(
            http=http or requests.Session(), verifier=verifier, state=secrets.token_urlsafe(16),
            nonce=secrets.token_urlsafe(16), redirect_uri=redirect_uri,
        )
        params = {
            "client_id": self.client_id, "response_type": "code", "redirect_uri": redirect_uri, "scope": scope,
            "state": auth.state, "nonce": auth.nonce, "code_challenge": challenge, "code_challenge_method": "S256",
            **(extra or {}),
        }
        for name in drop:
            params.pop(name)
        response = auth.http.get(self.discovery["authorization_endpoint"], params=params,
                                 allow_redirects=False, timeout=10)
        response = self.follow(auth, response)
        if auth.callback is None and response.status_code == 200 and 'id="login-form"' in response.text:
            auth.login_page = response
        return auth, response

    def submit(self, auth: Authorization, username: str, password: str) -> requests.Response:
        assert auth.login_page is not None, "no login page to submit"
        response = auth.http.post(form_action(auth.login_page), data={"username": username, "password": password},
                                  allow_redirects=False, timeout=10)
        response = self.follow(auth, response)
        if auth.callback is None and 'id="login-form"' in response.text:
            auth.login_page = response
        return response

    def login(self, username: str, password: str | None = None, **kwargs) -> Authorization:
        auth, _ = self.start(**kwargs)
        self.submit(auth, username, password or f"{username}-demo")
        assert auth.callback, f"{username} was not sent back to the client; hops: {auth.hops}"
        return auth

    def exchange(self, auth: Authorization, *, code: str | None = None, verifier: str | None = None,
                 redirect_uri: str | None = None, secret: str | None = None) -> requests.Response:
        return requests.post(
            self.discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code", "code": code or auth.code,
                "redirect_uri": redirect_uri or auth.redirect_uri, "code_verifier": verifier or auth.verifier,
            },
            auth=(self.client_id, secret or self.secret), timeout=10,
        )

    def tokens(self, username: str, **kwargs) -> dict:
        auth = self.login(username, **kwargs)
        response = self.exchange(auth)
        assert response.status_code == 200, response.text
        return response.json() | {"_auth": auth}

    def userinfo(self, access_token: str) -> requests.Response:
        return requests.get(self.discovery["userinfo_endpoint"],
                            headers={"Authorization": f"Bearer {access_token}"}, timeout=10)

    def verify_id_token(self, id_token: str, nonce: str | None = None) -> dict:
        """Check the ID token's signature against the provider's JWKS, and its issuer and audience."""
        jwks = requests.get(self.discovery["jwks_uri"], timeout=10).json()
        kid = jwt.get_unverified_header(id_token)["kid"]
        keys = [k for k in jwks["keys"] if k["kid"] == kid]
        assert keys, f"ID token signed with key {kid}, which the JWKS does not list"
        claims = jwt.decode(
            id_token, jwt.PyJWK(keys[0]).key, algorithms=["RS256"], audience=self.client_id,
            issuer=self.discovery["issuer"], options={"require": ["exp", "iat", "iss", "aud", "sub"]},
        )
        if nonce is not None:
            assert claims["nonce"] == nonce
        return claims


@pytest.fixture(scope="session")
def idp_prefix() -> Path:
    return Path(os.environ.get("BIOIMAGE_GATEWAY_IDP_PREFIX", DEFAULT_PREFIX))


@pytest.fixture(scope="session")
def idp(idp_prefix):
    state_dir = Path(tempfile.mkdtemp(prefix="gw-idp-test-", dir="/tmp"))
    provider = LocalIdentityProvider(
        state_dir, users=demo_users(), prefix=idp_prefix,
        clients=[{"client_id": CLIENT_ID, "redirect_uris": [CALLBACK], "post_logout_redirect_uris": [LOGGED_OUT]}],
    )
    try:
        provider.start()
        yield provider
    finally:
        provider.stop()
        if not os.environ.get("KEEP_STATE"):
            shutil.rmtree(state_dir, ignore_errors=True)


@pytest.fixture
def flow(idp):
    """A relying party; the users file is put back as it was after each test."""
    saved = idp.users_file.read_bytes()
    yield Flow(idp)
    idp.write_users(json.loads(saved))


@pytest.fixture
def flow_for():
    """Build a relying party for another provider started by a test."""
    return Flow
