"""What the prepare tests read back: the rejects file and NDJSON output, and a Localytics writer."""

from __future__ import annotations

import csv
import json

from airflow_provider_profiles.writers import get_writer


def localytics(**options):
    options.setdefault("attributes", {"name": "name", "city": "city"})
    options.setdefault("customer_id", "id")
    return get_writer("localytics", "changes", **options)


def rejects_of(path):
    """(record or None, identifier, reason) per row of the rejects file."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [(int(r["record"]) if r["record"] else None, r["identifier"], r["reason"]) for r in csv.DictReader(handle)]


def ndjson(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def representation_of(vendor):
    """The date, datetime and boolean forms of ``vendor``'s default writer (None: the default forms)."""
    from airflow_provider_profiles.writers import writer_class

    return writer_class(vendor).representation if vendor else None
