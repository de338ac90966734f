"""Backoff schedules, shared by the durable retry and the in-process RetryLayer."""

from __future__ import annotations

import random
from typing import Protocol

import attrs

__all__ = ["Backoff", "ExponentialBackoff"]


class Backoff(Protocol):
    """Maps a failed attempt number (1 for the first failure) to a delay in seconds.

    Example::

        class Fixed:
            def delay(self, attempt: int) -> float:
                return 5.0
    """

    def delay(self, attempt: int) -> float: ...


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if value < 0:
        raise ValueError(f"{attr.name} must be >= 0 seconds, got {value!r}")


@attrs.frozen
class ExponentialBackoff:
    """``base * factor ** (attempt - 1)`` capped at ``max``, with optional full jitter.

    Full jitter draws uniformly from ``[0, delay]`` (AWS's recommendation against
    synchronized retry storms).

    Example::

        >>> ExponentialBackoff(base=1, factor=2, max=10, jitter=False).delay(4)
        8.0
    """

    base: float = attrs.field(default=1.0, validator=_non_negative)
    factor: float = attrs.field(default=2.0)
    max: float = attrs.field(default=300.0, validator=_non_negative)
    jitter: bool = True

    def __attrs_post_init__(self) -> None:
        if self.factor < 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")

    def delay(self, attempt: int) -> float:
        raw = min(self.max, self.base * self.factor ** max(0, attempt - 1))
        return random.uniform(0, raw) if self.jitter else float(raw)
