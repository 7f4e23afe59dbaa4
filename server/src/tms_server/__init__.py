"""TMS server: serves the Python models of a folder over gRPC from several worker processes."""

from importlib.metadata import version as _version

from tms_server.model import Image, InvalidInput, Model

__all__ = ["Image", "InvalidInput", "Model", "__version__"]

__version__ = _version("tms-server")
