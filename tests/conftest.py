"""Shared test settings. Package fixtures live in tests/<package>/conftest.py."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default",
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "ci",
    parent=settings.get_profile("default"),
    max_examples=100,
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "default")
