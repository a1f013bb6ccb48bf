"""mediarithmics bulk-import commands: one writer per document type.

Every line is one command about one user, named by exactly one identifier: ``user_account_id``
(with an optional ``compartment_id``: without it the datamart's default compartment is used),
``email_hash`` or ``user_agent_id`` (developer.mediarithmics.io/user-points/user-identifiers). A user
is the identifier's type, compartment and value together. A row naming none or several is
rejected (``RowRejected``), as is any row the platform would refuse, so the rejects file says why
before anything is sent. Only USER_SEGMENT may be written as CSV; every other type is NDJSON.

    writer = writer_for("USER_PROFILE", update_strategy="PARTIAL_UPDATE")
    writer.encode({"user_account_id": "u1", "compartment_id": "7", "plan": "pro"})
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar

from airflow_provider_profiles.prepare import values
from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.prepare.writer import (
    FormatWriter,
    Representation,
    RowRejected,
    csv_line,
)
from airflow_provider_profiles.prepare.values import is_missing

NDJSON = "APPLICATION_X_NDJSON"
CSV = "TEXT_CSV"
IDENTIFIER_FIELDS = ("user_account_id", "email_hash", "user_agent_id")
UPDATE_STRATEGIES = ("PARTIAL_UPDATE", "PARTIAL_DELETE", "FORCE_REPLACE")


def _text(value: Any) -> str:
    return str(value).strip()


def user_identifier(row: Mapping[str, Any]) -> dict[str, str]:
    """The row's single user identifier as command fields; ``RowRejected`` unless exactly one is set."""
    found = [field for field in IDENTIFIER_FIELDS if not is_missing(row.get(field))]
    if not found:
        raise RowRejected("no user identifier: set one of user_account_id (+ compartment_id), email_hash, user_agent_id")
    if len(found) > 1:
        raise RowRejected(f"only one user identifier per line is allowed, found {', '.join(found)}")
    field = found[0]
    if field == "user_account_id":
        if is_missing(row.get("compartment_id")):  # the default compartment
            return {"user_account_id": _text(row["user_account_id"])}
        return {"compartment_id": _text(row["compartment_id"]), "user_account_id": _text(row["user_account_id"])}
    return {field: _text(row[field])}


def user_key(identifier: Mapping[str, str]) -> str:
    """One user's key, for the duplicate check and sync: type, compartment and value together (the same
    account id in two compartments is two users)."""
    if "user_account_id" in identifier:
        compartment = identifier.get("compartment_id") or "default"
        return f"user_account_id={identifier['user_account_id']} (compartment {compartment})"
    (field, value), = ((k, v) for k, v in identifier.items() if k != "type")
    return f"{field}={value}"


def _choice(value: Any, allowed: tuple[str, ...], field: str) -> str:
    text = _text(value).upper()
    if text not in allowed:
        raise RowRejected(f"{value!r} is not one of {', '.join(allowed)}", field)
    return text


def _epoch_millis_of(value: Any, field: str) -> int:
    """Epoch milliseconds from an int, a datetime/date or ISO 8601 / YYYYMMDD text (naive means UTC);
    a number too small to be milliseconds for sure (seconds, say) is rejected, not guessed."""
    try:
        return values.epoch_millis(value)
    except (ValueError, TypeError) as error:
        raise RowRejected(str(error), field) from None


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    if hasattr(value, "item"):  # numpy scalars coming from pandas
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(record: Mapping[str, Any]) -> str:
    try:
        return values.json_text(record, default=_json_default) + "\n"  # never NaN / Infinity
    except (TypeError, ValueError) as exc:
        raise RowRejected(f"value cannot be written as JSON: {exc}") from None


class MediarithmicsWriter(FormatWriter):
    """Base of the command writers: knows its document type and the document import's mime type."""

    document_type: ClassVar[str]
    extension: ClassVar[str] = "ndjson"
    content_type: ClassVar[str] = "application/x-ndjson"
    mime_type: ClassVar[str] = NDJSON
    # the reference names no form for dates in properties: ISO 8601 text; booleans as JSON booleans
    representation: ClassVar[Representation] = Representation(date="iso_date", datetime="iso_datetime")

    def identifier(self, row: Mapping[str, Any]) -> str | None:
        try:
            return user_key(user_identifier(row))
        except RowRejected:  # none or several: the row is rejected by encode(); name what it has
            found = [f"{field}={_text(row[field])}" for field in IDENTIFIER_FIELDS if not is_missing(row.get(field))]
            return ", ".join(found) or None

    def key_sql(self, columns) -> str | None:
        if any(columns.kind(name) not in sql.TEXT_OR_INTEGER for name in (*IDENTIFIER_FIELDS, "compartment_id") if name in columns):
            return None
        text = {name: sql.stripped_text(columns(name)) for name in (*IDENTIFIER_FIELDS, "compartment_id")}
        found = [f"CASE WHEN {columns(name)} IS NOT NULL THEN '{name}=' || {text[name]} END" for name in IDENTIFIER_FIELDS]
        account = columns("user_account_id")
        return f"""CASE WHEN {_identifier_count(columns)} = 1 AND {account} IS NOT NULL
                        THEN 'user_account_id=' || {text['user_account_id']} || ' (compartment '
                             || coalesce({text['compartment_id']}, 'default') || ')'
                        ELSE nullif(concat_ws(', ', {', '.join(found)}), '') END"""

    def identifier_sql(self, columns) -> tuple[str, str]:
        """(the identifier's JSON members, the reason a row has none or several) as SQL."""
        text = {name: sql.stripped_text(columns(name)) for name in (*IDENTIFIER_FIELDS, "compartment_id")}
        members = f"""CASE WHEN {columns('user_account_id')} IS NOT NULL THEN concat(
                  CASE WHEN {columns('compartment_id')} IS NOT NULL THEN concat('"compartment_id":', to_json({text['compartment_id']}), ',') END,
                  '"user_account_id":', to_json({text['user_account_id']}))
               WHEN {columns('email_hash')} IS NOT NULL THEN concat('"email_hash":', to_json({text['email_hash']}))
               ELSE concat('"user_agent_id":', to_json({text['user_agent_id']})) END"""
        found = ", ".join(f"CASE WHEN {columns(name)} IS NOT NULL THEN '{name}' END" for name in IDENTIFIER_FIELDS)
        count = _identifier_count(columns)
        reason = f"""CASE WHEN {count} = 0 THEN 'no user identifier: set one of user_account_id (+ compartment_id), email_hash, user_agent_id'
                          WHEN {count} > 1 THEN 'only one user identifier per line is allowed, found ' || concat_ws(', ', {found}) END"""
        return members, reason


class DeletesByIdentifier:
    """A document type with a DELETE operation: a sync's deletion line is the user's identifier
    fields and ``"operation": "DELETE"``."""

    deletion_columns: ClassVar[tuple[str, ...]] = ("user_account_id", "compartment_id", "email_hash", "user_agent_id")

    def deletion_row(self, values: Mapping[str, Any]) -> dict[str, Any] | None:
        return {**values, "operation": "DELETE"}


class UserProfileWriter(DeletesByIdentifier, MediarithmicsWriter):
    """USER_PROFILE commands: UPSERT a profile (every non-identifier column, or a ``user_profile``
    dict) with an update strategy, or DELETE it. A row's ``operation`` column overrides the default."""

    document_type = "USER_PROFILE"
    _reserved = frozenset({*IDENTIFIER_FIELDS, "compartment_id", "operation", "update_strategy", "user_profile"})

    def __init__(self, operation: str = "UPSERT", update_strategy: str = "PARTIAL_UPDATE"):
        self.operation = _choice(operation, ("UPSERT", "DELETE"), "operation")
        self.update_strategy = _choice(update_strategy, UPDATE_STRATEGIES, "update_strategy")

    def encode(self, row: Mapping[str, Any]) -> str:
        command: dict[str, Any] = user_identifier(row)
        operation = _choice(row["operation"], ("UPSERT", "DELETE"), "operation") if not is_missing(row.get("operation")) else self.operation
        command["operation"] = operation
        if operation == "UPSERT":
            profile = row.get("user_profile")
            if profile is None:
                profile = {k: v for k, v in row.items() if k not in self._reserved and not is_missing(v)}
            if not isinstance(profile, Mapping) or not profile:
                raise RowRejected("UPSERT needs at least one profile property", "user_profile")
            strategy = row.get("update_strategy")
            command["update_strategy"] = _choice(strategy, UPDATE_STRATEGIES, "update_strategy") if not is_missing(strategy) else self.update_strategy
            command["user_profile"] = dict(profile)
        return _dumps(command)

    def line_sql(self, columns) -> tuple[str, str] | None:
        if any(name in columns for name in ("operation", "update_strategy", "user_profile")) or any(
            "." in name or columns.kind(name) not in sql.JSON_SCALARS for name in columns.types
        ):
            return None
        if self.operation == "DELETE":
            members, reason = self.identifier_sql(columns)
            return f"""concat('{{', {members}, ',"operation":"DELETE"}}', chr(10))""", reason
        if self.key_sql(columns) is None:
            return None
        members, reason = self.identifier_sql(columns)
        profile = [name for name in columns.types if name not in self._reserved]
        values = sql.json_members((name, columns(name), columns.kind(name)) for name in profile)
        empty = " AND ".join(f"{columns(name)} IS NULL" for name in profile) or "true"
        infinite = [f"CASE WHEN isinf({columns(name)}) THEN 'value cannot be written as JSON: user_profile.{name}: "
                    "not a finite number (JSON has no NaN or Infinity)' END"
                    for name in profile if columns.kind(name) == "DOUBLE"]
        line = (f"""concat('{{', {members}, ',"operation":"UPSERT","update_strategy":', to_json({sql.literal(self.update_strategy)}),"""
                f"""',"user_profile":{{', {values}, '}}}}', chr(10))""")
        reason = f"""coalesce({reason}, CASE WHEN {empty} THEN 'user_profile: UPSERT needs at least one profile property' END
                              {''.join(', ' + check for check in infinite)})"""
        return line, reason


def _identifier_count(columns) -> str:
    return " + ".join(f"CAST({columns(name)} IS NOT NULL AS INTEGER)" for name in IDENTIFIER_FIELDS)


class UserSegmentWriter(DeletesByIdentifier, MediarithmicsWriter):
    """USER_SEGMENT commands: add a user to a segment (UPDATE) or remove it (DELETE). The segment is
    named by id or technical name, per writer or per row. ``expiration_duration`` (minutes, 0 = never
    expires) is mandatory on every line (developer.mediarithmics.io/data-ingestion/bulk-processing/
    imports/segments-import): give it to the writer, or ``expiration_per_row=True`` to take it from each
    row's column. Optional per row: ``expiration_ts`` (epoch ms, datetime or ISO string) and ``data_bag``
    (a string). NDJSON by default; ``mime_type="TEXT_CSV"`` writes CSV."""

    document_type = "USER_SEGMENT"
    many_lines_per_id = True  # a user in several segments
    columns = (
        "operation",
        "compartment_id",
        "user_account_id",
        "email_hash",
        "user_agent_id",
        "segment_id",
        "segment_technical_name",
        "expiration_duration",
        "expiration_ts",
        "data_bag",
    )

    def __init__(
        self,
        segment_id: str | int | None = None,
        segment_technical_name: str | None = None,
        operation: str = "UPDATE",
        expiration_duration: int | None = None,
        mime_type: str = NDJSON,
        expiration_per_row: bool = False,
    ):
        if not is_missing(segment_id) and not is_missing(segment_technical_name):
            raise ValueError("give segment_id or segment_technical_name, not both")
        if expiration_duration is None and not expiration_per_row:
            raise ValueError(
                "USER_SEGMENT: expiration_duration is mandatory (minutes a user stays in the segment, 0 = never "
                "expires): pass expiration_duration=..., or expiration_per_row=True to read it from each row"
            )
        self.segment_id = segment_id
        self.segment_technical_name = segment_technical_name
        self.operation = _choice(operation, ("UPDATE", "DELETE"), "operation")
        self.expiration_duration = None if expiration_duration is None else self._minutes(expiration_duration)
        if mime_type not in (NDJSON, CSV):
            raise ValueError(f"mime_type must be {NDJSON} or {CSV}")
        self.mime_type = mime_type  # instance attribute: this type alone may be either
        if mime_type == CSV:
            self.extension, self.content_type = "csv", "text/csv"

    @staticmethod
    def _minutes(value: Any) -> int:
        try:
            minutes = int(value)
            if minutes != float(value) or minutes < 0:
                raise ValueError
        except (TypeError, ValueError):
            raise RowRejected(f"{value!r} is not a whole number of minutes >= 0 (0 = never expires)", "expiration_duration") from None
        return minutes

    def header(self) -> str | None:
        return csv_line(list(self.columns)) if self.mime_type == CSV else None

    def encode(self, row: Mapping[str, Any]) -> str:
        command: dict[str, Any] = {
            "operation": _choice(row["operation"], ("UPDATE", "DELETE"), "operation") if not is_missing(row.get("operation")) else self.operation
        }
        command.update(user_identifier(row))
        row_id, row_name = row.get("segment_id"), row.get("segment_technical_name")
        if not is_missing(row_id) and not is_missing(row_name):
            raise RowRejected("give segment_id or segment_technical_name, not both", "segment_id")
        if not is_missing(row_id) or not is_missing(row_name):
            segment_id, technical_name = row_id, row_name
        else:
            segment_id, technical_name = self.segment_id, self.segment_technical_name
        if not is_missing(segment_id):
            command["segment_id"] = _text(segment_id)
        elif not is_missing(technical_name):
            command["segment_technical_name"] = _text(technical_name)
        else:
            raise RowRejected("no segment: set segment_id or segment_technical_name", "segment_id")
        expiration = row.get("expiration_duration")
        expiration = self._minutes(expiration) if not is_missing(expiration) else self.expiration_duration
        if expiration is None:
            raise RowRejected("expiration_duration is mandatory (minutes, 0 = never expires)", "expiration_duration")
        command["expiration_duration"] = expiration
        if not is_missing(row.get("expiration_ts")):
            command["expiration_ts"] = _epoch_millis_of(row["expiration_ts"], "expiration_ts")
        if not is_missing(row.get("data_bag")):
            bag = row["data_bag"]
            command["data_bag"] = bag if isinstance(bag, str) else _dumps(bag).rstrip("\n")
        if self.mime_type == CSV:
            return csv_line([command.get(column, "") for column in self.columns])
        return _dumps(command)


class UserActivityWriter(MediarithmicsWriter):
    """USER_ACTIVITY commands: one activity per line, identifiers as ``$user_account_id`` +
    ``$compartment_id``, ``$email_hash`` ({"$hash"}) or ``$user_agent_id``; ``ts`` (epoch ms, datetime or
    ISO string) required; ``events`` a list of ``{"$event_name", "$ts"?, "$properties"?}``. Other columns
    are passed as activity properties."""

    document_type = "USER_ACTIVITY"
    many_lines_per_id = True  # a user's many activities
    _reserved = frozenset({*IDENTIFIER_FIELDS, "compartment_id", "ts", "$ts", "type", "$type", "events", "$events", "session_status", "$session_status"})

    def __init__(self, activity_type: str = "TOUCH", session_status: str = "NO_SESSION"):
        self.activity_type = activity_type
        self.session_status = session_status

    def encode(self, row: Mapping[str, Any]) -> str:
        identifier = user_identifier(row)
        activity: dict[str, Any] = {
            "$type": row.get("$type") or row.get("type") or self.activity_type,
            "$session_status": row.get("$session_status") or row.get("session_status") or self.session_status,
        }
        ts = row.get("$ts", row.get("ts"))
        if is_missing(ts):
            raise RowRejected("an activity needs its timestamp", "ts")
        activity["$ts"] = _epoch_millis_of(ts, "ts")
        if "email_hash" in identifier:
            activity["$email_hash"] = {"$hash": identifier["email_hash"]}
        else:
            activity.update({f"${k}": v for k, v in identifier.items()})
        events = row.get("$events", row.get("events"))
        if not is_missing(events):
            if not isinstance(events, list) or not all(isinstance(e, Mapping) and e.get("$event_name") for e in events):
                raise RowRejected("events must be a list of objects with an $event_name", "events")
            activity["$events"] = [dict(e) for e in events]
        else:
            activity["$events"] = []
        activity.update({k: v for k, v in row.items() if k not in self._reserved and not is_missing(v)})
        return _dumps(activity)


class UserChoiceWriter(MediarithmicsWriter):
    """USER_CHOICE commands: a user's choice (consent) for a processing, UPSERT or DELETE
    (developer.mediarithmics.io/data-ingestion/bulk-processing/imports/user_choices). The processing is
    named by ``processing_id`` (``$processing_id`` is always mandatory). On UPSERT ``force_replace``
    (replace the whole choice, or merge into it) and ``choice_ts`` are mandatory;
    ``choice_acceptance_value`` is a boolean."""

    document_type = "USER_CHOICE"
    many_lines_per_id = True  # a user's choice for each processing

    def __init__(self, operation: str = "UPSERT", processing_id: str | None = None, force_replace: bool | None = None):
        self.operation = _choice(operation, ("UPSERT", "DELETE"), "operation")
        self.processing_id = processing_id
        if self.operation == "UPSERT" and force_replace is None:
            raise ValueError("USER_CHOICE: force_replace is mandatory on UPSERT: True replaces the user's whole "
                             "choice, False merges into it")
        self.force_replace = force_replace

    def encode(self, row: Mapping[str, Any]) -> str:
        command: dict[str, Any] = {
            "operation": _choice(row["operation"], ("UPSERT", "DELETE"), "operation") if not is_missing(row.get("operation")) else self.operation
        }
        command.update(user_identifier(row))
        processing_id = row.get("processing_id") if not is_missing(row.get("processing_id")) else self.processing_id
        if is_missing(processing_id):
            raise RowRejected("no processing: $processing_id is mandatory (set processing_id)", "processing_id")
        choice: dict[str, Any] = {"$processing_id": _text(processing_id)}
        if command["operation"] == "UPSERT":
            force_replace = _boolean(row.get("force_replace"), "force_replace") if not is_missing(row.get("force_replace")) else self.force_replace
            if force_replace is None:
                raise RowRejected("force_replace is mandatory on UPSERT", "force_replace")
            command["force_replace"] = force_replace
            choice["$choice_acceptance_value"] = _boolean(row.get("choice_acceptance_value"), "choice_acceptance_value")
            if is_missing(row.get("choice_ts")):
                raise RowRejected("choice_ts is mandatory on UPSERT ($choice_ts)", "choice_ts")
            choice["$choice_ts"] = _epoch_millis_of(row["choice_ts"], "choice_ts")
        command["user_choice"] = choice
        return _dumps(command)


def _boolean(value: Any, field: str) -> bool:
    try:
        return values.to_bool(value)
    except ValueError as error:
        raise RowRejected(str(error), field) from None


def typed_identifier(row: Mapping[str, Any], user_point: bool = False) -> dict[str, str]:
    """One identifier in the typed form used by association and deletion commands; ``user_point``
    also accepts a ``user_point_id`` (USER_POINTS_DELETION)."""
    if user_point and not is_missing(row.get("user_point_id")):
        others = [field for field in IDENTIFIER_FIELDS if not is_missing(row.get(field))]
        if others:
            raise RowRejected(f"only one user identifier per line is allowed, found user_point_id, {', '.join(others)}")
        return {"type": "USER_POINT", "user_point_id": _text(row["user_point_id"])}
    identifier = user_identifier(row)
    if "user_account_id" in identifier:
        return {"type": "USER_ACCOUNT", **identifier}
    if "email_hash" in identifier:
        return {"type": "USER_EMAIL", "hash": identifier["email_hash"]}
    return {"type": "USER_AGENT", **identifier}


def _identifier_list(row: Mapping[str, Any], what: str) -> list[dict[str, str]]:
    listed = row.get("identifiers")
    if not is_missing(listed):
        if not isinstance(listed, list) or not all(isinstance(item, Mapping) for item in listed):
            raise RowRejected("identifiers must be a list of objects", "identifiers")
        identifiers = []
        for position, item in enumerate(listed, 1):
            try:
                identifiers.append(typed_identifier(item))
            except RowRejected as exc:
                raise RowRejected(f"identifier {position}: {exc.reason}", "identifiers") from None
    else:
        identifiers = [
            typed_identifier({field: row[field], "compartment_id": row.get("compartment_id")})
            for field in IDENTIFIER_FIELDS
            if not is_missing(row.get(field))
        ]
    if len(identifiers) < 2:
        raise RowRejected(f"{what} needs at least two identifiers, found {len(identifiers)}", "identifiers")
    return identifiers


class UserIdentifiersAssociationWriter(MediarithmicsWriter):
    """USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS: declares that several identifiers are one user.
    Unlike the other commands a line holds several identifiers by nature, each checked on its own:
    a row gives an ``identifiers`` list of rows (each with exactly one identifier), or flat columns
    ``user_account_id`` + ``compartment_id``, ``email_hash``, ``user_agent_id`` (two or more set)."""

    document_type = "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS"
    many_lines_per_id = True  # a user's several associations

    def encode(self, row: Mapping[str, Any]) -> str:
        return _dumps({"identifiers": _identifier_list(row, "an association")})


class UserIdentifiersDissociationWriter(UserIdentifiersAssociationWriter):
    """USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS: declares that identifiers no longer belong together.
    The bulk-import overview lists user dissociation (developer.mediarithmics.io/data-ingestion/
    bulk-processing); the line is written like an association, an ``identifiers`` list, as no public
    page we found gives its own shape."""

    document_type = "USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS"

    def encode(self, row: Mapping[str, Any]) -> str:
        return _dumps({"identifiers": _identifier_list(row, "a dissociation")})


class UserIdentifiersDeletionWriter(MediarithmicsWriter):
    """USER_IDENTIFIERS_DELETION commands (e.g. GDPR suppression): one typed identifier per line."""

    document_type = "USER_IDENTIFIERS_DELETION"

    def encode(self, row: Mapping[str, Any]) -> str:
        return _dumps(typed_identifier(row))


class UserPointsDeletionWriter(MediarithmicsWriter):
    """USER_POINTS_DELETION commands: delete the user point an identifier (or ``user_point_id``) belongs
    to, with all its identifiers, segments and profile; one typed identifier per line
    (developer.mediarithmics.io/data-ingestion/bulk-processing/deletions/user-points-deletion)."""

    document_type = "USER_POINTS_DELETION"

    def identifier(self, row: Mapping[str, Any]) -> str | None:
        if not is_missing(row.get("user_point_id")):
            return f"user_point_id={_text(row['user_point_id'])}"
        return super().identifier(row)

    def encode(self, row: Mapping[str, Any]) -> str:
        return _dumps(typed_identifier(row, user_point=True))


WRITERS: dict[str, type[MediarithmicsWriter]] = {
    cls.document_type: cls
    for cls in (
        UserProfileWriter,
        UserSegmentWriter,
        UserActivityWriter,
        UserChoiceWriter,
        UserIdentifiersAssociationWriter,
        UserIdentifiersDissociationWriter,
        UserIdentifiersDeletionWriter,
        UserPointsDeletionWriter,
    )
}


def writer_for(document_type: str, mime_type: str = NDJSON, **options: Any) -> MediarithmicsWriter:
    """The writer for a document import's ``document_type`` and ``mime_type`` (CSV: USER_SEGMENT only)."""
    try:
        cls = WRITERS[document_type]
    except KeyError:
        raise ValueError(f"unknown document_type {document_type!r}; choose from {', '.join(WRITERS)}") from None
    if mime_type not in (NDJSON, CSV):
        raise ValueError(f"mime_type must be {NDJSON} or {CSV}, not {mime_type!r}")
    if cls is UserSegmentWriter:
        return cls(mime_type=mime_type, **options)
    if mime_type == CSV:
        raise ValueError(f"{CSV} is only allowed for USER_SEGMENT document imports, not {document_type}")
    return cls(**options)
