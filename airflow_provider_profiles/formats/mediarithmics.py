"""mediarithmics bulk-import commands: one writer per document type.

Every line is one command about one user, named by exactly one identifier: ``user_account_id``
(with its ``compartment_id``), ``email_hash`` or ``user_agent_id``. A row naming none or several is
rejected (``RowRejected``), as is any row the platform would refuse, so the rejects file says why
before anything is sent. Only USER_SEGMENT may be written as CSV; every other type is NDJSON.

    writer = writer_for("USER_PROFILE", update_strategy="PARTIAL_UPDATE")
    writer.encode({"user_account_id": "u1", "compartment_id": "7", "plan": "pro"})
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, ClassVar

from airflow_provider_profiles.formats import values
from airflow_provider_profiles.formats.base import (
    FormatWriter,
    RowRejected,
    csv_line,
    is_missing,
)

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
        if is_missing(row.get("compartment_id")):
            raise RowRejected("user_account_id needs a compartment_id", "compartment_id")
        return {"compartment_id": _text(row["compartment_id"]), "user_account_id": _text(row["user_account_id"])}
    return {field: _text(row[field])}


def _choice(value: Any, allowed: tuple[str, ...], field: str) -> str:
    text = _text(value).upper()
    if text not in allowed:
        raise RowRejected(f"{value!r} is not one of {', '.join(allowed)}", field)
    return text


def epoch_millis(value: Any, field: str) -> int:
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

    def identifier(self, row: Mapping[str, Any]) -> str | None:
        for field in IDENTIFIER_FIELDS:
            if not is_missing(row.get(field)):
                return str(row[field])
        return None


class UserProfileWriter(MediarithmicsWriter):
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


class UserSegmentWriter(MediarithmicsWriter):
    """USER_SEGMENT commands: add a user to a segment (UPDATE, optionally expiring after
    ``expiration_duration`` minutes, 0 = never) or remove it (DELETE). The segment is named by id or
    technical name, per writer or per row. NDJSON by default; ``mime_type="TEXT_CSV"`` writes CSV."""

    document_type = "USER_SEGMENT"
    columns = (
        "operation",
        "compartment_id",
        "user_account_id",
        "email_hash",
        "user_agent_id",
        "segment_id",
        "segment_technical_name",
        "expiration_duration",
    )

    def __init__(
        self,
        segment_id: str | int | None = None,
        segment_technical_name: str | None = None,
        operation: str = "UPDATE",
        expiration_duration: int | None = None,
        mime_type: str = NDJSON,
    ):
        if not is_missing(segment_id) and not is_missing(segment_technical_name):
            raise ValueError("give segment_id or segment_technical_name, not both")
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
        if expiration is not None:
            command["expiration_duration"] = expiration
        if self.mime_type == CSV:
            return csv_line([command.get(column, "") for column in self.columns])
        return _dumps(command)


class UserActivityWriter(MediarithmicsWriter):
    """USER_ACTIVITY commands: one activity per line, identifiers as ``$user_account_id`` +
    ``$compartment_id``, ``$email_hash`` ({"$hash"}) or ``$user_agent_id``; ``ts`` (epoch ms, datetime or
    ISO string) required; ``events`` a list of ``{"$event_name", "$ts"?, "$properties"?}``. Other columns
    are passed as activity properties."""

    document_type = "USER_ACTIVITY"
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
        activity["$ts"] = epoch_millis(ts, "ts")
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
    """USER_CHOICE commands: a user's choice (consent) for a processing, UPSERT or DELETE. The
    processing is named by ``processing_id`` or ``processing_token``; ``choice_acceptance_value`` is a
    boolean; ``choice_ts`` optional."""

    document_type = "USER_CHOICE"

    def __init__(self, operation: str = "UPSERT", processing_id: str | None = None, processing_token: str | None = None):
        self.operation = _choice(operation, ("UPSERT", "DELETE"), "operation")
        self.processing_id, self.processing_token = processing_id, processing_token

    def encode(self, row: Mapping[str, Any]) -> str:
        command: dict[str, Any] = {
            "operation": _choice(row["operation"], ("UPSERT", "DELETE"), "operation") if not is_missing(row.get("operation")) else self.operation
        }
        command.update(user_identifier(row))
        choice: dict[str, Any] = {}
        processing_id = row.get("processing_id") if not is_missing(row.get("processing_id")) else self.processing_id
        processing_token = row.get("processing_token") if not is_missing(row.get("processing_token")) else self.processing_token
        if not is_missing(processing_id):
            choice["$processing_id"] = _text(processing_id)
        elif not is_missing(processing_token):
            choice["$processing_token"] = _text(processing_token)
        else:
            raise RowRejected("no processing: set processing_id or processing_token", "processing_id")
        if command["operation"] == "UPSERT":
            accepted = row.get("choice_acceptance_value")
            if isinstance(accepted, str) and accepted.strip().lower() in ("true", "false"):
                accepted = accepted.strip().lower() == "true"
            if not isinstance(accepted, bool):
                raise RowRejected(f"{accepted!r} is not true or false", "choice_acceptance_value")
            choice["$choice_acceptance_value"] = accepted
            if not is_missing(row.get("choice_ts")):
                choice["$choice_ts"] = epoch_millis(row["choice_ts"], "choice_ts")
        command["user_choice"] = choice
        return _dumps(command)


def typed_identifier(row: Mapping[str, Any]) -> dict[str, str]:
    """One identifier in the typed form used by association and deletion commands."""
    identifier = user_identifier(row)
    if "user_account_id" in identifier:
        return {"type": "USER_ACCOUNT", **identifier}
    if "email_hash" in identifier:
        return {"type": "USER_EMAIL", "hash": identifier["email_hash"]}
    return {"type": "USER_AGENT", **identifier}


class UserIdentifiersAssociationWriter(MediarithmicsWriter):
    """USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS: declares that several identifiers are one user.
    Unlike the other commands a line holds several identifiers by nature, each checked on its own:
    a row gives an ``identifiers`` list of rows (each with exactly one identifier), or flat columns
    ``user_account_id`` + ``compartment_id``, ``email_hash``, ``user_agent_id`` (two or more set)."""

    document_type = "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS"

    def encode(self, row: Mapping[str, Any]) -> str:
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
            raise RowRejected(f"an association needs at least two identifiers, found {len(identifiers)}", "identifiers")
        return _dumps({"identifiers": identifiers})


class UserIdentifiersDeletionWriter(MediarithmicsWriter):
    """USER_IDENTIFIERS_DELETION commands (e.g. GDPR suppression): one typed identifier per line."""

    document_type = "USER_IDENTIFIERS_DELETION"

    def encode(self, row: Mapping[str, Any]) -> str:
        return _dumps(typed_identifier(row))


WRITERS: dict[str, type[MediarithmicsWriter]] = {
    cls.document_type: cls
    for cls in (
        UserProfileWriter,
        UserSegmentWriter,
        UserActivityWriter,
        UserChoiceWriter,
        UserIdentifiersAssociationWriter,
        UserIdentifiersDeletionWriter,
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
