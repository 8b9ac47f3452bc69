"""The spawn form's cluster data when the scheduler has never answered, and how associations
and reservations read for every user at once are told apart per user."""

from __future__ import annotations

import asyncio

import pytest

from bioimage_gateway.hub_config.cluster_info import (ClusterInfo, parse_associations,
                                                       parse_reservations)
from bioimage_gateway.session_request import (Association, ChargeChoices, InvalidRequest,
                                              SlurmAccess)
from bioimage_gateway.settings import Profile, SlurmSettings
from bioimage_gateway.slurm import SlurmClient


def unreachable_cluster(tmp_path) -> ClusterInfo:
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=site\n")
    # Slurm commands that cannot run: what a hub sees while the controller and slurmdbd are down.
    return ClusterInfo(SlurmClient(conf, bin_dir=tmp_path / "no-slurm-here"), ttl=30)


def test_never_answered_shows_the_configured_values_and_says_so(tmp_path):
    info = unreachable_cluster(tmp_path)

    async def form_view():
        await info.warm()
        return info.snapshot("alice")  # schedules the next try in the hub's loop, never waits

    shown = asyncio.run(form_view())
    assert shown.access == SlurmAccess("alice")  # nothing known
    assert shown.partitions == {}
    assert any("Live cluster data is unavailable" in n and "configured limits" in n for n in shown.notices)
    assert any("offering the profiles' own and your default account" in n for n in shown.notices)


def test_a_submission_while_slurm_never_answered_gets_only_the_sites_names(tmp_path):
    info = unreachable_cluster(tmp_path)
    access = asyncio.run(info.access("alice"))  # waits for the (failing) query, then falls back
    assert access == SlurmAccess("alice")
    site = SlurmSettings(accounts=["imaging"], qos=["normal"])
    profile = Profile(slug="cpu", display_name="CPU", partition="interactive", cpus=1,
                      memory_gb=1, walltime_hours=1)
    choices = ChargeChoices.for_site(profile, access, site)
    assert choices.resolve({"account": "imaging", "qos": "normal"}).account == "imaging"
    with pytest.raises(InvalidRequest, match="'lightsheet-lab' is not accepted while Slurm"):
        choices.resolve({"account": "lightsheet-lab"})


def test_associations_per_user_with_default_account_and_qos_per_account():
    # sacctmgr -n -P show user withassoc where cluster=... format=User,DefaultAccount,Account,QOS,DefaultQOS
    text = ("alice|imaging|lightsheet-lab|normal,long|long\n"
            "alice|imaging|imaging|normal|\n"
            "ada|||||\n"  # a user with associations on other clusters only
            "tom|trainers|trainers|normal,workshop|\n"
            "mallory|x|bad;account|normal|\n"
            "eve|lab|lab|normal,$(id)|$(id)\n")
    assoc = parse_associations(text)
    # Her default account first, then the others by name.
    assert assoc["alice"] == ("imaging", (Association("imaging", ("normal",)),
                                          Association("lightsheet-lab", ("normal", "long"), "long")))
    assert assoc["tom"] == ("trainers", (Association("trainers", ("normal", "workshop")),))
    # Names that could not be sbatch options never reach a form or a check.
    assert "ada" not in assoc and "mallory" not in assoc
    assert assoc["eve"] == ("lab", (Association("lab", ("normal",)),))


def test_reservations_are_open_by_user_or_by_the_account_charged():
    text = ("ReservationName=course StartTime=now EndTime=later State=ACTIVE Users=(null) "
            "Groups=(null) Accounts=trainers PartitionName=interactive\n"
            "ReservationName=maint StartTime=now EndTime=later State=ACTIVE Users=alice "
            "Accounts=(null) PartitionName=(null)\n"
            "ReservationName=future StartTime=x EndTime=y State=INACTIVE Users=tom Accounts=\n")
    active = parse_reservations(text)
    assert [r.name for r in active] == ["course", "maint"]
    assert [r.name for r in active if r.open_to("tom", "trainers")] == ["course"]
    assert [r.name for r in active if r.open_to("tom", "imaging")] == []
    assert [r.name for r in active if r.open_to("alice", "imaging")] == ["maint"]
    assert [r.name for r in active if r.open_to("bob", "imaging")] == []
    # "(null)" is Slurm's empty list, not an account or user of that name.
    assert not any(r.open_to("(null)", "(null)") for r in active)
