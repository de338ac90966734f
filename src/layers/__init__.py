"""turret's layer library: one module per middleware, re-exported here.

Example::

    from turret.layers import ConcurrencyLimitLayer
"""

from ._concurrency import ConcurrencyLimit as ConcurrencyLimit
from ._concurrency import ConcurrencyLimitLayer as ConcurrencyLimitLayer
from ._concurrency import ConcurrencyLimitStatistics as ConcurrencyLimitStatistics
