"""Localytics import lines: profile change lines and audience lines (JSON lines, one record each).

Profile change line (Profile Imports)::

    {"customer_id": "abc", "changes": [{"op": "assign", "attr": "plan", "value": "gold"}, ...]}

ops: ``assign`` (a value), ``set-add`` / ``set-remove`` (a list of values), ``increment`` (an
integer), ``delete`` (no value). Values are strings of at most 255 characters, integers, or dates
sent as ``YYYY-MM-DD``; anything else is rejected with the column named, before upload.

Audience line (Audience Imports): ``{"customer_id": "abc"}``; a customer id seen before in the same
file is rejected as a duplicate, so every input row is accounted for.
"""

from __future__ import annotations

import datetime as dt
import decimal
import numbers
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from airflow_provider_profiles.prepare.writer import FormatWriter, Representation, RowRejected
from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.prepare.values import checked_integer, is_missing, json_line, to_bool

OPS = ("assign", "set-add", "set-remove", "increment", "delete")
EMPTY_CHOICES = ("skip", "delete")
MAX_STRING = 255
# Profile values are strings (up to 255 characters) or integers, dates YYYY-MM-DD
# (help.uplandsoftware.com/localytics/dev/profile-api.html): datetimes keep their date, booleans go as text
REPRESENTATION = Representation(date="iso_date", datetime="iso_date", boolean="string")


@dataclass(frozen=True)
class AttributeChange:
    """How one input column becomes one change: the attribute, the op, and what an empty cell means.

    ``kind="date"`` parses strings (ISO 8601) as dates; ``list_separator`` splits a string cell
    into the list a ``set-add`` / ``set-remove`` needs (e.g. ``"a|b"`` with ``"|"``).
    ``empty`` is ``"skip"`` (no change) or ``"delete"`` (remove the attribute); ``None`` inherits
    the writer's choice. A ``delete`` column is a flag: a true cell deletes the attribute.
    """

    attr: str
    op: str = "assign"
    empty: str | None = None
    kind: str | None = None
    list_separator: str | None = None

    def __post_init__(self):
        if not isinstance(self.attr, str) or not self.attr.strip():
            raise ValueError("attribute name must be a non-empty string")
        if self.op not in OPS:
            raise ValueError(f"attribute {self.attr!r}: unknown op {self.op!r}; use one of {', '.join(OPS)}")
        if self.empty not in (None, *EMPTY_CHOICES):
            raise ValueError(f"attribute {self.attr!r}: empty must be 'skip' or 'delete', got {self.empty!r}")
        if self.kind not in (None, "date"):
            raise ValueError(f"attribute {self.attr!r}: kind must be None or 'date', got {self.kind!r}")

    @classmethod
    def parse(cls, column: str, spec: str | Mapping[str, Any] | tuple | AttributeChange) -> AttributeChange:
        """Accept ``"attr"``, ``("attr", "op")``, ``{"attr": ..., "op": ...}`` or an ``AttributeChange``."""
        if isinstance(spec, AttributeChange):
            return spec
        try:
            if isinstance(spec, str):
                return cls(attr=spec)
            if isinstance(spec, tuple):
                return cls(*spec)
            if isinstance(spec, Mapping):
                return cls(**{"attr": column, **spec})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"column {column!r}: {exc}") from None
        raise ValueError(f"column {column!r}: expected an attribute name, (attr, op) or a dict, got {spec!r}")


# change operations whose repeats for one customer add up instead of conflicting
ACCUMULATING_OPS = frozenset({"increment", "set-add", "set-remove"})


class ProfileChangesWriter(FormatWriter):
    """Rows -> Localytics profile change lines, one line per customer.

    ``attributes`` maps input columns to attributes, e.g.
    ``{"plan": "plan", "tags": ("tags", "set-add"), "logins": {"attr": "login_count", "op": "increment"}}``.
    """

    extension = "ndjson"
    content_type = "application/x-ndjson"
    representation = REPRESENTATION

    def __init__(
        self,
        attributes: Mapping[str, str | Mapping[str, Any] | tuple | AttributeChange],
        *,
        customer_id: str = "customer_id",
        empty: str = "skip",
    ):
        if empty not in EMPTY_CHOICES:
            raise ValueError(f"empty must be 'skip' or 'delete', got {empty!r}")
        if not attributes:
            raise ValueError("attributes must map at least one column to a Localytics attribute")
        self.identifier_field = customer_id
        self.empty = empty
        self.attributes = {column: AttributeChange.parse(column, spec) for column, spec in attributes.items()}

    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise ``ValueError`` naming the mapped columns the input lacks (call before writing)."""
        present = set(columns)
        missing = [c for c in (self.identifier_field, *self.attributes) if c not in present]
        if missing:
            raise ValueError(f"input has no column(s) {', '.join(map(repr, missing))}; it has {sorted(present)}")

    def encode(self, row: Mapping[str, Any]) -> str:
        customer_id = customer_id_of(row, self.identifier_field)
        changes = []
        for column, spec in self.attributes.items():
            if column not in row:
                raise RowRejected("column missing from the row", column)
            change = self._change(column, spec, row[column])
            if change is not None:
                changes.append(change)
        if not changes:
            raise RowRejected("no attribute to change: every mapped value is empty")
        return _json_line({"customer_id": customer_id, "changes": changes})

    def line_sql(self, columns) -> tuple[str, str] | None:
        plain = all(spec.op == "assign" and spec.kind is None and (spec.empty or self.empty) == "skip"
                    for spec in self.attributes.values())
        if not plain or any(columns.kind(name) not in sql.TEXT_OR_INTEGER for name in (self.identifier_field, *self.attributes)):
            return None
        customer = columns(self.identifier_field)
        customer_text = sql.stripped_text(customer)
        changes, checks = [], []
        for column, spec in self.attributes.items():
            value = columns(column)
            changes.append(f"""CASE WHEN {value} IS NOT NULL THEN concat('{{"op":"assign","attr":', to_json({sql.literal(spec.attr)}),
                               ',"value":', {sql.json_value(value, columns.kind(column))}, '}}') END""")
            if columns.kind(column) == "VARCHAR":
                checks.append(f"""WHEN length({value}) > {MAX_STRING} THEN {sql.literal(column + ': string of ')} || length({value})
                                  || ' characters; Localytics accepts at most {MAX_STRING}'""")
            elif columns.kind(column) in ("HUGEINT", "UBIGINT"):
                checks.append(f"""WHEN NOT {value} BETWEEN -9223372036854775808 AND 9223372036854775807
                                  THEN {sql.literal(column + ': ')} || CAST({value} AS VARCHAR) || ' is out of range for a 64-bit integer'""")
        name = sql.literal(self.identifier_field + ": ")
        reason = f"""CASE WHEN {customer} IS NULL THEN {name} || 'customer id is empty'
                          WHEN length({customer_text}) > {MAX_STRING} THEN {name} || 'customer id is ' || length({customer_text})
                               || ' characters; at most {MAX_STRING} allowed'
                          {' '.join(checks)}
                          WHEN {' AND '.join(f'{columns(c)} IS NULL' for c in self.attributes)}
                          THEN 'no attribute to change: every mapped value is empty' END"""
        line = f"""concat('{{"customer_id":', to_json({customer_text}), ',"changes":[', concat_ws(',', {', '.join(changes)}), ']}}', chr(10))"""
        return line, reason

    def default_duplicates(self, syncing: bool = False) -> str:
        # increments and set changes of one customer add up (two purchases on one day): kept; an
        # incremental sync compares one row per customer, so it checks them (and refuses them)
        if not syncing and any(spec.op in ACCUMULATING_OPS for spec in self.attributes.values()):
            return "keep"
        return "reject"

    def sync_refusal(self) -> str | None:
        # an increment or a set change of the same value on two days is two changes: a sync would
        # take the second as unchanged and lose it
        columns = [column for column, spec in self.attributes.items() if spec.op in ACCUMULATING_OPS]
        if not columns:
            return None
        return (f"only_changed=True cannot send column(s) {columns}: their changes ({', '.join(sorted(ACCUMULATING_OPS))}) "
                "add up at the vendor, and a sync would skip a repeat of yesterday's value as unchanged. "
                "Prepare them in a task without only_changed.")

    def _change(self, column: str, spec: AttributeChange, value: Any) -> dict[str, Any] | None:
        if spec.op == "delete":
            return {"op": "delete", "attr": spec.attr} if _flag(value, column) else None
        if spec.op in ("set-add", "set-remove"):
            value = _members(value, spec, column)
        elif spec.op == "increment":
            value = None if is_missing(value) else _integer(value, column)
        elif not is_missing(value):
            value = _scalar(value, spec, column)
        if is_missing(value):
            if (spec.empty or self.empty) == "delete":
                return {"op": "delete", "attr": spec.attr}
            return None
        return {"op": spec.op, "attr": spec.attr, "value": value}


class AudienceLinesWriter(FormatWriter):
    """Rows -> ``{"customer_id": ...}`` lines; a repeated customer id is rejected as a duplicate."""

    extension = "ndjson"
    content_type = "application/x-ndjson"
    representation = REPRESENTATION

    def __init__(self, *, customer_id: str = "customer_id"):
        self.identifier_field = customer_id
        self._seen: set[str] = set()

    def check_columns(self, columns: Iterable[str]) -> None:
        if self.identifier_field not in set(columns):
            raise ValueError(f"input has no column {self.identifier_field!r}")

    def encode(self, row: Mapping[str, Any]) -> str:
        customer_id = customer_id_of(row, self.identifier_field)
        if customer_id in self._seen:
            raise RowRejected("duplicate customer id; already in this audience file", self.identifier_field)
        self._seen.add(customer_id)
        return _json_line({"customer_id": customer_id})

    @property
    def distinct(self) -> int:
        return len(self._seen)


# --- value rules ----------------------------------------------------------------------------------


def customer_id_of(row: Mapping[str, Any], column: str) -> str:
    value = row.get(column)
    if is_missing(value):
        raise RowRejected("customer id is empty", column)
    if isinstance(value, bool):
        raise RowRejected("customer id must be a string or an integer", column)
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        if not float(value).is_integer():
            raise RowRejected(f"customer id {value!r} is not an integer", column)
        value = int(value)  # pandas reads an int column holding blanks as float
    text = str(value).strip()
    if len(text) > MAX_STRING:
        raise RowRejected(f"customer id is {len(text)} characters; at most {MAX_STRING} allowed", column)
    return text


def _scalar(value: Any, spec: AttributeChange, column: str) -> str | int:
    """A value Localytics accepts: a string of at most 255 characters, an integer, or a date string."""
    if spec.kind == "date" and isinstance(value, str):
        value = _parse_date(value, column)
    if isinstance(value, dt.datetime):  # also pandas.Timestamp
        if value.tzinfo is not None:
            value = value.astimezone(dt.timezone.utc)
        return value.date().isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    if type(value).__name__ == "datetime64":  # numpy
        return str(value)[:10]
    if isinstance(value, bool):
        raise RowRejected("booleans are not a Localytics value type; map them to a string or 0/1", column)
    if isinstance(value, (numbers.Real, decimal.Decimal)):
        if not isinstance(value, numbers.Integral) and not float(value).is_integer():
            raise RowRejected(f"{value!r} is not an integer; Localytics takes strings or integers", column)
        return _in_range(int(value), column)
    if isinstance(value, str):
        if len(value) > MAX_STRING:
            raise RowRejected(f"string of {len(value)} characters; Localytics accepts at most {MAX_STRING}", column)
        return value
    raise RowRejected(f"unsupported value type {type(value).__name__}", column)


def _parse_date(text: str, column: str) -> dt.date | dt.datetime:
    try:
        return dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise RowRejected(f"{text!r} is not an ISO date (YYYY-MM-DD)", column) from None


def _members(value: Any, spec: AttributeChange, column: str) -> list[str | int] | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        items: Iterable[Any] = value.split(spec.list_separator) if spec.list_separator else [value]
    elif isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "ndarray":
        items = list(value)
    else:
        items = [value]
    members: list[str | int] = []
    for item in items:
        if isinstance(item, str):
            item = item.strip()
        if is_missing(item):
            continue
        member = _scalar(item, spec, column)
        if member not in members:
            members.append(member)
    return members or None


def _integer(value: Any, column: str) -> int:
    if isinstance(value, bool):
        raise RowRejected("increment needs an integer, got a boolean", column)
    try:
        number = decimal.Decimal(value.strip() if isinstance(value, str) else str(value))
    except decimal.InvalidOperation:
        raise RowRejected(f"increment needs an integer, got {value!r}", column) from None
    if not number.is_finite() or number != number.to_integral_value():
        raise RowRejected(f"increment needs an integer, got {value!r}", column)
    return _in_range(int(number), column)


def _in_range(number: int, column: str) -> int:
    # 1e309 is a finite Decimal but a 310-digit integer: beyond any integer Localytics stores
    try:
        return checked_integer(number)
    except ValueError as error:
        raise RowRejected(str(error), column) from None


def _flag(value: Any, column: str) -> bool:
    if is_missing(value):
        return False
    try:
        return to_bool(value)
    except ValueError:
        raise RowRejected(f"delete column expects a true/false flag, got {value!r}", column) from None


_json_line = json_line


__all__ = ["AttributeChange", "AudienceLinesWriter", "ProfileChangesWriter", "customer_id_of"]
