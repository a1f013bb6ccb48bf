"""Local, faithful fakes of each vendor API, served over real HTTP on 127.0.0.1.

    python -m airflow_provider_profiles.testing gainsight_px --port 8081

or, from Python / pytest::

    from airflow_provider_profiles.testing import create, serve
    with serve(create("mediarithmics")) as server:
        ...  # server.url, server.emulator.snapshot(), server.emulator.inject("status", status=429)
"""

from __future__ import annotations

from importlib import import_module

from airflow_provider_profiles.testing.base import (
    Clock,
    Emulator,
    EmulatorServer,
    Fault,
    serve,
)
from airflow_provider_profiles.vendors import VENDORS

# vendor name -> "module:class" (the vendors' from vendors.py); imported lazily so one vendor's
# emulator never loads the others
EMULATORS: dict[str, str] = {
    "echo": "airflow_provider_profiles.testing.echo:EchoEmulator",
    **{key: spec.emulator for key, spec in VENDORS.items()},
}


def create(vendor: str, **config) -> Emulator:
    """A new emulator for ``vendor`` (see ``EMULATORS``) with vendor-specific ``config``."""
    try:
        module_name, class_name = EMULATORS[vendor].split(":")
    except KeyError:
        raise ValueError(f"unknown emulator {vendor!r}; choose from {', '.join(sorted(EMULATORS))}") from None
    return getattr(import_module(module_name), class_name)(**config)


__all__ = ["EMULATORS", "Clock", "Emulator", "EmulatorServer", "Fault", "create", "serve"]
