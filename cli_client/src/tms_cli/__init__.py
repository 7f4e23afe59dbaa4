"""TMS CLI."""
