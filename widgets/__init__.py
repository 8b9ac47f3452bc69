"""What runs in the user's kernel: the notebook widgets (see the notebook-experience issue)."""


def __getattr__(name: str):
    # ipywidgets is imported only when a widget is asked for.
    if name == "DaskClusterWidget":
        from .dask_cluster import DaskClusterWidget

        return DaskClusterWidget
    raise AttributeError(name)


__all__ = ["DaskClusterWidget"]
