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


# --- staging: ------------------------------------------------------------------------------

def test_staging_section_of_the_example_reads_sizes_and_resolves_the_cache_per_user():
    staging = load_settings(EXAMPLE).staging
    assert staging.quota == 500 * 2**30
    assert staging.cache_dir == "{scratch_root}/{user}/.bioimage-gateway/staging"
    mine = staging.for_user("alice", "/scratch/")
    assert mine.cache_dir == "/scratch/alice/.bioimage-gateway/staging"
    assert mine.transfer_options() == dict(threads=16, retries=4, backoff=0.2, range_threshold=64 << 20,
                                           range_size=16 << 20, range_threads=4, fsync="batch")
    # a file without the section gets the defaults: no quota, the cache under the user's scratch
    data = example()
    data.pop("staging")
    assert parse_settings(data).staging.quota is None
    assert parse_settings(data).staging.cache_dir is None


@pytest.mark.parametrize("key, value, expected", [
    ("quota", "lots", "staging.quota: 'lots' is not a size"),
    ("quota", 0, "staging.quota: 0 is less than 1"),
    ("cache_dir", "scratch/{user}", "staging.cache_dir: 'scratch/{user}' must be an absolute path"),
    ("cache_dir", "/scratch/{group}/x", "the only placeholders are {user} and {scratch_root}"),
    ("cache_dir", "/scratch/{user}/../x", "must not contain '..'"),
    ("parallel_transfers", 0, "staging.parallel_transfers: 0 is less than 1"),
    ("journal_fsync", "never", "staging.journal_fsync: 'never' Input should be 'batch' or 'each'"),
    ("quota_gb", 5, "staging.quota_gb: unknown key"),
])
def test_a_bad_staging_setting_names_the_key_and_why(key, value, expected):
    data = example()
    data["staging"][key] = value
    assert expected in refusal(data)


def test_sizes_take_the_units_people_write():
    data = example()
    for text, size in (("2T", 2 << 40), ("800MiB", 800 << 20), ("1.5G", 3 << 29), ("20000", 20000),
                       (20000, 20000), ("64 kb", 64 << 10)):
        data["staging"]["quota"] = text
        assert parse_settings(data).staging.quota == size, text


def test_a_session_reads_the_section_the_spawner_passed_or_the_site_file(tmp_path, monkeypatch):
    from bioimage_gateway.staging_settings import load_staging_settings

    monkeypatch.delenv("BIOIMAGE_GATEWAY_STAGING", raising=False)
    monkeypatch.delenv("BIOIMAGE_GATEWAY_CONFIG", raising=False)
    assert load_staging_settings().quota is None  # nothing configured: the defaults

    site = example()
    site["scratch_root"] = str(tmp_path / "scratch")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(site))
    monkeypatch.setenv("BIOIMAGE_GATEWAY_CONFIG", str(path))
    monkeypatch.setenv("USER", "bob")
    from_file = load_staging_settings()
    assert from_file.cache_dir == f"{tmp_path}/scratch/bob/.bioimage-gateway/staging"
    assert from_file.quota == 500 * 2**30

    # what the spawner hands the session wins over the file
    passed = parse_settings(site).staging.for_user("bob", "/gpfs/scratch")
    monkeypatch.setenv("BIOIMAGE_GATEWAY_STAGING", passed.model_dump_json())
    assert load_staging_settings().cache_dir == "/gpfs/scratch/bob/.bioimage-gateway/staging"

    monkeypatch.setenv("BIOIMAGE_GATEWAY_STAGING", '{"quota": "plenty"}')
    with pytest.raises(SettingsError, match=r"\$BIOIMAGE_GATEWAY_STAGING is not valid:\n  staging.quota: "):
        load_staging_settings()


# --- auth: -----------------------------------------------------------------------------------

def test_a_plain_http_idp_url_is_refused_naming_the_key_unless_allowed_for_a_test_stack():
    data = example()
    data["auth"]["url"] = "http://auth.example.org"
    message = refusal(data)
    assert "auth.url: 'http://auth.example.org' is plain http" in message
    assert "auth.allow_insecure_http: true" in message
    data["auth"]["allow_insecure_http"] = True
    assert parse_settings(data).auth.url == "http://auth.example.org"


def test_auth_defaults_keep_admins_out_of_sessions_and_system_accounts_out_of_the_gateway():
    data = example()
    for key in ("admin_server_access", "require_verified_email", "posix"):
        data["auth"].pop(key, None)
    auth = parse_settings(data).auth
    assert auth.admin_server_access is False
    # Authentik sends email_verified: false unless the site configures a mapping.
    assert auth.require_verified_email is False
    assert auth.posix.min_uid == 1000
    assert {"root", "daemon", "nobody", "slurm", "munge"} <= set(auth.posix.denied_accounts)
