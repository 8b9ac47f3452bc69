"""A notebook widget for a Dask cluster on Slurm: size it, watch it, scale it, close it.

    from bioimage_gateway.widgets import DaskClusterWidget
    DaskClusterWidget()          # in a notebook cell

Workers, cores, memory and adaptive bounds are bounded by the site's limits
for the user's groups; "Start" creates a :class:`GatewayCluster` with the
chosen cores and memory per worker, "Scale" sets the number of workers (or
the adaptive bounds), "Close" cancels every worker job.  The status line
says how many workers are connected and, for jobs Slurm holds, why (its
reason); a worker job that refused to start (a spill folder of someone
else's on its node) says why.  All logic lives in methods the buttons call, so a test drives it
with ``widget.start_button.click()`` and reads ``widget.status.value``.
"""

from __future__ import annotations

import html
import threading
from collections.abc import Callable
from typing import Any

import ipywidgets as w

from bioimage_gateway.dask_settings import DaskLimits, DaskSettings, effective_dask_limits

UNBOUNDED = 1000  # the widgets' upper bound where the site sets none


def _bound(value: int | None) -> int:
    return UNBOUNDED if value is None else value


class DaskClusterWidget(w.VBox):
    def __init__(
        self,
        cluster: Any = None,
        factory: Callable[..., Any] | None = None,
        limits: DaskLimits | None = None,
        defaults: DaskSettings | None = None,
        refresh_interval: float | None = 2.0,
        **factory_kwargs: Any,
    ):
        if factory is None:
            from bioimage_gateway.dask_clusters import new_cluster as factory
        self.factory = factory
        self.factory_kwargs = factory_kwargs
        self.limits = limits or effective_dask_limits()
        defaults = defaults or DaskSettings()
        lim = self.limits
        max_workers = _bound(lim.max_workers)
        self.workers = w.BoundedIntText(
            value=min(2, max_workers), min=0, max=max_workers, description="Workers"
        )
        self.cores = w.BoundedIntText(
            value=min(defaults.worker_cores, _bound(lim.max_worker_cores)), min=1,
            max=_bound(lim.max_worker_cores), description="Cores/worker",
        )
        self.memory_gb = w.BoundedIntText(
            value=min(defaults.worker_memory_gb, _bound(lim.max_worker_memory_gb)), min=1,
            max=_bound(lim.max_worker_memory_gb), description="GiB/worker",
        )
        self.adaptive = w.Checkbox(value=False, description="Adaptive")
        self.adapt_min = w.BoundedIntText(value=0, min=0, max=max_workers, description="Minimum")
        self.adapt_max = w.BoundedIntText(
            value=min(4, max_workers), min=0, max=max_workers, description="Maximum"
        )
        self.start_button = w.Button(description="Start", button_style="primary")
        self.scale_button = w.Button(description="Scale", disabled=True)
        self.close_button = w.Button(description="Close", button_style="danger", disabled=True)
        self.status = w.HTML(value="No cluster")
        self.dashboard = w.HTML(value="")
        self.error = w.HTML(value="")
        self.start_button.on_click(lambda _b: self.start())
        self.scale_button.on_click(lambda _b: self.apply_scale())
        self.close_button.on_click(lambda _b: self.close())
        limits_text = ", ".join(
            f"{label} {value}" for label, value in (
                ("workers", lim.max_workers), ("cores/worker", lim.max_worker_cores),
                ("GiB/worker", lim.max_worker_memory_gb), ("walltime h", lim.max_walltime_hours),
            ) if value is not None
        )
        super().__init__([
            w.HTML(f"<b>Dask cluster on Slurm</b> <small>(your limits: {limits_text or 'none'})</small>"),
            w.HBox([self.workers, self.cores, self.memory_gb]),
            w.HBox([self.adaptive, self.adapt_min, self.adapt_max]),
            w.HBox([self.start_button, self.scale_button, self.close_button]),
            self.status, self.dashboard, self.error,
        ])
        self.cluster = None
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.refresh_interval = refresh_interval
        if cluster is not None:
            self._attach(cluster)

    # ---- actions (the buttons call these) -------------------------------

    def _fail(self, exc: BaseException) -> None:
        self.error.value = f'<span style="color:#b00">{html.escape(str(exc))}</span>'

    def start(self) -> None:
        self.error.value = ""
        if self.cluster is not None:
            return
        try:
            cluster = self.factory(
                cores=self.cores.value, memory=f"{self.memory_gb.value} GiB",
                **self.factory_kwargs,
            )
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self._fail(exc)
            return
        self._attach(cluster)
        self.apply_scale()

    def apply_scale(self) -> None:
        if self.cluster is None:
            return
        self.error.value = ""
        try:
            if self.adaptive.value:
                self.cluster.adapt(minimum=self.adapt_min.value, maximum=self.adapt_max.value)
            else:
                self.cluster.scale(self.workers.value)
        except Exception as exc:  # noqa: BLE001
            self._fail(exc)
        self.refresh()

    def close(self) -> None:
        self._stop.set()
        cluster, self.cluster = self.cluster, None
        if cluster is not None:
            try:
                cluster.close()
            except Exception as exc:  # noqa: BLE001
                self._fail(exc)
        self.status.value = "Closed: no worker jobs left"
        self.dashboard.value = ""
        self.start_button.disabled = False
        self.scale_button.disabled = self.close_button.disabled = True
        self.cores.disabled = self.memory_gb.disabled = False

    # ---- state -----------------------------------------------------------

    def _attach(self, cluster: Any) -> None:
        self.cluster = cluster
        self.start_button.disabled = True
        self.scale_button.disabled = self.close_button.disabled = False
        self.cores.disabled = self.memory_gb.disabled = True  # fixed per cluster
        self.refresh()
        if self.refresh_interval:
            self._stop.clear()
            self._refresher = threading.Thread(target=self._loop, daemon=True)
            self._refresher.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                self.refresh()
            except Exception:  # noqa: BLE001 - the next refresh tries again
                pass

    def refresh(self) -> None:
        cluster = self.cluster
        if cluster is None:
            return
        status = cluster.slurm_status()
        text = (f"{status.connected} of {status.requested} workers connected; "
                f"{len(status.running)} job(s) running, {len(status.pending)} pending")
        if status.pending:
            reasons = sorted(set(status.pending.values()))
            text += f" (reason: {', '.join(reasons)})"
        for job_id, why in sorted(status.refused.items()):
            text += f"; job {job_id} refused to start {why}"
        self.status.value = html.escape(text)
        link = status.dashboard_link
        self.dashboard.value = (
            f'<a href="{html.escape(link)}" target="_blank">Dashboard</a>' if link else ""
        )
