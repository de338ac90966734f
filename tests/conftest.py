"""Shared fixtures. Tests run under pytest-trio (trio_mode = true in pyproject)."""
