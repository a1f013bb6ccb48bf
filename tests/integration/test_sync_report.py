"""The declared sync's report, run for real (``dag.test``) against the emulators: the vendor's reasons for
each record it failed (read from mediarithmics' error file, only where the supplied-URL policy allows),
the extract stage timed apart from prepare, and the vendor wait of an upload that waited in the worker.
"""

from __future__ import annotations

import csv
import textwrap
import uuid

import pytest

from tests.integration.test_sync_group import DAG, users

MEDIARITHMICS = dict(
    destination='Destination("mediarithmics", conn_id="{conn}", document_type="USER_PROFILE")',
    mapping={"user_account_id": "id", "compartment_id": {"const": "1600"}, "name": "name", "city": "city"},
)


@pytest.fixture
def mics_sync(tmp_path, emulator, airflow_connection, run_dag):
    """``mics_sync(rows, emulator_config, extra="")`` runs a mediarithmics sync once against an emulator
    started with that config; returns (task states, the report, the emulator server)."""

    def run(rows, config, extra=""):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        server = emulator("mediarithmics", **{"pending_seconds": 0, "running_seconds": 0, **config})
        conn_id = f"report_mics_{uuid.uuid4().hex[:6]}"
        airflow_connection(conn_id, **server.emulator.connection())
        data = tmp_path / "users.csv"
        with data.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["id", "email", "name", "city"])
            writer.writeheader()
            writer.writerows(rows)
        dag_id = f"report_{uuid.uuid4().hex[:8]}"
        dag_file = tmp_path / f"{dag_id}.py"
        dag_file.write_text(textwrap.dedent(DAG.format(
            dag_id=dag_id, source=f"FileSource({str(data)!r})",
            destination=MEDIARITHMICS["destination"].replace("{conn}", conn_id), mapping=MEDIARITHMICS["mapping"],
            mode="upsert", work=str(tmp_path / "work"), preview=False, extra=extra)))
        dag_run, states = run_dag(dag_file)
        with create_session() as session:
            row = None
            for key in ("return_value", "sync_report"):  # a failed report still pushed what it found
                row = row or session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id,
                                                                task_ids="sync.report", map_indexes=-1, key=key)).first()
            report = XComModel.deserialize_value(row) if row is not None else None
        return states, report, server

    return run


def not_sent(report) -> list[dict]:
    with open(report["not_sent_file"], newline="") as handle:
        return list(csv.DictReader(handle))


REFUSED = "unknown compartment: the platform refused this line"
ACCEPT = ', commit_options={"accept_vendor_failures": True}'


@pytest.mark.parametrize("held", [0, 1], ids=["done-at-the-first-check", "deferred"])
def test_the_report_names_each_record_the_vendor_failed_with_its_reason(mics_sync, held):
    refused = {4, 9, 17}
    rows = users(count=30, changed=tuple(refused))  # the changed rows' names hold "-changed"
    states, report, server = mics_sync(rows, {"refuse_lines": {"-changed": REFUSED}, "hold_ended_jobs": held},
                                       extra=', upload_options={"poll_interval": 0.2}' + ACCEPT)
    assert (report["seconds"]["vendor wait"] is not None) and (held == 0 or report["seconds"]["upload"] is not None)
    assert all(state == "success" for state in states.values()), states
    assert (report["sent"], report["vendor_succeeded"], report["vendor_failed"]) == (30, 27, 3), report
    failed = [row for row in not_sent(report) if row["stage"] == "vendor"]
    assert sorted(row["id"] for row in failed) == [f"user_account_id=u{i:04d} (compartment 1600)" for i in sorted(refused)]
    assert all(row["reason"] == REFUSED and row["line"] for row in failed), failed
    assert len(report["vendor_failed_reasons"]) == 3
    assert all(reason.startswith("user_account_id=u") and reason.endswith(REFUSED)
               for reason in report["vendor_failed_reasons"]), report["vendor_failed_reasons"]


def test_many_vendor_failures_keep_a_sample_in_xcom_and_all_in_the_csv(mics_sync):
    rows = users(count=45, changed=tuple(range(1, 41)))
    states, report, _ = mics_sync(rows, {"refuse_lines": {"-changed": REFUSED}},
                                  extra=', upload_options={"poll_interval": 0.2}' + ACCEPT)
    assert all(state == "success" for state in states.values()), states
    assert report["vendor_failed"] == 40, report
    assert len([row for row in not_sent(report) if row["stage"] == "vendor"]) == 40
    assert len(report["vendor_failed_reasons"]) == 5


@pytest.mark.parametrize("address", [
    "http://localhost:{port}/errors.ndjson",   # plain http to a host that is not the connection's
    "file:///etc/passwd",                      # not http(s)
])
def test_a_hostile_error_file_address_is_not_fetched_and_the_report_says_why(mics_sync, servers, address):
    bait = servers(lambda received: b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
    rows = users(count=10, changed=(3,))
    states, report, _ = mics_sync(rows, {"refuse_lines": {"-changed": REFUSED},
                                         "error_file_uri": address.format(port=bait.port)},
                                  extra=', upload_options={"poll_interval": 0.2}' + ACCEPT)
    assert all(state == "success" for state in states.values()), states
    assert bait.received == []
    assert report["vendor_failed"] == 1
    assert not [row for row in not_sent(report) if row["stage"] == "vendor"]
    (reason,) = [r for r in report["vendor_failed_reasons"] if r.startswith("vendor failures not listed")]
    assert "error file not read" in reason and "refused the URL" in reason, reason


def test_stage_seconds_time_the_extract_apart_from_prepare(mics_sync):
    states, report, _ = mics_sync(users(count=20), {}, extra=', upload_options={"poll_interval": 0.2}')
    assert all(state == "success" for state in states.values()), states
    seconds = report["seconds"]
    assert list(seconds) == ["extract", "prepare", "split", "upload", "vendor wait", "commit"], seconds
    assert seconds["extract"] is not None and seconds["prepare"] is not None
    assert report["bottleneck"] in seconds


def test_vendor_wait_is_timed_when_the_upload_waited_in_the_worker(mics_sync):
    # the execution reads as running for its first two status checks: the task polls in the worker
    states, report, server = mics_sync(users(count=20), {"hold_ended_jobs": 2},
                                       extra=', upload_options={"poll_interval": 0.01, "deferrable": False}')
    assert all(state == "success" for state in states.values()), states
    polls = sum(count for route, count in server.emulator.counters.items()
                if route.startswith("GET ") and "/executions/" in route)
    assert polls >= 3, server.emulator.counters  # the check before waiting, then polls in the worker
    assert report["seconds"]["vendor wait"] is not None, report["seconds"]
