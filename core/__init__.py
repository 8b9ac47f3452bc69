"""BioImage Gateway: the shared core (site settings, Slurm access; later catalogs and staging).

The hub (``bioimage_gateway.hub_config``), the user's Jupyter server
(``bioimage_gateway.extensions``) and the kernel (``bioimage_gateway.widgets``)
import from here; none of them imports another's internals.
"""

__version__ = "0.1.0"
