"""turret: a trio-native, Tower-style toolkit for background task workers.

Example::

    import trio, turret
    from turret.backends import MemoryBackend

    async def main() -> None:
        backend = MemoryBackend()
        await backend.push(21)

        async def double(n: int) -> int:
            return 2 * n

        worker = turret.WorkerBuilder("math").backend(backend).build(double)
        await worker.run_until(trio.sleep(1))

    trio.run(main)
"""

from .core._backend import Backend as Backend
from .core._backend import Job as Job
from .core._backend import QueueStats as QueueStats
from .core._backend import Renewal as Renewal
from .core._backend import TaskInfo as TaskInfo
from .core._backend import TaskState as TaskState
from .core._backend import UnknownTask as UnknownTask
from .core._backend import wait_result as wait_result
from .core._backoff import Backoff as Backoff
from .core._backoff import ConstantBackoff as ConstantBackoff
from .core._backoff import ExponentialBackoff as ExponentialBackoff
from .core._backoff import Jitter as Jitter
from .core._backoff import LinearBackoff as LinearBackoff
from .core._codec import Codec as Codec
from .core._codec import JsonCodec as JsonCodec
from .core._context import WorkerContext as WorkerContext
from .core._context import WorkerState as WorkerState
from .core._context import WorkerStatistics as WorkerStatistics
from .core._context import current_worker as current_worker
from .core._errors import Abort as Abort
from .core._errors import InvalidPayload as InvalidPayload
from .core._errors import LeaseLost as LeaseLost
from .core._errors import PayloadTooLarge as PayloadTooLarge
from .core._errors import Retry as Retry
from .core._errors import TurretError as TurretError
from .core._events import Event as Event
from .core._events import Heartbeat as Heartbeat
from .core._events import LeaseRejected as LeaseRejected
from .core._events import TaskDeadLettered as TaskDeadLettered
from .core._events import TaskEngaged as TaskEngaged
from .core._events import TaskFailed as TaskFailed
from .core._events import TaskReleased as TaskReleased
from .core._events import TaskRetried as TaskRetried
from .core._events import TaskSucceeded as TaskSucceeded
from .core._events import WorkerIdle as WorkerIdle
from .core._events import WorkerPaused as WorkerPaused
from .core._events import WorkerResumed as WorkerResumed
from .core._events import WorkerStarted as WorkerStarted
from .core._events import WorkerStopped as WorkerStopped
from .core._events import WorkerStopping as WorkerStopping
from .core._handler import Data as Data
from .core._monitor import EventLoopLag as EventLoopLag
from .core._monitor import Monitor as Monitor
from .core._monitor import MonitorError as MonitorError
from .core._monitor import MonitorHandle as MonitorHandle
from .core._monitor import MonitorStatistics as MonitorStatistics
from .core._monitor import WorkerRestarting as WorkerRestarting
from .core._monitor import WorkerStalled as WorkerStalled
from .core._monitor import WorkerStatus as WorkerStatus
from .core._monitor import WorkerStatusChanged as WorkerStatusChanged
from .core._monitor import WorkerUnhealthy as WorkerUnhealthy
from .core._restart import RestartContext as RestartContext
from .core._restart import RestartPolicy as RestartPolicy
from .core._restart import RestartWithBackoff as RestartWithBackoff
from .core._restart import ShouldRestart as ShouldRestart
from .core._service import ALWAYS_READY as ALWAYS_READY
from .core._service import Layer as Layer
from .core._service import Next as Next
from .core._service import Service as Service
from .core._service import ServiceBuilder as ServiceBuilder
from .core._service import Stack as Stack
from .core._service import layer_fn as layer_fn
from .core._service import middleware as middleware
from .core._service import service_fn as service_fn
from .core._task import Lease as Lease
from .core._task import Task as Task
from .core._task import TaskContext as TaskContext
from .core._task import TaskId as TaskId
from .core._worker import Worker as Worker
from .core._worker import WorkerBuilder as WorkerBuilder

__version__ = "0.1.0"
