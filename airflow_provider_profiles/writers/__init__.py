"""Vendor file formats: pick a writer by vendor and format name.

    writer = get_writer("localytics", "changes", attributes={"plan": "plan"})
    writer = get_writer("apsis_one", columns=[...], keyspace_field="email")
    writer = get_writer("mediarithmics", "USER_PROFILE")

Vendor modules are imported only when asked for, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

from airflow_provider_profiles.prepare.writer import (
    FormatWriter,
    RejectsFile,
    RowRejected,
    csv_line,
)

# vendor -> {format name: "module:callable"}; the first format is the vendor's default.
WRITERS: dict[str, dict[str, str]] = {
    "gainsight_px": {"records": "gainsight_px:GainsightPXRecordFormat"},
    "apsis_one": {"csv": "apsis_one:ApsisOneCsvWriter"},
    "localytics": {
        "changes": "localytics:ProfileChangesWriter",
        "audience": "localytics:AudienceLinesWriter",
    },
    "mediarithmics": {
        "USER_PROFILE": "mediarithmics:UserProfileWriter",
        "USER_SEGMENT": "mediarithmics:UserSegmentWriter",
        "USER_ACTIVITY": "mediarithmics:UserActivityWriter",
        "USER_CHOICE": "mediarithmics:UserChoiceWriter",
        "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS": "mediarithmics:UserIdentifiersAssociationWriter",
        "USER_IDENTIFIERS_DELETION": "mediarithmics:UserIdentifiersDeletionWriter",
        "USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS": "mediarithmics:UserIdentifiersDissociationWriter",
        "USER_POINTS_DELETION": "mediarithmics:UserPointsDeletionWriter",
    },
}

# Largest file each vendor takes in one upload; Localytics allows 10 uploads an hour, so its files
# are split only when asked.
DEFAULT_MAX_BYTES: dict[str, int | None] = {
    "mediarithmics": 100 * 1000 * 1000,
    "apsis_one": 50 * 1000 * 1000,
    "localytics": None,
    "gainsight_px": None,
}


def writer_class(vendor: str, format: str | None = None) -> type[FormatWriter]:
    try:
        formats = WRITERS[vendor]
    except KeyError:
        raise ValueError(f"unknown vendor {vendor!r}; choose from {', '.join(WRITERS)}") from None
    format = format or next(iter(formats))
    if format not in formats:
        raise ValueError(f"{vendor} has no format {format!r}; choose from {', '.join(formats)}")
    module_name, name = formats[format].split(":")
    module = importlib.import_module(f"{__name__}.{module_name}")
    return getattr(module, name)


def get_writer(vendor: str, format: str | None = None, **options: Any) -> FormatWriter:
    """A configured writer for ``vendor`` (and ``format``, else the vendor's default one)."""
    return writer_class(vendor, format)(**options)


__all__ = [
    "DEFAULT_MAX_BYTES",
    "FormatWriter",
    "RejectsFile",
    "RowRejected",
    "WRITERS",
    "csv_line",
    "get_writer",
    "writer_class",
]
