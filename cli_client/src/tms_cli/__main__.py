"""``tms`` and ``python -m tms_cli``: parse the command line (``tms_cli.cli``), then run the
command (``tms_cli.running``); the exit code is 0 done, 1 failed, 2 usage, 130 Ctrl-C."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import click

from tms_cli.cli import Invocation, tms

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tms`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    try:
        parsed = tms.main(list(argv) if argv is not None else None, "tms", standalone_mode=False)
    except click.ClickException as exc:  # a usage error: the usage, then the error
        exc.show()
        return exc.exit_code
    except click.Abort:  # Ctrl-C while parsing
        sys.stderr.write("tms: interrupted\n")
        return 130
    if not isinstance(parsed, Invocation):  # --help, --version: done
        return parsed if isinstance(parsed, int) else 0
    # gRPC's C core logs each failed TLS handshake, twenty lines for one wrong CA: what went
    # wrong is the one line tms says (a variable set by the caller wins).
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    # The client and the commands load only now: completing a word runs tms too.
    from tms_cli.running import run  # noqa: PLC0415

    return run(parsed)


if __name__ == "__main__":
    sys.exit(main())
