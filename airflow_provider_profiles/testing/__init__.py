"""Local, faithful fakes of each vendor API, served over real HTTP on 127.0.0.1.

    python -m airflow_provider_profiles.testing gainsight_px --port 8081

or, from Python / pytest::

    from airflow_provider_profiles.testing import create, serve
    with serve(create("mediarithmics")) as server:
        ...  # server.url, server.emulator.snapshot(), server.emulator.inject("status", status=429)
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from airflow_provider_profiles.vendors import VENDORS

if TYPE_CHECKING:
    from airflow_provider_profiles.testing.base import Clock, Emulator, EmulatorServer, Fault, serve

# The harness needs uvicorn and starlette: it is imported on first use, so that loading this package
# (the pytest plugin does, in every session of every project that installs the provider) costs nothing.
_HARNESS = ("Clock", "Emulator", "EmulatorServer", "Fault", "serve")


def __getattr__(name: str) -> Any:
    if name in _HARNESS:
        return getattr(import_module("airflow_provider_profiles.testing.base"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# vendor name -> "module:class"; imported lazily so one vendor's emulator never loads the others
EMULATORS: dict[str, str] = {key: spec.emulator for key, spec in VENDORS.items()}


def create(vendor: str, **config) -> Emulator:
    """A new emulator for ``vendor`` (see ``EMULATORS``) with vendor-specific ``config``."""
    try:
        module_name, class_name = EMULATORS[vendor].split(":")
    except KeyError:
        raise ValueError(f"unknown emulator {vendor!r}; choose from {', '.join(sorted(EMULATORS))}") from None
    return getattr(import_module(module_name), class_name)(**config)


__all__ = ["EMULATORS", "Clock", "Emulator", "EmulatorServer", "Fault", "create", "serve"]
