"""Sign-in through the Authentik-shaped identity provider: who gets in, and clear refusals."""

from __future__ import annotations

import html
import time
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import jwt
import pytest
import requests
from support import PASSWORDS, logged_in, session_env, start_hub

from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.idp import LocalIdentityProvider, demo_users
from bioimage_gateway.devstack.processes import free_port
from bioimage_gateway.hub_config import authenticator as gw_authenticator


@pytest.fixture
def idp(devstack):
    handle = devstack.idp()
    original = handle.read_users()
    yield handle
    handle.write_users(original)


def sign_in(hub, username: str, password: str | None = None) -> tuple[HubClient, requests.Response]:
    client = HubClient(hub.url, username, password or PASSWORDS[username])
    client.http.get(client.url("/hub/login"), timeout=30)
    return client, client.login_oidc(check=False)


def test_user_in_no_allowed_group_gets_a_page_naming_what_to_ask_for(hub):
    _, response = sign_in(hub, "eve")
    assert response.status_code == 403
    assert "not a member of any group that may use this gateway" in response.text
    assert "gateway-admins, imaging, trainers" in response.text
    assert "Traceback" not in response.text


def test_unverified_email_is_never_admitted(hub, idp):
    idp.set_user("bob", email_verified=False)
    _, response = sign_in(hub, "bob")
    assert response.status_code == 403
    assert "is not verified" in response.text


def test_user_without_a_posix_account_gets_a_clear_page(hub, idp):
    users = idp.read_users()
    users.append({"username": "nocluster", "password": "nocluster-demo", "groups": ["imaging"],
                  "name": "No Cluster", "email": "nocluster@example.org",
                  "email_verified": True})
    idp.write_users(users)
    _, response = sign_in(hub, "nocluster", "nocluster-demo")
    assert response.status_code == 403
    assert "there is no account 'nocluster' on the compute cluster" in html.unescape(response.text)


def test_groups_from_the_idp_decide_profiles(hub):
    tom = logged_in(hub.url, "tom")
    form = tom.spawn_form().text
    assert 'value="workshop"' in form and 'value="cpu"' in form
    assert 'value="large-memory"' not in form


def test_admin_rights_follow_the_idp_group_at_next_login(hub, idp):
    ada = logged_in(hub.url, "ada")
    assert ada.api("GET", "/user").json()["admin"] is True
    idp.set_user("ada", groups=["imaging"])
    ada.http.get(ada.url("/hub/logout"), timeout=30)
    ada = logged_in(hub.url, "ada")
    me = ada.api("GET", "/user").json()
    assert me["admin"] is False
    assert "gateway-admins" not in me["groups"]


def _callback_of_a_fresh_login(hub, username: str):
    """Run the IdP side of a login and stop before the hub's callback is visited."""
    client = HubClient(hub.url, username, PASSWORDS[username])
    page = client.http.get(client.url("/hub/oauth_login"), timeout=30)
    action = page.text.split('id="login-form"')[1].split('action="')[1].split('"')[0]
    response = client.http.post(
        requests.compat.urljoin(page.url, action.replace("&amp;", "&")),
        data={"username": username, "password": PASSWORDS[username]},
        allow_redirects=False, timeout=30,
    )
    while response.is_redirect and "/hub/oauth_callback" not in response.headers["Location"]:
        response = client.http.get(
            requests.compat.urljoin(response.url, response.headers["Location"]),
            allow_redirects=False, timeout=30,
        )
    return client, requests.compat.urljoin(response.url, response.headers["Location"])


def test_tampered_state_is_refused(hub):
    client, callback = _callback_of_a_fresh_login(hub, "alice")
    parts = urlparse(callback)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query["state"] = query["state"][:-4] + "AAAA"
    response = client.http.get(urlunparse(parts._replace(query=urlencode(query))), timeout=30)
    assert response.status_code in (400, 403)
    assert "jupyterhub-hub-login" not in client.http.cookies


def test_replayed_code_is_refused(hub):
    client, callback = _callback_of_a_fresh_login(hub, "alice")
    state_cookie = dict(client.http.cookies)
    first = client.http.get(callback, timeout=30)
    assert first.status_code == 200 and first.url.startswith(hub.url)
    # An attacker who captured the callback URL and the state cookie replays both.
    attacker = requests.Session()
    for name, value in state_cookie.items():
        attacker.cookies.set(name, value)
    replay = attacker.get(callback, timeout=30)
    assert replay.status_code in (400, 403)
    assert "jupyterhub-hub-login" not in attacker.cookies


def test_idp_down_gives_a_clear_page(devstack):
    dead = f"http://127.0.0.1:{free_port()}"
    down_hub = start_hub(devstack, "idp-down-hub", auth_changes={"url": dead})
    try:
        response = requests.get(f"{down_hub.url}/hub/oauth_login", timeout=30)
        assert response.status_code == 503
        assert "is not answering, so you cannot sign in right now" in response.text
        assert dead in response.text and "Traceback" not in response.text
    finally:
        down_hub.stop()


def test_logout_ends_the_session_at_the_idp_too(hub, devstack):
    alice = logged_in(hub.url, "alice")
    response = alice.http.get(alice.url("/hub/logout"), timeout=30)
    visited = [r.url for r in response.history] + [response.url]
    end_session = devstack.record()["idp"]["end_session_url"]
    assert any(url.startswith(end_session) for url in visited), visited
    assert response.url.startswith(f"{hub.url}/hub/login")
    # Signed out at the IdP as well: signing in again asks for the password.
    page = alice.http.get(alice.url("/hub/oauth_login"), timeout=30)
    assert 'id="login-form"' in page.text


def _revoke(issuer: str, secret: str, token: str) -> None:
    base = issuer.split("/application/")[0]
    response = requests.post(f"{base}/application/o/revoke/", data={"token": token},
                             auth=("bioimage-gateway", secret), timeout=10)
    assert response.status_code == 200, response.text


@pytest.fixture(scope="module")
def short_token_hub(devstack):
    """A hub on an identity provider whose access tokens live 3 s (Authentik's default is 300)."""
    port = free_port()
    state = devstack.state_dir / "short-token-idp"
    idp = LocalIdentityProvider(
        state, users=demo_users(), ttl={"AccessToken": 3},
        clients=[{"client_id": "bioimage-gateway",
                  "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
                  "post_logout_redirect_uris": [f"http://127.0.0.1:{port}/hub/login"]}],
    )
    idp.start()
    secret_file = state / "client-secret"
    secret_file.write_text(idp.clients[0]["client_secret"])
    hub = start_hub(devstack, "short-token-hub", port=port, auth_changes={
        "url": idp.base_url, "client_secret_file": str(secret_file)})
    hub.idp = idp
    try:
        yield hub
    finally:
        hub.stop()
        idp.stop()


def _auth_state(hub, username: str) -> dict:
    ada = logged_in(hub.url, "ada")
    return ada.api("GET", f"/users/{username}").json()["auth_state"]


def test_expired_access_token_is_refreshed_before_spawn(short_token_hub):
    alice = logged_in(short_token_hub.url, "alice")
    before = _auth_state(short_token_hub, "alice")
    assert before["refresh_token"]
    time.sleep(4)  # the access token has expired
    response = alice.submit_form({"profile": "cpu", "cpus": "1", "memory_gb": "1",
                                  "walltime_hours": "1"})
    assert response.status_code == 302
    assert alice.progress()[-1].get("ready")
    after = _auth_state(short_token_hub, "alice")
    assert after["access_token"] != before["access_token"]
    alice.stop()


def test_revoked_refresh_token_sends_the_user_back_to_login(short_token_hub):
    bob = logged_in(short_token_hub.url, "bob")
    tokens = _auth_state(short_token_hub, "bob")
    _revoke(short_token_hub.idp.issuer, short_token_hub.idp.clients[0]["client_secret"],
            tokens["refresh_token"])
    time.sleep(4)  # and the access token has expired
    response = bob.submit_form({"profile": "cpu", "cpus": "1", "memory_gb": "1",
                                "walltime_hours": "1"})
    assert response.status_code == 403
    assert "login again" in response.text
    home = bob.http.get(bob.url("/hub/home"), allow_redirects=False, timeout=30)
    assert home.status_code == 302 and "/hub/login" in home.headers["Location"]
    # Signing in again works and gives a session.
    bob.login()
    assert bob.spawn_form().status_code == 200


def test_access_token_reaches_the_session_when_the_site_opts_in(hub, devstack, bob):
    """The devstack's site opts in (auth.pass_access_token); the token works at the IdP."""
    response = bob.submit_form({"profile": "cpu", "cpus": "1", "memory_gb": "1",
                                "walltime_hours": "1"})
    assert response.status_code == 302
    assert bob.progress()[-1].get("ready")
    token = session_env("bob")["BIOIMAGE_GATEWAY_ACCESS_TOKEN"]
    base = devstack.record()["idp"]["issuer"].split("/application/")[0]
    userinfo = requests.get(f"{base}/application/o/userinfo/",
                            headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert userinfo.status_code == 200
    assert userinfo.json()["preferred_username"] == "bob"


# ---- claims from the ID token at sign-in (pure logic; the sign-ins above run it for real)

ISSUER = "https://auth.example.org/application/o/bioimage-gateway/"


def _token_response(**claims) -> dict:
    now = int(time.time())
    payload = {"iss": ISSUER, "aud": "bioimage-gateway", "iat": now, "exp": now + 300,
               "sub": "abc", "nonce": "n", "preferred_username": "alice",
               "groups": ["imaging"], "email": "alice@example.org", "email_verified": True}
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    # The signature is not what is checked (the token comes straight from the IdP).
    return {"access_token": "a", "token_type": "Bearer",
            "id_token": jwt.encode(payload, "some-key-of-at-least-32-bytes-!!", algorithm="HS256")}


def _claims(token_info: dict, fresh: bool = True):
    auth = gw_authenticator.AuthentikOAuthenticator(
        client_id="bioimage-gateway", issuer=ISSUER, username_claim="preferred_username",
        manage_groups=True, auth_state_groups_key="oauth_user.groups")
    if fresh:
        gw_authenticator._fresh_token_response.set(token_info)
    try:
        return auth._claims_of_fresh_id_token(token_info)
    finally:
        gw_authenticator._fresh_token_response.set(None)


def test_sign_in_takes_the_users_claims_from_the_fresh_id_token():
    claims = _claims(_token_response())
    assert claims["preferred_username"] == "alice" and claims["groups"] == ["imaging"]
    assert claims["email_verified"] is True
    # Only what describes the user is kept, as the userinfo endpoint would answer.
    assert not {"iss", "aud", "exp", "iat", "nonce"} & claims.keys()


@pytest.mark.parametrize("change", [
    {"groups": None},              # the IdP keeps groups out of its ID tokens
    {"email_verified": None},
    {"aud": "another-client"},
    {"iss": "https://elsewhere.example.org/"},
    {"exp": int(time.time()) - 60},
])
def test_an_id_token_that_cannot_say_who_the_user_is_sends_the_hub_to_userinfo(change):
    assert _claims(_token_response(**change)) is None


def test_stored_tokens_are_always_checked_at_the_userinfo_endpoint():
    """A refresh must find out whether the access token still works: no ID token shortcut."""
    assert _claims(_token_response(), fresh=False) is None
