"""The raw trio loop for the sleep workload: the floor the benches print beside turret.

2000 tasks sleeping 10 ms at concurrency 100, as a careful trio programmer writes it by
hand (a memory channel, a ``CapacityLimiter``, a nursery), in this process. This machine
is shared and its speed drifts by a third within minutes, so a figure next to this
floor, measured in the same run, says more than the figure alone.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Awaitable, Callable

import trio

__all__ = ["raw_loop", "raw_trio_sleep_s"]


async def _sleep() -> None:
    await trio.sleep(0.01)


async def raw_loop(n: int, concurrency: int, work: Callable[[], Awaitable[None]]) -> float:
    """Seconds for ``n`` items, each awaiting ``work()``, ``concurrency`` at a time."""
    send, recv = trio.open_memory_channel[int](n)
    for i in range(n):
        send.send_nowait(i)
    send.close()
    limiter = trio.CapacityLimiter(concurrency)

    async def handle(item: int) -> None:
        try:
            await work()
        finally:
            limiter.release_on_behalf_of(item)

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        async for item in recv:
            await limiter.acquire_on_behalf_of(item)
            nursery.start_soon(handle, item)
    return time.perf_counter() - start


def raw_trio_sleep_s(runs: int, n: int = 2000, concurrency: int = 100) -> float:
    """The median of ``runs`` runs of the raw loop, in seconds."""
    return statistics.median(trio.run(raw_loop, n, concurrency, _sleep) for _ in range(runs))
