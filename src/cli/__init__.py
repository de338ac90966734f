"""The ``turret`` command (see ``turret --help``).

Example::

    $ turret worker myapp.tasks:monitor --log-level INFO
    $ python -m turret worker myapp.tasks:make_monitor
"""

from ._load import TargetError as TargetError
from ._load import load_target as load_target
from ._main import main as main
