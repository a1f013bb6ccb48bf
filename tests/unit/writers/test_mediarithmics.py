"""mediarithmics command writers: one identifier per line, each document type's fields, CSV only for segments."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pytest

from airflow_provider_profiles.prepare.writer import RejectsFile, RowRejected
from airflow_provider_profiles.writers.mediarithmics import (
    CSV,
    UserActivityWriter,
    UserChoiceWriter,
    UserIdentifiersAssociationWriter,
    UserIdentifiersDeletionWriter,
    UserProfileWriter,
    UserSegmentWriter,
    writer_for,
)

ACCOUNT = {"user_account_id": "u1", "compartment_id": "7"}


def decode(line: str) -> dict:
    assert line.endswith("\n") and line.count("\n") == 1
    return json.loads(line)


@pytest.mark.parametrize(
    "row, message",
    [
        ({"plan": "pro"}, "no user identifier"),
        ({"user_account_id": "u1", "compartment_id": "7", "email_hash": "h"}, "only one user identifier"),
        ({"email_hash": "h", "user_agent_id": "vec:1"}, "only one user identifier"),
    ],
)
def test_every_writer_requires_exactly_one_identifier(row, message):
    for writer in (UserProfileWriter(), UserSegmentWriter(segment_id=5, expiration_duration=0),
                   UserChoiceWriter(processing_id="p", force_replace=True), UserIdentifiersDeletionWriter()):
        with pytest.raises(RowRejected, match=message):
            writer.encode({**row, "choice_acceptance_value": True, "ts": 1, "choice_ts": 1})


def test_profile_upsert_collects_columns_and_strategy():
    line = decode(UserProfileWriter(update_strategy="FORCE_REPLACE").encode({**ACCOUNT, "plan": "pro", "score": 3, "empty": None}))
    assert line == {
        "compartment_id": "7",
        "user_account_id": "u1",
        "operation": "UPSERT",
        "update_strategy": "FORCE_REPLACE",
        "user_profile": {"plan": "pro", "score": 3},
    }


def test_profile_delete_per_row_and_bad_strategy():
    line = decode(UserProfileWriter().encode({"email_hash": "abc", "operation": "delete", "plan": "ignored"}))
    assert line == {"email_hash": "abc", "operation": "DELETE"}
    with pytest.raises(RowRejected, match="update_strategy: 'MERGE' is not one of"):
        UserProfileWriter().encode({**ACCOUNT, "plan": "x", "update_strategy": "MERGE"})
    with pytest.raises(RowRejected, match="UPSERT needs at least one profile property"):
        UserProfileWriter().encode(dict(ACCOUNT))
    with pytest.raises(RowRejected, match="operation"):
        UserProfileWriter(operation="REPLACE")


def test_segment_ndjson_by_id_or_technical_name_with_expiration():
    writer = UserSegmentWriter(segment_technical_name="vip", expiration_duration=60)
    assert decode(writer.encode({"user_agent_id": "vec:9"})) == {
        "operation": "UPDATE",
        "user_agent_id": "vec:9",
        "segment_technical_name": "vip",
        "expiration_duration": 60,
    }
    row_override = decode(writer.encode({**ACCOUNT, "segment_id": 42, "operation": "DELETE", "expiration_duration": 0}))
    assert row_override["segment_id"] == "42" and "segment_technical_name" not in row_override
    assert row_override["operation"] == "DELETE" and row_override["expiration_duration"] == 0


@pytest.mark.parametrize(
    "row, message",
    [
        ({"email_hash": "h", "expiration_duration": -1}, "expiration_duration"),
        ({"email_hash": "h", "expiration_duration": 1.5}, "expiration_duration"),
        ({"email_hash": "h", "segment_id": 1, "segment_technical_name": "x"}, "not both"),
        ({"email_hash": "h", "operation": "UPSERT"}, "operation"),
    ],
)
def test_segment_rejections(row, message):
    with pytest.raises(RowRejected, match=message):
        UserSegmentWriter(segment_id=5, expiration_duration=0).encode(row)


def test_segment_without_any_segment_is_rejected():
    with pytest.raises(RowRejected, match="no segment"):
        UserSegmentWriter(expiration_duration=0).encode({"email_hash": "h"})


def test_segment_csv_round_trips_with_header_and_quoting():
    writer = writer_for("USER_SEGMENT", CSV, segment_id=12, expiration_duration=60)
    assert (writer.extension, writer.content_type, writer.mime_type) == ("csv", "text/csv", CSV)
    text = writer.header() + writer.encode({"user_agent_id": 'vec:"1",x'}) + writer.encode({**ACCOUNT, "expiration_duration": 5})
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["user_agent_id"] == 'vec:"1",x' and rows[0]["segment_id"] == "12" and rows[0]["email_hash"] == ""
    assert rows[0]["expiration_duration"] == "60"
    assert rows[1]["user_account_id"] == "u1" and rows[1]["compartment_id"] == "7" and rows[1]["expiration_duration"] == "5"


@pytest.mark.parametrize("document_type", ["USER_PROFILE", "USER_ACTIVITY", "USER_CHOICE", "USER_IDENTIFIERS_DELETION", "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS"])
def test_csv_only_for_segments(document_type):
    options = {"force_replace": True} if document_type == "USER_CHOICE" else {}
    with pytest.raises(ValueError, match="only allowed for USER_SEGMENT"):
        writer_for(document_type, CSV, **options)
    assert writer_for(document_type, **options).extension == "ndjson"


def test_unknown_document_type():
    with pytest.raises(ValueError, match="unknown document_type 'USER_THING'"):
        writer_for("USER_THING")


def test_activity_prefixes_identifiers_and_converts_timestamps():
    writer = UserActivityWriter(activity_type="SITE_VISIT")
    line = decode(writer.encode({"email_hash": "h1", "ts": "2024-05-01T00:00:00", "store": "Paris",
                                 "events": [{"$event_name": "$transaction_confirmed", "$properties": {"amount": 3}}]}))
    assert line["$email_hash"] == {"$hash": "h1"} and line["$type"] == "SITE_VISIT"
    assert line["$ts"] == int(dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)
    assert line["$session_status"] == "NO_SESSION" and line["store"] == "Paris" and len(line["$events"]) == 1
    account = decode(writer.encode({**ACCOUNT, "ts": 1714521600000}))
    assert account["$user_account_id"] == "u1" and account["$compartment_id"] == "7" and account["$events"] == []
    with pytest.raises(RowRejected, match="ts: an activity needs its timestamp"):
        writer.encode(dict(ACCOUNT))
    with pytest.raises(RowRejected, match="ts: 'yesterday' is not an ISO 8601 date"):
        writer.encode({**ACCOUNT, "ts": "yesterday"})
    with pytest.raises(RowRejected, match="events"):
        writer.encode({**ACCOUNT, "ts": 1714521600000, "events": [{"name": "x"}]})


def test_choice_needs_processing_and_boolean():
    writer = UserChoiceWriter(processing_id="newsletter", force_replace=True)
    line = decode(writer.encode({"user_agent_id": "vec:1", "choice_acceptance_value": "false", "choice_ts": 1714521600000}))
    assert line["user_choice"] == {
        "$processing_id": "newsletter", "$choice_acceptance_value": False, "$choice_ts": 1714521600000,
    }
    with pytest.raises(RowRejected, match="choice_acceptance_value: expected true/false, yes/no or 1/0, got 'maybe'"):
        writer.encode({"user_agent_id": "vec:1", "choice_acceptance_value": "maybe", "choice_ts": 1714521600000})
    with pytest.raises(RowRejected, match="no processing"):
        UserChoiceWriter(force_replace=True).encode({"user_agent_id": "vec:1", "choice_acceptance_value": True})
    deleted = decode(UserChoiceWriter(operation="DELETE", processing_id="9").encode({"email_hash": "h"}))
    assert deleted == {"operation": "DELETE", "email_hash": "h", "user_choice": {"$processing_id": "9"}}


def test_association_lists_typed_identifiers():
    writer = UserIdentifiersAssociationWriter()
    flat = decode(writer.encode({**ACCOUNT, "email_hash": "h", "user_agent_id": "vec:2"}))
    assert flat["identifiers"] == [
        {"type": "USER_ACCOUNT", "compartment_id": "7", "user_account_id": "u1"},
        {"type": "USER_EMAIL", "hash": "h"},
        {"type": "USER_AGENT", "user_agent_id": "vec:2"},
    ]
    listed = decode(writer.encode({"identifiers": [{"email_hash": "h"}, {"user_agent_id": "vec:3"}]}))
    assert [i["type"] for i in listed["identifiers"]] == ["USER_EMAIL", "USER_AGENT"]
    with pytest.raises(RowRejected, match="at least two identifiers, found 1"):
        writer.encode({"email_hash": "h"})
    with pytest.raises(RowRejected, match="identifier 2: only one user identifier"):
        writer.encode({"identifiers": [{"email_hash": "h"}, {"email_hash": "h", "user_agent_id": "v"}]})


def test_deletion_is_one_typed_identifier():
    assert decode(UserIdentifiersDeletionWriter().encode({"email_hash": "h"})) == {"type": "USER_EMAIL", "hash": "h"}


def test_rejected_rows_reach_the_rejects_file(tmp_path):
    writer = UserProfileWriter()
    rows = [{**ACCOUNT, "plan": "a"}, {"plan": "b"}, {"email_hash": "h", "user_agent_id": "v", "plan": "c"}]
    written = []
    with RejectsFile(tmp_path / "rejects.csv") as rejects:
        for number, row in enumerate(rows, 1):
            try:
                written.append(writer.encode(row))
            except RowRejected as exc:
                rejects.add(number, writer.identifier(row), exc.reason)
    assert len(written) + rejects.count == len(rows) == 3
    lines = list(csv.reader((tmp_path / "rejects.csv").open()))
    assert lines[1][:2] == ["2", ""] and "no user identifier" in lines[1][2]
    assert lines[2][:2] == ["3", "email_hash=h, user_agent_id=v"] and "only one user identifier" in lines[2][2]


def test_choice_booleans_read_the_shared_true_false_words():
    """USER_CHOICE booleans once took only true/false; they now read the table the mapping uses."""
    writer = UserChoiceWriter(processing_id="newsletter", force_replace=True)
    for given, expected in (("yes", True), ("N", False), (1, True), (0, False)):
        line = decode(writer.encode({"user_agent_id": "vec:1", "choice_acceptance_value": given,
                                     "force_replace": given, "choice_ts": 1714521600000}))
        assert line["force_replace"] is expected and line["user_choice"]["$choice_acceptance_value"] is expected
    with pytest.raises(RowRejected, match="force_replace: expected true/false"):
        writer.encode({"user_agent_id": "vec:1", "choice_acceptance_value": True, "force_replace": 2,
                       "choice_ts": 1714521600000})
