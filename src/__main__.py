"""``python -m turret``: the same as the ``turret`` command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
