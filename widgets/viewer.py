"""An in-notebook multiscale viewer for OME-Zarr images, local, staged or remote.

    from bioimage_gateway.widgets import Viewer
    Viewer("irods://gwZone/home/alice/lightsheet/mouse-embryo-lightsheet.ome.zarr")

Sliders move through t and z, toggles show or hide channels (in their
``omero`` colours and display windows), zoom and pan choose the region.  Each
view is read from the coarsest resolution level that still gives at least
``size`` pixels across the region, and only the chunks under the region are
read (zarr reads by chunk), so a first image of any size costs one or two
small chunks of the lowest level.

:class:`ViewerModel` holds the state and reads the pixels; :class:`Viewer` is
its view.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import ipywidgets as w

from bioimage_gateway.catalogs import Catalog, open_catalog
from bioimage_gateway.catalogs.zarr import describe_image, open_image
from bioimage_gateway.napari_desktop import napari_snippet

from .data_browser import composite_rgb, encode_png

VIEW_SIZE = 512  # pixels across the rendered view


@dataclass
class Region:
    """The region in view, in full-resolution (level 0) pixels."""

    y: int
    x: int
    height: int
    width: int


@dataclass
class ViewerModel:
    catalog: Catalog
    url: str
    size: int = VIEW_SIZE
    t: int = 0
    z: int = 0
    active: set[int] = field(default_factory=set)

    def __post_init__(self):
        documents: dict = {}  # the metadata read once, for both
        self.description = describe_image(self.catalog, self.url, documents)
        self.group = open_image(self.catalog, self.url, self.description.zarr_format, documents)
        self.names = [a["name"] for a in self.description.axes]
        shape = dict(zip(self.names, self.description.levels[0].shape))
        self.full = (shape.get("y", 1), shape.get("x", 1))
        self.t_count, self.z_count = shape.get("t", 1), shape.get("z", 1)
        self.c_count = shape.get("c", 1)
        self.z = self.z_count // 2
        self.active = set(range(min(self.c_count, 6)))
        for i, channel in enumerate(self.description.channels[: self.c_count]):
            if channel.active is False:
                self.active.discard(i)
        self.region = Region(0, 0, *self.full)

    # --- what to read ------------------------------------------------------------------------

    def level_for(self, region: Region | None = None) -> int:
        """The coarsest level that still has ``size`` pixels across the region."""
        region = region or self.region
        chosen = 0
        for index, level in enumerate(self.description.levels):
            shape = dict(zip(self.names, level.shape))
            factor = self.full[1] / shape.get("x", self.full[1])
            if max(region.height, region.width) / factor >= min(self.size, max(self.full)):
                chosen = index
        return chosen

    def window(self, level_index: int) -> tuple[slice, slice, tuple[float, float]]:
        """The (y, x) slices of the region at a level, and that level's scale factors."""
        shape = dict(zip(self.names, self.description.levels[level_index].shape))
        fy = self.full[0] / shape.get("y", self.full[0])
        fx = self.full[1] / shape.get("x", self.full[1])
        r = self.region
        ys = slice(int(r.y // fy), max(int(r.y // fy) + 1, int(-(-(r.y + r.height) // fy))))
        xs = slice(int(r.x // fx), max(int(r.x // fx) + 1, int(-(-(r.x + r.width) // fx))))
        return ys, xs, (fy, fx)

    def render(self):
        """The view as an (h, w, 3) uint8 array, read from the chosen level."""
        import numpy as np

        level_index = self.level_for()
        level = self.description.levels[level_index]
        ys, xs, _ = self.window(level_index)
        index = []
        for name in self.names:
            index.append({"t": self.t, "z": self.z, "c": slice(None), "y": ys, "x": xs}.get(name, 0))
        data = np.asarray(self.group[level.path][tuple(index)], dtype=np.float64)
        kept = [n for n, i in zip(self.names, index) if isinstance(i, slice)]
        data = np.moveaxis(data, kept.index("c"), 0) if "c" in kept else data[np.newaxis]
        step = max(1, -(-max(data.shape[1:]) // self.size))
        self.last_level = level_index
        return composite_rgb(data[:, ::step, ::step], self.description.channels, self.active)

    def png(self) -> bytes:
        return encode_png(self.render())

    # --- navigation --------------------------------------------------------------------------

    def zoom(self, factor: float, cy: float = 0.5, cx: float = 0.5) -> None:
        """Zoom by ``factor`` (> 1 in) around the point (cy, cx) given as fractions of the view."""
        r = self.region
        height = min(self.full[0], max(8, int(r.height / factor)))
        width = min(self.full[1], max(8, int(r.width / factor)))
        centre_y, centre_x = r.y + cy * r.height, r.x + cx * r.width
        self.region = self._clamp(Region(int(centre_y - height / 2), int(centre_x - width / 2),
                                         height, width))

    def pan(self, dy: float, dx: float) -> None:
        """Move by fractions of the view."""
        r = self.region
        self.region = self._clamp(Region(int(r.y + dy * r.height), int(r.x + dx * r.width),
                                         r.height, r.width))

    def reset(self) -> None:
        self.region = Region(0, 0, *self.full)

    def _clamp(self, r: Region) -> Region:
        return Region(min(max(0, r.y), self.full[0] - r.height),
                      min(max(0, r.x), self.full[1] - r.width), r.height, r.width)

    def toggle(self, channel: int) -> None:
        self.active ^= {channel}

    def snippet(self) -> str:
        r = self.region
        return (f"Viewer({self.url!r}).model  # t={self.t}, z={self.z}, "
                f"region y={r.y}:{r.y + r.height}, x={r.x}:{r.x + r.width}")


class Viewer(w.VBox):
    def __init__(self, url: str, catalog: Catalog | None = None, size: int = VIEW_SIZE,
                 **credentials):
        self.model = ViewerModel(catalog or open_catalog(url, **credentials), url, size=size)
        m = self.model
        self.image = w.Image(format="png")
        self.t_slider = w.IntSlider(value=m.t, min=0, max=max(0, m.t_count - 1),
                                    description="t", disabled=m.t_count < 2)
        self.z_slider = w.IntSlider(value=m.z, min=0, max=max(0, m.z_count - 1),
                                    description="z", disabled=m.z_count < 2)
        self.channel_toggles = [
            w.ToggleButton(value=i in m.active,
                           description=(m.description.channels[i].name
                                        if i < len(m.description.channels) else f"channel {i}"))
            for i in range(m.c_count)
        ]
        buttons = {"+": lambda: m.zoom(2), "−": lambda: m.zoom(0.5), "←": lambda: m.pan(0, -0.25),
                   "→": lambda: m.pan(0, 0.25), "↑": lambda: m.pan(-0.25, 0),
                   "↓": lambda: m.pan(0.25, 0), "reset": m.reset}
        self.buttons = {}
        for label, action in buttons.items():
            button = w.Button(description=label, layout=w.Layout(width="auto"))
            button.on_click(lambda _b, action=action: self._do(action))
            self.buttons[label] = button
        self.status = w.Label()
        # napari on the session's desktop; the line it runs is shown below, to copy
        self.napari_button = w.Button(description="Open in napari",
                                      tooltip="Open this image in napari on the session's desktop")
        self.napari_button.on_click(lambda _b: self.open_in_napari())
        self.napari_line = w.HTML()
        self.napari_viewer = None
        self.t_slider.observe(lambda ch: self._do(setattr, m, "t", ch["new"]), names="value")
        self.z_slider.observe(lambda ch: self._do(setattr, m, "z", ch["new"]), names="value")
        for i, toggle in enumerate(self.channel_toggles):
            toggle.observe(lambda _ch, i=i: self._do(m.toggle, i), names="value")
        super().__init__([
            self.image,
            w.HBox([self.t_slider, self.z_slider]),
            w.HBox(self.channel_toggles),
            w.HBox([*self.buttons.values(), self.napari_button]),
            self.status,
            self.napari_line,
        ])
        self._redraw()

    def _do(self, action, *args) -> None:
        action(*args)
        self._redraw()

    def open_in_napari(self) -> None:
        """What "Open in napari" does: ``open_in_napari(url)`` (see widgets.napari)."""
        from .napari import open_in_napari
        line = f"<code>{html.escape(napari_snippet(self.model.url))}</code>"
        try:
            self.napari_viewer = open_in_napari(self.model.url)
        except Exception as exc:  # noqa: BLE001 - shown to the user
            line += f"<div style='color:#b00'>napari: {html.escape(str(exc))}</div>"
        self.napari_line.value = line

    def _redraw(self) -> None:
        self.image.value = self.model.png()
        r = self.model.region
        self.status.value = (f"level {self.model.last_level}, region y {r.y}–{r.y + r.height}, "
                             f"x {r.x}–{r.x + r.width}")
