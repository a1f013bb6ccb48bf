"""Field mapping: input row -> the row a vendor writer encodes.

A mapping is ``{target: spec}``. The target may be dotted (``user_profile.city``) to build nested
objects; the spec is an input column name (a rename), or a dict::

    {"source": "created_at", "type": "date"}          # coerced to the vendor's date form
    {"const": "crm"}                                   # the same value on every row
    {"source": "tags", "type": "list", "separator": "|"}
    {"source": "plan", "max_length": 64, "required": True, "choices": ["free", "pro"]}

A dotted ``source`` reads nested input (NDJSON objects, Parquet structs) when no column has that
exact name. Types: ``string``, ``int``, ``number``, ``bool``, ``date``, ``datetime``, ``list``,
``json``, and the explicit forms ``epoch_ms``, ``iso_date``, ``iso_datetime``. ``date``,
``datetime`` and ``bool`` become what the writer declares (``FormatWriter.representation``, given
to ``FieldMapping``): epoch milliseconds, ``YYYY-MM-DD`` or ISO 8601 in UTC; booleans or text.
Dates are read from ISO 8601, the compact ``YYYYMMDD``, ``format`` (strptime) or epoch numbers;
``"unit": "s"`` or ``"ms"`` says which epoch numbers are; without it they are milliseconds, and
those under 1e11 (1970-1973 as milliseconds, but usually seconds) are rejected, not guessed
(see ``values``). Empty cells become ``None``; the writer decides what a missing value means.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any


from airflow_provider_profiles.prepare.writer import Representation, RowRejected
from airflow_provider_profiles.prepare.values import (
    epoch_millis,
    is_missing,
    parse_json,
    set_path,
    to_bool,
    to_datetime,
    to_int,
    to_number,
    to_text,
)

TYPES = ("string", "int", "number", "bool", "date", "datetime", "list", "json", "epoch_ms", "iso_date", "iso_datetime")
_SPEC_KEYS = {"source", "const", "type", "required", "max_length", "pattern", "choices", "separator", "format", "default", "unit"}


class FieldSpec:
    """One target field: where its value comes from, its type, and the checks it must pass."""

    def __init__(self, target: str, spec: str | Mapping[str, Any], representation: Representation):
        if not target or any(not part for part in target.split(".")):
            raise ValueError(f"mapping target {target!r} is not a valid (dotted) field name")
        if isinstance(spec, str):
            spec = {"source": spec}
        if not isinstance(spec, Mapping):
            raise ValueError(f"mapping[{target!r}]: expected a column name or a dict, got {spec!r}")
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"mapping[{target!r}]: unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
        if ("source" in spec) == ("const" in spec):
            raise ValueError(f"mapping[{target!r}]: give exactly one of 'source' or 'const'")
        self.target = target
        self.path = tuple(target.split("."))
        self.source: str | None = spec.get("source")
        self.const = spec.get("const")
        self.is_const = "const" in spec
        type_name = spec.get("type", "string")
        if type_name not in TYPES:
            raise ValueError(f"mapping[{target!r}]: unknown type {type_name!r}; use one of {', '.join(TYPES)}")
        self.type = type_name
        # the form the value takes: the writer's for "date" and "datetime", else the type itself
        self.representation = getattr(representation, type_name) if type_name in ("date", "datetime") else type_name
        self.bool_as = representation.boolean
        self.required = bool(spec.get("required", False))
        self.max_length = spec.get("max_length")
        self.pattern = re.compile(spec["pattern"]) if spec.get("pattern") else None
        self.choices = set(spec["choices"]) if spec.get("choices") else None
        self.separator = spec.get("separator", ",")
        self.format = spec.get("format")
        self.default = spec.get("default")
        # None: epoch numbers are milliseconds, and those too small to be sure of are refused
        self.unit = spec.get("unit")
        if self.unit not in (None, "s", "ms"):
            raise ValueError(f"mapping[{target!r}]: unit must be 's' or 'ms'")

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k not in ("pattern",)} | {
            "unit": self.unit or "ms",  # as before the unit could be left out: fingerprints stay
            "pattern": self.pattern.pattern if self.pattern else None,
            "choices": sorted(map(str, self.choices)) if self.choices else None,
        }

    def value(self, row: Mapping[str, Any]) -> Any:
        if self.is_const:
            return self.const
        value = lookup(row, self.source)
        if is_missing(value):
            value = self.default
        if is_missing(value):
            if self.required:
                raise RowRejected(f"required value is empty (column {self.source!r})", self.target)
            return None
        try:
            value = self.coerce(value)
        except (ValueError, TypeError, OverflowError) as error:
            raise RowRejected(f"{error} (column {self.source!r})", self.target) from None
        self.check(value)
        return value

    def coerce(self, value: Any) -> Any:
        kind = self.representation
        if kind == "string":
            return value if isinstance(value, str) else to_text(value)
        if kind == "int":
            return to_int(value)
        if kind == "number":
            return to_number(value)
        if kind == "bool":
            flag = to_bool(value)
            return to_text(flag) if self.bool_as == "string" else flag
        if kind == "list":
            return _to_list(value, self.separator)
        if kind == "json":
            return parse_json(value) if isinstance(value, str) else value
        moment = to_datetime(value, self.unit, self.format)
        if kind == "epoch_ms":
            if self.type == "date":
                moment = dt.datetime(moment.year, moment.month, moment.day, tzinfo=dt.timezone.utc)
            return epoch_millis(moment)
        if kind == "iso_date":
            return moment.date().isoformat()
        return moment.isoformat(timespec="seconds").replace("+00:00", "Z")

    def check(self, value: Any) -> None:
        if self.max_length is not None and isinstance(value, str) and len(value) > self.max_length:
            raise RowRejected(f"{len(value)} characters; at most {self.max_length} allowed", self.target)
        if self.pattern is not None and not self.pattern.fullmatch(str(value)):
            raise RowRejected(f"{value!r} does not match {self.pattern.pattern!r}", self.target)
        if self.choices is not None and value not in self.choices:
            raise RowRejected(f"{value!r} is not one of {sorted(map(str, self.choices))}", self.target)


class FieldMapping:
    """An ordered set of ``FieldSpec``: maps rows, validates them, and says which input it needs."""

    def __init__(
        self,
        fields: Mapping[str, str | Mapping[str, Any]],
        *,
        representation: Representation | None = None,
        identifier: str | None = None,
        keep_unmapped: bool = False,
    ):
        """``representation``: the writer's (``writer.representation``); the default one without."""
        if not fields:
            raise ValueError("the mapping is empty: map at least the identifier")
        representation = representation or Representation()
        self.representation = representation
        self.fields = [FieldSpec(target, spec, representation) for target, spec in fields.items()]
        targets = [field.target for field in self.fields]
        for target in targets:
            parts = target.split(".")
            for cut in range(1, len(parts)):
                if ".".join(parts[:cut]) in targets:
                    raise ValueError(f"mapping has both {'.'.join(parts[:cut])!r} and its child {target!r}")
        if identifier is not None and identifier not in targets:
            raise ValueError(f"the identifier {identifier!r} is not a mapping target ({', '.join(targets)})")
        self.identifier = identifier
        for field in self.fields:
            if field.target == identifier:
                field.required = True
        self.keep_unmapped = keep_unmapped

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(f.source for f in self.fields if not f.is_const))

    def missing_columns(self, columns: Iterable[str]) -> list[str]:
        """Mapped sources the input lacks (a dotted source counts if its first part exists)."""
        present = set(columns)
        return [s for s in self.sources if s not in present and s.split(".")[0] not in present]

    def apply(self, row: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = dict(row) if self.keep_unmapped else {}
        for field in self.fields:
            value = field.value(row)
            if len(field.path) == 1:
                out[field.target] = value
            else:
                set_path(out, field.path, value)
        return out

    def fingerprint(self) -> str:
        """Changes when the mapping changes, so an incremental sync resends everything then."""
        text = json.dumps([f.describe() for f in self.fields], sort_keys=True, default=str)
        return hashlib.sha256(f"{self.representation}|{self.keep_unmapped}|{text}".encode()).hexdigest()[:16]


def lookup(row: Mapping[str, Any], source: str) -> Any:
    if source in row:
        return row[source]
    value: Any = row
    for part in source.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _to_list(value: Any, separator: str) -> list[Any]:
    if isinstance(value, (list, tuple)):
        items = list(value)
    elif isinstance(value, str) and value.lstrip().startswith("["):
        items = parse_json(value)
        if not isinstance(items, list):
            raise ValueError(f"expected a JSON list, got {value!r}")
    else:
        items = str(value).split(separator)
    return [item.strip() if isinstance(item, str) else item for item in items if not is_missing(item)]
