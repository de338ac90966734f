"""Backends: where tasks live.

Example::

    from turret.backends import MemoryBackend
"""

from ._memory import MemoryBackend as MemoryBackend
from ._memory import MemoryStatistics as MemoryStatistics
from ._memory import StoredTask as StoredTask
