"""turret's core: the service/layer algebra, tasks, the worker and its contracts.

Everything public here is re-exported from :mod:`turret`.
"""
