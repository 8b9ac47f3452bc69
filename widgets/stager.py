"""A notebook widget to stage (part of) an OME-Zarr image onto scratch, in the background.

    from bioimage_gateway.widgets import Stager
    Stager(catalog, "irods://zone/home/alice/embryo.ome.zarr")

Pick resolution levels, channels and a range of timepoints; each choice shows what it
costs (uncompressed bytes, from ``describe_image``), and the total.  "Stage" starts
``staging.stage(..., background=True)``: the transfer runs in its own process and goes on
when the notebook is closed.  The progress line (bytes, rate, ETA) comes from
``staging.status``; "Cancel" stops the transfer (staging again resumes it).  The one line
of Python doing the same is shown, ready to copy.

The logic is in :class:`StagerModel`; :class:`Stager` is the view whose buttons call it.
"""

from __future__ import annotations

import html
import math
import os
import signal
import threading
import time
from pathlib import Path

import ipywidgets as w

from bioimage_gateway.catalogs import Catalog
from bioimage_gateway.catalogs.zarr import describe_image

from .data_browser import human_bytes

STARTUP_GRACE_S = 30  # how long a just-started job may take to write its first status


class StagerModel:
    """The selection, its cost, the background job and its progress."""

    def __init__(self, catalog: Catalog, url: str, *, cache_dir: str | os.PathLike | None = None,
                 credentials: dict | None = None, options: dict | None = None):
        self.catalog = catalog
        self.url = url
        self.cache_dir = cache_dir
        self.credentials = dict(credentials or {})
        self.options = dict(options or {})  # transfer options (threads, ...)
        self.description = describe_image(catalog, url)
        d = self.description
        self.levels: list[int] = [len(d.levels) - 1]  # the smallest, by default
        self.channels: list[int] = list(range(len(d.channels))) if "c" in d.sizes else []
        self.timepoints: tuple[int, int] | None = (0, d.sizes["t"]) if "t" in d.sizes else None
        self.path: Path | None = None
        self.error: str | None = None
        self._started_at = 0.0

    # ---- cost -----------------------------------------------------------------------------

    def _fraction(self) -> float:
        d = self.description
        f = 1.0
        if "c" in d.sizes and d.sizes["c"]:
            f *= len(self.channels) / d.sizes["c"]
        if self.timepoints is not None and d.sizes.get("t"):
            f *= max(0, self.timepoints[1] - self.timepoints[0]) / d.sizes["t"]
        return f

    def level_cost(self, index: int) -> int:
        """Bytes level ``index`` costs with the chosen channels and timepoints."""
        return math.ceil(self.description.levels[index].nbytes * self._fraction())

    def channel_cost(self) -> int:
        """Bytes one channel costs over the chosen levels and timepoints."""
        d = self.description
        c = d.sizes.get("c") or 1
        t = 1.0
        if self.timepoints is not None and d.sizes.get("t"):
            t = max(0, self.timepoints[1] - self.timepoints[0]) / d.sizes["t"]
        return math.ceil(sum(d.levels[i].nbytes for i in self.levels) * t / c)

    def timepoint_cost(self) -> int:
        """Bytes one timepoint costs over the chosen levels and channels."""
        d = self.description
        tsize = d.sizes.get("t") or 1
        c = len(self.channels) / d.sizes["c"] if d.sizes.get("c") else 1.0
        return math.ceil(sum(d.levels[i].nbytes for i in self.levels) * c / tsize)

    def total_cost(self) -> int:
        return sum(self.level_cost(i) for i in self.levels)

    # ---- the call -------------------------------------------------------------------------

    def arguments(self) -> dict:
        d = self.description
        args: dict = {"levels": sorted(self.levels)}
        if "c" in d.sizes and len(self.channels) != d.sizes["c"]:
            args["channels"] = [d.channels[i].name if i < len(d.channels) else i for i in self.channels]
        if self.timepoints is not None and self.timepoints != (0, d.sizes["t"]):
            args["timepoints"] = range(*self.timepoints)
        return args

    def snippet(self) -> str:
        parts = [repr(self.url)] + [f"{k}={v!r}" for k, v in self.arguments().items()]
        return f"stage({', '.join(parts)}, background=True)"

    def check(self) -> None:
        if not self.levels:
            raise ValueError("choose at least one resolution level")
        if "c" in self.description.sizes and not self.channels:
            raise ValueError("choose at least one channel")
        if self.timepoints is not None and self.timepoints[1] <= self.timepoints[0]:
            raise ValueError("choose at least one timepoint")

    def start(self) -> Path:
        """Start the background transfer; returns the path it will have on scratch."""
        from bioimage_gateway.staging import stage
        self.check()
        self.error = None
        self._started_at = time.time()
        self.path = stage(self.url, **self.arguments(), background=True, cache_dir=self.cache_dir,
                          **self.options, **self.credentials)
        return self.path

    def status(self) -> dict | None:
        from bioimage_gateway.staging import StagingError, status
        if self.path is None:
            return None
        try:
            doc = status(self.path, cache_dir=self.cache_dir)
        except StagingError:
            return None
        doc = doc[0] if isinstance(doc, list) else doc
        # Restarting an interrupted stage: until the new runner writes its first status, the
        # record is the killed run's ("running" with a dead pid, read back as "interrupted").
        if (doc.get("state") == "interrupted" and doc.get("updated", 0) < self._started_at
                and time.time() - self._started_at < STARTUP_GRACE_S):
            doc = {**doc, "state": "queued"}
        return doc

    def cancel(self, wait: float = 10.0) -> dict | None:
        """Stop the running transfer (its process gets SIGTERM); staging again resumes it."""
        deadline = time.monotonic() + wait
        while True:
            doc = self.status()
            if doc is None or doc.get("state") not in ("queued", "running"):
                return doc
            pid = doc.get("pid")
            if pid:
                try:
                    os.kill(int(pid), signal.SIGTERM)
                except ProcessLookupError:
                    pass
                while time.monotonic() < deadline:  # until the process is gone
                    try:
                        os.kill(int(pid), 0)
                    except OSError:
                        break
                    time.sleep(0.05)
                return self.status()
            if time.monotonic() > deadline:
                return doc
            time.sleep(0.05)


def progress_text(doc: dict | None) -> str:
    """``running: 1.2 MiB of 4.0 MiB (30%), 2.5 MiB/s, ETA 1 s`` for a ``staging.status`` record."""
    if not doc:
        return "not started"
    state = doc.get("state", "?")
    done, total = doc.get("bytes_done"), doc.get("bytes_total")
    text = state
    if total:
        text += f": {human_bytes(done or 0)} of {human_bytes(total)} ({100 * (done or 0) / total:.0f}%)"
    rate = doc.get("rate_bytes_per_s")
    if rate and state == "running":
        text += f", {human_bytes(int(rate))}/s"
    eta = doc.get("eta_s")
    if eta is not None and state == "running":
        text += f", ETA {eta:.0f} s"
    if state == "complete":
        text += f"; at {doc.get('path')}"
    if doc.get("error"):
        text += f" ({doc['error']})"
    return text


class Stager(w.VBox):
    def __init__(self, catalog: Catalog, url: str, *, cache_dir=None, credentials: dict | None = None,
                 options: dict | None = None, refresh_interval: float | None = 1.0):
        self.model = m = StagerModel(catalog, url, cache_dir=cache_dir, credentials=credentials,
                                     options=options)
        d = m.description
        self.level_boxes = [w.Checkbox(value=i in m.levels, description=f"{lv.path}", indent=False)
                            for i, lv in enumerate(d.levels)]
        self.level_costs = [w.HTML() for _ in d.levels]
        self.channel_boxes = [w.Checkbox(value=True, description=c.name, indent=False)
                              for c in d.channels] if "c" in d.sizes else []
        self.channel_cost = w.HTML()
        t = d.sizes.get("t")
        self.timepoints = (w.IntRangeSlider(value=(0, t - 1), min=0, max=t - 1, description="Timepoints")
                           if t else None)
        self.timepoint_cost = w.HTML()
        self.total = w.HTML()
        self.snippet = w.Text(description="Python", layout=w.Layout(width="100%"))
        self.start_button = w.Button(description="Stage", button_style="primary")
        self.cancel_button = w.Button(description="Cancel", button_style="danger", disabled=True)
        self.progress = w.FloatProgress(value=0, min=0, max=1)
        self.status = w.HTML(value="not started")
        self.error = w.HTML()
        for box in self.level_boxes + self.channel_boxes:
            box.observe(lambda _c: self._read_selection(), names="value")
        if self.timepoints is not None:
            self.timepoints.observe(lambda _c: self._read_selection(), names="value")
        self.start_button.on_click(lambda _b: self.start())
        self.cancel_button.on_click(lambda _b: self.cancel())
        levels = [w.HBox([box, cost]) for box, cost in zip(self.level_boxes, self.level_costs)]
        rows = [w.HTML(f"<b>Stage</b> {html.escape(url)}"), w.HTML("Levels"), *levels]
        if self.channel_boxes:
            rows += [w.HBox([w.HTML("Channels"), self.channel_cost]), w.HBox(self.channel_boxes)]
        if self.timepoints is not None:
            rows += [w.HBox([self.timepoints, self.timepoint_cost])]
        rows += [self.total, w.HBox([self.start_button, self.cancel_button]), self.progress, self.status,
                 self.snippet, self.error]
        super().__init__(rows)
        self.refresh_interval = refresh_interval
        self._stop = threading.Event()
        self._read_selection()

    def _read_selection(self) -> None:
        m = self.model
        m.levels = [i for i, b in enumerate(self.level_boxes) if b.value]
        if self.channel_boxes:
            m.channels = [i for i, b in enumerate(self.channel_boxes) if b.value]
        if self.timepoints is not None:
            lo, hi = self.timepoints.value
            m.timepoints = (lo, hi + 1)
        for i, label in enumerate(self.level_costs):
            lv = m.description.levels[i]
            label.value = html.escape(f"{' x '.join(map(str, lv.shape))} {lv.dtype}: "
                                      f"{human_bytes(m.level_cost(i))}")
        self.channel_cost.value = html.escape(f"({human_bytes(m.channel_cost())} each)")
        self.timepoint_cost.value = html.escape(f"{human_bytes(m.timepoint_cost())} per timepoint")
        self.total.value = f"Total: <b>{html.escape(human_bytes(m.total_cost()))}</b>"
        self.snippet.value = m.snippet()

    def start(self) -> None:
        self.error.value = ""
        try:
            self.model.start()
        except Exception as exc:  # noqa: BLE001 - shown to the user
            self.error.value = f"<span style='color:#b00'>{html.escape(str(exc))}</span>"
            return
        self.start_button.disabled = True
        self.cancel_button.disabled = False
        self.refresh()
        if self.refresh_interval:
            self._stop.clear()
            threading.Thread(target=self._loop, daemon=True).start()

    def cancel(self) -> None:
        self._stop.set()
        self.model.cancel()
        self.refresh()

    def _loop(self) -> None:
        while not self._stop.wait(self.refresh_interval):
            try:
                if self.refresh() not in ("queued", "running"):
                    return
            except Exception:  # noqa: BLE001 - the next refresh tries again
                pass

    def refresh(self) -> str | None:
        doc = self.model.status()
        self.status.value = html.escape(progress_text(doc))
        state = doc.get("state") if doc else None
        if doc and doc.get("bytes_total"):
            self.progress.value = (doc.get("bytes_done") or 0) / doc["bytes_total"]
        busy = state in ("queued", "running")
        self.start_button.disabled = busy
        self.cancel_button.disabled = not busy
        if state == "complete":
            self.progress.bar_style = "success"
        elif state in ("failed", "interrupted"):
            self.progress.bar_style = "danger"
        return state
