"""The scrape endpoint: prometheus_client's ASGI app served by hypercorn on trio."""

from __future__ import annotations

import functools
import logging
import os
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import REGISTRY, CollectorRegistry, make_asgi_app, multiprocess

from ._metrics import Metrics, _LiveCollector

if TYPE_CHECKING:
    from ..core._monitor import MonitorHandle

__all__ = ["MetricsServer", "scrape_registry", "serve_metrics"]

log = logging.getLogger("turret.metrics")


def scrape_registry(registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """The registry to expose: ``registry``, or with ``PROMETHEUS_MULTIPROC_DIR`` set, a
    fresh one aggregating every process's files (plus ``registry``'s custom collectors
    when one is given: a :class:`Metrics`' queue depth and worker readiness).

    Example::

        app = make_asgi_app(scrape_registry(metrics.registry))
    """
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY if registry is None else registry
    scrape = CollectorRegistry()
    multiprocess.MultiProcessCollector(scrape)  # type: ignore[no-untyped-call]
    if registry is not None:  # live values are per process: the serving one
        for collector in list(registry._collector_to_names):
            if isinstance(collector, _LiveCollector):
                scrape.register(collector)
    return scrape


def _with_lifespan(app: Any) -> Any:
    """prometheus_client's app plus the ASGI lifespan protocol (hypercorn asks for it)."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return

    return wrapped


async def serve_metrics(
    registry: CollectorRegistry | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 9464,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``/metrics`` (and every path) in Prometheus' text format until cancelled.

    hypercorn on trio runs prometheus_client's ASGI app in the caller's nursery.
    ``task_status.started()`` gets the bound URL (useful with ``port=0``). Honours
    ``PROMETHEUS_MULTIPROC_DIR`` (see :func:`scrape_registry`).

    Example::

        async with trio.open_nursery() as nursery:
            url = await nursery.start(functools.partial(serve_metrics, registry, port=0))
    """
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 0.5
    app = _with_lifespan(make_asgi_app(scrape_registry(registry)))

    class _Status:
        def started(self, binds: list[str] | None = None) -> None:
            url = binds[0] if binds else f"http://{host}:{port}"
            log.info("metrics: serving on %s/metrics", url)
            task_status.started(url)

    await serve(app, config, mode="asgi", task_status=_Status())


class MetricsServer:
    """A :class:`Metrics` plus its scrape endpoint, run by a Monitor next to its workers.

    ``Monitor.serve_metrics()`` makes one; :meth:`run` watches the Monitor's workers,
    refreshes the queue depth every ``interval`` seconds and serves the endpoint. ``url``
    is the bound address once started.

    Example::

        server = MetricsServer(port=0)
        monitor.on_event(server.metrics.on_event)
        async with monitor.open() as handle:
            await handle_nursery.start(server.run, handle)
    """

    def __init__(
        self,
        metrics: Metrics | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 9464,
        interval: float = 15.0,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.host = host
        self.port = port
        self.interval = interval
        self.url: str | None = None
        self._started = trio.Event()  # set on the first start (a Monitor may run again)

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url or f'{self.host}:{self.port}'}>"

    async def wait_started(self) -> str:
        """Wait until the endpoint listens; return its URL.

        Example::

            url = await server.wait_started()
        """
        await self._started.wait()
        assert self.url is not None
        return self.url

    async def run(
        self,
        handle: MonitorHandle | None = None,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Refresh and serve until cancelled; ``task_status.started(url)``.

        Example::

            url = await nursery.start(server.run, handle)
        """
        if handle is not None:
            self.metrics.watch_monitor(handle)
        try:
            await self._serve(task_status)
        finally:
            if handle is not None:
                self.metrics.unwatch_monitor(handle)

    async def _serve(self, task_status: trio.TaskStatus[str]) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(functools.partial(self.metrics.run, interval=self.interval))
            self.url = await nursery.start(
                functools.partial(
                    serve_metrics, self.metrics.registry, host=self.host, port=self.port
                )
            )
            self._started.set()
            task_status.started(self.url)
