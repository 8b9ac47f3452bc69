"""The spawn form's cluster data when the scheduler has never answered, and how associations
and reservations read for every user at once are told apart per user."""

from __future__ import annotations

import asyncio

from bioimage_gateway.hub_config.cluster_info import (ClusterInfo, parse_associations,
                                                       parse_reservations)
from bioimage_gateway.slurm import SlurmClient


def test_never_answered_shows_the_configured_values_and_says_so(tmp_path):
    conf = tmp_path / "slurm.conf"
    conf.write_text("ClusterName=site\n")
    # Slurm commands that cannot run: what a hub sees while the controller and slurmdbd are down.
    info = ClusterInfo(SlurmClient(conf, bin_dir=tmp_path / "no-slurm-here"), ttl=30,
                       configured_accounts=["lab"], configured_qos=["normal"])

    async def form_view():
        await info.warm()
        return info.snapshot("alice")  # schedules the next try in the hub's loop, never waits

    shown = asyncio.run(form_view())
    assert (shown.accounts, shown.qos) == (["lab"], ["normal"])
    assert shown.partitions == {} and shown.reservations == []
    assert any("Live cluster data is unavailable" in n and "configured limits" in n for n in shown.notices)
    assert any("showing the site's configured accounts" in n for n in shown.notices)


def test_associations_and_reservations_per_user():
    assoc = parse_associations("alice|imaging|normal\n|imaging|\nalice|shared|normal,long\ntom|trainers|workshop\n")
    assert assoc == {"alice": (["imaging", "shared"], ["normal", "long"]), "tom": (["trainers"], ["workshop"])}
    text = ("ReservationName=course StartTime=now EndTime=later State=ACTIVE Users=(null) Accounts=trainers "
            "PartitionName=interactive\n"
            "ReservationName=maint StartTime=now EndTime=later State=ACTIVE Users=alice Accounts= "
            "PartitionName=(null)\n"
            "ReservationName=future StartTime=x EndTime=y State=INACTIVE Users=tom Accounts=\n")
    active = parse_reservations(text)
    assert [r.reservation.name for r in active if r.open_to("tom", ["trainers"])] == ["course"]
    assert [r.reservation.name for r in active if r.open_to("alice", ["imaging"])] == ["maint"]
    assert [r.reservation.name for r in active if r.open_to("bob", ["imaging"])] == []
