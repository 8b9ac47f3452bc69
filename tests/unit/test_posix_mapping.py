"""IdP usernames become POSIX accounts: same name, a claim, or a mapping file; one identity,
one account, and never a system account."""

from __future__ import annotations

import asyncio
import os
import pwd

import pytest
from tornado import web

from bioimage_gateway.hub_config.authenticator import AuthentikOAuthenticator
from bioimage_gateway.slurm import POSIX_USERNAME, check_username

# The cluster's accounts and their uids (root, a system account, nobody, people).
UIDS = {"root": 0, "games": 5, "nobody": 65534, "slurm": 64030,
        "alice": 1001, "a.smith": 1002, "jdoe": 1003, "kate": 1004}


def model(auth: AuthentikOAuthenticator, name: str, **claims) -> dict:
    """What oauthenticator hands update_auth_model: the name already normalised."""
    info = {"preferred_username": name, **claims}
    return {"name": auth.normalize_username(name), "admin": None, "auth_state": {"oauth_user": info}}


def authenticator(**config) -> AuthentikOAuthenticator:
    return AuthentikOAuthenticator(username_claim="preferred_username",
                                   posix_account_uid=UIDS.get, **config)


def signed_in_as(auth: AuthentikOAuthenticator, name: str, **claims) -> str:
    return asyncio.run(auth.update_auth_model(model(auth, name, **claims)))["name"]


def refusal(auth: AuthentikOAuthenticator, name: str, **claims) -> str:
    with pytest.raises(web.HTTPError) as info:
        signed_in_as(auth, name, **claims)
    assert info.value.status_code == 403
    return info.value.jupyterhub_message


def test_same_name_by_default():
    assert signed_in_as(authenticator(), "alice") == "alice"


def test_name_from_a_claim():
    auth = authenticator(posix_username_claim="uid")
    assert signed_in_as(auth, "alice@uni.example", uid="jdoe") == "jdoe"


def test_name_from_a_mapping_file(tmp_path):
    mapping = tmp_path / "posix-map.yaml"
    mapping.write_text("alice.smith: a.smith\n")
    auth = authenticator(posix_map_file=str(mapping))
    assert signed_in_as(auth, "alice.smith") == "a.smith"


def test_a_name_the_mapping_file_does_not_list_is_refused_not_taken_as_is(tmp_path):
    mapping = tmp_path / "posix-map.yaml"
    mapping.write_text("alice.smith: a.smith\n")
    # jdoe has an account on the cluster, but the site's list does not give it to anyone.
    message = refusal(authenticator(posix_map_file=str(mapping)), "jdoe")
    assert "list of cluster accounts does not include you" in message


@pytest.mark.parametrize("idp_name", ["Alice", "ALICE", "\u212aate", "\uff41lice"],
                         ids=["capital", "upper", "kelvin-sign", "fullwidth"])
def test_a_name_normalisation_would_change_is_refused(idp_name):
    message = refusal(authenticator(), idp_name)
    assert "once case and look-alike characters are folded" in message
    assert "you were not signed in" in message


def test_a_kelvin_sign_does_not_reach_the_account_the_mapping_file_gives_kate(tmp_path):
    mapping = tmp_path / "posix-map.yaml"
    mapping.write_text("kate: jdoe\n")
    auth = authenticator(posix_map_file=str(mapping))
    assert signed_in_as(auth, "kate") == "jdoe"
    assert "reads as 'kate'" in refusal(auth, "\u212aate")


@pytest.mark.parametrize("claims", [{"uid": "root; rm -rf /"}, {"uid": "../etc"}, {"uid": "alice\n"}, {}])
def test_unusable_or_unknown_account_is_refused_with_a_page(claims):
    message = refusal(authenticator(posix_username_claim="uid"), "mallory", **claims)
    assert "no account" in message


@pytest.mark.parametrize("name, why", [
    ("root", "a system account (uid 0, below 1000)"),
    ("games", "a system account (uid 5, below 1000)"),
    ("nobody", "an account kept for the system"),
    ("slurm", "an account kept for the system"),
])
def test_system_accounts_are_refused_with_a_page_that_says_so(name, why):
    message = refusal(authenticator(), name)
    assert f"as the cluster account {name!r}: {why}, which this gateway never runs sessions as" in message


def test_the_site_sets_the_minimum_uid_and_the_deny_list():
    auth = authenticator(posix_min_uid=1002, posix_denied_accounts=["jdoe"])
    assert "uid 1001, below 1002" in refusal(auth, "alice")
    assert "kept for the system" in refusal(auth, "jdoe")
    assert signed_in_as(auth, "kate") == "kate"


def test_the_hubs_own_account_is_refused_whatever_the_site_lists():
    hub_account = pwd.getpwuid(os.geteuid()).pw_name
    auth = AuthentikOAuthenticator(username_claim="preferred_username",
                                   posix_account_uid={hub_account: 4242}.get,
                                   posix_min_uid=0, posix_denied_accounts=[])
    assert "kept for the system" in refusal(auth, hub_account)


def test_the_posix_name_pattern_takes_no_trailing_newline():
    assert POSIX_USERNAME.match("alice") and not POSIX_USERNAME.match("alice\n")
    with pytest.raises(ValueError, match="not a valid POSIX account name"):
        check_username("alice\n")


def test_an_unverified_email_is_admitted_unless_the_site_asks_for_verified_ones():
    assert signed_in_as(authenticator(), "alice", email_verified=False) == "alice"
    auth = authenticator(require_verified_email=True)
    message = refusal(auth, "alice", email_verified=False, email="a@x.org")
    assert "(a@x.org) is not marked as verified" in message
    assert "custom scope mapping for the scope 'email'" in message
    assert signed_in_as(auth, "alice", email_verified=True) == "alice"
