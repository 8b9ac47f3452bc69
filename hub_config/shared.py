"""What a hub's spawners share: one Slurm client, one queue poller, one cluster-info cache.

``configure_hub`` makes one :class:`SharedServices` from the site's settings and hands it to
the spawners through the hub's configuration (``c.GatewaySpawner.shared``), so each hub
application has its own, made once, with the settings it was given.  The poller asks Slurm
about all of that hub's sessions in one squeue per interval; the cache serves every user's
spawn form from the same answers.
"""

from __future__ import annotations

from bioimage_gateway.settings import GatewaySettings
from bioimage_gateway.slurm import SlurmClient

from .cluster_info import ClusterInfo
from .poller import QueuePoller


class SharedServices:
    """The hub's Slurm client, queue poller and cluster-info cache, with the site's settings."""

    def __init__(self, settings: GatewaySettings, slurm: SlurmClient | None = None):
        site = settings.slurm
        self.settings = settings
        # Another client (tests: a scripted scheduler) replaces the one the settings describe.
        self.slurm = slurm or SlurmClient(conf=site.conf, bin_dir=site.bin_dir, sudo=site.sudo)
        self.poller = QueuePoller(self.slurm, site.poll_interval, site.start_poll_interval)
        self.cluster_info = ClusterInfo(self.slurm, ttl=site.live_data_ttl,
                                        timeout=site.query_timeout)

    def __deepcopy__(self, memo) -> "SharedServices":
        # traitlets gives each spawner a deep copy of its configured values; this one is
        # shared on purpose (one poller for all sessions), so every copy is the same object.
        return self
