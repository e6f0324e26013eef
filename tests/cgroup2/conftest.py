"""Fixtures of the cgroup v2 tests: the sandbox suite's real-nsjail fixtures."""

from tests.sandbox.conftest import make_executor, open_session, tracker  # noqa: F401
