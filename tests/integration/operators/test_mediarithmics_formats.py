"""Each writer's output is accepted line for line by the emulator; the platform's own checks catch what slips through."""

from __future__ import annotations

import time

import pytest

from airflow_provider_profiles.testing import create, serve
from airflow_provider_profiles.prepare.writer import RejectsFile, RowRejected
from airflow_provider_profiles.writers.mediarithmics import CSV, NDJSON, writer_for
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook

ACCOUNT = {"user_account_id": "u1", "compartment_id": "7"}
CASES = {
    "USER_PROFILE": ({}, [{**ACCOUNT, "plan": "pro"}, {"email_hash": "h", "operation": "DELETE"}, {"plan": "no id"}]),
    "USER_SEGMENT": ({"segment_id": 5, "expiration_duration": 0}, [{"email_hash": "h"}, {"user_agent_id": "vec:1", "operation": "DELETE"}, {**ACCOUNT, "email_hash": "h"}]),
    "USER_ACTIVITY": ({}, [{**ACCOUNT, "ts": "2024-05-01T10:00:00", "events": [{"$event_name": "buy"}]}, {"email_hash": "h", "ts": 1}, {"email_hash": "h"}]),
    "USER_CHOICE": ({"processing_id": "3", "force_replace": False}, [{"email_hash": "h", "choice_acceptance_value": True, "choice_ts": 1700000000000},
                                                                     {"user_agent_id": "v", "choice_acceptance_value": "x", "choice_ts": 1700000000000}]),
    "USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS": ({}, [{**ACCOUNT, "email_hash": "h"}, {"email_hash": "h"}]),
    "USER_IDENTIFIERS_DISSOCIATION_DECLARATIONS": ({}, [{"user_account_id": "u1", "email_hash": "h"}, {"email_hash": "h"}]),
    "USER_IDENTIFIERS_DELETION": ({}, [{"user_agent_id": "vec:1"}, {**ACCOUNT}, {"user_account_id": "u2"}, {}]),
    "USER_POINTS_DELETION": ({}, [{"user_point_id": "p1"}, {"email_hash": "h"}, {"user_point_id": "p2", "email_hash": "h"}]),
}


@pytest.fixture(scope="module")
def server():
    """One emulator for the module (each test works in its own document import): saves a start per test."""
    with serve(create("mediarithmics", token="t", pending_seconds=0, running_seconds=0)) as running:
        yield running


@pytest.fixture
def hook(server, airflow_connection):
    airflow_connection("mediarithmics_default", "mediarithmics", password="t", host=server.url, extra={"datamart_id": "1000"})
    return MediarithmicsHook()


def write(writer, rows, path, rejects_path):
    """Rows -> file + rejects file; returns (written, rejected)."""
    written = 0
    with path.open("w", encoding="utf-8") as out, RejectsFile(rejects_path) as rejects:
        if writer.header():
            out.write(writer.header())
        for number, row in enumerate(rows, 1):
            try:
                out.write(writer.encode(row))
                written += 1
            except RowRejected as exc:
                rejects.add(number, writer.identifier(row), exc.reason)
        return written, rejects.count


def finished(hook, import_id, execution_id):
    for _ in range(100):
        execution = hook.get_execution(import_id, execution_id)
        if execution["status"] not in ("PENDING", "RUNNING"):
            return execution
        time.sleep(0.02)
    raise AssertionError("execution did not finish")


@pytest.mark.parametrize("document_type, mime_type", [*((t, NDJSON) for t in CASES), ("USER_SEGMENT", CSV)])
def test_every_written_line_is_accepted_and_every_bad_row_rejected(hook, tmp_path, document_type, mime_type):
    options, rows = CASES[document_type]
    writer = writer_for(document_type, mime_type, **options)
    path = tmp_path / f"chunk.{writer.extension}"
    written, rejected = write(writer, rows, path, tmp_path / "rejects.csv")
    assert written + rejected == len(rows) and written >= 1 and rejected >= 1
    import_id = hook.create_document_import(document_type, mime_type, f"test {document_type}")["id"]
    execution = finished(hook, import_id, hook.create_execution(import_id, path)["id"])
    assert execution["status"] == "SUCCEEDED"
    assert (execution["result"]["total_success"], execution["result"]["total_failure"]) == (written, 0)


@pytest.mark.parametrize(
    "document_type, line, error",
    [
        ("USER_PROFILE", '{"operation":"UPSERT","email_hash":"h","user_agent_id":"v","user_profile":{"a":1}}', "exactly one user identifier"),
        ("USER_SEGMENT", '{"operation":"UPDATE","email_hash":"h","expiration_duration":0}', "segment_id or segment_technical_name"),
        ("USER_SEGMENT", '{"operation":"UPDATE","email_hash":"h","segment_id":"1","expiration_duration":-5}', "expiration_duration"),
        ("USER_ACTIVITY", '{"$email_hash":{"$hash":"h"},"$type":"TOUCH","$ts":"yesterday"}', "$ts must be epoch milliseconds"),
        ("USER_CHOICE", '{"operation":"UPSERT","email_hash":"h","user_choice":{}}', "$processing_id"),
        ("USER_IDENTIFIERS_ASSOCIATION_DECLARATIONS", '{"identifiers":[{"type":"USER_EMAIL","hash":"h"}]}', "at least two"),
        ("USER_IDENTIFIERS_DELETION", '{"type":"USER_ACCOUNT","compartment_id":"7"}', "misses user_account_id"),
        ("USER_POINTS_DELETION", '{"type":"USER_POINT"}', "misses user_point_id"),
    ],
)
def test_platform_counts_invalid_lines_as_failures(hook, document_type, line, error):
    import_id = hook.create_document_import(document_type, NDJSON, "bad lines")["id"]
    execution = finished(hook, import_id, hook.create_execution(import_id, (line + "\n").encode())["id"])
    assert execution["status"] == "FAILED" and execution["result"]["total_failure"] == 1
    assert error in hook.error_lines(execution["result"]["error_file_uri"])[0]
