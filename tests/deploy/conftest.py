"""Deploy checks need the helm binary that `make deploy-check` installs into .tools/."""

from __future__ import annotations

import pytest

from tests.deploy.chart import helm_binary


@pytest.fixture(autouse=True, scope="session")
def _helm_installed() -> None:
    try:
        helm_binary()
    except FileNotFoundError as exc:  # a failure, not a skip: CI must install it
        pytest.fail(str(exc), pytrace=False)
