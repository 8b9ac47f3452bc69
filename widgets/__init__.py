"""What runs in the user's kernel: the notebook widgets (see the notebook-experience issue)."""


def __getattr__(name: str):
    # ipywidgets is imported only when a widget is asked for.
    if name == "DaskClusterWidget":
        from .dask_cluster import DaskClusterWidget

        return DaskClusterWidget
    if name in ("DataBrowser", "BrowserModel"):
        from . import data_browser

        return getattr(data_browser, name)
    if name in ("Viewer", "ViewerModel"):
        from . import viewer

        return getattr(viewer, name)
    if name == "open_in_napari":
        from .napari import open_in_napari

        return open_in_napari
    if name == "Stager":
        from .stager import Stager

        return Stager
    raise AttributeError(name)


__all__ = ["DaskClusterWidget", "DataBrowser", "BrowserModel", "Stager", "Viewer", "ViewerModel",
           "open_in_napari"]
