"""The widget's logic, driven by clicks, and the factory's parsing and limits (no Slurm)."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest

from bioimage_gateway.dask_clusters import (
    ClusterStatus,
    DaskLimitError,
    GatewaySLURMJob,
    check_worker_count,
    check_worker_shape,
    parse_time_left,
    parse_walltime,
)
from bioimage_gateway.dask_settings import DaskLimits, DaskSettings, parse_dask_settings
from bioimage_gateway.settings import SettingsError
from bioimage_gateway.widgets import DaskClusterWidget

LIMITS = DaskLimits(max_workers=4, max_worker_cores=2, max_worker_memory_gb=8,
                    max_walltime_hours=4)


class FakeCluster:
    def __init__(self, **kwargs):
        self.kwargs = kwargs
        self.calls: list = []
        self.pending = {"12": "Resources"}
        self.closed = False

    def scale(self, n):
        check_worker_count(LIMITS, n)
        self.calls.append(("scale", n))

    def adapt(self, minimum, maximum):
        self.calls.append(("adapt", minimum, maximum))

    def close(self):
        self.closed = True

    def slurm_status(self):
        return ClusterStatus(requested=2, connected=1, pending=self.pending, running=["11"],
                             dashboard_link="/user/alice/proxy/8787/status")


def test_widget_clicks_drive_the_cluster():
    made = []

    def factory(**kwargs):
        made.append(FakeCluster(**kwargs))
        return made[-1]

    widget = DaskClusterWidget(factory=factory, limits=LIMITS, refresh_interval=None)
    assert (widget.workers.max, widget.cores.max, widget.memory_gb.max) == (4, 2, 8)
    widget.cores.value, widget.memory_gb.value, widget.workers.value = 2, 3, 2
    widget.start_button.click()
    cluster = made[0]
    assert cluster.kwargs == {"cores": 2, "memory": "3 GiB"}
    assert cluster.calls == [("scale", 2)]
    assert widget.start_button.disabled and not widget.close_button.disabled
    assert widget.status.value == ("1 of 2 workers connected; 1 job(s) running, 1 pending "
                                   "(reason: Resources)")
    assert 'href="/user/alice/proxy/8787/status"' in widget.dashboard.value

    widget.adaptive.value = True
    widget.adapt_min.value, widget.adapt_max.value = 1, 3
    widget.scale_button.click()
    assert cluster.calls[-1] == ("adapt", 1, 3)

    widget.close_button.click()
    assert cluster.closed and widget.cluster is None
    assert widget.status.value == "Closed: no worker jobs left"
    assert not widget.start_button.disabled


def test_widget_shows_a_refusal_and_starts_nothing():
    def refuse(**kwargs):
        raise DaskLimitError("Dask worker cores: 3 is more than your groups' limit of 2")

    widget = DaskClusterWidget(factory=refuse, limits=LIMITS, refresh_interval=None)
    widget.start_button.click()
    assert "limit of 2" in widget.error.value and widget.cluster is None
    # The inputs cannot go beyond the limits in the first place.
    widget.workers.value = 99
    assert widget.workers.value == 4


def test_slurm_times():
    assert parse_time_left("59:30") == 3570
    assert parse_time_left("1:00:00") == 3600
    assert parse_time_left("1-02:00:00") == 93600
    assert parse_time_left("UNLIMITED") is None
    assert parse_walltime("1:30:00") == 5400
    assert parse_walltime(2) == 7200
    assert parse_walltime("90") == 5400
    with pytest.raises(DaskLimitError):
        parse_walltime("soon")


def test_limits_messages_name_the_limit():
    with pytest.raises(DaskLimitError, match=r"5 is more than your groups' limit of 4 workers "
                                             r"\(dask max_workers\)"):
        check_worker_count(LIMITS, 5)
    with pytest.raises(DaskLimitError, match="max_worker_memory_gb"):
        check_worker_shape(LIMITS, 1, 9 * 1024**3, 3600)
    check_worker_shape(LIMITS, 2, 8 * 1024**3, 4 * 3600)


def test_group_limits_take_the_most_generous_group():
    settings = DaskSettings(group_limits={
        "imaging": DaskLimits(max_workers=4, max_worker_cores=2),
        "power": DaskLimits(max_workers=16, max_worker_cores=None),
    })
    assert settings.limits_for(["imaging", "power"]) == DaskLimits(max_workers=16)
    assert settings.limits_for(["nobody"]) == settings.default_limits


def test_bad_dask_section_is_refused_with_its_key():
    with pytest.raises(SettingsError, match=r"dask\.default_limits\.max_workers"):
        parse_dask_settings({"default_limits": {"max_workers": -1}})


@pytest.mark.parametrize("key, value, problem", [
    ("local_directory", "/scratch", "dask.local_directory"),  # one folder for every user
    ("local_directory", "/scratch/{user}/../shared", "'..' part"),
    ("runtime_directory", "/var/dask", "dask.runtime_directory"),
    ("log_directory", "../elsewhere", "'..' part"),
])
def test_dask_paths_are_each_users_own(key, value, problem):
    with pytest.raises(SettingsError, match=re.escape(problem)):
        parse_dask_settings({key: value})


def test_job_scripts_are_written_privately_and_removed(tmp_path):
    """The batch script goes to a new 0600 file in the cluster's private folder (not a name
    reopened in the node's shared /tmp), and is gone once submitted."""
    folder = tmp_path / "cluster"
    folder.mkdir(mode=0o700)
    job = GatewaySLURMJob(scheduler="tls://10.0.0.1:8786", name="w", cores=1, memory="1GiB",
                          script_directory=str(folder))
    with job.job_file() as path:
        assert os.path.dirname(path) == str(folder)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert Path(path).read_text() == job.job_script()
    assert os.listdir(folder) == []


def test_a_refused_worker_job_is_shown_with_its_reason():
    refused = {"17": "on node2: Dask spill directory /tmp/dask-alice refused: it belongs to bob"}
    status = ClusterStatus(requested=1, connected=0, pending={}, running=[], dashboard_link="",
                           refused=refused)
    assert status.describe() == ("0 of 1 workers connected; job 17 refused to start on node2: "
                                 "Dask spill directory /tmp/dask-alice refused: it belongs to bob")
    cluster = FakeCluster()
    cluster.slurm_status = lambda: status
    widget = DaskClusterWidget(cluster=cluster, limits=LIMITS, refresh_interval=None)
    assert "job 17 refused to start on node2" in widget.status.value
    assert "belongs to bob" in widget.status.value
