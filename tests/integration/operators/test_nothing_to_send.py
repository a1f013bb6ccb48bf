"""The days nothing changed: an incremental run with nothing to send is a success that sends nothing,
creates nothing at the vendor, and still commits and reports. And every operator that takes a file
takes the upstream task's output as it is (``prepared.output``, ``chunks.output``), keeping the
dependency. Real DAG runs (``dag.test``) against the emulators over HTTP.
"""

from __future__ import annotations

import json
import textwrap
import uuid

import pytest

from tests.conftest import run_dag_file

HEADER = """
import datetime as dt
from airflow.sdk import DAG, task
from airflow_provider_profiles.operators.apsis_one import ApsisOneProfileImportOperator
from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator
from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator
from airflow_provider_profiles.operators.mediarithmics import (
    MediarithmicsCreateDocumentImportOperator, MediarithmicsUploadOperator)
from airflow_provider_profiles.operators.prepare import (
    CommitSyncStateOperator, ProfilesFileTransformOperator, SplitFileOperator)

@task
def report(results):
    from airflow_provider_profiles.operators.result import results_of, total
    found = results_of(results)
    return {{name: total(found, name) for name in ("read", "sent", "vendor_succeeded", "vendor_failed")}}

with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
"""


def run(tmp_path, body, **values):
    """Run a DAG of ``body`` (formatted with ``values`` as reprs); return ({task: state}, {task: return value})."""
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    dag_id = f"nothing_{uuid.uuid4().hex[:10]}"
    source = HEADER.format(dag_id=dag_id) + textwrap.indent(
        textwrap.dedent(body).format(**{k: repr(v) for k, v in values.items()}), "    ")
    dag_file = tmp_path / f"{dag_id}.py"
    dag_file.write_text(source)
    dag_run, states = run_dag_file(dag_file)
    returned = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids=ti.task_id,
                                                     map_indexes=ti.map_index, key="return_value")).first()
            name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            returned[name] = XComModel.deserialize_value(row) if row is not None else None
    return states, returned


ZEROS = {"read": 0, "rejected": 0, "skipped": 0, "sent": 0, "vendor_succeeded": 0, "vendor_failed": 0}


def counts(result):
    return {name: result[name] for name in ZEROS}


LOCALYTICS_SYNC = """
prepared = ProfilesFileTransformOperator(
    task_id="prepare", source_path={source}, vendor="localytics", retries=0,
    writer_options={{"customer_id": "id", "attributes": {{"plan": "plan"}}}},
    output_path={work} + "/{{{{ run_id }}}}/users.ndjson", only_changed=True, sync_state_path={state})
chunks = SplitFileOperator(task_id="split", source_path=prepared.output, vendor="localytics")
upload = LocalyticsProfileImportOperator.partial(task_id="upload", conn_id={conn_id}, poll_interval=0.1,
                                                 retries=0).expand(file=chunks.output)
CommitSyncStateOperator(task_id="commit", sync_state_path={state}, upload_results=upload.output, retries=0)
report(upload.output)
"""


def test_localytics_incremental_run_with_nothing_changed_uploads_nothing_and_commits(
        tmp_path, emulator, airflow_connection, airflow_db):
    server = emulator("localytics", time_scale=50)
    conn_id = airflow_connection(f"loc_{uuid.uuid4().hex[:6]}", "localytics", login="localytics-key",
                                 password="localytics-secret", host=server.url, extra={"org_id": "60"})
    source = tmp_path / "users.csv"
    source.write_text("id,plan\nu1,free\nu2,pro\n")
    values = dict(source=str(source), work=str(tmp_path / "work"), state=str(tmp_path / "state"), conn_id=conn_id)
    states, returned = run(tmp_path, LOCALYTICS_SYNC, **values)
    assert set(states.values()) == {"success"}, states
    uploads = server.emulator.counters["POST /v1/imports/profiles/upload"]
    assert uploads == 1

    states, returned = run(tmp_path, LOCALYTICS_SYNC, **values)  # the same rows: nothing changed
    assert set(states.values()) == {"success"}, states  # upload, commit and report ran, nothing skipped
    assert set(states) >= {"upload[0]", "commit", "report"}
    assert returned["prepare"]["written"] == 0
    assert counts(returned["upload[0]"]) == ZEROS and returned["upload[0]"]["details"]["nothing_sent"] is True
    assert returned["report"] == {"read": 0, "sent": 0, "vendor_succeeded": 0, "vendor_failed": 0}
    assert server.emulator.counters["POST /v1/imports/profiles/upload"] == uploads  # no upload slot spent


MEDIARITHMICS_SYNC = """
prepared = ProfilesFileTransformOperator(
    task_id="prepare", source_path={source}, vendor="mediarithmics", writer_format="USER_PROFILE", retries=0,
    output_path={work} + "/{{{{ run_id }}}}/profiles.ndjson", allow_empty=True)
chunks = SplitFileOperator(task_id="split", source_path=prepared.output, vendor="mediarithmics", max_rows=1)
created = MediarithmicsCreateDocumentImportOperator(
    task_id="create", document_type="USER_PROFILE", name="profiles {{{{ run_id }}}}", files=chunks.output)
upload = MediarithmicsUploadOperator.partial(task_id="upload", document_import_id=created.output,
                                             poll_interval=0.1, retries=0).expand(file=chunks.output)
report(upload.output)
"""


def test_mediarithmics_run_with_nothing_to_send_creates_no_document_import(
        tmp_path, emulator, airflow_connection, airflow_db):
    server = emulator("mediarithmics", token="tok-nothing", pending_seconds=0.1, running_seconds=0.1)
    airflow_connection("mediarithmics_default", "mediarithmics", password="tok-nothing", host=server.url,
                       extra={"datamart_id": "1000"})
    source = tmp_path / "users.csv"
    source.write_text("user_account_id,compartment_id,plan\nu1,1600,free\nu2,1600,pro\n")
    values = dict(source=str(source), work=str(tmp_path / "work"))
    states, returned = run(tmp_path, MEDIARITHMICS_SYNC, **values)
    assert set(states.values()) == {"success"}, states
    assert len(server.emulator.snapshot()["document_imports"]) == 1
    assert returned["report"]["sent"] == 2

    source.write_text("user_account_id,compartment_id,plan\n")  # a day without a row to send
    states, returned = run(tmp_path, MEDIARITHMICS_SYNC, **values)
    assert set(states.values()) == {"success"}, states
    assert returned["split"] and len(returned["split"]) == 1  # one chunk without a record, as for every vendor
    assert returned["create"] is None
    assert counts(returned["upload[0]"]) == ZEROS
    assert returned["report"] == {"read": 0, "sent": 0, "vendor_succeeded": 0, "vendor_failed": 0}
    snapshot = server.emulator.snapshot()
    assert len(snapshot["document_imports"]) == 1 and len(snapshot["executions"]) == 2


def test_apsis_one_and_gainsight_px_send_no_request_for_a_file_without_records(
        tmp_path, emulator, airflow_connection, airflow_db):
    apsis = emulator("apsis_one")
    airflow_connection("apsis_one_default", "apsis_one", login="apsis-client", password="apsis-secret",
                       host=apsis.url)
    gpx = emulator("gainsight_px")
    airflow_connection("gainsight_px_default", "gainsight_px", password="px-api-key", host=gpx.url,
                       extra={"product_key": "AP-TESTPRODUCT-2"})
    header_only = tmp_path / "profiles.csv"
    header_only.write_text("email,first_name\n")
    empty = tmp_path / "users.ndjson"
    empty.write_text("")
    states, returned = run(tmp_path, """
    ApsisOneProfileImportOperator(task_id="apsis", section="s", file={header_only}, keyspace="email",
                                  keyspace_column="email", attributes={{"first_name": "first_name"}})
    GainsightPXLoadOperator(task_id="gpx", source=[{empty}], field_mapping={{"identifyId": "id"}})
    """, header_only=str(header_only), empty=str(empty))
    assert states == {"apsis": "success", "gpx": "success"}, states
    assert counts(returned["apsis"]) == ZEROS and counts(returned["gpx"]) == ZEROS
    assert sum(apsis.emulator.counters.values()) == 0 and sum(gpx.emulator.counters.values()) == 0


def test_upload_operators_take_the_prepare_result_directly(tmp_path, emulator, airflow_connection, airflow_db):
    """``file=prepared.output`` (the prepare task's dict), not ``prepared.output["output"]`` (an XCom key
    that does not exist) nor a Jinja pull (which drops the dependency)."""
    server = emulator("localytics", time_scale=50)
    conn_id = airflow_connection(f"loc_{uuid.uuid4().hex[:6]}", "localytics", login="localytics-key",
                                 password="localytics-secret", host=server.url, extra={"org_id": "60"})
    source = tmp_path / "users.csv"
    source.write_text("id,plan\nu1,free\nu2,pro\n")
    states, returned = run(tmp_path, """
    prepared = ProfilesFileTransformOperator(
        task_id="prepare", source_path={source}, vendor="localytics",
        writer_options={{"customer_id": "id", "attributes": {{"plan": "plan"}}}}, output_path={output})
    upload = LocalyticsProfileImportOperator(task_id="upload", conn_id={conn_id}, file=prepared.output,
                                             poll_interval=0.1)
    assert upload.upstream_task_ids == {{"prepare"}}
    """, source=str(source), output=str(tmp_path / "out" / "users.ndjson"), conn_id=conn_id)
    assert states == {"prepare": "success", "upload": "success"}, states
    assert returned["upload"]["vendor_succeeded"] == 2
    assert set(server.emulator.snapshot()["profiles"]["org_id:60"]) == {"u1", "u2"}


def test_one_task_given_several_chunks_says_to_map_it(tmp_path):
    from airflow_provider_profiles.operators.inputs import input_file

    first, second = tmp_path / "a.ndjson", tmp_path / "b.ndjson"
    first.write_text('{"a": 1}\n')
    second.write_text("\n")
    assert str(input_file([str(first)])) == str(first)
    assert input_file({"output": str(first), "written": 0}) is None
    assert str(input_file({"output": str(first), "written": 0, "deleted": 1})) == str(first)
    assert input_file({"output": str(second), "written": 1}) is None  # what the file holds decides
    assert input_file([]) is None
    with pytest.raises(ValueError, match=r"map the task over them"):
        input_file([str(first), str(second)])
    with pytest.raises(TypeError, match="prepare task's result"):
        input_file({"path": "x"})
    assert json.dumps(str(input_file(first)))


def test_mostly_rejected_rows_fail_the_prepare_by_default_and_nothing_is_sent(
        tmp_path, emulator, airflow_connection, airflow_db):
    """8 of 10 rows carry a decimal where an integer is mapped: the prepare fails (no ratio set) with
    the count, the ratio and the first reasons; the upload never runs."""
    server = emulator("localytics", time_scale=50)
    conn_id = airflow_connection(f"loc_{uuid.uuid4().hex[:6]}", "localytics", login="localytics-key",
                                 password="localytics-secret", host=server.url, extra={"org_id": "60"})
    source = tmp_path / "users.csv"
    source.write_text("id,score\n" + "".join(f"u{i},{i}.5\n" for i in range(8)) + "u8,3\nu9,4\n")
    body = """
    prepared = ProfilesFileTransformOperator(
        task_id="prepare", source_path={source}, vendor="localytics", output_path={output}, retries=0,
        writer_options={{"customer_id": "id", "attributes": {{"score": "score"}}}},
        mapping={{"id": "id", "score": {{"source": "score", "type": "int"}}}})
    LocalyticsProfileImportOperator(task_id="upload", conn_id={conn_id}, file=prepared.output, poll_interval=0.1)
    """
    states, _ = run(tmp_path, body, source=str(source), output=str(tmp_path / "out.ndjson"), conn_id=conn_id)
    assert states == {"prepare": "failed", "upload": "upstream_failed"}, states
    assert server.emulator.counters["POST /v1/imports/profiles/upload"] == 0

    from airflow.providers.common.compat.sdk import AirflowFailException

    from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator

    options = dict(task_id="prepare", source_path=str(source), vendor="localytics",
                   output_path=str(tmp_path / "direct.ndjson"),
                   writer_options={"customer_id": "id", "attributes": {"score": "score"}},
                   mapping={"id": "id", "score": {"source": "score", "type": "int"}})
    with pytest.raises(AirflowFailException) as refused:
        ProfilesFileTransformOperator(**options).execute({})
    message = str(refused.value)
    assert "8 of 10 rows rejected (80.0%" in message and "max_rejected_ratio=0.1" in message
    assert "record 1 (u0): score: expected an integer, got '0.5'" in message
    assert ProfilesFileTransformOperator(**options, max_rejected_ratio=None).execute({})["written"] == 2


def test_a_deferrable_localytics_upload_waits_for_its_slot_in_the_triggerer(
        tmp_path, emulator, airflow_connection, airflow_db, capfd):
    """The hour's uploads are used (the vendor answers 429 with Retry-After): the task defers to a
    timer instead of sleeping in the worker, comes back and uploads once."""
    server = emulator("localytics", time_scale=50)
    conn_id = airflow_connection(f"loc_{uuid.uuid4().hex[:6]}", "localytics", login="localytics-key",
                                 password="localytics-secret", host=server.url,
                                 extra={"org_id": "60", "max_attempts": 1})
    server.emulator.inject("status", match="POST /v1/imports/profiles/upload", count=1, status=429, retry_after=1)
    changes = tmp_path / "changes.ndjson"
    changes.write_text('{"customer_id":"a","changes":[{"op":"increment","attr":"visits","value":1}]}\n')
    states, returned = run(tmp_path, """
    LocalyticsProfileImportOperator(task_id="upload", conn_id={conn_id}, file={file}, deferrable=True,
                                    poll_interval=0.1, retries=0)
    """, conn_id=conn_id, file=str(changes))
    assert states == {"upload": "success"}, states
    assert returned["upload"]["vendor_succeeded"] == 1
    assert "no Localytics upload slot free (Localytics answered 429): deferring until" in capfd.readouterr().out
    assert server.emulator.counters["POST /v1/imports/profiles/upload"] == 2  # refused once, then sent once
    assert server.emulator.snapshot()["profiles"]["org_id:60"]["a"] == {"visits": 1}


def test_upload_operators_read_the_file_through_a_named_storage_connection(
        tmp_path, emulator, airflow_connection, airflow_db):
    """``storage_conn_id`` is the connection ``ObjectStoragePath`` opens the file with."""
    from airflow_provider_profiles.operators.inputs import input_file

    server = emulator("localytics", time_scale=50)
    conn_id = airflow_connection(f"loc_{uuid.uuid4().hex[:6]}", "localytics", login="localytics-key",
                                 password="localytics-secret", host=server.url, extra={"org_id": "60"})
    airflow_connection("profile_files", "fs")
    changes = tmp_path / "changes.ndjson"
    changes.write_text('{"customer_id":"a","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n')
    opened = input_file(changes.as_uri(), "profile_files")
    # the path's connection: an attribute on Airflow 3.3, a storage option on 3.1
    assert (getattr(opened, "conn_id", None) or opened.storage_options.get("conn_id")) == "profile_files"
    states, returned = run(tmp_path, """
    LocalyticsProfileImportOperator(task_id="upload", conn_id={conn_id}, file={file}, storage_conn_id="profile_files",
                                    poll_interval=0.1)
    """, conn_id=conn_id, file=changes.as_uri())
    assert states == {"upload": "success"}, states
    assert returned["upload"]["vendor_succeeded"] == 1
