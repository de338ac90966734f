"""Observability: Prometheus metrics, OpenTelemetry trace propagation, event logging.

The tracing helpers and :func:`log_events` need nothing beyond turret (OpenTelemetry is
used when ``opentelemetry-api`` is installed). :class:`Metrics`, :class:`MetricsServer`,
:func:`serve_metrics` and :func:`scrape_registry` need ``pip install 'turret[metrics]'``
and are imported on first access. See ``docs/observability.md``.

Example::

    from turret.observability import Metrics, log_events

    metrics = Metrics()
    monitor.on_event(metrics.on_event).on_event(log_events())
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._logging import log_events as log_events
from ._logging import task_extra as task_extra
from ._propagation import MESSAGING_SYSTEM as MESSAGING_SYSTEM
from ._propagation import configure_tracing as configure_tracing
from ._propagation import error_type as error_type
from ._propagation import extract_context as extract_context
from ._propagation import inject_headers as inject_headers
from ._propagation import traced_send as traced_send

if TYPE_CHECKING:
    from ._metrics import Families as Families
    from ._metrics import Metrics as Metrics
    from ._metrics import families as families
    from ._server import MetricsServer as MetricsServer
    from ._server import scrape_registry as scrape_registry
    from ._server import serve_metrics as serve_metrics

_LAZY = {
    "Families": "._metrics",
    "Metrics": "._metrics",
    "families": "._metrics",
    "MetricsServer": "._server",
    "scrape_registry": "._server",
    "serve_metrics": "._server",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        raise ImportError(
            f"turret.observability.{name} needs prometheus-client and hypercorn: "
            "pip install 'turret[metrics]'"
        ) from exc
    globals()[name] = value
    return value
