"""The pieces that keep a session its own on a shared node, without a cluster: the proof a
server gives the hub, the port read from the server's own socket, where the session listens
(session.listen_ip), and the folders it keeps per user (a real other user's are refused)."""

from __future__ import annotations

import os
import pwd
import socket
import stat
from importlib import resources
from pathlib import Path

import pytest
import yaml

from bioimage_gateway.extensions.private_folder import UnsafeFolder, private_folder
from bioimage_gateway.extensions.session_launcher import (
    LaunchError,
    address_in,
    listen_address,
    own_port,
    server_environment,
)
from bioimage_gateway.extensions.session_proof import matches, proof
from bioimage_gateway.settings import SettingsError, parse_settings

EXAMPLE = Path(str(resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml")))
CHALLENGE = "c" * 43
BOB = pwd.getpwnam("bob")


# --- the proof ---------------------------------------------------------------------------------

def test_a_proof_holds_for_its_token_user_server_and_port_only():
    made = proof("alice-token", user="alice", server_name="", port=40001, challenge=CHALLENGE)
    assert matches(made, proof("alice-token", user="alice", server_name="", port=40001,
                               challenge=CHALLENGE))
    for other in (
        proof("bob-token", user="alice", server_name="", port=40001, challenge=CHALLENGE),
        proof("alice-token", user="bob", server_name="", port=40001, challenge=CHALLENGE),
        proof("alice-token", user="alice", server_name="gpu", port=40001, challenge=CHALLENGE),
        # the real session's proof, relayed by a server on another port, is not that port's
        proof("alice-token", user="alice", server_name="", port=40002, challenge=CHALLENGE),
        proof("alice-token", user="alice", server_name="", port=40001, challenge="d" * 43),
    ):
        assert not matches(made, other)
    assert not matches(made, None) and not matches(made, {"proof": made})
    with pytest.raises(ValueError, match="a challenge is 32 to 128 characters"):
        proof("alice-token", user="alice", server_name="", port=40001, challenge="short")


# --- where the server listens ------------------------------------------------------------------

def test_the_port_is_read_from_the_servers_own_listening_socket():
    with socket.socket() as server:
        assert own_port(os.getpid(), "127.0.0.1") is None  # listening nowhere yet
        server.bind(("127.0.0.1", 0))
        server.listen()
        assert own_port(os.getpid(), "127.0.0.1") == server.getsockname()[1]
        with socket.socket() as everywhere:
            everywhere.bind(("0.0.0.0", 0))
            everywhere.listen()
            with pytest.raises(LaunchError, match=r"listens on 0\.0\.0\.0:\d+, 127\.0\.0\.1:\d+, "
                                                  r"not on 127\.0\.0\.1 alone"):
                own_port(os.getpid(), "127.0.0.1")


def test_the_address_is_the_route_to_the_hub_or_the_one_in_the_sites_network():
    assert listen_address({"JUPYTERHUB_API_URL": "http://127.0.0.1:8081/hub/api"}) == "127.0.0.1"
    assert listen_address({"BIOIMAGE_GATEWAY_LISTEN_NETWORK": "127.0.0.0/8",
                           "JUPYTERHUB_API_URL": "http://192.0.2.1:8081/hub/api"}) == "127.0.0.1"
    with pytest.raises(LaunchError, match=r"has no address in 203\.0\.113\.0/24 \(session\.listen_ip\)"):
        address_in("203.0.113.0/24")  # TEST-NET-3: on no host


def test_the_server_is_given_its_address_port_zero_and_its_runtime_folder(tmp_path):
    env = server_environment({"JUPYTERHUB_SERVICE_URL": "http://:0/user/alice/",
                              "BIOIMAGE_GATEWAY_LISTEN_NETWORK": "10.1.0.0/16"},
                             "10.1.0.7", tmp_path)
    assert env["JUPYTERHUB_SERVICE_URL"] == "http://10.1.0.7:0/user/alice/"
    assert env["XDG_RUNTIME_DIR"] == str(tmp_path)
    assert "BIOIMAGE_GATEWAY_LISTEN_NETWORK" not in env


def _with_listen_ip(value: str) -> dict:
    data = yaml.safe_load(EXAMPLE.read_text())
    data["session"]["listen_ip"] = value
    return data


@pytest.mark.parametrize("value, why", [
    ("0.0.0.0", "0.0.0.0 is every address of a node that other users share"),
    ("::", ":: is every address of a node that other users share"),
    ("127.0.0.0/8", "127.0.0.0/8 is loopback, where the hub cannot reach a node"),
    ("10.1.0.7", "10.1.0.7 is one address, and every node has its own"),
    ("node1", "'node1' is not a network"),
])
def test_listen_ip_is_a_network_never_every_address_or_loopback(value, why):
    with pytest.raises(SettingsError) as refused:
        parse_settings(_with_listen_ip(value))
    assert f"session.listen_ip: {why}" in str(refused.value)


def test_listen_ip_empty_by_default_or_a_network():
    assert parse_settings(_with_listen_ip("")).session.listen_ip == ""
    assert parse_settings(_with_listen_ip("10.1.0.0/16")).session.listen_ip == "10.1.0.0/16"


# --- folders a session keeps per user ----------------------------------------------------------

@pytest.fixture
def shared_tmp(tmp_path) -> Path:
    """A folder like /tmp: everyone's, sticky."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    folder.chmod(0o1777)
    return folder


def test_a_missing_folder_is_made_private_and_an_own_one_kept(shared_tmp):
    made = private_folder(shared_tmp / "bioimage-gateway-root", "runtime folder")
    info = os.lstat(made)
    assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o700
    made.chmod(0o755)
    assert private_folder(made, "runtime folder") == made
    assert stat.S_IMODE(os.lstat(made).st_mode) == 0o700  # readable by no one else either


def test_another_users_folder_or_a_link_is_refused(shared_tmp):
    bobs = shared_tmp / "bioimage-gateway-root"
    bobs.mkdir(mode=0o777)
    os.chown(bobs, BOB.pw_uid, BOB.pw_gid)
    with pytest.raises(UnsafeFolder, match=rf"refused {bobs} as the session's runtime folder: it "
                                           r"belongs to bob \(owner bob, mode d"):
        private_folder(bobs, "runtime folder")
    bobs.rmdir()
    (shared_tmp / "elsewhere").mkdir()
    bobs.symlink_to(shared_tmp / "elsewhere")
    with pytest.raises(UnsafeFolder, match="it is a symbolic link"):
        private_folder(bobs, "runtime folder")
    bobs.unlink()
    bobs.mkdir(mode=0o700)
    bobs.chmod(0o777)
    with pytest.raises(UnsafeFolder, match="it is writable by others"):
        private_folder(bobs, "activity folder")


def test_a_folder_in_a_parent_others_can_write_unsticky_is_refused(tmp_path):
    parent = tmp_path / "open"
    parent.mkdir()
    parent.chmod(0o777)
    with pytest.raises(UnsafeFolder, match=rf"refused {parent} as the session's runtime folder: it "
                                           "is writable by others and not sticky"):
        private_folder(parent / "bioimage-gateway-root", "runtime folder")
    assert not (parent / "bioimage-gateway-root").exists()
