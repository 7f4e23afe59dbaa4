"""``tms-server`` and ``python -m tms_server``: catch the stop signals, quiet gRPC's C core,
parse settings, set up the logs, check the security files, and run the supervisor."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from tms_server.signals import StopFlag, stop_on_signals

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    # First, before the slow imports: a stop signal that comes while the server starts stops
    # it as cleanly as a later one (exit 0), instead of killing it with nothing logged.
    stop = StopFlag()
    stop_on_signals(stop)
    # gRPC's C core writes its own lines to stderr, not through logging: one INFO line for
    # each failed TLS handshake (a port scanner, a plaintext client), whatever --log-format
    # and --log-level say. It reads GRPC_VERBOSITY once, as grpc is imported (below), and
    # the workers fork with it; a variable set by the caller wins.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from tms_server import logs  # noqa: PLC0415
    from tms_server.devices import DeviceError  # noqa: PLC0415
    from tms_server.registry import NoModelsError  # noqa: PLC0415
    from tms_server.security import SecurityError, check_files  # noqa: PLC0415
    from tms_server.settings import parse_settings  # noqa: PLC0415
    from tms_server.supervisor import Supervisor  # noqa: PLC0415

    settings = parse_settings(argv)
    logs.configure(settings.log_level, settings.log_format)
    # Each error here comes before any worker starts: a security file that cannot be used, a
    # port (or the metrics port) taken, a device this machine does not show, no models.
    try:
        check_files(settings)
        return Supervisor(settings, stop).run()
    except OSError as exc:
        print(f"tms-server: error: {exc.strerror or exc}", file=sys.stderr)
    except (SecurityError, DeviceError, NoModelsError) as exc:
        print(f"tms-server: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
