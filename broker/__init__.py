"""cloudbroker's core: the resource model, the lifecycle, the service layer and the scheduler.

Nothing in this package imports a frontend, a backend or a policy; they find each other
through the small interfaces in :mod:`broker.protocols` and entry points declared in setup.py.
"""

__version__ = "0.1.0"
