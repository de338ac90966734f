"""Finding what ``turret worker module:attr`` should run, with one-line errors."""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from ..core._monitor import Monitor
from ..core._worker import Worker

__all__ = ["TargetError", "load_target", "open_monitor"]

_EXPECTED = (
    "expected a turret.Monitor, a turret.Worker, or a callable returning one (plain, async, "
    "or an async context manager)"
)


class TargetError(Exception):
    """The ``module:attr`` given to ``turret worker`` cannot be used (exit code 2).

    Its message is one line naming the problem and how to fix it.

    Example::

        try:
            load_target("myapp:nope")
        except TargetError as exc:
            print(exc)   # module 'myapp' has no attribute 'nope'; ...
    """


def load_target(spec: str, app_dir: str | None = ".") -> object:
    """Import ``module:attr`` (``app_dir`` first on ``sys.path``) and return the attribute.

    Example::

        target = load_target("myapp.tasks:monitor")
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise TargetError(
            f"{spec!r} is not of the form 'module:attribute'; e.g. "
            "'turret worker myapp.tasks:monitor'"
        )
    if app_dir is not None and app_dir not in sys.path:
        sys.path.insert(0, app_dir)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if module_name == missing or module_name.startswith(missing + "."):
            raise TargetError(
                f"cannot import module {module_name!r} ({exc}); check the spelling, run from "
                "the project directory, or pass --app-dir"
            ) from None
        raise  # the module itself failed to import a dependency: show the traceback
    obj: object = module
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise TargetError(
                f"module {module_name!r} has no attribute {attr!r}; "
                f"define it there or fix the name after ':' in {spec!r}"
            ) from None
    if not isinstance(obj, Monitor | Worker) and not callable(obj):
        raise TargetError(f"{spec!r} is a {type(obj).__name__}; {_EXPECTED}")
    return obj


def _never(*_: object) -> bool:
    return False


def _as_monitor(obj: object, spec: str) -> Monitor:
    if isinstance(obj, Monitor):
        return obj
    if isinstance(obj, Worker):
        # A built worker runs once: it cannot be restarted (register a factory for that).
        return Monitor(name=obj.name).register(lambda _index: obj, restart=_never)
    raise TargetError(f"{spec!r} returned a {type(obj).__name__}; {_EXPECTED}")


@asynccontextmanager
async def open_monitor(target: object, spec: str) -> AsyncIterator[Monitor]:
    """Turn a loaded target into a Monitor, entering an async context manager if given one.

    Example::

        async with open_monitor(load_target(spec), spec) as monitor:
            await monitor.run_with_signal()
    """
    if isinstance(target, Monitor | Worker):
        yield _as_monitor(target, spec)
        return
    assert callable(target)
    made = target()
    if inspect.isawaitable(made):
        made = await made
    if isinstance(made, AbstractAsyncContextManager):
        async with made as entered:
            yield _as_monitor(entered, spec)
        return
    yield _as_monitor(made, spec)
