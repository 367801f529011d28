"""Sample lines for the protocol tests: the project's own test data under `tests/data/`."""

from __future__ import annotations

import pytest

from tests.data import device_lines, family_lines


@pytest.fixture(scope="session")
def vendor_lines() -> list[str]:
    return device_lines()


@pytest.fixture(scope="session")
def traccar_lines() -> list[str]:
    return family_lines()
