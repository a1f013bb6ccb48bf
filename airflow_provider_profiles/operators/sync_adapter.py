"""What a declared sync (``sync_group.ProfilesSync``) asks of a vendor: a ``SyncAdapter`` reads the
declaration's destination options and mode into a ``SyncPlan`` (the writer and its options) and builds
the vendor's upload task(s). Each vendor's adapter lives in its operator module and is named in
``vendors.py``, so the sync group itself names no vendor.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass
class SyncPlan:
    """A vendor's reading of a declaration: how to prepare, and how to upload."""

    writer_format: str | None
    writer_options: dict[str, Any]
    mapping: dict[str, Any] | None
    files: bool = True  # uploads files (split, then one mapped upload per chunk)
    deletions: bool = False


class SyncAdapter:
    """Turns a declaration into one vendor's tasks. ``options``: the Destination options it takes,
    with their defaults (``REQUIRED``: no default); ``modes``: the modes it can express."""

    options: dict[str, Any] = {}
    modes: dict[str, str] = {}  # mode -> why it is refused, "" when it is served
    format_option = "destination"  # the option that names the vendor format, for errors

    def plan(self, options: dict[str, Any], mapping: dict[str, Any], mode: str) -> SyncPlan:
        raise NotImplementedError

    def upload(self, group_id: str, options: dict[str, Any], conn_id: str | None, plan: SyncPlan, mode: str,
               files: Any, extra: dict[str, Any]) -> Any:
        """The upload task(s); returns the operator whose output is the upload result(s)."""
        raise NotImplementedError


REQUIRED = object()


def conn_kwargs(conn_id: str | None) -> dict[str, Any]:
    return {"conn_id": conn_id} if conn_id else {}


def source_column(target: str, spec: Any) -> str:
    return spec if isinstance(spec, str) else spec.get("source") if isinstance(spec, Mapping) else None
