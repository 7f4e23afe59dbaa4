"""TMS client."""
