"""Helpers for testing code built on turret (mock service, assertions, drivers)."""
