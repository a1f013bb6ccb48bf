"""pytest fixture for users' own DAG tests: ``profiles_emulator("localytics", **config)`` -> running server.

Registered through the ``pytest11`` entry point, so it is available wherever the provider is installed.
It loads in every pytest session there, so it imports nothing heavy: the emulators (uvicorn, starlette)
are imported when a test first asks for the fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from airflow_provider_profiles.testing.base import EmulatorServer


@pytest.fixture
def profiles_emulator():
    """Factory: start an emulator on a free 127.0.0.1 port; all are stopped when the test ends."""
    from airflow_provider_profiles.testing import create, serve

    servers: list[EmulatorServer] = []

    def start(vendor: str, **config) -> EmulatorServer:
        server = serve(create(vendor, **config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
