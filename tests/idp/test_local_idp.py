"""The devstack's identity provider looks like Authentik to the hub: URLs, claims, refusals, logout."""

from __future__ import annotations

import subprocess
import time

import pytest
import requests

from bioimage_gateway.devstack.idp import LocalIdentityProvider, demo_users, ensure_installed
from bioimage_gateway.devstack.stack import DEMO_USERS


def test_discovery_lists_authentiks_endpoints(idp, flow):
    d = flow.discovery
    base = idp.base_url
    slug = idp.slug
    assert idp.discovery_url == f"{base}/application/o/{slug}/.well-known/openid-configuration"
    assert d["issuer"] == f"{base}/application/o/{slug}/" == idp.issuer
    assert d["authorization_endpoint"] == f"{base}/application/o/authorize/"
    assert d["token_endpoint"] == f"{base}/application/o/token/"
    assert d["userinfo_endpoint"] == f"{base}/application/o/userinfo/"
    assert d["end_session_endpoint"] == f"{base}/application/o/{slug}/end-session/" == idp.end_session_url
    assert d["jwks_uri"] == f"{base}/application/o/{slug}/jwks/"
    assert d["revocation_endpoint"] == f"{base}/application/o/revoke/"
    assert d["code_challenge_methods_supported"] == ["S256"]
    assert {"openid", "profile", "email", "offline_access"} <= set(d["scopes_supported"])
    assert {"sub", "preferred_username", "email", "email_verified", "name", "groups"} <= set(d["claims_supported"])
    assert "refresh_token" in d["grant_types_supported"]
    # Discovery is only under the application slug, as in Authentik.
    assert requests.get(f"{base}/.well-known/openid-configuration", timeout=10).status_code == 404
    keys = requests.get(d["jwks_uri"], timeout=10).json()["keys"]
    assert [k["kty"] for k in keys] == ["RSA"] and "d" not in keys[0]


def test_code_flow_with_pkce_gives_alice_authentik_claims(flow):
    auth, page = flow.start()
    # The browser is sent to a login page with a username and password form.
    assert page.status_code == 200
    assert 'name="username"' in page.text and 'name="password"' in page.text
    flow.submit(auth, "alice", "alice-demo")
    assert auth.callback, auth.hops
    assert auth.params["state"] == auth.state
    assert auth.params["iss"] == flow.discovery["issuer"]

    response = flow.exchange(auth)
    assert response.status_code == 200, response.text
    tokens = response.json()
    assert tokens["token_type"].lower() == "bearer"
    claims = flow.verify_id_token(tokens["id_token"], nonce=auth.nonce)
    assert claims["preferred_username"] == "alice"
    assert claims["groups"] == ["imaging"]
    assert claims["email"] == "alice@example.org"
    # Authentik's shipped 'email' scope mapping (2025.10 and later) vouches for no address.
    assert claims["email_verified"] is False
    assert claims["name"] == "Alice"
    # sub is an opaque identifier, as with Authentik's default subject mode.
    assert claims["sub"] != "alice"

    info = flow.userinfo(tokens["access_token"])
    assert info.status_code == 200
    assert info.json()["sub"] == claims["sub"]
    assert info.json()["preferred_username"] == "alice"
    assert info.json()["groups"] == ["imaging"]
    assert info.json()["email_verified"] is False


@pytest.mark.parametrize("user", DEMO_USERS, ids=[u["username"] for u in DEMO_USERS])
def test_every_demo_user_logs_in_with_their_groups(flow, user):
    tokens = flow.tokens(user["username"], scope="openid profile email")
    claims = flow.verify_id_token(tokens["id_token"])
    assert claims["preferred_username"] == user["username"]
    assert claims["groups"] == user["groups"]


def test_refresh_token_with_offline_access(flow):
    tokens = flow.tokens("bob")
    assert tokens["refresh_token"]
    refreshed = requests.post(
        flow.discovery["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(flow.client_id, flow.secret), timeout=10,
    )
    assert refreshed.status_code == 200, refreshed.text
    new = refreshed.json()
    assert new["access_token"] != tokens["access_token"]
    assert flow.verify_id_token(new["id_token"])["preferred_username"] == "bob"
    assert flow.userinfo(new["access_token"]).json()["preferred_username"] == "bob"

    # Without offline_access there is no refresh token.
    assert "refresh_token" not in flow.tokens("bob", scope="openid profile email")


@pytest.mark.parametrize("basic_header", [False, True], ids=["body-only", "body-and-header"])
def test_client_secret_in_the_body_works_too(flow, basic_header):
    # Authentik takes client_secret_post as well as client_secret_basic, and
    # both at once (as some OAuthenticator releases send them).
    auth = flow.login("tom")
    response = requests.post(
        flow.discovery["token_endpoint"],
        data={"grant_type": "authorization_code", "code": auth.code, "redirect_uri": auth.redirect_uri,
              "code_verifier": auth.verifier, "client_id": flow.client_id, "client_secret": flow.secret},
        auth=(flow.client_id, flow.secret) if basic_header else None,
        timeout=10,
    )
    assert response.status_code == 200, response.text
    assert flow.verify_id_token(response.json()["id_token"])["groups"] == ["trainers"]


def test_wrong_client_secret_is_refused(flow):
    auth = flow.login("alice")
    response = flow.exchange(auth, secret="not-the-secret")
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_client"
    assert "id_token" not in response.text


def test_wrong_password_shows_the_login_page_again(flow):
    auth, _ = flow.start()
    page = flow.submit(auth, "alice", "wrong-password")
    assert auth.callback is None
    assert not any("code=" in hop for hop in auth.hops)
    assert page.status_code == 200
    assert "Invalid username or password" in page.text
    assert 'id="login-form"' in page.text and 'value="alice"' in page.text
    # The user can try again on the same page.
    flow.submit(auth, "alice", "alice-demo")
    assert auth.callback and auth.code


def test_unknown_user_is_refused_like_a_wrong_password(flow):
    auth, _ = flow.start()
    page = flow.submit(auth, "mallory", "mallory-demo")
    assert auth.callback is None
    assert "Invalid username or password" in page.text


def test_replayed_code_is_refused_and_revokes_its_tokens(flow):
    auth = flow.login("alice")
    first = flow.exchange(auth)
    assert first.status_code == 200
    again = flow.exchange(auth)
    assert again.status_code == 400
    assert again.json()["error"] == "invalid_grant"
    # RFC 6749 4.1.2: tokens issued from a replayed code are revoked.
    assert flow.userinfo(first.json()["access_token"]).status_code == 401


def test_unregistered_redirect_uri_is_refused(flow):
    evil = "http://127.0.0.1:9/evil/callback"
    auth, page = flow.start(redirect_uri=evil)
    assert page.status_code == 400
    assert auth.callback is None and auth.login_page is None
    assert not any(hop.startswith(evil) for hop in auth.hops)
    assert "redirect_uri" in page.text


def test_code_cannot_be_exchanged_for_another_redirect_uri(flow):
    auth = flow.login("alice")
    response = flow.exchange(auth, redirect_uri=flow.callback + "/../../evil")
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_pkce_is_required(flow):
    auth, _ = flow.start(drop=("code_challenge", "code_challenge_method"))
    assert auth.callback is not None
    assert auth.params["error"] == "invalid_request"
    assert "PKCE" in auth.params["error_description"]


def test_wrong_code_verifier_is_refused(flow):
    auth = flow.login("alice")
    response = flow.exchange(auth, verifier="x" * 50)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_grant"


def test_end_session_redirects_to_the_registered_post_logout_uri(flow):
    tokens = flow.tokens("alice")
    http = tokens["_auth"].http
    response = http.get(
        flow.discovery["end_session_endpoint"],
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": flow.logged_out, "state": "bye"},
        allow_redirects=False, timeout=10,
    )
    assert response.status_code in (302, 303)
    assert response.headers["location"] == f"{flow.logged_out}?state=bye"
    # Signed out at the provider: the next sign-in asks for the password again.
    auth, page = flow.start(http=http)
    assert auth.callback is None and auth.login_page is not None


def test_end_session_with_client_id_and_no_provider_session(flow):
    # A browser whose provider session is already gone, and a client that
    # kept no ID token, still end up back at the client.
    response = requests.get(
        flow.discovery["end_session_endpoint"],
        params={"client_id": flow.client_id, "post_logout_redirect_uri": flow.logged_out},
        allow_redirects=False, timeout=10,
    )
    assert response.status_code in (302, 303)
    assert response.headers["location"] == flow.logged_out


def test_single_sign_on_until_logout(flow):
    first = flow.login("alice")
    # Same browser, provider session still there: straight back with a code.
    again, _ = flow.start(http=first.http)
    assert again.callback and again.code


def test_end_session_refuses_an_unregistered_post_logout_uri(flow):
    tokens = flow.tokens("alice")
    response = tokens["_auth"].http.get(
        flow.discovery["end_session_endpoint"],
        params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/evil"},
        allow_redirects=False, timeout=10,
    )
    assert response.status_code == 400
    assert "location" not in response.headers
    assert "post_logout_redirect_uri" in response.text


def test_removing_a_group_in_the_users_file_takes_effect_at_next_login(idp, flow):
    before = flow.verify_id_token(flow.tokens("ada")["id_token"])
    assert before["groups"] == ["gateway-admins"]
    idp.set_user("ada", groups=[])
    after = flow.verify_id_token(flow.tokens("ada")["id_token"])
    assert after["groups"] == []
    assert after["sub"] == before["sub"]


@pytest.mark.parametrize("mapping, verified", [
    # Authentik's shipped mapping: false for everyone, whatever the site records.
    ("authentik-default", {"alice": False, "bob": False}),
    # The docs' custom mapping for a site that verifies addresses elsewhere.
    ("verified", {"alice": True, "bob": True}),
    # The docs' custom mapping reading a user attribute (false when unset).
    ("user-attribute", {"alice": True, "bob": False}),
])
def test_email_verified_is_what_the_email_scope_mapping_returns(tmp_path, idp_prefix, flow_for, mapping,
                                                                 verified):
    users = demo_users()
    for user in users:
        if user["username"] == "alice":
            user["attributes"] = {"email_verified": True}
    provider = LocalIdentityProvider(
        tmp_path, users=users, prefix=idp_prefix, email_scope_mapping=mapping,
        clients=[{"client_id": "bioimage-gateway", "redirect_uris": ["http://127.0.0.1:9/cb"]}],
    )
    provider.start()
    try:
        flow = flow_for(provider)
        for name, expected in verified.items():
            tokens = flow.tokens(name)
            assert flow.verify_id_token(tokens["id_token"])["email_verified"] is expected, name
            assert flow.userinfo(tokens["access_token"]).json()["email_verified"] is expected, name
    finally:
        provider.stop()


def test_an_unknown_email_scope_mapping_is_refused(tmp_path):
    with pytest.raises(ValueError, match="'always' is not one of authentik-default, verified, user-attribute"):
        LocalIdentityProvider(tmp_path, email_scope_mapping="always", clients=[{"client_id": "x"}])


def test_user_in_no_group_signs_in_with_no_groups(flow):
    # The provider lets eve in; deciding what she may do is the gateway's job.
    claims = flow.verify_id_token(flow.tokens("eve")["id_token"])
    assert claims["preferred_username"] == "eve"
    assert claims["groups"] == []


def test_listens_on_loopback_only(idp):
    # /proc/net/tcp: local address 0100007F is 127.0.0.1; state 0A is LISTEN.
    port = f"{idp.port:04X}"
    listening = [
        line.split()[1] for path in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in open(path).read().splitlines()[1:]
        if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"
    ]
    assert listening == ["0100007F:" + port]


def test_second_provider_with_short_tokens_starts_and_stops_cleanly(tmp_path, idp_prefix, flow_for):
    # Installing again is a no-op once the lock file is unchanged.
    stamp = ensure_installed(idp_prefix) / "node_modules" / ".installed-from-lock"
    mtime = stamp.stat().st_mtime_ns
    assert ensure_installed(idp_prefix) == idp_prefix and stamp.stat().st_mtime_ns == mtime

    # A users file in the devstack's own format (demo-users.json), used in place.
    users = tmp_path / "demo-users.json"
    users.write_text('[{"username": "alice", "password": "alice-demo", "groups": ["imaging"]}]')
    provider = LocalIdentityProvider(
        tmp_path, slug="other-app", users=users, prefix=idp_prefix, ttl={"AccessToken": 1},
        clients=[{"client_id": "other", "redirect_uris": ["http://127.0.0.1:9/cb"],
                  "post_logout_redirect_uris": ["http://127.0.0.1:9/bye"]}],
    )
    provider.start()
    pid = provider.pid
    try:
        assert provider.discovery_url.endswith("/application/o/other-app/.well-known/openid-configuration")
        flow = flow_for(provider)
        assert flow.discovery["issuer"] == provider.issuer
        assert flow.discovery["end_session_endpoint"] == provider.end_session_url
        tokens = flow.tokens("alice")
        assert tokens["expires_in"] == 1
        assert flow.verify_id_token(tokens["id_token"])["email"] == "alice@example.org"
        time.sleep(2.2)
        # An expired access token is refused; the refresh token gets a new one.
        assert flow.userinfo(tokens["access_token"]).status_code == 401
        refreshed = requests.post(
            flow.discovery["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
            auth=(flow.client_id, flow.secret), timeout=10,
        )
        assert flow.userinfo(refreshed.json()["access_token"]).status_code == 200
        assert (tmp_path / "idp.pid").read_text().strip() == str(pid)
        assert "ready" in (tmp_path / "idp.log").read_text()

        # After a restart every session and token is gone (log in again), but
        # the signing key is the same: an old ID token still ends the session.
        provider.stop()
        assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
        provider.start()
        pid = provider.pid
        assert flow.verify_id_token(tokens["id_token"])["preferred_username"] == "alice"
        gone = requests.post(
            flow.discovery["token_endpoint"],
            data={"grant_type": "refresh_token", "refresh_token": refreshed.json()["refresh_token"]},
            auth=(flow.client_id, flow.secret), timeout=10,
        )
        assert gone.status_code == 400 and gone.json()["error"] == "invalid_grant"
        logout = requests.get(
            provider.end_session_url,
            params={"id_token_hint": tokens["id_token"], "post_logout_redirect_uri": "http://127.0.0.1:9/bye"},
            allow_redirects=False, timeout=10,
        )
        assert logout.headers.get("location") == "http://127.0.0.1:9/bye"
    finally:
        provider.stop()
    assert subprocess.run(["kill", "-0", str(pid)], capture_output=True).returncode != 0
    with pytest.raises(requests.ConnectionError):
        requests.get(provider.discovery_url, timeout=2)
    assert not (tmp_path / "idp.pid").exists()


def test_revoked_refresh_token_is_refused(flow):
    tokens = flow.tokens("alice")
    revoked = requests.post(
        flow.discovery["revocation_endpoint"],
        data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token"},
        auth=(flow.client_id, flow.secret), timeout=10,
    )
    assert revoked.status_code == 200
    refreshed = requests.post(
        flow.discovery["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(flow.client_id, flow.secret), timeout=10,
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def test_user_removed_from_the_users_file_cannot_refresh(idp, flow):
    tokens = flow.tokens("bob")
    idp.write_users([u for u in idp.read_users() if u["username"] != "bob"])
    refreshed = requests.post(
        flow.discovery["token_endpoint"],
        data={"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"]},
        auth=(flow.client_id, flow.secret), timeout=10,
    )
    assert refreshed.status_code == 400
    assert refreshed.json()["error"] == "invalid_grant"


def test_demo_users_match_the_devstack():
    assert [(u["username"], u["password"], u["groups"]) for u in demo_users()] == [
        (u["username"], u["password"], u["groups"]) for u in DEMO_USERS
    ]
    # Like accounts an Authentik administrator creates: an address, no record of its verification.
    assert all("email_verified" not in u and "attributes" not in u for u in demo_users())
