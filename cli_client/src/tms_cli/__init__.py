"""tms: the command line of TMS (Tiny Model Server).

A thin layer over ``tms_client.ModelClient``: list and inspect a server's models, check its
health and workers, and run models on image files, folders and texts. Run ``tms --help``.
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

__all__ = ["__version__"]

try:
    __version__ = _version("tms-cli")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "0.0.0"
