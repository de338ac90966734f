"""The ``turret`` command (see ``turret --help``)."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``turret`` console script."""
    print("turret: no commands yet", file=sys.stderr)
    return 2
