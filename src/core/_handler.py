"""The handler adapter: resolves a handler's parameters from their annotations."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, TypeVar

from ._codec import Codec
from ._context import WorkerContext
from ._service import Service
from ._task import Task, TaskContext

__all__ = ["Data", "HandlerService", "build_handler"]

T = TypeVar("T")


class _DataMarker:
    def __repr__(self) -> str:
        return "turret.Data"


_DATA = _DataMarker()

#: ``Data[T]`` in a handler's signature receives the object of type ``T`` that was
#: registered with ``WorkerBuilder.data(obj)``.
#:
#: Example::
#:
#:     async def send(email: Email, smtp: Data[SmtpPool]) -> None:
#:         await smtp.send(email)
#:
#:     WorkerBuilder("mail").backend(b).data(SmtpPool(...)).build(send)
Data = Annotated[T, _DATA]

_Resolver = Callable[[Task[Any]], Any]


class HandlerService(Service[Task[Any], Any]):
    """Calls the user's handler with each parameter resolved (always ready)."""

    __slots__ = ("fn", "kw_resolvers", "pos_resolvers")

    def __init__(
        self,
        fn: Callable[..., Awaitable[Any]],
        pos_resolvers: list[_Resolver],
        kw_resolvers: dict[str, _Resolver],
    ) -> None:
        self.fn = fn
        self.pos_resolvers = pos_resolvers
        self.kw_resolvers = kw_resolvers

    async def __call__(self, task: Task[Any], /) -> Any:
        pos = self.pos_resolvers
        if len(pos) == 1 and not self.kw_resolvers:  # the common case: just the args
            return await self.fn(pos[0](task))
        args = [r(task) for r in pos]
        if self.kw_resolvers:
            kwargs = {name: r(task) for name, r in self.kw_resolvers.items()}
            return await self.fn(*args, **kwargs)
        return await self.fn(*args)

    def __repr__(self) -> str:
        return f"HandlerService({getattr(self.fn, '__qualname__', self.fn)})"


def _find_data(target: Any, data: Mapping[type, object], fn_name: str, param: str) -> object:
    if isinstance(target, type):
        if target in data:
            return data[target]
        for obj in data.values():
            if isinstance(obj, target):
                return obj
    have = ", ".join(t.__name__ for t in data) or "none"
    name = getattr(target, "__name__", repr(target))
    raise TypeError(
        f"handler {fn_name}(): parameter {param!r} wants Data[{name}], but no object of that "
        f"type was registered (registered: {have}); add .data({name}(...)) to the builder"
    )


def build_handler(
    fn: Callable[..., Awaitable[Any]],
    *,
    codec: Codec,
    context: WorkerContext,
    data: Mapping[type, object],
) -> HandlerService:
    """Check ``fn``'s signature and make the service that calls it.

    One parameter receives the task's arguments (structured into its annotation); the
    others are resolved by annotation: ``TaskContext``, ``WorkerContext``, ``Task[...]``
    or ``Data[T]``. Anything else is a ``TypeError`` naming the parameter.
    """
    fn_name = getattr(fn, "__qualname__", repr(fn))
    if not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004  (a callable object with async __call__)
    ):
        raise TypeError(
            f"handler {fn_name} must be an async function (async def); wrap blocking code "
            "in `await trio.to_thread.run_sync(...)` inside it"
        )
    try:
        # A callable object's annotations are those of its __call__ (a bound method).
        target = fn if inspect.isroutine(fn) else fn.__call__  # type: ignore[operator]
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception as exc:
        raise TypeError(f"handler {fn_name}(): cannot read its annotations: {exc}") from exc
    pos: list[_Resolver] = []
    kw: dict[str, _Resolver] = {}
    args_param: str | None = None

    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise TypeError(f"handler {fn_name}(): *args/**kwargs ({p.name!r}) cannot be resolved")
        ann = hints.get(p.name, inspect.Parameter.empty)
        resolver: _Resolver
        if ann is TaskContext:
            resolver = _task_ctx
        elif ann is WorkerContext:
            resolver = _const(context)
        elif typing.get_origin(ann) is Annotated and _DATA in getattr(ann, "__metadata__", ()):
            resolver = _const(_find_data(typing.get_args(ann)[0], data, fn_name, p.name))
        elif ann is Task or typing.get_origin(ann) is Task:
            args_param = _claim_args(args_param, p.name, fn_name)
            (inner,) = typing.get_args(ann) or (Any,)
            resolver = _task_resolver(codec, inner)
        elif p.default is not inspect.Parameter.empty and args_param is not None:
            continue  # an optional extra parameter keeps its default
        else:
            args_param = _claim_args(args_param, p.name, fn_name)
            resolver = _args_resolver(codec, ann)
        if p.kind is p.KEYWORD_ONLY:
            kw[p.name] = resolver
        else:
            pos.append(resolver)
    return HandlerService(fn, pos, kw)


def _claim_args(current: str | None, name: str, fn_name: str) -> str:
    if current is not None:
        raise TypeError(
            f"handler {fn_name}(): cannot resolve parameter {name!r}: {current!r} already "
            "receives the task's arguments. Annotate it as TaskContext, WorkerContext, "
            "Task[...] or Data[T], give it a default, or pack the arguments into one class"
        )
    return name


def _task_ctx(task: Task[Any]) -> TaskContext:
    return task.ctx


def _const(value: object) -> _Resolver:
    return lambda _task: value


def _is_raw(ann: Any) -> bool:
    return ann is inspect.Parameter.empty or ann is Any or ann is object


_PLAIN = (int, str, float, bool)


def _args_resolver(codec: Codec, ann: Any) -> _Resolver:
    if _is_raw(ann):
        return _raw_args
    if ann in _PLAIN:  # JSON already gives exactly this type; skip the converter
        structure = codec.structure
        return lambda task: task.args if type(task.args) is ann else structure(task.args, ann)
    return lambda task: codec.structure(task.args, ann)


def _raw_args(task: Task[Any]) -> Any:
    return task.args


def _task_resolver(codec: Codec, inner: Any) -> _Resolver:
    if _is_raw(inner):
        return lambda task: task
    return lambda task: Task(codec.structure(task.args, inner), task.ctx)
