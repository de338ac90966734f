"""The producing half every backend shares: push, the payload limit, trace context.

A backend inherits :class:`Producer` and implements one method, ``_store``, which writes
already-encoded jobs in one transaction or round trip. ``push`` and ``push_many`` (the
size check, the PRODUCER span and the W3C ``traceparent`` header) are written once here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core._backend import Job
from ..core._codec import Codec, JsonCodec
from ..core._errors import LeaseLost, PayloadTooLarge
from ..core._task import TaskId
from ..observability._propagation import traced_send

__all__ = ["PRUNE_BATCH", "PRUNE_EVERY", "Producer", "check_options"]

#: How often (backend clock, seconds) a durable backend forgets old done tasks, and how
#: many it deletes in one statement (short transactions; it goes on while more are due).
PRUNE_EVERY = 60.0
PRUNE_BATCH = 1000


class Producer:
    """``push``/``push_many`` for a backend; subclasses implement :meth:`_store`.

    Example (a backend)::

        class MyBackend(Producer):
            def __init__(self, *, codec=None, clock=time.time, ...) -> None:
                self._configure(codec=codec, clock=clock, ...)  # the shared options

            async def _store(self, encoded: Sequence[tuple[Job, bytes]]) -> list[TaskId]:
                ...  # one transaction for the whole batch
    """

    _codec: Codec
    _clock: Callable[[], float]
    default_max_attempts: int
    max_payload_bytes: int
    aging: float
    max_lost: int
    result_ttl: float | None
    done_ttl: float | None = None
    _forget_after: float | None = None

    def _configure(
        self,
        *,
        codec: Codec | None,
        clock: Callable[[], float],
        default_max_attempts: int,
        max_payload_bytes: int,
        aging: float,
        max_lost: int,
        result_ttl: float | None,
        done_ttl: float | None = None,
    ) -> None:
        """Validate and keep the options every backend shares (from its ``__init__``)."""
        check_options(
            default_max_attempts=default_max_attempts,
            max_payload_bytes=max_payload_bytes,
            aging=aging,
            max_lost=max_lost,
            result_ttl=result_ttl,
            done_ttl=done_ttl,
        )
        self._codec = codec if codec is not None else JsonCodec()
        self._clock = clock
        self.default_max_attempts = default_max_attempts
        self.max_payload_bytes = max_payload_bytes
        self.aging = aging
        self.max_lost = max_lost
        self.result_ttl = result_ttl
        self.done_ttl = done_ttl
        # Done tasks are forgotten this long after their ack; None: kept for ever (so are
        # they when results are: result_ttl=None).
        self._forget_after = None if done_ttl is None or result_ttl is None else done_ttl

    def kept_until(self, finished_at: float, result_expires_at: float | None) -> float:
        """When a task that finished (done) at ``finished_at`` is forgotten: ``done_ttl``
        later, or when its result expires if that is later (``inf`` when ``done_ttl`` or
        ``result_ttl`` is ``None``).

        Example::

            backend = MemoryBackend(done_ttl=60, result_ttl=3600)
            assert backend.kept_until(0.0, None) == 60.0
            assert backend.kept_until(0.0, 3600.0) == 3600.0
        """
        if self._forget_after is None:
            return math.inf
        until = finished_at + self._forget_after
        return until if result_expires_at is None else max(until, result_expires_at)

    @property
    def codec(self) -> Codec:
        """How payloads and results are encoded (JSON unless the backend was given one)."""
        return self._codec

    def now(self) -> float:
        """The backend's clock, in seconds (what ``run_at`` and lease deadlines use)."""
        return self._clock()

    async def push(
        self,
        args: Any,
        *,
        queue: str = "default",
        priority: int = 0,
        delay: float = 0.0,
        max_attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        unique_key: str | None = None,
    ) -> TaskId:
        """Store one task; return its id (see :class:`~turret.Job` for the options)."""
        job = Job(
            args,
            queue=queue,
            priority=priority,
            delay=delay,
            max_attempts=max_attempts,
            headers=dict(headers or {}),
            unique_key=unique_key,
        )
        (task_id,) = await self.push_many([job])
        return task_id

    async def push_many(self, jobs: Iterable[Job]) -> list[TaskId]:
        """Store several tasks at once, all or nothing; ids in the order of ``jobs``."""
        with traced_send(list(jobs)) as traced:  # PRODUCER span + traceparent header
            encoded = [(job, self._encode(job)) for job in traced]  # validate all first
            return await self._store(encoded)

    async def ack_many(
        self, acks: Sequence[tuple[TaskId, int, bytes | None]]
    ) -> list[LeaseLost | None]:
        """Ack several tasks; one outcome per ack (``None``, or the ``LeaseLost`` that
        refused it). This default acks them one after another; a backend with round trips
        to save overrides it with one statement or script call.

        Example::

            outcomes = await backend.ack_many([(task_id, token, None)])
            assert outcomes == [None]
        """
        outcomes: list[LeaseLost | None] = []
        for task_id, token, result in acks:
            try:
                await self.ack(task_id, token, result=result)
            except LeaseLost as exc:
                outcomes.append(exc)
            else:
                outcomes.append(None)
        return outcomes

    async def ack(self, task_id: TaskId, token: int, *, result: bytes | None = None) -> None:
        raise NotImplementedError

    def _encode(self, job: Job) -> bytes:
        payload = self.codec.encode(job.args)
        if len(payload) > self.max_payload_bytes:
            raise PayloadTooLarge(
                f"payload of {len(payload)} bytes exceeds max_payload_bytes="
                f"{self.max_payload_bytes}; store large data elsewhere and pass a reference, "
                "or raise the limit"
            )
        return payload

    async def _store(self, encoded: Sequence[tuple[Job, bytes]]) -> list[TaskId]:
        """Write the encoded jobs in one transaction or round trip; return their ids."""
        raise NotImplementedError


def check_options(
    *,
    default_max_attempts: int,
    max_payload_bytes: int,
    aging: float,
    max_lost: int,
    result_ttl: float | None,
    done_ttl: float | None = None,
) -> None:
    """Validate the options every backend shares; raise ValueError naming the fix."""
    if default_max_attempts < 1:
        raise ValueError(f"default_max_attempts must be >= 1, got {default_max_attempts}")
    if max_payload_bytes < 1:
        raise ValueError(f"max_payload_bytes must be >= 1, got {max_payload_bytes}")
    if aging <= 0:
        raise ValueError(f"aging must be > 0 seconds per priority level, got {aging}")
    if max_lost < 1:
        raise ValueError(f"max_lost must be >= 1 expired lease, got {max_lost}")
    if result_ttl is not None and result_ttl < 0:
        raise ValueError(f"result_ttl must be >= 0 seconds or None (forever), got {result_ttl}")
    if done_ttl is not None and not done_ttl > 0:
        raise ValueError(f"done_ttl must be > 0 seconds or None (forever), got {done_ttl}")
