"""Fixtures for the integration tests."""

from .harness import harness  # noqa: F401  (re-exported fixture)
