"""IdP usernames become POSIX accounts: same name, a claim, or a mapping file."""

from __future__ import annotations

import asyncio

import pytest
from tornado import web

from bioimage_gateway.hub_config.authenticator import AuthentikOAuthenticator

ACCOUNTS = {"alice", "a.smith", "jdoe"}


def model(name: str, **claims) -> dict:
    info = {"preferred_username": name, "email_verified": True, **claims}
    return {"name": name, "admin": None, "auth_state": {"oauth_user": info}}


def authenticator(**config) -> AuthentikOAuthenticator:
    auth = AuthentikOAuthenticator(posix_account_exists=lambda n: n in ACCOUNTS, **config)
    return auth


def update(auth, auth_model) -> dict:
    return asyncio.run(auth.update_auth_model(auth_model))


def test_same_name_by_default():
    assert update(authenticator(), model("alice"))["name"] == "alice"


def test_name_from_a_claim():
    auth = authenticator(posix_username_claim="uid")
    assert update(auth, model("alice@uni.example", uid="jdoe"))["name"] == "jdoe"


def test_name_from_a_mapping_file(tmp_path):
    mapping = tmp_path / "posix-map.yaml"
    mapping.write_text("alice.smith: a.smith\n")
    auth = authenticator(posix_map_file=str(mapping))
    assert update(auth, model("alice.smith"))["name"] == "a.smith"


@pytest.mark.parametrize("claims", [{"uid": "root; rm -rf /"}, {"uid": "../etc"}, {}])
def test_unusable_or_unknown_account_is_refused_with_a_page(claims):
    auth = authenticator(posix_username_claim="uid")
    with pytest.raises(web.HTTPError) as info:
        update(auth, model("mallory", **claims))
    assert info.value.status_code == 403
    assert "no account" in info.value.jupyterhub_message


def test_unverified_email_is_refused():
    with pytest.raises(web.HTTPError, match="is not verified"):
        update(authenticator(), model("alice", email_verified=False, email="a@x.org"))
