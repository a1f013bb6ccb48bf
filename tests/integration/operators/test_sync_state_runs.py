"""The sync state through real Airflow runs (``dag.test``) against the Localytics emulator: a re-run
of a committed run whose upload fails, a backfill of an older date, uploads with vendor failures.

prepare (CSV, only_changed) -> upload (Localytics) -> commit
"""

from __future__ import annotations

import datetime as dt
import json
import textwrap
import uuid

import pytest

from airflow_provider_profiles.operators.prepare import CommitSyncStateOperator, ProfilesFileTransformOperator

DAG = """
import datetime as dt
from airflow.sdk import DAG
from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator
from airflow_provider_profiles.operators.prepare import CommitSyncStateOperator, ProfilesFileTransformOperator

with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
    prepare = ProfilesFileTransformOperator(
        task_id="prepare", source_path={source!r}, vendor="localytics", retries=0,
        writer_options={{"customer_id": "id", "attributes": {{"name": "name", "plan": "plan"}}}},
        output_path={work!r} + "/{{{{ run_id }}}}/users.ndjson",
        only_changed=True, sync_state_path={state!r}, sync_run_key={run_key!r}{prepare_options},
    )
    upload = LocalyticsProfileImportOperator(
        task_id="upload", file="{{{{ ti.xcom_pull(task_ids='prepare')['output'] }}}}", conn_id={api_conn!r},
        poll_interval=0.1, retries=0,
    )
    commit = CommitSyncStateOperator(task_id="commit", sync_state_path={state!r}, sync_run_key={run_key!r},
                                     retries=0{commit_options})
    prepare >> upload >> commit
"""

TUESDAY = dt.datetime(2026, 11, 24, 6, tzinfo=dt.timezone.utc)


@pytest.fixture
def sync_dag(tmp_path, emulator, airflow_connection, airflow_db, run_dag):
    """``sync_dag(rows, run_key, good=True, commit_options="", prepare_options="", vendor_answer=None,
    **dag_test)`` runs the DAG once;
    returns (task states, prepare's result, the emulator's profiles)."""
    server = emulator("localytics", time_scale=50)
    connections = {}
    for good, secret in ((True, "localytics-secret"), (False, "wrong")):
        connections[good] = f"api_{uuid.uuid4().hex[:6]}"
        airflow_connection(connections[good], "localytics", login="localytics-key", password=secret, host=server.url,
                           extra={"org_id": "60"})
    source = tmp_path / "users.csv"

    def run(rows, run_key, good=True, commit_options="", prepare_options="", vendor_answer=None, **dag_test):
        from airflow.models.xcom import XComModel
        from airflow.utils.session import create_session

        if vendor_answer is not None:  # the import's first status answer
            server.emulator.inject("status", match="GET /v1/imports/profiles/status/", status=200, body=vendor_answer)

        source.write_text("id,name,plan\n" + "".join(f"{i},{n},{p}\n" for i, n, p in rows))
        dag_id = f"sync_{uuid.uuid4().hex[:10]}"
        dag_file = tmp_path / f"{dag_id}.py"
        dag_file.write_text(textwrap.dedent(DAG.format(
            dag_id=dag_id, source=str(source), work=str(tmp_path / "work"), state=str(tmp_path / "state"),
            run_key=run_key, api_conn=connections[good], commit_options=commit_options,
            prepare_options=prepare_options)))
        dag_run, states = run_dag(dag_file, **dag_test)
        with create_session() as session:
            row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids="prepare",
                                                     map_indexes=-1, key="return_value")).first()
            prepared = XComModel.deserialize_value(row) if row is not None else None
        return states, prepared, server.emulator.snapshot()["profiles"].get("org_id:60", {})

    return run


USERS = [("u1", "Ann", "free"), ("u2", "Bo", "free"), ("u3", "Cy", "free")]


def test_a_failed_rerun_of_a_committed_run_loses_no_change(sync_dag):
    """The run for 2026-11-23 committed; it is run again (cleared) after u2 moved to 'pro', and
    that upload fails. The next day's run must still send u2: the re-run did not replace what the
    first one committed."""
    states, prepared, _ = sync_dag(USERS, "2026-11-23")
    assert states["commit"] == "success", states
    moved = [("u2", "Bo", "pro") if user[0] == "u2" else user for user in USERS]
    states, prepared, _ = sync_dag(moved, "2026-11-23", good=False)
    assert states["upload"] == "failed" and states["commit"] != "success"
    assert prepared["written"] == 1
    states, prepared, profiles = sync_dag(moved, "2026-11-24")
    assert states["commit"] == "success", states
    assert (prepared["written"], prepared["unchanged"]) == (1, 2)
    assert "pro" in json.dumps(profiles["u2"])


def test_a_backfill_of_an_older_date_does_not_send_over_a_newer_sync(sync_dag):
    states, _, _ = sync_dag(USERS, "{{ run_id }}", logical_date=TUESDAY)
    assert states["commit"] == "success", states
    older = [("u1", "Ann", "trial")] + USERS[1:]
    states, _, profiles = sync_dag(older, "{{ run_id }}", logical_date=TUESDAY - dt.timedelta(days=1))
    assert states["prepare"] == "failed" and states["upload"] != "success", states  # nothing sent
    assert "trial" not in json.dumps(profiles["u1"])
    # asked for: the older run sends and commits
    states, prepared, profiles = sync_dag(older, "{{ run_id }}", logical_date=TUESDAY - dt.timedelta(days=2),
                                          prepare_options=", sync_allow_older=True", commit_options=", allow_older=True")
    assert states["commit"] == "success", states
    assert prepared["written"] == 1 and "trial" in json.dumps(profiles["u1"])


def test_rows_the_vendor_failed_are_not_committed_as_sent(sync_dag):
    """Localytics reports one of three lines failed (an injected status answer: our writer rejects
    what the emulator would fail); the upload task succeeds, as max_failed_ratio is not set. The
    commit is refused, so the next run sends the rows again; accept_vendor_failures=True commits."""
    one_failed = {"status": "Completed", "error_log": None, "upload_statistics": {
        "successful_imports": 2, "parsed_imports": 2, "failed_imports": 1, "total_number_of_imports": 3}}
    options = ", upload_results=upload.output"
    states, prepared, _ = sync_dag(USERS, "first", commit_options=options, vendor_answer=one_failed)
    assert states["upload"] == "success" and states["commit"] == "failed", states
    states, prepared, _ = sync_dag(USERS, "second", commit_options=options)
    assert (prepared["written"], prepared["unchanged"]) == (3, 0)  # nothing was committed: all again
    assert states["commit"] == "success", states
    states, prepared, _ = sync_dag(USERS, "third", commit_options=options + ", accept_vendor_failures=True",
                                   vendor_answer=one_failed)
    assert states["commit"] == "success" and prepared["written"] == 0, states


def test_vendor_failures_are_read_from_the_shared_result_of_every_vendor():
    from airflow_provider_profiles.operators.prepare import vendor_failures
    from airflow_provider_profiles.operators.result import records_result

    assert vendor_failures(None) == (0, 0)
    assert vendor_failures(records_result(rejected=0, skipped=0, vendor_succeeded=3, vendor_failed=0)) == (0, 0)
    mapped = [records_result(rejected=0, skipped=0, vendor_succeeded=1, vendor_failed=1),
              records_result(rejected=0, skipped=0, vendor_succeeded=5, vendor_failed=2)]
    assert vendor_failures(mapped) == (3, 0)
    loaded = records_result(read=5, rejected=1, skipped=1, vendor_succeeded=2, vendor_failed=1)  # a loader's
    assert vendor_failures(loaded) == (2, 0)  # rejected before sending counts as not taken too
    unreported = records_result(rejected=0, skipped=0, sent=4)  # the vendor gave no per-record outcome
    assert vendor_failures([unreported, mapped[0]]) == (1, 1)
    with pytest.raises(TypeError, match="not a result of an upload, load or erase task"):
        vendor_failures([{"total_success": 5, "total_failure": 2}])  # an old dialect is not guessed at


def test_accumulating_changes_are_refused_with_only_changed_when_the_dag_is_parsed():
    """An increment of 1 on two days is two visits; a sync would see the second row as unchanged."""
    with pytest.raises(ValueError, match=r"only_changed=True cannot send column\(s\) \['visits'\]"):
        ProfilesFileTransformOperator(
            task_id="p", source_path="in.csv", vendor="localytics", output_path="o.ndjson", only_changed=True,
            sync_state_path="state", writer_options={"customer_id": "id", "attributes": {
                "plan": "plan", "visits": {"attr": "visits", "op": "increment"}}},
        )
    ProfilesFileTransformOperator(  # without only_changed, repeats add up as they should
        task_id="q", source_path="in.csv", vendor="localytics", output_path="o.ndjson",
        writer_options={"customer_id": "id", "attributes": {"visits": {"attr": "visits", "op": "increment"}}},
    )
    assert CommitSyncStateOperator(task_id="c", sync_state_path="s").template_fields[-1] == "upload_results"
