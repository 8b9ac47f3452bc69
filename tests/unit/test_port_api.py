"""The port a starting session reports: only a port, only from that session's own token, only
while it waits for one; and the hub's route for it is ours even where batchspawner is imported
(whose handler there set any spawner attribute the body named)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
from jupyterhub import apihandlers
from tornado import web

from bioimage_gateway.hub_config import port_api
from bioimage_gateway.hub_config.port_api import SessionPortHandler, accept_port


def a_session(token: str, pending="spawn", port=0):
    return SimpleNamespace(api_token=token, pending=pending, port=port)


def alice(**sessions):
    return SimpleNamespace(kind="user", name="alice", spawners=sessions)


def refused(user, token, body) -> tuple[int, str]:
    with pytest.raises(web.HTTPError) as error:
        accept_port(user, token, body)
    return error.value.status_code, error.value.log_message


def test_a_starting_session_reports_its_port_with_its_own_token():
    lab, other = a_session("lab-token"), a_session("other-token")
    assert accept_port(alice(**{"": other, "lab": lab}), "lab-token", {"port": 40001}) == (lab, 40001)


@pytest.mark.parametrize("token", ["wrong-token", "", None, "lab-token-but-longer"])
def test_any_other_token_is_refused(token):
    assert refused(alice(lab=a_session("lab-token")), token, {"port": 40001})[0] == 403


def test_a_service_or_another_kind_of_caller_is_refused():
    service = SimpleNamespace(kind="service", spawners={"": a_session("lab-token")})
    assert refused(service, "lab-token", {"port": 40001})[0] == 403


@pytest.mark.parametrize("body", [
    {"cmd": ["/bin/sh", "-c", "id"]},
    {"exec_prefix": "sudo -u root"},
    {"port": 40001, "cmd": ["/bin/false"]},
    {"port": 40001, "ip": "10.0.0.66"},
    [40001],
    "40001",
    None,
])
def test_anything_but_exactly_a_port_is_refused(body):
    status, message = refused(alice(lab=a_session("lab-token")), "lab-token", body)
    assert (status, message.split(",")[0]) == (400, "only {'port': N} is accepted")


@pytest.mark.parametrize("port", [True, "8888", 8888.0, 80, 1023, 65536, -1, None])
def test_a_port_must_be_an_integer_from_1024_to_65535(port):
    status, message = refused(alice(lab=a_session("lab-token")), "lab-token", {"port": port})
    assert status == 400 and message.startswith("port must be an integer from 1024 to 65535")


@pytest.mark.parametrize("state", [
    {"pending": None, "port": 40001},  # running: it cannot re-point the hub
    {"pending": "spawn", "port": 40001},  # already reported
    {"pending": "stop", "port": 0},
    {"pending": None, "port": 0},  # not started
])
def test_only_a_session_waiting_for_its_port_may_report_one(state):
    session = a_session("lab-token", **state)
    assert refused(alice(lab=session), "lab-token", {"port": 40002})[0] == 409
    assert session.port == state["port"]


def test_the_hubs_route_is_ours_even_if_batchspawner_is_imported_after_it():
    port_api.install()
    import batchspawner.api  # appends its own handler for the same path

    assert any(route[1] is batchspawner.api.BatchSpawnerAPIHandler
               for route in apihandlers.default_handlers)
    # tornado takes the first route whose pattern matches
    first = next(route[1] for route in apihandlers.default_handlers
                 if re.fullmatch(route[0], "/api/batchspawner"))
    assert first is SessionPortHandler
    port_api.install()  # again: still one route of ours, and none of batchspawner's
    at_path = [route[1] for route in apihandlers.default_handlers if route[0] == "/api/batchspawner"]
    assert at_path == [SessionPortHandler]
