"""Value rules shared by the mapping, the writers and the duplicate check.

A value is decoded (bytes -> UTF-8 text), canonicalised (identifiers) and validated (dates, finite
numbers, JSON) here, once, so that the value checked is the value sent and every vendor reads
``20240115`` or ``1700000000`` the same way. Each rule raises ``ValueError`` with a reason a
person can act on; callers turn it into a rejected row naming field and column.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_profiles.prepare.writer import RowRejected

TRUE_WORDS = frozenset({"true", "t", "yes", "y", "1"})
FALSE_WORDS = frozenset({"false", "f", "no", "n", "0"})
BYTES = (bytes, bytearray, memoryview)
_BYTES_TYPES = frozenset(BYTES)

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
_MIN_MS = int((dt.datetime(1, 1, 1, tzinfo=dt.timezone.utc) - _EPOCH).total_seconds()) * 1000
_MAX_MS = int((dt.datetime(9999, 12, 31, 23, 59, 59, tzinfo=dt.timezone.utc) - _EPOCH).total_seconds()) * 1000 + 999
# Without a unit, an epoch number under 1e11 is not read as milliseconds: as milliseconds it is
# a moment of 1970-1973, as seconds one of 1973-5138; the caller must say which (unit).
_SMALLEST_UNGUESSED_MS = 10**11
_INTEGER = re.compile(r"[+-]?\d+")
_COMPACT_DATE = re.compile(r"(\d{4})(\d{2})(\d{2})")


def is_missing(value: Any) -> bool:
    """A value that is not sent: None, a blank string, an empty list, NaN, or pandas' NA/NaT."""
    if value is None:
        return True
    kind = type(value)
    if kind is str:
        return not value.strip()
    if kind is int or kind is bool:  # the common cases first: this runs for every value
        return False
    if kind is float:
        return value != value
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, tuple, set, frozenset)):
        return not value
    if type(value).__name__ in ("NAType", "NaTType"):  # pandas' missing values, without importing pandas
        return True
    try:  # NaN: the value unequal to itself
        return bool(value != value)
    except (TypeError, ValueError):
        return False


def set_path(record: dict, path: str | tuple[str, ...], value: Any) -> None:
    """Set ``value`` at a dotted path (``"location.city"`` or its parts), creating the parents."""
    parts = path.split(".") if isinstance(path, str) else path
    for part in parts[:-1]:
        record = record.setdefault(part, {})
    record[parts[-1]] = value


def decode(value: Any) -> Any:
    """Bytes (Parquet binary columns, database BLOBs) as UTF-8 text; anything else unchanged."""
    if isinstance(value, BYTES):
        try:
            return bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ValueError(f"binary value is not valid UTF-8 text ({error.reason} at byte {error.start})") from None
    return value


def decode_row(row: Mapping[str, Any]) -> Mapping[str, Any]:
    """The row with its binary values decoded; ``RowRejected`` naming the column otherwise."""
    if _BYTES_TYPES.isdisjoint(map(type, row.values())):  # runs for every row: kept cheap
        return row
    decoded = dict(row)
    for column, value in row.items():
        if isinstance(value, BYTES):
            try:
                decoded[column] = decode(value)
            except ValueError as error:
                raise RowRejected(str(error), column) from None
    return decoded


def to_text(value: Any) -> str:
    """A value as the text a vendor receives: booleans lower case, whole floats without ``.0``."""
    if isinstance(value, str):
        return value
    if isinstance(value, BYTES):
        return decode(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {value!r}")
        if value.is_integer():
            return str(int(value))
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if isinstance(value, (dict, list)):
        return json_text(value)
    return str(value)


def canonical_id(value: Any) -> str | None:
    """The identifier as sent and as checked for duplicates: text, trimmed; ``1`` and ``1.0`` alike."""
    if type(value) is str:
        return value.strip() or None
    if is_missing(value):
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, numbers.Integral)):
        number = float(value)
        if math.isfinite(number) and number.is_integer():
            value = int(number) if isinstance(value, float) else int(value)
    elif isinstance(value, decimal.Decimal) and value.is_finite() and value == value.to_integral_value():
        value = int(value)
    try:
        text = to_text(value).strip()
    except ValueError:
        return None
    return text or None


def to_bool(value: Any) -> bool:
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Number) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError(f"expected true/false, yes/no or 1/0, got {value!r}")


def to_int(value: Any) -> int:
    """An integer from a number or its text; whole floats (4.0) pass, fractions and NaN do not."""
    if isinstance(value, bool):
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    number = float(value.strip()) if isinstance(value, str) else float(value)
    if not math.isfinite(number) or not number.is_integer():
        raise ValueError(f"expected an integer, got {value!r}")
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return int(value.strip())  # exact for big ids, where float() would round
    return int(number)


def to_number(value: Any) -> int | float:
    """A finite number: integers stay integers, anything else (text included) is a float."""
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, int):
        return value
    number = float(value.strip()) if isinstance(value, str) else float(value)
    if not math.isfinite(number):
        raise ValueError(f"expected a finite number, got {value!r}")
    return number


def checked_integer(value: int, bits: int = 64) -> int:
    """``value`` if a signed integer of ``bits`` holds it (what a JSON consumer can store)."""
    if not -(2 ** (bits - 1)) <= value < 2 ** (bits - 1):
        raise ValueError(f"{value} is out of range for a {bits}-bit integer")
    return value


# --- dates --------------------------------------------------------------------------------------


class EpochMillis(int):
    """Milliseconds since the epoch already checked here: a writer sends it without guessing again."""


def to_datetime(value: Any, unit: str | None = None, format: str | None = None) -> dt.datetime:
    """A timezone-aware UTC datetime; naive input is UTC, never the worker's zone.

    Text: ``format`` (strptime) if given, else ISO 8601, the compact ``YYYYMMDD`` or an epoch
    number. Epoch numbers are in ``unit`` (``"s"`` or ``"ms"``); without one, milliseconds under
    1e11 are refused as ambiguous (see ``_SMALLEST_UNGUESSED_MS``).
    """
    if isinstance(value, str):
        moment = _parse_text(value.strip(), unit, format)
        if moment is None:  # an epoch number
            return from_epoch(int(value), unit)
    elif isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    elif isinstance(value, bool):
        raise ValueError(f"expected a date, got {value!r}")
    elif isinstance(value, numbers.Real):
        if isinstance(value, numbers.Integral) and unit is None and _COMPACT_DATE.fullmatch(str(int(value))):
            return to_datetime(str(int(value)), unit, format)
        return from_epoch(value, unit)
    else:
        return to_datetime(str(decode(value)), unit, format)
    if moment.tzinfo is None:
        return moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc)


def _parse_text(text: str, unit: str | None, format: str | None) -> dt.datetime | None:
    """A moment from date text; None for an epoch number (digits, not a YYYYMMDD date)."""
    if format:
        try:
            return dt.datetime.strptime(text, format)
        except ValueError:
            raise ValueError(f"{text!r} does not match the date format {format!r}") from None
    if not _INTEGER.fullmatch(text):
        try:
            return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"{text!r} is not an ISO 8601 date (YYYY-MM-DD[THH:MM:SS]) nor YYYYMMDD") from None
    compact = _COMPACT_DATE.fullmatch(text) if unit is None else None
    if compact is None:
        return None
    try:
        return dt.datetime(*map(int, compact.groups()))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYYMMDD) nor plausible epoch milliseconds") from None


def from_epoch(number: float | int, unit: str | None) -> dt.datetime:
    """The moment ``number`` seconds (``unit="s"``) or milliseconds after the epoch, range checked."""
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"expected a timestamp, got {number!r}")
    millis = number * 1000 if unit == "s" else number
    if unit is None and abs(millis) < _SMALLEST_UNGUESSED_MS:
        as_ms, as_s = _describe_moment(millis), _describe_moment(millis * 1000)
        kind = "looks like seconds since the epoch" if abs(millis) >= 10**8 else "is too small for epoch milliseconds"
        raise ValueError(
            f"{number} {kind} (as milliseconds {as_ms}, as seconds {as_s}); "
            "set unit 's' or 'ms' on the mapping field, or give an ISO 8601 date"
        )
    if not _MIN_MS <= millis <= _MAX_MS:
        raise ValueError(f"{number} is out of range for a date in {unit or 'ms'} since the epoch (years 1-9999)")
    return _EPOCH + dt.timedelta(milliseconds=millis)


def _describe_moment(millis: float) -> str:
    if not _MIN_MS <= millis <= _MAX_MS:
        return "out of range"
    return (_EPOCH + dt.timedelta(milliseconds=millis)).isoformat(timespec="seconds").replace("+00:00", "Z")


def epoch_millis(value: Any, unit: str | None = None) -> EpochMillis:
    """Milliseconds since the epoch of a date, datetime, ISO / YYYYMMDD text or epoch number."""
    if isinstance(value, EpochMillis):
        return value
    moment = to_datetime(value, unit)
    return EpochMillis((moment - _EPOCH) // dt.timedelta(milliseconds=1))


# --- JSON ---------------------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json(text: str) -> Any:
    """JSON text to a value; NaN and Infinity, which Python accepts, are refused."""
    return json.loads(text, parse_constant=_no_constant)


def json_text(value: Any, default: Any = None) -> str:
    """Compact JSON; ``ValueError`` naming the path of a NaN or infinite number (not JSON)."""
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=default)
    except ValueError:
        path = _non_finite_path(value)
        if path is None:
            raise
        raise ValueError(f"{path or 'value'}: not a finite number (JSON has no NaN or Infinity)") from None


def json_line(record: Mapping[str, Any], default: Any = None) -> str:
    """One NDJSON record; ``RowRejected`` naming the field of a NaN or infinite number."""
    try:
        return json_text(record, default) + "\n"
    except ValueError as error:
        raise RowRejected(str(error)) from None


def _non_finite_path(value: Any, path: str = "") -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return path
    children = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, child in children:
        found = _non_finite_path(child, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None
