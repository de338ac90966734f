"""Helpers for testing code built on turret (mock service, assertions, drivers).

Example::

    from turret.testing import MockService, assert_not_ready, call_once

    mock = MockService(lambda task: task.args * 2)
    assert await call_once(TimeoutLayer(1).layer(mock), 21) == 42
"""

from ._helpers import assert_not_ready as assert_not_ready
from ._helpers import assert_ready as assert_ready
from ._helpers import call_once as call_once
from ._helpers import make_task as make_task
from ._mock import MockService as MockService
from ._mock import MockStatistics as MockStatistics
