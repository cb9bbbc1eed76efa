"""Fixtures of the scale-out tests: the reliability tests' tiny models and greedy reference."""

from __future__ import annotations

from tests.reliability.conftest import greedy, rel_logs, rel_models

__all__ = ["greedy", "rel_logs", "rel_models"]
