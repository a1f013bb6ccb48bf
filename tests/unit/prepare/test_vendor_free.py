"""The prepare engine never names a vendor or a vendor writer: what differs by vendor is declared by the
writer (``FormatWriter.representation``...) and read from there."""

from __future__ import annotations

import re
from pathlib import Path

import airflow_provider_profiles.prepare as prepare
from airflow_provider_profiles.vendors import VENDORS


def forbidden_names() -> set[str]:
    """Each vendor's key, display name, connection-form name and every word of them of 5+ letters
    (``gainsight``, ``aptrinsic``, ``apsis``...), and the class name of each of its writers."""
    names: set[str] = set()
    for spec in VENDORS.values():
        labels = (spec.key, spec.display_name, spec.connection_form["hook-name"])
        names.update(label.lower() for label in labels)
        names.update(word.lower() for label in labels for word in re.findall(r"[A-Za-z]{5,}", label))
        names.update(path.rpartition(":")[2].lower() for path in spec.writers.values())
    return names


def test_the_forbidden_names_cover_the_vendors_and_their_writers():
    names = forbidden_names()
    assert {"gainsight", "aptrinsic", "apsis", "localytics", "mediarithmics"} <= names
    assert {"profilechangeswriter", "userprofilewriter", "gainsightpxrecordformat"} <= names


def test_no_vendor_or_vendor_writer_is_named_under_prepare():
    names = forbidden_names()
    files = sorted(Path(prepare.__file__).parent.rglob("*.py"))
    assert files
    found = [
        f"{path.name}:{number}: {name}"
        for path in files
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        for name in sorted(names)
        if name in line.lower()
    ]
    assert not found, "\n".join(found)
