"""The corrected mediarithmics line contract (developer.mediarithmics.io bulk-processing pages per
document type, and the user-identifiers page): what each writer must send and refuse."""

from __future__ import annotations

import json

import pytest

from airflow_provider_profiles.prepare.writer import RowRejected
from airflow_provider_profiles.writers.mediarithmics import (
    UserChoiceWriter,
    UserIdentifiersDeletionWriter,
    UserProfileWriter,
    UserSegmentWriter,
    writer_for,
)


def decode(line: str) -> dict:
    return json.loads(line)


@pytest.mark.parametrize("make", [
    lambda: UserProfileWriter(), lambda: UserSegmentWriter(segment_id=5, expiration_duration=0),
    lambda: UserChoiceWriter(processing_id="p", force_replace=True), lambda: UserIdentifiersDeletionWriter(),
], ids=["profile", "segment", "choice", "deletion"])
def test_user_account_id_without_compartment_uses_the_default_compartment(make):
    writer = make()
    row = {"user_account_id": "u1", "plan": "pro", "choice_acceptance_value": True, "choice_ts": 1700000000000}
    line = decode(writer.encode(row))
    assert line.get("user_account_id") == "u1" and "compartment_id" not in line


def test_the_same_account_in_two_compartments_is_two_users():
    writer = UserProfileWriter()
    keys = {
        writer.identifier({"user_account_id": "u1", "compartment_id": "7"}),
        writer.identifier({"user_account_id": "u1", "compartment_id": "8"}),
        writer.identifier({"user_account_id": "u1"}),
        writer.identifier({"email_hash": "u1"}),
        writer.identifier({"user_agent_id": "u1"}),
    }
    assert len(keys) == 5
    assert writer.identifier({"user_account_id": "u1", "compartment_id": 7}) == writer.identifier(
        {"user_account_id": "u1", "compartment_id": "7"})


def test_segment_expiration_duration_is_required_at_build_time():
    with pytest.raises(ValueError, match="expiration_duration is mandatory"):
        writer_for("USER_SEGMENT", segment_id=5)
    # a per-row value may stand in for the writer's
    writer = UserSegmentWriter(segment_id=5, expiration_duration=None, expiration_per_row=True)
    assert decode(writer.encode({"email_hash": "h", "expiration_duration": 30}))["expiration_duration"] == 30
    with pytest.raises(RowRejected, match="expiration_duration"):
        writer.encode({"email_hash": "h"})


def test_segment_expiration_ts_and_data_bag():
    writer = UserSegmentWriter(segment_id=5, expiration_duration=0)
    line = decode(writer.encode({"email_hash": "h", "expiration_ts": "2030-01-01T00:00:00", "data_bag": '{"score": 3}'}))
    assert line["expiration_duration"] == 0 and line["expiration_ts"] == 1893456000000
    assert line["data_bag"] == '{"score": 3}'


def test_choice_upsert_carries_force_replace_and_choice_ts():
    writer = UserChoiceWriter(processing_id="42", force_replace=False)
    line = decode(writer.encode({"email_hash": "h", "choice_acceptance_value": True, "choice_ts": 1700000000000}))
    assert line["force_replace"] is False
    assert line["user_choice"] == {"$processing_id": "42", "$choice_acceptance_value": True, "$choice_ts": 1700000000000}
    with pytest.raises(RowRejected, match="choice_ts"):
        writer.encode({"email_hash": "h", "choice_acceptance_value": True})
    with pytest.raises(ValueError, match="force_replace is mandatory"):
        UserChoiceWriter(processing_id="42")
    delete = decode(UserChoiceWriter(operation="DELETE", processing_id="42").encode({"email_hash": "h"}))
    assert delete == {"operation": "DELETE", "email_hash": "h", "user_choice": {"$processing_id": "42"}}


def test_choice_needs_a_processing_id_not_a_token():
    with pytest.raises(RowRejected, match=r"\$processing_id"):
        UserChoiceWriter(force_replace=True).encode({"email_hash": "h", "processing_token": "tok",
                                                      "choice_acceptance_value": True, "choice_ts": 1700000000000})


def test_user_points_deletion_lines():
    writer = writer_for("USER_POINTS_DELETION")
    assert decode(writer.encode({"user_account_id": "u1", "compartment_id": "7"})) == {
        "type": "USER_ACCOUNT", "compartment_id": "7", "user_account_id": "u1"}
    assert decode(writer.encode({"email_hash": "h"})) == {"type": "USER_EMAIL", "hash": "h"}
    assert decode(writer.encode({"user_point_id": "95772db3"})) == {"type": "USER_POINT", "user_point_id": "95772db3"}
    with pytest.raises(RowRejected, match="only one user identifier"):
        writer.encode({"user_point_id": "p", "email_hash": "h"})


def test_user_identifiers_dissociation_lines():
    writer = writer_for("USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS")
    line = decode(writer.encode({"user_account_id": "u1", "email_hash": "h"}))
    assert line == {"identifiers": [{"type": "USER_ACCOUNT", "user_account_id": "u1"}, {"type": "USER_EMAIL", "hash": "h"}]}
    with pytest.raises(RowRejected, match="at least two identifiers"):
        writer.encode({"email_hash": "h"})


def test_the_duplicate_check_keys_users_by_type_compartment_and_value(tmp_path):
    from airflow_provider_profiles.writers import get_writer
    from airflow_provider_profiles.prepare.engine import prepare

    source = tmp_path / "in.csv"
    source.write_text("user_account_id,compartment_id,email_hash,plan\n"
                      "u1,7,,a\nu1,8,,b\nu1,,,c\n,,u1,d\nu1,7,,e\n")
    result = prepare(str(source), get_writer("mediarithmics", "USER_PROFILE"), str(tmp_path / "out.ndjson"))
    assert (result.written, result.rejected) == (4, 1)  # only the last row repeats a user (u1 in compartment 7)
    lines = [json.loads(line) for line in (tmp_path / "out.ndjson").read_text().splitlines()]
    assert [line["user_profile"]["plan"] for line in lines] == ["a", "b", "c", "d"]
