"""Gainsight PX records: input row -> nested user/account JSON, as the data loader's field mapping does.

``field_mapping`` is ``{px_field: input_column}``; dots in a PX field nest it (``location.city``,
``location.coordinates.latitude``, ``customAttributes.plan``). The fields are typed here (the
standard PX fields, ``field_types``, the subscription's attribute model) and mapped and converted
by the engine's ``FieldMapping``. Dates are sent as milliseconds since the epoch; empty values are
not sent at all (an empty cell must not wipe what the vendor holds).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from airflow_provider_profiles.prepare.mapping import FieldMapping, lookup
from airflow_provider_profiles.prepare.writer import FormatWriter, Representation, RowRejected
from airflow_provider_profiles.prepare.values import (
    FALSE_WORDS,
    TRUE_WORDS,
    canonical_id,
    json_line,
    set_path,
)
from airflow_provider_profiles.prepare import sql

ENTITIES = ("USER", "ACCOUNT", "CUSTOM_EVENT")
IDENTIFIER_FIELDS = {"USER": "identifyId", "ACCOUNT": "id", "CUSTOM_EVENT": "identifyId"}
REQUIRED_FIELDS = {"CUSTOM_EVENT": ("eventName",)}
FIELD_TYPES = ("string", "integer", "number", "boolean", "date")
# the attribute model's types (GET /admin/model/{user|account}/attributes) as field types
MODEL_FIELD_TYPES = {"STRING": "string", "DATE_TIME": "date", "NUMBER": "number", "BOOLEAN": "boolean"}
# the field types as FieldMapping types: a date is a DATE_TIME, sent as epoch milliseconds
MAPPING_TYPES = {"string": "string", "integer": "int", "number": "number", "boolean": "bool", "date": "epoch_ms"}

_LOCATION_TYPES = {"location.coordinates.latitude": "number", "location.coordinates.longitude": "number"}
STANDARD_TYPES: dict[str, dict[str, str]] = {
    "USER": {
        "signUpDate": "date",
        "lastSeenDate": "date",
        "firstVisitDate": "date",
        "createDate": "date",
        "lastModifiedDate": "date",
        "score": "number",
        "numberOfVisits": "integer",
        "globalUnsubscribe": "boolean",
        **_LOCATION_TYPES,
    },
    "ACCOUNT": {
        "createDate": "date",
        "lastModifiedDate": "date",
        "lastSeenDate": "date",
        "numberOfEmployees": "integer",
        "numberOfUsers": "integer",
        **_LOCATION_TYPES,
    },
    # no model for events: Gainsight's loader types their fields itself (date is a DATE_TIME)
    "CUSTOM_EVENT": {"date": "date"},
}
_RANGES = {"location.coordinates.latitude": (-90.0, 90.0), "location.coordinates.longitude": (-180.0, 180.0)}


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested record -> ``{dotted.path: value}``, the inverse of the mapping (lists stay as values)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


class GainsightPXRecordFormat(FormatWriter):
    """Maps, converts and validates one input row into the user/account JSON the REST API takes."""

    extension = "ndjson"
    content_type = "application/x-ndjson"
    # dates, custom DATE_TIME attributes included, go as epoch milliseconds (the official loader,
    # github.com/aptrinsic/px-data-loader); booleans as true/false
    representation = Representation(date="epoch_ms", datetime="epoch_ms", boolean="bool")

    def __init__(self, entity: str, field_mapping: Mapping[str, str], field_types: Mapping[str, str] | None = None):
        entity = str(entity).upper()
        if entity not in ENTITIES:
            raise ValueError(f"entity must be one of {', '.join(ENTITIES)}, not {entity!r}")
        self.entity = entity
        self.id_field = IDENTIFIER_FIELDS[entity]
        if not field_mapping:
            raise ValueError("field_mapping is empty: map at least the identifier")
        if self.id_field not in field_mapping:
            raise ValueError(
                f"field_mapping must map the {entity} identifier {self.id_field!r} to an input column "
                f"(mapped: {', '.join(sorted(field_mapping))})"
            )
        missing = [name for name in REQUIRED_FIELDS.get(entity, ()) if name not in field_mapping]
        if missing:
            raise ValueError(f"field_mapping must map {', '.join(map(repr, missing))} for a {entity}")
        for field, column in field_mapping.items():
            if not isinstance(column, str) or not column:
                raise ValueError(f"field_mapping[{field!r}] must name an input column, got {column!r}")
        self.field_mapping = dict(field_mapping)
        self.field_types = {**STANDARD_TYPES[entity], **(field_types or {})}
        self.field_types[self.id_field] = "string"
        unknown = {field: t for field, t in self.field_types.items() if t not in FIELD_TYPES}
        if unknown:
            raise ValueError(f"unknown field types {unknown}; use one of {', '.join(FIELD_TYPES)}")
        self.identifier_field = self.field_mapping[self.id_field]  # the input column, for rejects
        self.mapping = self._typed_mapping()

    def _typed_mapping(self) -> FieldMapping:
        """The column -> field mapping with the fields' current types (it checks the dotted paths)."""
        required = REQUIRED_FIELDS.get(self.entity, ())
        return FieldMapping({
            field: {"source": column, "type": MAPPING_TYPES[self.field_types.get(field, "string")], "required": field in required}
            for field, column in self.field_mapping.items()
        }, representation=self.representation)

    def apply_model(self, attribute_types: Mapping[str, str]) -> None:
        """Type the mapped fields by the subscription's attribute model (``{apiName: DATE_TIME|...}``).

        A field is looked up by its last name (``customAttributes.acceptDate`` -> ``acceptDate``,
        ``location.city`` -> ``city``; the user identifier is ``id``), as Gainsight's own loader does.
        The model wins over ``field_types`` and the standard types, except where those are narrower
        (``integer`` for a NUMBER) or where the API body is numeric whatever the model says (coordinates).
        A custom attribute the model does not have is a configuration error.
        """
        unknown = []
        for field in self.field_mapping:
            if field == self.id_field:
                continue
            api_name = field.rsplit(".", 1)[-1]
            model_type = attribute_types.get(api_name)
            if model_type is None:
                if field.startswith("customAttributes."):
                    unknown.append(field)
                continue
            wanted = MODEL_FIELD_TYPES.get(str(model_type).upper(), "string")
            current = self.field_types.get(field, "string")
            if field in _RANGES or current == wanted or (current, wanted) == ("integer", "number"):
                continue
            self.field_types[field] = wanted
        self.mapping = self._typed_mapping()
        if unknown:
            raise ValueError(
                f"field_mapping maps {', '.join(map(repr, unknown))}, not among the subscription's {self.entity} "
                "attributes (Gainsight PX Administration > Attributes)"
            )

    def missing_columns(self, columns: Iterable[str]) -> list[str]:
        return self.mapping.missing_columns(columns)

    def check_columns(self, columns: Iterable[str]) -> None:
        """Raise ``ValueError`` naming the mapped columns the input lacks (call before writing)."""
        missing = self.missing_columns(columns)
        if missing:
            raise ValueError(f"input has no column(s) {', '.join(map(repr, missing))}; it has {sorted(set(columns))}")

    def record_id(self, row: Mapping[str, Any]) -> str | None:
        return canonical_id(lookup(row, self.identifier_field))

    def build(self, row: Mapping[str, Any]) -> dict[str, Any]:
        """The nested PX record for an input row; raises ``RowRejected`` naming field and column."""
        record: dict[str, Any] = {}
        for spec in self.mapping.fields:
            if spec.target == self.id_field:  # sent as the duplicate check saw it
                value = canonical_id(lookup(row, spec.source))
                if value is None:
                    raise RowRejected(f"the identifier is empty (column {spec.source!r})", self.id_field)
            else:
                value = spec.value(row)
                if value is None:
                    continue
                self._check(spec.target, spec.source, value)
            set_path(record, spec.path, value)
        return record

    @staticmethod
    def _check(field: str, column: str, value: Any) -> None:
        """What Gainsight PX refuses beyond the value's type: coordinates off the globe, an email without @."""
        if field in _RANGES and not _RANGES[field][0] <= value <= _RANGES[field][1]:
            raise RowRejected(f"{value} is outside {_RANGES[field][0]}..{_RANGES[field][1]} (column {column!r})", field)
        if field == "email" and "@" not in value:
            raise RowRejected(f"{value!r} is not an email address (column {column!r})", field)

    def encode(self, row: Mapping[str, Any]) -> str:
        return json_line(self.build(row))

    def line_sql(self, columns) -> tuple[str, str, str] | None:
        """Text columns in their common shapes are converted in SQL; any other value (and every
        reject, worded by ``build``) is left to ``encode``."""
        if any(columns.kind(column) != "VARCHAR" for column in self.field_mapping.values()):
            return None
        members, exact, refused = [], [], []
        for field, column in self.field_mapping.items():
            type_name = "id" if field == self.id_field else self.field_types.get(field, "string")
            value, fits = _converted_sql(columns(column), type_name)
            if field == "email":
                fits = f"({fits}) AND contains({value}, '@')"
            if field in _RANGES:
                # TRY_CAST: DuckDB may cast before the shape check has ruled out text that is no number
                fits = f"({fits}) AND TRY_CAST({sql.strip(columns(column))} AS DOUBLE) BETWEEN {_RANGES[field][0]} AND {_RANGES[field][1]}"
            required = field == self.id_field or field in REQUIRED_FIELDS.get(self.entity, ())
            exact.append(f"({value} IS NOT NULL AND {fits})" if required else f"({columns(column)} IS NULL OR ({fits}))")
            # a required field other than the identifier: its reason is left to ``encode``
            plain = not required or field == self.id_field
            refused.append((exact[-1], _refused_sql(columns(column), type_name, field, column) if plain else None))
            members.append((tuple(field.split(".")), value))
        # '' when every field fits; else the first field that does not decides, as in ``build``:
        # its reason where SQL is sure of it, NULL (left to ``encode``) where only Python can tell.
        # Reason and condition share it: DuckDB computes it once (the engine selects both together).
        first = " ".join(f"WHEN NOT coalesce({fit}, false) THEN {reason or 'NULL'}" for fit, reason in refused)
        outcome = f"CASE {first} ELSE '' END"
        return f"concat({sql.json_object(members)}, chr(10))", f"nullif({outcome}, '')", f"({outcome}) IS NOT NULL"


# ISO 8601 dates and times that Python's fromisoformat and DuckDB's TIMESTAMPTZ read alike
_ISO_MOMENT = (r"[0-9]{4}-[0-9]{2}-[0-9]{2}([T ]([01][0-9]|2[0-3]):[0-5][0-9](:[0-5][0-9])?"
               r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])?)?")


def _refused_sql(column: str, type_name: str, field: str, source: str) -> str | None:
    """The reason ``build`` gives a present value that does not fit ``_converted_sql``, where SQL is
    sure Python refuses it with that reason (printable ASCII text in the common bad shapes); NULL
    where it is not (then ``encode`` decides). None for a type with no such shape."""
    text = sql.strip(column)

    def worded(message: str) -> str:
        return f"({sql.literal(field + ': ')} || {message} || {sql.literal(f' (column {source!r})')})"

    if type_name == "id":  # only refused when empty
        return sql.literal(f"{field}: the identifier is empty (column {source!r})")
    if type_name == "string":  # only an email without "@" is refused
        return worded(f"{sql.plain_repr(column)} || ' is not an email address'") if field == "email" else None
    if type_name in ("integer", "number"):  # float() of text with no digit, other than inf and nan
        not_a_float = (f"regexp_full_match({text}, '[\\x{{20}}-\\x{{7e}}]*') AND NOT regexp_matches({text}, '[0-9]') "
                       f"AND NOT regexp_full_match(lower({text}), '[+-]?(inf|infinity|nan)')")
        not_float = worded("'could not convert string to float: ' || " + sql.plain_repr(text))
        return f"CASE WHEN {not_a_float} THEN {not_float} END"
    if type_name == "boolean":  # no word of either kind (plain_repr: NULL unless ASCII, whose lower() is Python's)
        return worded(f"'expected true/false, yes/no or 1/0, got ' || {sql.plain_repr(column)}")
    if type_name == "date":
        # not ISO 8601 for fromisoformat: no four digits first, or a YYYY-MM-DD that is no date
        # (year 0 is one for DuckDB, not for Python)
        not_iso = (f"NOT regexp_full_match({text}, '[+-]?[0-9]+') AND (NOT regexp_matches({text}, '^[0-9]{{4}}') OR "
                   f"(regexp_full_match({text}, '[0-9]{{4}}-[0-9]{{2}}-[0-9]{{2}}') AND "
                   f"(starts_with({text}, '0000') OR try_cast({text} AS DATE) IS NULL)))")
        not_a_date = worded(sql.plain_repr(text) + " || ' is not an ISO 8601 date (YYYY-MM-DD[THH:MM:SS]) nor YYYYMMDD'")
        return f"CASE WHEN {not_iso} THEN {not_a_date} END"
    return None


def _converted_sql(column: str, type_name: str) -> tuple[str, str]:
    """(the value ``build`` gives, the condition under which SQL gives it exactly)."""
    text = sql.strip(column)
    if type_name == "id":
        value = sql.canonical_id(column, "VARCHAR")
        return value, "true"
    if type_name == "string":
        return column, "true"
    if type_name == "date":
        moment = f"try_cast({text} AS TIMESTAMPTZ)"
        return (f"CASE WHEN regexp_full_match({text}, '{_ISO_MOMENT}') AND NOT starts_with({text}, '0000') "
                f"THEN epoch_ms({moment}) END"), \
            f"epoch_ms({moment}) IS NOT NULL AND regexp_full_match({text}, '{_ISO_MOMENT}') AND NOT starts_with({text}, '0000')"
    if type_name == "boolean":
        words = lambda kind: ", ".join(sql.literal(word) for word in sorted(kind))  # noqa: E731
        flag = f"lower({text})"
        return f"CASE WHEN {flag} IN ({words(TRUE_WORDS)}) THEN true WHEN {flag} IN ({words(FALSE_WORDS)}) THEN false END", \
            f"{flag} IN ({words(TRUE_WORDS | FALSE_WORDS)})"
    whole = f"regexp_full_match({text}, '[+-]?[0-9]{{1,15}}')"
    if type_name == "integer":
        return f"CASE WHEN {whole} THEN CAST({text} AS BIGINT) END", whole
    # a number read from text is a float, whole or not (as ``FieldMapping`` reads it)
    number = f"regexp_full_match({text}, '[+-]?[0-9]{{1,15}}(\\.[0-9]{{1,15}})?')"
    return f"CASE WHEN {number} THEN to_json(CAST({text} AS DOUBLE)) END", number
