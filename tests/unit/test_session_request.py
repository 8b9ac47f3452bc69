"""Options checked against profiles and group limits (pure logic, the example site)."""

from __future__ import annotations

from importlib import resources

import pytest

from bioimage_gateway.session_request import (
    InvalidRequest,
    allowed_profiles,
    effective_limits,
    resolve_request,
)
from bioimage_gateway.settings import load_settings

SITE = load_settings(
    str(resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml"))
)


def test_defaults_fill_what_the_user_left_out():
    request = resolve_request(SITE, ["imaging"], {"profile": "cpu"})
    assert (request.cpus, request.memory_gb, request.gpus, request.walltime) == (4, 16, 0, "8:00:00")


def test_groups_decide_which_profiles_are_offered():
    assert [p.slug for p in allowed_profiles(SITE, ["trainers"])] == ["workshop"]
    assert [p.slug for p in allowed_profiles(SITE, ["nobody"])] == []


def test_group_limit_caps_below_the_profile_maximum():
    # workshop-participants may not use GPUs even on a GPU-capable profile list.
    limits = effective_limits(SITE, ["workshop-participants"])
    assert limits.max_cpus == 2 and limits.max_gpus == 0
    with pytest.raises(InvalidRequest, match="more than your groups' limit of 4"):
        # default_limits apply to ai-developers (not listed): 4 CPUs at most.
        resolve_request(SITE, ["ai-developers"], {"profile": "gpu", "cpus": 8})


def test_most_generous_group_wins():
    limits = effective_limits(SITE, ["workshop-participants", "imaging"])
    assert limits.max_cpus == 32 and limits.max_sessions == 2


def test_fixed_amount_cannot_be_raised():
    with pytest.raises(InvalidRequest, match="CPUs: 3 is more than the 2 allowed for Workshop"):
        resolve_request(SITE, ["trainers"], {"profile": "workshop", "cpus": "3"})


def test_gpu_profile_needs_at_least_one_gpu():
    with pytest.raises(InvalidRequest, match="GPUs: 0 is less than 1 for GPU"):
        resolve_request(SITE, ["imaging"], {"profile": "gpu", "gpus": 0})
