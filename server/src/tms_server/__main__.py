"""``tms-server`` and ``python -m tms_server``: parse settings, set up the logs, check the
security files, and run the supervisor."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tms_server import logs
from tms_server.devices import DeviceError
from tms_server.registry import NoModelsError
from tms_server.security import SecurityError, check_files
from tms_server.settings import parse_settings
from tms_server.supervisor import Supervisor

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    settings = parse_settings(argv)
    logs.configure(settings.log_level, settings.log_format)
    try:
        check_files(settings)
    except SecurityError as exc:
        print(f"tms-server: error: {exc}", file=sys.stderr)
        return 2
    try:
        return Supervisor(settings).run()
    except OSError as exc:  # the port (or the metrics port) is taken, before any worker starts
        print(f"tms-server: error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except DeviceError as exc:  # a device this machine does not show, before any worker starts
        print(f"tms-server: error: {exc}", file=sys.stderr)
        return 2
    except NoModelsError as exc:  # no models folder, or nothing in it, before any worker starts
        print(f"tms-server: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
