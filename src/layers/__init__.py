"""turret's layer library: one module per middleware, re-exported here.

Example::

    from turret.layers import ConcurrencyLimitLayer, RetryLayer, TimeoutLayer

``PrometheusLayer`` (``turret[metrics]``) and ``TracingLayer`` (``turret[tracing]``) are
imported on first access, so ``import turret.layers`` works without their extras.
"""

from typing import TYPE_CHECKING as _TYPE_CHECKING
from typing import Any as _Any

from ..core._nowait import enter_nowait as enter_nowait
from ..core._nowait import nowait_reservation as nowait_reservation
from ._catch_panic import CatchPanic as CatchPanic
from ._catch_panic import CatchPanicLayer as CatchPanicLayer
from ._catch_panic import CatchPanicStatistics as CatchPanicStatistics
from ._catch_panic import Panic as Panic
from ._circuit_breaker import BreakerState as BreakerState
from ._circuit_breaker import CircuitBreaker as CircuitBreaker
from ._circuit_breaker import CircuitBreakerLayer as CircuitBreakerLayer
from ._circuit_breaker import CircuitBreakerStatistics as CircuitBreakerStatistics
from ._circuit_breaker import CircuitOpen as CircuitOpen
from ._concurrency import ConcurrencyLimit as ConcurrencyLimit
from ._concurrency import ConcurrencyLimitLayer as ConcurrencyLimitLayer
from ._concurrency import ConcurrencyLimitStatistics as ConcurrencyLimitStatistics
from ._concurrency import GlobalConcurrencyLimitLayer as GlobalConcurrencyLimitLayer
from ._filter import Filter as Filter
from ._filter import FilterLayer as FilterLayer
from ._filter import FilterStatistics as FilterStatistics
from ._filter import Rejected as Rejected
from ._load_shed import LoadShed as LoadShed
from ._load_shed import LoadShedLayer as LoadShedLayer
from ._load_shed import LoadShedStatistics as LoadShedStatistics
from ._load_shed import Overloaded as Overloaded
from ._map import MapArgs as MapArgs
from ._map import MapArgsLayer as MapArgsLayer
from ._map import MapResult as MapResult
from ._map import MapResultLayer as MapResultLayer
from ._rate_limit import RateLimit as RateLimit
from ._rate_limit import RateLimitLayer as RateLimitLayer
from ._rate_limit import RateLimitStatistics as RateLimitStatistics
from ._retry import RetryBudget as RetryBudget
from ._retry import RetryLayer as RetryLayer
from ._retry import RetryPolicy as RetryPolicy
from ._retry import RetryService as RetryService
from ._retry import RetryStatistics as RetryStatistics
from ._timeout import Elapsed as Elapsed
from ._timeout import Timeout as Timeout
from ._timeout import TimeoutLayer as TimeoutLayer

if _TYPE_CHECKING:
    from ._prometheus import Prometheus as Prometheus
    from ._prometheus import PrometheusLayer as PrometheusLayer
    from ._tracing import Tracing as Tracing
    from ._tracing import TracingLayer as TracingLayer

_OPTIONAL = {
    "Prometheus": ("._prometheus", "turret[metrics]"),
    "PrometheusLayer": ("._prometheus", "turret[metrics]"),
    "Tracing": ("._tracing", "turret[tracing]"),
    "TracingLayer": ("._tracing", "turret[tracing]"),
}


def __getattr__(name: str) -> _Any:
    found = _OPTIONAL.get(name)
    if found is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module, extra = found
    try:
        value = getattr(importlib.import_module(module, __name__), name)
    except ImportError as exc:
        raise ImportError(f"turret.layers.{name} needs an extra: pip install '{extra}'") from exc
    globals()[name] = value
    return value
