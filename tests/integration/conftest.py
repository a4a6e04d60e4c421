"""Integration tests run real services (a local Orthanc); each skips with a reason when one is missing."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # Registered here too so `--strict-markers` accepts the marker before the root pyproject lists it.
    config.addinivalue_line("markers", "integration: needs a real local service (Orthanc); skipped when absent")
