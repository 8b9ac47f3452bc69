"""gateway.yaml: a bad file is refused with the key, the value and why."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from bioimage_gateway.settings import (
    SettingsError,
    json_schema_text,
    load_settings,
    parse_settings,
)

EXAMPLE = Path(str(resources.files("bioimage_gateway").joinpath("examples", "gateway.example.yaml")))
REPO = Path(__file__).resolve().parents[2]


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def refusal(data: dict) -> str:
    with pytest.raises(SettingsError) as info:
        parse_settings(data)
    return str(info.value)


def test_shipped_example_is_valid_and_describes_every_profile_kind():
    settings = load_settings(EXAMPLE)
    slugs = [p.slug for p in settings.profiles]
    assert slugs == ["cpu", "large-memory", "gpu", "workshop"]
    assert settings.profile("gpu").gpus.max >= 1


def test_cpus_zero_names_key_value_and_why():
    data = example()
    data["profiles"][2]["cpus"] = 0
    assert "profiles[2].cpus: 0 is less than 1" in refusal(data)


def test_range_default_above_max_is_refused():
    data = example()
    data["profiles"][0]["memory_gb"] = {"default": 64, "max": 8}
    message = refusal(data)
    assert "profiles[0].memory_gb: needs min <= default <= max" in message


def test_unknown_key_is_a_typo_not_ignored():
    data = example()
    data["slurm"]["pol_interval"] = 5
    assert "slurm.pol_interval: unknown key" in refusal(data)


def test_partition_not_in_the_site_list_is_refused():
    data = example()
    data["profiles"][1]["partition"] = "highmem"
    assert "profiles[1].partition: 'highmem' is not one of slurm.partitions" in refusal(data)


def test_slurm_names_cannot_carry_a_second_option():
    data = example()
    data["profiles"][0]["account"] = "lab --uid=0"
    assert "profiles[0].account: 'lab --uid=0' does not match" in refusal(data)


def test_every_problem_is_listed_at_once():
    data = example()
    data["hub"]["port"] = 70000
    data["session"].pop("environment")
    message = refusal(data)
    assert "hub.port: 70000 is more than 65535" in message
    assert "session.environment: required key is missing" in message


def test_duplicate_profile_slug_is_refused():
    data = example()
    data["profiles"][1]["slug"] = "cpu"
    assert "profiles[1].slug: 'cpu' is used twice" in refusal(data)


def test_unreadable_and_invalid_yaml_files_name_the_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read settings file .*missing.yaml"):
        load_settings(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [\n")
    with pytest.raises(SettingsError, match="bad.yaml is not valid YAML"):
        load_settings(bad)


def test_committed_json_schema_matches_the_model():
    shipped = resources.files("bioimage_gateway").joinpath("schema", "gateway.schema.json")
    assert json.loads(shipped.read_text()) == json.loads(json_schema_text()), (
        "regenerate with: bioimage-gateway settings schema > core/schema/gateway.schema.json"
    )
    # The example validates against the JSON schema too (what editors use).
    import jsonschema

    jsonschema.validate(example(), json.loads(shipped.read_text()))


def test_omero_url_must_be_a_web_address():
    data = example()
    data["catalogs"]["omero_url"] = "omero.example.org"
    assert "catalogs.omero_url: " in refusal(data)
    data["catalogs"]["omero_url"] = "ftp://omero.example.org/"
    assert "catalogs.omero_url: " in refusal(data)
    assert str(parse_settings(example()).catalogs.omero_url) == "https://omero.example.org/"
