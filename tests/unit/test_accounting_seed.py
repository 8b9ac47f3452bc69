"""What the local stack tells slurmdbd, and which cluster's associations the form reads."""

from __future__ import annotations

from pathlib import Path

from bioimage_gateway.devstack.accounting import AccountingSeed
from bioimage_gateway.devstack.network import NodeNetwork
from bioimage_gateway.devstack.slurm import LocalSlurm
from bioimage_gateway.devstack.stack import DEMO_USERS, site_resources
from bioimage_gateway.hub_config.cluster_info import cluster_name


def seed() -> AccountingSeed:
    slurm = LocalSlurm(Path("/nonexistent"), NodeNetwork("unit", 1, 1, Path("/nonexistent")), cpus=2, memory_mb=4096)
    slurm.enable_accounting()
    return AccountingSeed.from_settings(site_resources(slurm), DEMO_USERS)


def test_each_group_is_an_account_and_users_get_their_groups_and_profiles_qos():
    s = seed()
    assert list(s.accounts) == ["imaging", "trainers", "gateway-admins", "lightsheet-lab"]
    assert s.qos == {"workshop": 4}  # the workshop profile's maximum walltime
    assert s.users["bob"] == (("imaging",), ("normal",))
    assert s.users["tom"] == (("trainers",), ("normal", "workshop"))
    # No group that may start sessions: no association, so Slurm refuses eve's jobs.
    assert "eve" not in s.users


def test_alice_is_in_her_groups_account_and_a_project_account_besides():
    s = seed()
    # Her group's account comes first: it is her default.
    assert s.users["alice"] == (("imaging", "lightsheet-lab"), ("normal",))
    assert s.accounts["lightsheet-lab"] == "project"


def test_users_with_the_same_associations_are_added_in_one_command():
    commands = seed().commands("gwdev")
    assert commands[0] == ["add", "cluster", "gwdev"]
    assert ["add", "account", "lightsheet-lab", "cluster=gwdev", "description=project",
            "organization=bioimage-gateway"] in commands
    users = [c for c in commands if c[:2] == ["add", "user"]]
    assert ["add", "user", "alice", "account=imaging,lightsheet-lab", "defaultaccount=imaging",
            "qos=normal", "cluster=gwdev"] in users
    assert ["add", "user", "bob", "account=imaging", "defaultaccount=imaging",
            "qos=normal", "cluster=gwdev"] in users
    assert len(users) == 4


def test_cluster_name_comes_from_slurm_conf(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("# ClusterName=commented\nSlurmctldHost=x\n  clustername = Bio1\n")
    assert cluster_name(conf) == "bio1"
    assert cluster_name(tmp_path / "missing.conf") is None
