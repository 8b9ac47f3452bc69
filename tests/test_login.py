"""Sign-in through the Authentik-shaped identity provider: who gets in, and clear refusals."""

from __future__ import annotations

import html
import pwd
import re
import time
from urllib.parse import parse_qs, urlencode, urlparse, urlunparse

import pytest
import requests
from support import PASSWORDS, logged_in, session_env, start_hub

from bioimage_gateway.devstack.hubclient import HubClient
from bioimage_gateway.devstack.idp import LocalIdentityProvider, demo_users
from bioimage_gateway.devstack.processes import free_port
from bioimage_gateway.settings import load_settings


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


def test_authentiks_default_claims_sign_in(hub, devstack):
    """Authentik (2025.10 and later) says email_verified: false for everyone by default."""
    assert devstack.record()["idp"]["email_scope_mapping"] == "authentik-default"
    bob, response = sign_in(hub, "bob")
    assert response.status_code == 200 and response.url.startswith(hub.url)
    assert bob.api("GET", "/user").json()["name"] == "bob"


def test_a_site_that_requires_verified_emails_says_what_authentik_needs(verified_email_hub):
    _, response = sign_in(verified_email_hub, "bob")
    assert response.status_code == 403
    text = html.unescape(response.text)
    assert "(bob@example.org) is not marked as verified by Authentik" in text
    assert "needs a custom scope mapping for the scope 'email'" in text
    assert "jupyterhub-hub-login" not in response.cookies


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
    assert ada.http.get(ada.url("/hub/admin"), timeout=30).status_code == 200
    idp.set_user("ada", groups=["imaging"])
    ada.http.get(ada.url("/hub/logout"), timeout=30)
    ada = logged_in(hub.url, "ada")
    assert ada.http.get(ada.url("/hub/admin"), timeout=30).status_code == 403
    assert "gateway-admins" not in ada.api("GET", "/user").json()["groups"]


# ---- one identity, one account -------------------------------------------------------------

def add_idp_user(idp, username: str, password: str, groups=("imaging",)) -> None:
    users = idp.read_users()
    users.append({"username": username, "password": password, "groups": list(groups),
                  "email": "someone@example.org"})
    idp.write_users(users)


def refused_sign_in(hub, username: str, password: str) -> str:
    client = HubClient(hub.url, username, password)
    client.http.get(client.url("/hub/login"), timeout=30)
    response = client.login_oidc(check=False)
    assert response.status_code == 403, (response.url, response.status_code)
    assert "jupyterhub-hub-login" not in client.http.cookies
    return html.unescape(response.text)


def test_an_idp_name_differing_only_in_case_does_not_enter_alices_account(hub, idp):
    add_idp_user(idp, "Alice", "someone-else")
    page = refused_sign_in(hub, "Alice", "someone-else")
    assert "as 'Alice', which reads as 'alice' once case and look-alike characters are folded" in page
    assert "you were not signed in" in page


def _a_system_account_below_1000(devstack) -> str:
    """An account of this machine with a uid below 1000 that is not on the site's deny list."""
    denied = load_settings(devstack.record()["gateway_yaml"]).auth.posix.denied_accounts
    return next(p.pw_name for p in sorted(pwd.getpwall(), key=lambda p: p.pw_uid)
                if 0 < p.pw_uid < 1000 and p.pw_name not in denied)


def test_system_accounts_are_refused_with_a_page_that_says_so(hub, idp, devstack):
    system = _a_system_account_below_1000(devstack)
    uid = pwd.getpwnam(system).pw_uid
    cases = {"root": "a system account (uid 0, below 1000)",
             system: f"a system account (uid {uid}, below 1000)",
             "nobody": "an account kept for the system"}  # uid 65534, on the deny list
    for name, why in cases.items():
        add_idp_user(idp, name, f"{name}-password")
        page = refused_sign_in(hub, name, f"{name}-password")
        assert f"as the cluster account {name!r}: {why}, which this gateway never runs sessions as" in page


@pytest.fixture(scope="module")
def map_file_hub(devstack):
    """A site that maps IdP usernames to cluster accounts with a file: the IdP's kate is bob."""
    map_file = devstack.state_dir / "posix-map.yaml"
    map_file.write_text("alice: alice\nkate: bob\n")
    users = demo_users() + [
        {"username": "kate", "password": "kate-password", "groups": ["imaging"]},
        {"username": "\u212aate", "password": "kelvin-password", "groups": ["imaging"]},  # KELVIN SIGN
    ]
    hub = oidc_hub(devstack, "map-file-hub", users=users, posix={"map_file": str(map_file)})
    try:
        yield hub
    finally:
        stop_oidc_hub(hub)


def test_the_mapping_file_decides_and_a_name_it_does_not_list_is_refused(map_file_hub):
    kate, response = sign_in(map_file_hub, "kate", "kate-password")
    assert response.status_code == 200 and kate.api("GET", "/user").json()["name"] == "bob"
    page = refused_sign_in(map_file_hub, "tom", PASSWORDS["tom"])
    assert "the gateway's list of cluster accounts does not include you" in page


def test_a_kelvin_sign_does_not_enter_the_account_mapped_to_kate(map_file_hub):
    page = refused_sign_in(map_file_hub, "\u212aate", "kelvin-password")
    assert "as '\\u212aate', which reads as 'kate' once case and look-alike characters are folded" in page


# ---- admins: the admin pages, not other users' sessions ----------------------------------

def start_session(client: HubClient) -> None:
    response = client.submit_form({"profile": "cpu", "cpus": "1", "memory_gb": "1", "walltime_hours": "1"})
    assert response.status_code == 302
    assert client.progress()[-1].get("ready")


def test_an_admin_gets_the_admin_pages_but_not_alices_session(hub, alice):
    start_session(alice)
    ada = logged_in(hub.url, "ada")
    assert ada.http.get(ada.url("/hub/admin"), timeout=30).status_code == 200
    users = {u["name"]: u for u in ada.api("GET", "/users").json()}
    assert users["alice"]["servers"][""]["ready"]
    # Opening alice's JupyterLab ends at the hub's refusal, not at its "Authorize access" page.
    page = ada.http.get(ada.url("/user/alice/lab"), timeout=60)
    assert page.status_code == 403
    assert "You do not have permission to access" in page.text
    assert urlparse(page.url).path == "/hub/api/oauth2/authorize"
    # Nor can ada get there another way: a token made out to alice, or a share of her server.
    assert ada.api("POST", "/users/alice/tokens", json={"note": "ada's"}).status_code == 403
    assert ada.api("POST", "/shares/alice/", json={"user": "ada"}).status_code == 403
    # What the admin page does stays hers: groups listed, alice's session stopped.
    assert ada.api("GET", "/groups").status_code == 200
    assert ada.api("DELETE", "/users/alice/server").status_code in (202, 204)
    alice.wait_stopped()


@pytest.fixture(scope="module")
def server_access_hub(devstack):
    hub = oidc_hub(devstack, "server-access-hub", admin_server_access=True)
    try:
        yield hub
    finally:
        stop_oidc_hub(hub)


def test_with_admin_server_access_an_admin_opens_alices_session_and_the_hub_logs_it(
        server_access_hub, devstack):
    alice = logged_in(server_access_hub.url, "alice")
    try:
        start_session(alice)
        ada = logged_in(server_access_hub.url, "ada")
        page = ada.http.get(ada.url("/user/alice/lab"), timeout=60)
        # JupyterHub asks ada to confirm; she does.
        assert page.status_code == 200 and "Authorize access" in page.text, page.url
        fields = re.findall(r'<input type="hidden" name="(_xsrf|scopes)" value="([^"]*)"', page.text)
        lab = ada.http.post(page.url, data=[(k, html.unescape(v)) for k, v in fields], timeout=60)
        assert lab.status_code == 200
        assert urlparse(lab.url).path == "/user/alice/lab"
        log = (devstack.state_dir / "server-access-hub.log").read_text()
        assert "Server access: ada was let into alice's server (default) at /user/alice/" in log
    finally:
        alice.stop()


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


def oidc_hub(devstack, name: str, *, users=None, ttl=None, email_scope_mapping="authentik-default",
             **auth_changes):
    """A hub of its own on an identity provider of its own (which knows the hub's callback URL)."""
    port = free_port()
    state = devstack.state_dir / f"{name}-idp"
    idp = LocalIdentityProvider(
        state, users=users or demo_users(), ttl=ttl, email_scope_mapping=email_scope_mapping,
        clients=[{"client_id": "bioimage-gateway",
                  "redirect_uris": [f"http://127.0.0.1:{port}/hub/oauth_callback"],
                  "post_logout_redirect_uris": [f"http://127.0.0.1:{port}/hub/login"]}],
    )
    idp.start()
    secret_file = state / "client-secret"
    secret_file.write_text(idp.clients[0]["client_secret"])
    try:
        hub = start_hub(devstack, name, port=port, auth_changes={
            "url": idp.base_url, "client_secret_file": str(secret_file), **auth_changes})
    except BaseException:
        idp.stop()
        raise
    hub.idp = idp
    return hub


def stop_oidc_hub(hub) -> None:
    try:
        hub.stop()
    finally:
        hub.idp.stop()


@pytest.fixture(scope="module")
def verified_email_hub(devstack):
    """A site that admits verified addresses only, on Authentik's shipped scope mappings."""
    hub = oidc_hub(devstack, "verified-email-hub", require_verified_email=True)
    try:
        yield hub
    finally:
        stop_oidc_hub(hub)


@pytest.fixture(scope="module")
def short_token_hub(devstack):
    """A hub on an identity provider whose access tokens live 3 s (Authentik's default is 300).

    Its admins may read users' auth state (admin_server_access), where the tests look
    at the tokens."""
    hub = oidc_hub(devstack, "short-token-hub", ttl={"AccessToken": 3}, admin_server_access=True)
    try:
        yield hub
    finally:
        stop_oidc_hub(hub)


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
