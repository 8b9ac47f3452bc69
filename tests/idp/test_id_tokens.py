"""The hub's authenticator reads ID tokens from the real provider: their signature is checked
against the provider's published keys (JWKS), and a forged one is refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from tornado import web

from bioimage_gateway.devstack.idp import LocalIdentityProvider, demo_users
from bioimage_gateway.devstack.processes import free_port
from bioimage_gateway.hub_config import authenticator as gw_authenticator
from bioimage_gateway.hub_config.authenticator import AuthentikOAuthenticator

SCOPE = "openid profile email offline_access"
CLIENT_ID = "bioimage-gateway"


def authenticator(provider: LocalIdentityProvider, **config) -> AuthentikOAuthenticator:
    """The hub's authenticator, configured for ``provider`` as configure_authentik does."""
    settings = dict(
        client_id=CLIENT_ID, client_secret=provider.clients[0]["client_secret"],
        discovery_url=provider.discovery_url, issuer=provider.issuer,
        token_url=provider.token_url, userdata_url=provider.userinfo_url,
        username_claim="preferred_username", manage_groups=True,
        auth_state_groups_key="oauth_user.groups",
    )
    settings.update(config)
    return AuthentikOAuthenticator(**settings)


def claims_of(auth: AuthentikOAuthenticator, token_response: dict, fresh: bool = True):
    """What the authenticator takes from a token response (as if the token endpoint had just sent it)."""
    async def read():
        if fresh:
            gw_authenticator._fresh_token_response.set(token_response)
        return await auth._claims_of_fresh_id_token(token_response)
    return asyncio.run(read())


def refusal(auth: AuthentikOAuthenticator, token_response: dict) -> web.HTTPError:
    with pytest.raises(web.HTTPError) as info:
        claims_of(auth, token_response)
    return info.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def parts(token: str) -> tuple[dict, dict]:
    header, payload, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return (json.loads(base64.urlsafe_b64decode(pad(header))),
            json.loads(base64.urlsafe_b64decode(pad(payload))))


def forged(token: str, *, kid: str | None = "same", **changes) -> str:
    """The token's claims (with changes), signed with a key the provider never had."""
    header, payload = parts(token)
    payload.update(changes)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kid = header["kid"] if kid == "same" else kid
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def jwks_fetches(provider: LocalIdentityProvider) -> int:
    """How often the provider has been asked for its key set (its request log)."""
    path = re.escape(f"/application/o/{provider.slug}/jwks/")
    return len(re.findall(rf"GET {path} 200", provider.log_path.read_text()))


def with_id_token(tokens: dict, id_token: str) -> dict:
    return {k: v for k, v in tokens.items() if k != "_auth"} | {"id_token": id_token}


# ---- signatures ---------------------------------------------------------------------------

def test_a_genuine_id_token_gives_the_users_claims(idp, flow):
    tokens = flow.tokens("alice")
    claims = claims_of(authenticator(idp), with_id_token(tokens, tokens["id_token"]))
    assert claims["preferred_username"] == "alice" and claims["groups"] == ["imaging"]
    # Only what describes the user is kept, as the userinfo endpoint would answer.
    assert not {"iss", "aud", "exp", "iat", "nonce"} & claims.keys()


@pytest.mark.parametrize("forgery", ["other-key-same-kid", "claims-changed", "alg-none", "hs256-with-public-key"])
def test_a_forged_id_token_is_refused_with_a_page(idp, flow, forgery):
    tokens = flow.tokens("eve")
    genuine = tokens["id_token"]
    header, payload = parts(genuine)
    if forgery == "other-key-same-kid":
        token = forged(genuine, groups=["gateway-admins"])
    elif forgery == "claims-changed":
        # eve's real signature over claims that now say she is ada.
        head, _, signature = genuine.split(".")
        token = ".".join([head, b64(json.dumps({**payload, "preferred_username": "ada"}).encode()), signature])
    elif forgery == "alg-none":
        token = jwt.encode({**payload, "groups": ["imaging"]}, None, algorithm="none")
    else:
        # The provider's public key used as an HMAC secret (an algorithm-confusion forgery).
        jwks = json.loads(idp.key_file.read_text())
        public_pem = jwt.PyJWK({k: jwks[k] for k in ("kty", "n", "e")}).key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        signing_input = ".".join([b64(json.dumps({"alg": "HS256", "kid": header["kid"]}).encode()),
                                  b64(json.dumps({**payload, "groups": ["imaging"]}).encode())])
        token = signing_input + "." + b64(hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest())
    error = refusal(authenticator(idp), with_id_token(tokens, token))
    assert error.status_code == 403
    assert "did not carry a valid signature, so you were not signed in" in error.jupyterhub_message


def test_an_unknown_key_id_fetches_the_keys_once_more_and_no_more_often_than_allowed(idp, flow):
    tokens = flow.tokens("eve")
    genuine = with_id_token(tokens, tokens["id_token"])
    # Keys may be fetched again at once: an unknown key id makes one new fetch.
    eager = authenticator(idp, id_token_keys_refetch_interval=0)
    before = jwks_fetches(idp)
    assert claims_of(eager, genuine)["preferred_username"] == "eve"
    assert jwks_fetches(idp) == before + 1
    assert refusal(eager, with_id_token(tokens, forged(tokens["id_token"], kid="rotated-1"))).status_code == 403
    assert jwks_fetches(idp) == before + 2
    # Within the interval, forged key ids do not make the hub ask the provider again.
    patient = authenticator(idp, id_token_keys_refetch_interval=3600)
    before = jwks_fetches(idp)
    assert claims_of(patient, genuine)["preferred_username"] == "eve"
    for kid in ("rotated-2", "rotated-3", None):
        assert refusal(patient, with_id_token(tokens, forged(tokens["id_token"], kid=kid))).status_code == 403
    assert jwks_fetches(idp) == before + 1


def test_a_rotated_signing_key_is_fetched_and_accepted(tmp_path, idp_prefix, flow_for):
    provider = LocalIdentityProvider(
        tmp_path, users=demo_users(), prefix=idp_prefix, port=free_port(),
        clients=[{"client_id": CLIENT_ID, "redirect_uris": ["http://127.0.0.1:9/cb"]}],
    )
    provider.start()
    try:
        auth = authenticator(provider, id_token_keys_refetch_interval=0)
        tokens = flow_for(provider).tokens("alice")
        assert claims_of(auth, with_id_token(tokens, tokens["id_token"]))["preferred_username"] == "alice"
        old_kid = parts(tokens["id_token"])[0]["kid"]
        # The provider comes back with a new signing key (its key file gone), at the same address.
        provider.stop()
        provider.key_file.unlink()
        provider.start()
        tokens = flow_for(provider).tokens("alice")
        assert parts(tokens["id_token"])[0]["kid"] != old_kid
        assert claims_of(auth, with_id_token(tokens, tokens["id_token"]))["preferred_username"] == "alice"
    finally:
        provider.stop()


def test_unreadable_keys_give_a_page_saying_to_try_again(idp, flow):
    tokens = flow.tokens("alice")
    dead = f"http://127.0.0.1:{free_port()}/application/o/{idp.slug}/.well-known/openid-configuration"
    error = refusal(authenticator(idp, discovery_url=dead), with_id_token(tokens, tokens["id_token"]))
    assert error.status_code == 503
    assert "did not give the keys its answers are signed with" in error.jupyterhub_message


# ---- which claims are read from a well-signed token --------------------------------------

@pytest.mark.parametrize("scope, config", [
    ("openid email offline_access", {}),                        # no profile scope: no groups claim
    ("openid profile offline_access", {"require_verified_email": True}),  # no email_verified claim
    (SCOPE, {"client_id": "another-client"}),                  # meant for another client
    (SCOPE, {"issuer": "https://elsewhere.example.org/"}),    # from another issuer
], ids=["no-groups", "no-email-verified", "other-audience", "other-issuer"])
def test_an_id_token_that_cannot_say_who_the_user_is_sends_the_hub_to_userinfo(idp, flow, scope, config):
    tokens = flow.tokens("alice", scope=scope)
    assert claims_of(authenticator(idp, **config), with_id_token(tokens, tokens["id_token"])) is None


def test_an_expired_id_token_sends_the_hub_to_userinfo(tmp_path, idp_prefix, flow_for):
    provider = LocalIdentityProvider(
        tmp_path, users=demo_users(), prefix=idp_prefix, ttl={"IdToken": 1},
        clients=[{"client_id": CLIENT_ID, "redirect_uris": ["http://127.0.0.1:9/cb"]}],
    )
    provider.start()
    try:
        tokens = flow_for(provider).tokens("alice")
        expiry = parts(tokens["id_token"])[1]["exp"]
        while time.time() < expiry:  # until the token has expired
            time.sleep(0.05)
        assert claims_of(authenticator(provider), with_id_token(tokens, tokens["id_token"])) is None
    finally:
        provider.stop()


def test_stored_tokens_are_always_checked_at_the_userinfo_endpoint(idp, flow):
    """A refresh must find out whether the access token still works: no ID token shortcut."""
    tokens = flow.tokens("alice")
    assert claims_of(authenticator(idp), with_id_token(tokens, tokens["id_token"]), fresh=False) is None
