"""Backends: where tasks live.

``MemoryBackend`` keeps tasks in the process (tests, demos); ``SqliteBackend`` keeps
them in one SQLite file shared by the worker processes of one host (the embedded
default). Both keep the same contract, checked by one conformance suite.

Example::

    from turret.backends import MemoryBackend, SqliteBackend

    async with SqliteBackend.open("tasks.db") as backend:
        await backend.push({"n": 1})
"""

from ._memory import MemoryBackend as MemoryBackend
from ._memory import MemoryStatistics as MemoryStatistics
from ._memory import StoredTask as StoredTask
from ._sqlite import SCHEMA_VERSION as SCHEMA_VERSION
from ._sqlite import SqliteBackend as SqliteBackend
from ._sqlite import SqliteStatistics as SqliteStatistics

# --- Redis (issue 7): imported lazily, so this package works without coredis ---------
TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._postgres import PostgresBackend as PostgresBackend  # issue 6
    from ._postgres import PostgresStatistics as PostgresStatistics
    from ._postgres import redact_dsn as redact_dsn
    from ._redis import RedisBackend as RedisBackend
    from ._redis import RedisStatistics as RedisStatistics

_LAZY = {"RedisBackend": "._redis", "RedisStatistics": "._redis"}
# PostgreSQL (issue 6): needs turret[postgres] (psycopg 3).
_LAZY.update(dict.fromkeys(["PostgresBackend", "PostgresStatistics", "redact_dsn"], "._postgres"))
_EXTRAS = {"._redis": "coredis: pip install 'turret[redis]'"}
_EXTRAS["._postgres"] = "psycopg: pip install 'turret[postgres]'"


def __getattr__(name: str) -> object:
    """``RedisBackend`` and ``RedisStatistics`` load on first use (needs ``turret[redis]``)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        from importlib import import_module

        value = getattr(import_module(module, __name__), name)
    except ImportError as exc:
        raise ImportError(f"turret.backends.{name} needs {_EXTRAS[module]} ({exc})") from exc
    globals()[name] = value
    return value
