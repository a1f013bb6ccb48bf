"""pytest fixture for users' own DAG tests: ``profiles_emulator("localytics", **config)`` -> running server.

Registered through the ``pytest11`` entry point, so it is available wherever the provider is installed.
"""

from __future__ import annotations

import pytest

from airflow_provider_profiles.testing import EmulatorServer, create, serve


@pytest.fixture
def profiles_emulator():
    """Factory: start an emulator on a free 127.0.0.1 port; all are stopped when the test ends."""
    servers: list[EmulatorServer] = []

    def start(vendor: str, **config) -> EmulatorServer:
        server = serve(create(vendor, **config))
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()
