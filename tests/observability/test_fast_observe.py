"""The Prometheus layer's fast histogram path must agree exactly with ``observe()``.

It writes prometheus_client's value cells directly (no per-call checks). If a client
upgrade changes those internals, either the fallback kicks in or this test fails.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from turret.layers._prometheus import _Observe


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e4, allow_nan=False), max_size=30))
def test_fast_observe_matches_the_public_observe(values: list[float]) -> None:
    fast_registry, slow_registry = CollectorRegistry(), CollectorRegistry()
    fast = Histogram("t_seconds", "t", ["w"], registry=fast_registry)
    slow = Histogram("t_seconds", "t", ["w"], registry=slow_registry)
    observe = _Observe(fast.labels("a"))
    slow_child = slow.labels("a")
    assert observe.observe == observe._fast, "the fast path is in use with this client"
    for v in values:
        observe.observe(v)
        slow_child.observe(v)
    assert _exposition(fast_registry) == _exposition(slow_registry)


def _exposition(registry: CollectorRegistry) -> list[str]:
    text = generate_latest(registry).decode()
    return [line for line in text.splitlines() if "_created" not in line]
