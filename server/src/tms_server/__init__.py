"""TMS server."""
