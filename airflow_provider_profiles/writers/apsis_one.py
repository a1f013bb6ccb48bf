"""Apsis One import file: a UTF-8 CSV whose header names are the import spec's field selectors.

Values are written as Apsis One reads them: booleans ``true``/``false``, dates ``YYYY-MM-DD``,
timestamps ISO 8601 in UTC, missing values as empty cells (which only clear an attribute when the
import sets ``clear_existing_attributes``). A row without a valid keyspace value is rejected here,
because Apsis would only count it as failed without saying which one.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

from airflow_provider_profiles.prepare.writer import FormatWriter, Representation, RowRejected, csv_line
from airflow_provider_profiles.prepare.values import is_missing, to_text
from airflow_provider_profiles.prepare import sql

EMAIL_KEYSPACE = "com.apsis1.keyspaces.email"
MOBILE_KEYSPACE = "com.apsis1.keyspaces.mobile"
KEYSPACES = {"email": EMAIL_KEYSPACE, "mobile": MOBILE_KEYSPACE}  # short names users may write
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_MOBILE = re.compile(r"^\+?[0-9]{6,15}$")


def format_value(value: Any) -> str:
    """One cell as Apsis One expects it."""
    if isinstance(value, str):
        return value
    if is_missing(value):  # None, NaN, pandas' NA and NaT
        return ""
    if isinstance(value, bool):
        return to_text(value)
    if isinstance(value, float):
        if math.isinf(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc).replace(tzinfo=None)
        return value.isoformat(timespec="seconds") + "Z"
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


class ApsisOneCsvWriter(FormatWriter):
    """Rows (dicts keyed by column) -> Apsis One CSV lines, header from the mapped columns.

    ``columns`` are the CSV columns in order (the spec's field selectors); ``keyspace_field`` is the
    column holding the keyspace value, checked against ``keyspace`` (email and mobile formats).
    """

    extension: ClassVar[str] = "csv"
    content_type: ClassVar[str] = "text/csv"
    # "ISO 8601 referred to as date-time in RFC 3339, section 5.6 in the UTC variant"
    # (developer.apsis.com/reference/post_v2-audience-sections-section-discriminator-imports-1)
    representation: ClassVar[Representation] = Representation(date="iso_date", datetime="iso_datetime")

    def __init__(self, columns: Sequence[str], keyspace_field: str, keyspace: str | None = None):
        columns = list(columns)
        if not columns:
            raise ValueError("an Apsis One file needs at least the keyspace column")
        duplicates = sorted({c for c in columns if columns.count(c) > 1})
        if duplicates:
            raise ValueError(f"duplicate column(s) {', '.join(duplicates)}")
        if keyspace_field not in columns:
            raise ValueError(f"keyspace column {keyspace_field!r} is not among the columns {columns}")
        self.columns = columns
        self.keyspace_field = keyspace_field
        self.keyspace = KEYSPACES.get(keyspace, keyspace) if keyspace else None

    @property
    def identifier_field(self) -> str:  # type: ignore[override]
        return self.keyspace_field

    def header(self) -> str:
        return csv_line(self.columns)

    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise ``ValueError`` naming the file's columns the input lacks (call before writing)."""
        present = set(columns)
        missing = [column for column in self.columns if column not in present]
        if missing:
            raise ValueError(f"input has no column(s) {', '.join(map(repr, missing))}; it has {sorted(present)}")

    def line_sql(self, columns) -> tuple[str, str] | None:
        if any(columns.kind(name) not in sql.TEXT_OR_INTEGER | {"BOOLEAN"} for name in self.columns):
            return None

        def cell(name: str) -> str:
            value = columns(name)
            if columns.kind(name) == "BOOLEAN":
                return f"CASE WHEN {value} THEN 'true' WHEN NOT {value} THEN 'false' ELSE '' END"
            return f"coalesce(CAST({value} AS VARCHAR), '')"

        key = sql.strip(cell(self.keyspace_field))
        field = sql.literal(self.keyspace_field + ": ")
        shape = {EMAIL_KEYSPACE: (f"^[^@{sql.SPACE_CLASS}]+@[^@{sql.SPACE_CLASS}]+\\.[^@{sql.SPACE_CLASS}]+$", "not an email address: "),
                 MOBILE_KEYSPACE: ("^\\+?[0-9]{6,15}$", "not a mobile number (digits, optional leading +): ")}.get(self.keyspace)
        reason = f"CASE WHEN {key} = '' THEN {field} || 'missing keyspace value'"
        if shape:
            reason += f" WHEN NOT regexp_matches({key}, {sql.literal(shape[0])}) THEN {field} || {sql.literal(shape[1])} || {sql.python_repr(key)}"
        cells = [sql.csv_cell(key, quotable=True) if name == self.keyspace_field
                 else sql.csv_cell(cell(name), quotable=columns.kind(name) == "VARCHAR") for name in self.columns]
        return f"concat(concat_ws(',', {', '.join(cells)}), chr(10))", reason + " END"

    def encode(self, row: Mapping[str, Any]) -> str:
        key = format_value(row.get(self.keyspace_field)).strip()
        if not key:
            raise RowRejected("missing keyspace value", self.keyspace_field)
        if self.keyspace == EMAIL_KEYSPACE and not _EMAIL.match(key):
            raise RowRejected(f"not an email address: {key!r}", self.keyspace_field)
        if self.keyspace == MOBILE_KEYSPACE and not _MOBILE.match(key):
            raise RowRejected(f"not a mobile number (digits, optional leading +): {key!r}", self.keyspace_field)
        values = []
        for column in self.columns:
            try:
                values.append(key if column == self.keyspace_field else format_value(row.get(column)))
            except ValueError as error:
                raise RowRejected(str(error), column) from None
        return csv_line(values)
