"""napari on the session's desktop, from the notebook.

    from bioimage_gateway.widgets import open_in_napari
    viewer = open_in_napari("/scratch/alice/embryo.ome.zarr")    # or a staged catalog address
    from napari.utils import nbscreenshot; nbscreenshot(viewer)  # a picture in the notebook

napari runs in this kernel (napari turns on IPython's Qt event loop, ``%gui qt``), drawing
on the session's desktop (``bioimage_gateway.napari_desktop``), so the returned
``napari.Viewer`` is a live object: add layers, read ``viewer.layers``, take screenshots.
Open the "Desktop" card of the launcher to see and use the window.
"""

from __future__ import annotations

import contextlib
import io
import os

from bioimage_gateway.napari_desktop import Desktop, DesktopError, napari_source, session_desktop

NAPARI_READER = "napari-ome-zarr"


def _qt_app_exists() -> bool:
    """True when this process already has a Qt application (its display is then fixed)."""
    import sys

    qt = sys.modules.get("qtpy.QtWidgets")
    return bool(qt and qt.QApplication.instance() is not None)


def use_desktop(start: bool = True) -> Desktop | None:
    """Point this kernel's Qt at the session's desktop (starting it when asked), before the
    first window; a kernel that already drew somewhere keeps its display (None)."""
    if _qt_app_exists():
        return None
    try:
        desktop = session_desktop(start=start)
    except DesktopError:
        if os.environ.get("DISPLAY") and "JUPYTERHUB_SERVICE_URL" not in os.environ:
            return None  # outside a session, with a display of the user's own
        raise
    os.environ.update(desktop.environ())
    return desktop


def open_in_napari(path_or_url, *, viewer=None, cache_dir=None):
    """Open an OME-Zarr image in napari (napari-ome-zarr's reader) on the session's desktop
    and return the ``napari.Viewer`` (a new one unless ``viewer`` is given).

    ``path_or_url``: a local path or ``file://`` URL, an http(s) URL, or a catalog address
    (``irods://``, ``omero://``) that has been staged (napari reads the staged copy).
    """
    source = napari_source(path_or_url, cache_dir=cache_dir)  # bad input: before any window
    use_desktop()
    import napari

    viewer = viewer or napari.Viewer()  # turns on the kernel's Qt loop (%gui qt)
    # napari-ome-zarr 0.10 prints the image's whole metadata on stdout: not for the notebook.
    with contextlib.redirect_stdout(io.StringIO()):
        viewer.open(source, plugin=NAPARI_READER)
    return viewer
