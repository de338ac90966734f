"""Backoff schedules, shared by the durable retry and the in-process RetryLayer.

One family: :class:`ConstantBackoff`, :class:`LinearBackoff` and
:class:`ExponentialBackoff` compute a raw delay for a failed attempt, cap it at ``max``,
then apply a :class:`Jitter`:

- ``Jitter.NONE``: the raw delay.
- ``Jitter.FULL``: uniform in ``[0, raw]`` (AWS's "full jitter").
- ``Jitter.DECORRELATED``: uniform in ``[base, 3 * previous]``, capped at ``max``, where
  ``previous`` is the un-jittered delay of the attempt before (``base`` for the first).
  This is a stateless form of AWS's "decorrelated jitter": the same schedule works for
  the durable retry, which only knows the attempt number.

Every delay lies in ``[0, max]``.
"""

from __future__ import annotations

import enum
import random
from typing import Protocol

import attrs

__all__ = ["Backoff", "ConstantBackoff", "ExponentialBackoff", "Jitter", "LinearBackoff"]


class Backoff(Protocol):
    """Maps a failed attempt number (1 for the first failure) to a delay in seconds.

    Example::

        class Fixed:
            def delay(self, attempt: int) -> float:
                return 5.0
    """

    def delay(self, attempt: int) -> float: ...


class Jitter(enum.Enum):
    """How a backoff randomizes its delays (see the module docs)."""

    NONE = "none"
    FULL = "full"
    DECORRELATED = "decorrelated"


def _to_jitter(value: Jitter | bool | str) -> Jitter:
    if isinstance(value, Jitter):
        return value
    if value is True:
        return Jitter.FULL
    if value is False:
        return Jitter.NONE
    try:
        return Jitter(value)
    except ValueError:
        raise ValueError(
            f"jitter must be a Jitter, True/False or one of 'none', 'full', 'decorrelated'; "
            f"got {value!r}"
        ) from None


def _non_negative(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not value >= 0:  # also refuses NaN
        raise ValueError(f"{attr.name} must be >= 0 seconds, got {value!r}")


def _jittered(jitter: Jitter, raw: float, previous: float, base: float, cap: float) -> float:
    if jitter is Jitter.NONE:
        return raw
    if jitter is Jitter.FULL:
        return random.uniform(0.0, raw)
    low = min(base, cap)
    return min(cap, random.uniform(low, max(low, 3.0 * previous)))


def _check_attempt(attempt: int) -> int:
    return attempt if attempt > 1 else 1


@attrs.frozen
class ExponentialBackoff:
    """``base * factor ** (attempt - 1)`` capped at ``max``, then jittered.

    ``jitter`` takes a :class:`Jitter`; ``True`` (the default) means ``Jitter.FULL`` and
    ``False`` means ``Jitter.NONE``. Full jitter draws uniformly from ``[0, delay]``
    (AWS's recommendation against synchronized retry storms).

    Example::

        >>> ExponentialBackoff(base=1, factor=2, max=10, jitter=False).delay(4)
        8.0
    """

    base: float = attrs.field(default=1.0, validator=_non_negative)
    factor: float = attrs.field(default=2.0)
    max: float = attrs.field(default=300.0, validator=_non_negative)
    jitter: Jitter = attrs.field(default=Jitter.FULL, converter=_to_jitter)

    def __attrs_post_init__(self) -> None:
        if not self.factor >= 1:
            raise ValueError(f"factor must be >= 1, got {self.factor!r}")

    def _raw(self, attempt: int) -> float:
        try:
            raw = self.base * self.factor ** (attempt - 1)
        except OverflowError:  # a huge attempt: far past the cap (unless base is 0)
            raw = self.max if self.base > 0 else 0.0
        return float(min(self.max, raw))

    def delay(self, attempt: int) -> float:
        attempt = _check_attempt(attempt)
        raw = self._raw(attempt)
        if self.jitter is Jitter.DECORRELATED:
            prev = self._raw(attempt - 1) if attempt > 1 else self.base
            return _jittered(self.jitter, raw, prev, self.base, self.max)
        return _jittered(self.jitter, raw, raw, self.base, self.max)


@attrs.frozen
class LinearBackoff:
    """``base + step * (attempt - 1)`` capped at ``max``, then jittered.

    Example::

        >>> LinearBackoff(base=1, step=2, max=6, jitter=False).delay(3)
        5.0
    """

    base: float = attrs.field(default=1.0, validator=_non_negative)
    step: float = attrs.field(default=1.0, validator=_non_negative)
    max: float = attrs.field(default=60.0, validator=_non_negative)
    jitter: Jitter = attrs.field(default=Jitter.NONE, converter=_to_jitter)

    def _raw(self, attempt: int) -> float:
        return float(min(self.max, self.base + self.step * (attempt - 1)))

    def delay(self, attempt: int) -> float:
        attempt = _check_attempt(attempt)
        raw = self._raw(attempt)
        prev = self._raw(attempt - 1) if attempt > 1 else self.base
        return _jittered(self.jitter, raw, prev, self.base, self.max)


@attrs.frozen
class ConstantBackoff:
    """The same ``delay`` after every failure; ``Jitter.FULL`` draws from ``[0, delay]``.

    Decorrelated jitter needs a growing schedule, so it is refused here.

    Example::

        >>> ConstantBackoff(0.5).delay(7)
        0.5
    """

    seconds: float = attrs.field(default=1.0, validator=_non_negative)
    jitter: Jitter = attrs.field(default=Jitter.NONE, converter=_to_jitter)

    def __attrs_post_init__(self) -> None:
        if self.jitter is Jitter.DECORRELATED:
            raise ValueError(
                "ConstantBackoff cannot use Jitter.DECORRELATED (it needs a growing "
                "schedule); use Jitter.FULL, or ExponentialBackoff(jitter=Jitter.DECORRELATED)"
            )

    def delay(self, attempt: int) -> float:
        return _jittered(self.jitter, float(self.seconds), 0.0, 0.0, float(self.seconds))
