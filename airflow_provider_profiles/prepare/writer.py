"""The one writer interface every vendor format implements, and the rejects file they share.

A writer turns one mapped input row (a dict, nested by dotted paths already resolved) into one
vendor record: a line of NDJSON or CSV. A row it cannot encode raises ``RowRejected`` with a reason
a person can act on; the caller writes it to the rejects file and carries on, so that
rows read = written + rejected always holds.
"""

from __future__ import annotations

import abc
import csv
import io
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

REJECTS_HEADER = ("line", "identifier", "reason", "http_status")
# A cell starting with one of these is a formula to a spreadsheet (CSV injection, OWASP): the
# rejects file, which people open in one, gets such cells with a leading quote.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(cell: Any) -> Any:
    """A text cell that a spreadsheet shows as text, not a formula (for files people open only)."""
    if isinstance(cell, str) and cell.startswith(FORMULA_STARTS):
        return "'" + cell
    return cell


class RowRejected(ValueError):
    """A row that cannot be sent; ``reason`` says why (and names the field where there is one)."""

    def __init__(self, reason: str, field: str | None = None):
        self.reason = f"{field}: {reason}" if field else reason
        self.field = field
        super().__init__(self.reason)


DATE_FORMS = ("iso_date", "iso_datetime", "epoch_ms")
BOOLEAN_FORMS = ("bool", "string")


@dataclass(frozen=True)
class Representation:
    """How a format takes the mapping's generic types: ``date`` and ``datetime`` as ``iso_date``
    (``YYYY-MM-DD``), ``iso_datetime`` (ISO 8601 in UTC) or ``epoch_ms`` (epoch milliseconds), and
    ``boolean`` as a boolean (``bool``) or the text ``"true"`` / ``"false"`` (``string``)."""

    date: str = "iso_date"
    datetime: str = "iso_datetime"
    boolean: str = "bool"

    def __post_init__(self) -> None:
        for name, value, forms in (("date", self.date, DATE_FORMS), ("datetime", self.datetime, DATE_FORMS),
                                   ("boolean", self.boolean, BOOLEAN_FORMS)):
            if value not in forms:
                raise ValueError(f"Representation.{name} must be one of {', '.join(forms)}, not {value!r}")


class FormatWriter(abc.ABC):
    """Encodes rows for one vendor format. Subclasses set ``extension`` and implement ``encode``."""

    extension: ClassVar[str]  # "ndjson" or "csv": also the file suffix
    content_type: ClassVar[str] = "application/x-ndjson"
    identifier_field: ClassVar[str | None] = None  # the row key that identifies a record, for rejects
    # what the mapping's "date", "datetime" and "bool" types become for this format
    representation: ClassVar[Representation] = Representation()

    def header(self) -> str | None:
        """The first line of every file (CSV header, with its newline), or None."""
        return None

    @abc.abstractmethod
    def encode(self, row: Mapping[str, Any]) -> str:
        """One record, newline included. Raise ``RowRejected`` for a row that cannot be sent."""

    def identifier(self, row: Mapping[str, Any]) -> str | None:
        """The row's identifier as the duplicate check and the vendor see it (canonical text)."""
        return values.canonical_id(row.get(self.identifier_field)) if self.identifier_field else None

    # --- capabilities the prepare engine asks for (SQL is DuckDB's; ``columns`` is ``prepare.sql.Columns``)

    many_lines_per_id: ClassVar[bool] = False  # events, memberships: an id may rightly repeat

    def default_duplicates(self, syncing: bool = False) -> str:
        """``"reject"`` where a repeated identifier is a conflict, ``"keep"`` where it is normal."""
        return "keep" if self.many_lines_per_id else "reject"

    def key_sql(self, columns) -> str | None:
        """The identifier as SQL over the mapped columns (``identifier`` in SQL), or None when only
        ``identifier`` can say it (the engine then calls it row by row)."""
        if type(self).identifier is not FormatWriter.identifier or not self.identifier_field:
            return None
        from airflow_provider_profiles.prepare.sql import canonical_id

        return canonical_id(columns(self.identifier_field), columns.kind(self.identifier_field))

    def line_sql(self, columns) -> tuple[str, str] | None:
        """(line, reject reason) as SQL over the mapped columns, the same as ``encode``; None where
        only ``encode`` can write the line (the engine then calls it row by row). A third item, a
        condition, says for which rows the first two are exact (``encode`` takes the others); the
        reason is then computed for every row, so it must be safe on the others too."""
        return None

    # --- what an incremental sync asks of a writer

    # the mapped columns a deletion line needs (the sync snapshot keeps them); empty: cannot delete
    deletion_columns: ClassVar[tuple[str, ...]] = ()

    def deletion_row(self, values: Mapping[str, Any]) -> dict[str, Any] | None:
        """The row ``encode`` takes to mean "delete the record these ``deletion_columns`` values
        name" (for ids gone from a sync's input), or None where the format cannot say it."""
        return None

    def sync_refusal(self) -> str | None:
        """Why an incremental sync (which sends a row only when it differs from the last one sent)
        would lose data with this writer, or None when it can serve it."""
        return None


class RejectsFile:
    """CSV of rejected rows (line, identifier, reason, http_status), opened on first use only."""

    def __init__(self, path: Any):
        self.path = path  # ObjectStoragePath, pathlib.Path or anything with .open("w")
        self.count = 0
        self._handle = None
        self._writer = None

    def add(self, line: int | None, identifier: str | None, reason: str, http_status: int | None = None) -> None:
        if self._writer is None:
            self._handle = self.path.open("w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._handle)
            self._writer.writerow(REJECTS_HEADER)
        cells = (line, identifier or "", reason, http_status or "")
        self._writer.writerow([spreadsheet_safe(cell) for cell in cells])
        self.count += 1

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> RejectsFile:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def csv_line(values: list[Any]) -> str:
    """One CSV record with RFC 4180 quoting and a ``\\n`` terminator."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    return buffer.getvalue()


# values builds on this module (RowRejected): imported last, used at call time
from airflow_provider_profiles.prepare import values  # noqa: E402
