"""gateway.yaml: what a profile says about the account, QoS and reservation of its sessions."""

from __future__ import annotations

from importlib import resources

import pytest
import yaml

from bioimage_gateway.settings import SettingsError, parse_settings

EXAMPLE = resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml")


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def refusal(data: dict) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings(data)
    return str(info.value)


def test_the_example_locks_the_workshops_names_and_leaves_the_others_to_users():
    settings = parse_settings(example())
    assert settings.profile("workshop").locked == ["account", "qos", "reservation"]
    assert settings.profile("cpu").locked == []


def test_only_account_qos_and_reservation_can_be_locked():
    data = example()
    data["profiles"][3]["locked"] = ["qos", "partition"]
    assert ("profiles[3].locked[1]: 'partition' Input should be 'account', 'qos' or "
            "'reservation'") in refusal(data)


def test_a_profile_name_missing_from_the_sites_list_names_that_list():
    data = example()
    data["profiles"][0]["account"] = "elsewhere"
    assert ("profiles[0].account: 'elsewhere' is not one of slurm.accounts "
            "['imaging-facility', 'training']") in refusal(data)
    data = example()
    data["profiles"][3]["reservation"] = "course-2027-01"
    assert "profiles[3].reservation: 'course-2027-01' is not one of slurm.reservations" in (
        refusal(data))
