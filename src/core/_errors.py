"""The error hierarchy: every error turret raises derives from :class:`TurretError`."""

from __future__ import annotations

__all__ = [
    "Abort",
    "InvalidPayload",
    "LeaseLost",
    "PayloadTooLarge",
    "Retry",
    "TurretError",
]


class TurretError(Exception):
    """Base class of every error turret raises.

    Example::

        try:
            await backend.push(huge)
        except turret.TurretError as exc:
            log.warning("push refused: %s", exc)
    """


class Retry(TurretError):
    """Raised by a handler to ask for a durable retry after ``after`` seconds.

    The attempt counts: once ``max_attempts`` is reached the task goes to dead letters.

    Example::

        async def fetch(url: str) -> None:
            if await rate_limited(url):
                raise turret.Retry(after=30, reason="upstream rate limit")
    """

    def __init__(self, after: float = 0.0, reason: str = "retry requested") -> None:
        if after < 0:
            raise ValueError(f"Retry(after={after!r}): the delay must be >= 0 seconds")
        super().__init__(f"{reason} (after {after:g}s)")
        self.after = float(after)
        self.reason = reason


class Abort(TurretError):
    """Raised by a handler to send the task to dead letters at once, without retrying.

    Example::

        async def charge(order: Order) -> None:
            if order.amount <= 0:
                raise turret.Abort(f"invalid amount {order.amount}")
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class InvalidPayload(TurretError):
    """A task's payload cannot be decoded, or does not fit the handler's argument type.

    The worker sends such a task to dead letters with this message as the reason and
    keeps running.

    Example::

        except turret.InvalidPayload as exc:
            print("dead-lettered:", exc)
    """


class PayloadTooLarge(TurretError, ValueError):
    """A pushed payload is larger than the backend's ``max_payload_bytes``.

    Example::

        backend = MemoryBackend(max_payload_bytes=1024)
        await backend.push("x" * 4096)   # raises PayloadTooLarge
    """


class LeaseLost(TurretError):
    """A settle was refused: the lease expired or another worker claimed the task since.

    This is fencing at work: the stale settle never overwrites the newer claim. The
    worker reports it as a :class:`~turret.LeaseRejected` event.

    Example::

        try:
            await backend.ack(task_id, token)
        except turret.LeaseLost:
            ...  # someone else owns the task now
    """
