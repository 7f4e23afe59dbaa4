"""``tms-server`` and ``python -m tms_server``: parse settings and run the supervisor."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from tms_server.settings import parse_settings
from tms_server.supervisor import main as supervise

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    return supervise(parse_settings(argv))


if __name__ == "__main__":
    sys.exit(main())
