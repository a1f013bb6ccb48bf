"""Vendor file formats: pick a writer by vendor and format name (``VendorSpec.writers`` in vendors.py).

    writer = get_writer("localytics", "changes", attributes={"plan": "plan"})
    writer = get_writer("apsis_one", columns=[...], keyspace_field="email")
    writer = get_writer("mediarithmics", "USER_PROFILE")

Vendor modules are imported only when asked for, so importing this package stays cheap.
"""

from __future__ import annotations

from typing import Any

from airflow_provider_profiles.prepare.writer import (
    FormatWriter,
    RejectsFile,
    RowRejected,
    csv_line,
)
from airflow_provider_profiles.vendors import load, vendor


def writer_class(vendor_key: str, format: str | None = None) -> type[FormatWriter]:
    """The writer class of ``vendor_key``'s ``format`` (else of its default format)."""
    return load(vendor(vendor_key).writer_path(format))


def get_writer(vendor_key: str, format: str | None = None, **options: Any) -> FormatWriter:
    """A configured writer for ``vendor_key`` (and ``format``, else the vendor's default one)."""
    return writer_class(vendor_key, format)(**options)


def upload_limit(vendor_key: str | None) -> int | None:
    """The largest file ``vendor_key`` takes in one upload (the split step's default), None: no limit."""
    return vendor(vendor_key).upload_limit if vendor_key else None


__all__ = [
    "FormatWriter",
    "RejectsFile",
    "RowRejected",
    "csv_line",
    "get_writer",
    "upload_limit",
    "writer_class",
]
