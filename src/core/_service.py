"""The service/layer algebra: ``Service``, ``Layer``, ``ServiceBuilder`` and friends.

A :class:`Service` handles one request. Its ``ready()`` is an async context manager that
holds a *reservation* for exactly one call: the worker enters it before it claims a task,
and makes the call inside it. A :class:`Layer` wraps a service in another one. Layers are
pure and synchronous: they build, they never do I/O or spawn tasks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import attrs

__all__ = [
    "ALWAYS_READY",
    "Layer",
    "Next",
    "Service",
    "ServiceBuilder",
    "Stack",
    "layer_fn",
    "middleware",
    "service_fn",
]

Req = TypeVar("Req")
Res = TypeVar("Res")
Req_contra = TypeVar("Req_contra", contravariant=True)
Res_co = TypeVar("Res_co", covariant=True)


class _AlwaysReady:
    """A reservation that is granted at once and holds nothing."""

    __slots__ = ()

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    def __repr__(self) -> str:
        return "ALWAYS_READY"


#: The reservation of a service that is always ready (the default ``ready()``).
ALWAYS_READY: AbstractAsyncContextManager[None] = _AlwaysReady()


class Service(Protocol[Req_contra, Res_co]):
    """Something that handles one request: ``await service(req)``.

    ``ready()`` returns an async context manager that waits until the service can take
    one call and holds that reservation until it exits. The default is always ready;
    subclass ``Service`` explicitly to inherit it.

    A worker may enter the reservation in its loop task and exit it in the runner task
    that runs the call, so a ``ready()`` must not open a cancel scope or a nursery across its
    ``__aenter__``/``__aexit__`` (a token-based ``trio.CapacityLimiter``, an event or a
    counter is fine; see :class:`~turret.layers.ConcurrencyLimitLayer`).

    Example::

        class Echo(turret.Service[str, str]):
            async def __call__(self, req: str, /) -> str:
                return req

        svc = Echo()
        async with svc.ready():
            assert await svc("hi") == "hi"
    """

    async def __call__(self, req: Req_contra, /) -> Res_co: ...

    def ready(self) -> AbstractAsyncContextManager[None]:
        """Wait for capacity for one call, and hold it until the context exits."""
        return ALWAYS_READY


#: What a middleware calls to pass the request on: the inner service.
Next = Callable[[Req], Awaitable[Res]]


class ServiceFn(Service[Req, Res]):
    """A service made from an async function (see :func:`service_fn`)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Req], Awaitable[Res]]) -> None:
        self.fn = fn

    async def __call__(self, req: Req, /) -> Res:
        return await self.fn(req)

    def __repr__(self) -> str:
        return f"service_fn({getattr(self.fn, '__qualname__', self.fn)!s})"


def service_fn(fn: Callable[[Req], Awaitable[Res]]) -> Service[Req, Res]:
    """Adapt an async function of one argument into an always-ready :class:`Service`.

    Example::

        async def double(x: int) -> int:
            return 2 * x

        svc = turret.service_fn(double)
        assert await svc(21) == 42
    """
    return ServiceFn(fn)


class Layer(Protocol[Req, Res]):
    """Wraps a service in another: ``layer.layer(inner) -> Service``.

    ``layer()`` is synchronous and pure: no I/O, no tasks. A layer whose purpose is not
    backpressure forwards ``ready()`` to its inner service.

    Example::

        class Noop(turret.Layer[Req, Res]):
            def layer(self, inner: Service[Req, Res]) -> Service[Req, Res]:
                return inner
    """

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]: ...


@attrs.frozen
class _LayerFn(Generic[Req, Res]):
    fn: Callable[[Service[Req, Res]], Service[Req, Res]]

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        return self.fn(inner)


def layer_fn(fn: Callable[[Service[Req, Res]], Service[Req, Res]]) -> Layer[Req, Res]:
    """Make a :class:`Layer` from a function ``inner -> Service``.

    Example::

        class Timed(turret.Service[Req, Res]):
            def __init__(self, inner): self.inner = inner
            def ready(self): return self.inner.ready()
            async def __call__(self, req):
                start = trio.current_time()
                try:
                    return await self.inner(req)
                finally:
                    print("took", trio.current_time() - start)

        timed = turret.layer_fn(Timed)
    """
    return _LayerFn(fn)


class MiddlewareService(Service[Req, Res]):
    """The service a :func:`middleware` builds: calls ``fn(req, inner)``, forwards ready()."""

    __slots__ = ("fn", "inner")
    forwards_ready = True  # ready() is inner.ready(): see turret.layers.nowait_reservation

    def __init__(
        self, fn: Callable[[Req, Next[Req, Res]], Awaitable[Res]], inner: Service[Req, Res]
    ) -> None:
        self.fn = fn
        self.inner = inner

    async def __call__(self, req: Req, /) -> Res:
        return await self.fn(req, self.inner)

    def ready(self) -> AbstractAsyncContextManager[None]:
        return self.inner.ready()


@attrs.frozen
class _Middleware(Generic[Req, Res]):
    fn: Callable[[Req, Next[Req, Res]], Awaitable[Res]]

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        return MiddlewareService(self.fn, inner)


def middleware(fn: Callable[[Req, Next[Req, Res]], Awaitable[Res]]) -> Layer[Req, Res]:
    """Turn ``async def f(req, call_next)`` into a :class:`Layer` that forwards readiness.

    Example::

        @turret.middleware
        async def log_tasks(task: Task[Any], call_next: Next[Task[Any], Any]) -> Any:
            print("running", task.id)
            return await call_next(task)

        worker = WorkerBuilder("w").backend(b).layer(log_tasks).build(handler)
    """
    return _Middleware(fn)


@attrs.frozen
class Stack(Generic[Req, Res]):
    """Several layers applied as one; the first is the outermost.

    Example::

        stack = ServiceBuilder().layer(a).layer(b).into_layer()
        svc = stack.layer(inner)        # a(b(inner))
    """

    layers: tuple[Layer[Req, Res], ...] = ()

    def layer(self, inner: Service[Req, Res], /) -> Service[Req, Res]:
        for one in reversed(self.layers):
            inner = one.layer(inner)
        return inner


@attrs.frozen
class ServiceBuilder(Generic[Req, Res]):
    """Composes layers. **The first layer added is the outermost**, as in tower.

    Example::

        svc = (
            turret.ServiceBuilder[int, int]()
            .layer(outer)     # sees the request first
            .layer(inner)
            .service(turret.service_fn(handler))
        )
    """

    layers: tuple[Layer[Req, Res], ...] = ()

    def layer(self, layer: Layer[Req, Res]) -> ServiceBuilder[Req, Res]:
        """Return a builder with ``layer`` added inside the ones already there."""
        return ServiceBuilder((*self.layers, layer))

    def into_layer(self) -> Stack[Req, Res]:
        """All the layers as one :class:`Layer`."""
        return Stack(self.layers)

    def service(self, inner: Service[Req, Res]) -> Service[Req, Res]:
        """Wrap ``inner`` in every layer; the first added ends up outermost."""
        return Stack(self.layers).layer(inner)
