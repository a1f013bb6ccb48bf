"""OpenLineage facets on complete (the OpenLineage provider installed) and Assets: an upload declares the
vendor scope it updated, and a DAG scheduled on that Asset sees the event under real ``dag.test()``."""

from __future__ import annotations

import sqlite3
import sys
import uuid

import pytest
from airflow.sdk import DAG

from airflow_provider_profiles.lineage import file_dataset, profiles_asset, profiles_dataset
from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator
from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator
from airflow_provider_profiles.operators.mediarithmics import MediarithmicsUploadOperator
from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator, SqlToProfilesFileOperator
from tests.integration.operators.test_mediarithmics import chunks, mics  # noqa: F401 (fixture)


def as_pairs(lineage) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    from openlineage.client.event_v2 import Dataset

    for dataset in (*lineage.inputs, *lineage.outputs):
        assert isinstance(dataset, Dataset)  # what the provider's listener puts in its events
    return ([(d.namespace, d.name) for d in lineage.inputs], [(d.namespace, d.name) for d in lineage.outputs])


def test_importing_the_operators_does_not_need_openlineage():
    import subprocess

    code = ("import sys, airflow.sdk; before = set(sys.modules); "
            "import airflow_provider_profiles.operators.mediarithmics, airflow_provider_profiles.operators.prepare, "
            "airflow_provider_profiles.operators.gainsight_px, airflow_provider_profiles.lineage; "
            "print(sorted(m for m in set(sys.modules) - before if 'openlineage' in m))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_an_upload_reads_the_file_and_writes_the_datamart_of_its_connection(mics, tmp_path):
    server = mics()
    upload = MediarithmicsUploadOperator(task_id="upload", document_import_id="7", file=str(tmp_path / "c.ndjson"))
    host = server.url.split("://")[1]
    assert as_pairs(upload.get_openlineage_facets_on_complete(None)) == (
        [("file", str(tmp_path / "c.ndjson"))], [(f"mediarithmics://{host}", "datamart/1000")])
    # the Asset of the same scope has the same name: namespace/name
    assert profiles_asset("mediarithmics", host=server.url, datamart=1000).uri == f"mediarithmics://{host}/datamart/1000"
    assert profiles_asset("mediarithmics", datamart=1000).uri == "mediarithmics://api.mediarithmics.com/datamart/1000"


def test_localytics_and_gainsight_px_name_their_scope(emulator, airflow_connection, tmp_path):
    airflow_connection("localytics_default", "localytics", login="k", password="s", extra={"org_id": "42"})
    airflow_connection("gainsight_px_default", "gainsight_px", password="secret-key",
                       extra={"product_key": "AP-TEST-2", "data_center": "eu"})
    profiles = LocalyticsProfileImportOperator(task_id="p", file="s3://bucket/in/users.ndjson")
    assert as_pairs(profiles.get_openlineage_facets_on_complete(None)) == (
        [("s3://bucket", "in/users.ndjson")], [("localytics://api.localytics.com", "org/42")])
    load = GainsightPXLoadOperator(task_id="l", source=str(tmp_path / "u.csv"), field_mapping={"identifyId": "id"},
                                   entity="ACCOUNT")
    assert as_pairs(load.get_openlineage_facets_on_complete(None))[1] == [
        ("gainsight-px://api-eu.aptrinsic.com", "product/AP-TEST-2/entity/account")]
    assert "secret-key" not in repr(load.get_openlineage_facets_on_complete(None))


def test_prepare_operators_read_the_file_or_the_tables_and_write_the_prepared_file(tmp_path, airflow_connection):
    transform = ProfilesFileTransformOperator(task_id="t", source_path=str(tmp_path / "in.csv"), vendor="localytics",
                                              output_path=str(tmp_path / "out.ndjson"))
    assert as_pairs(transform.get_openlineage_facets_on_complete(None)) == (
        [file_dataset(str(tmp_path / "in.csv"))], [("file", str(tmp_path / "out.ndjson"))])
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as connection:
        connection.execute("CREATE TABLE users (id TEXT, plan TEXT)")
        connection.execute("CREATE TABLE plans (name TEXT)")
    airflow_connection("crm", "sqlite", host=str(db))
    extract = SqlToProfilesFileOperator(
        task_id="x", conn_id="crm", vendor="localytics", output_path="s3://bucket/out/users.ndjson",
        sql="SELECT u.id, p.name FROM users u JOIN plans p ON p.name = u.plan")
    inputs, outputs = as_pairs(extract.get_openlineage_facets_on_complete(None))
    assert sorted(name for _, name in inputs) == ["plans", "users"]
    assert {namespace for namespace, _ in inputs} == {f"sqlite://{db}"}
    assert outputs == [("s3://bucket", "out/users.ndjson")]


def test_a_files_dataset_names_its_bucket_without_the_connection():
    """``ObjectStoragePath`` hands a path on with its connection (s3://conn_id@bucket/key); OpenLineage's
    S3 namespace is the bucket alone (found by the Celery tier, tests/cluster)."""
    assert file_dataset("s3://aws_storage@bucket/in/users.ndjson") == ("s3://bucket", "in/users.ndjson")


@pytest.mark.parametrize("declared", ["asset=True", "outlets", "mapped asset=True"])
def test_a_downstream_dag_scheduled_on_the_asset_sees_the_upload(mics, airflow_db, tmp_path, declared):
    from airflow.models.asset import AssetDagRunQueue, AssetEvent, AssetModel
    from airflow.utils.session import create_session

    server = mics()
    [file] = chunks(tmp_path, [3])
    landed = profiles_asset("mediarithmics", host=server.url, datamart=1000)
    suffix = uuid.uuid4().hex[:8]
    with DAG(f"on_profiles_{suffix}", schedule=[landed], catchup=False) as downstream:
        pass
    options = {"outlets": [landed]} if declared == "outlets" else {"asset": True}
    with DAG(f"asset_upload_{suffix}", schedule=None, catchup=False) as dag:
        if declared.startswith("mapped"):
            MediarithmicsUploadOperator.partial(task_id="upload", document_import_id=_new_import(server),
                                                poll_interval=0.1, **options).expand(file=[file])
        else:
            MediarithmicsUploadOperator(task_id="upload", document_import_id=_new_import(server), file=file,
                                        poll_interval=0.1, **options)
    _serialize(downstream, dag)
    _unpause(downstream.dag_id)  # a new DAG starts paused, and paused DAGs are not queued
    dag_run = dag.test()
    assert dag_run.state == "success"
    with create_session() as session:
        asset = session.query(AssetModel).filter_by(uri=landed.uri).one()
        [event] = session.query(AssetEvent).filter_by(asset_id=asset.id, source_run_id=dag_run.run_id).all()
        assert (event.source_dag_id, event.source_task_id) == (dag.dag_id, "upload")
        assert event.extra.get("vendor_succeeded") == 3 and event.extra.get("read") == 3
        queued = session.query(AssetDagRunQueue).filter_by(asset_id=asset.id, target_dag_id=downstream.dag_id).all()
        assert len(queued) == 1  # the scheduler would start the downstream DAG now


def _new_import(server) -> str:
    from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook

    return str(MediarithmicsHook().create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "assets")["id"])


def _unpause(dag_id: str) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        session.query(DagModel).filter_by(dag_id=dag_id).update({"is_paused": False})


def _serialize(*dags) -> None:
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db("dags-folder", None, [LazyDeserializedDAG.from_dag(dag) for dag in dags], {}, None,
                                         set(),
                                         session=session)


OL_DAG = """
import sys
from airflow.sdk import DAG
from airflow_provider_profiles.operators.mediarithmics import MediarithmicsUploadOperator
from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator
from tests.integration.operators.test_lineage_assets import _serialize

source, output, import_id = sys.argv[1:4]
with DAG("ol_events", schedule=None, catchup=False) as dag:
    prepare = ProfilesFileTransformOperator(
        task_id="prepare", source_path=source, vendor="mediarithmics", writer_format="USER_PROFILE",
        mapping={"user_account_id": "id", "name": "name"}, output_path=output)
    upload = MediarithmicsUploadOperator(task_id="upload", document_import_id=import_id, file=output, poll_interval=0.1)
    prepare >> upload
_serialize(dag)
print("dag run state:", dag.test().state)
"""


def test_the_openlineage_listener_emits_our_datasets_under_dag_test(mics, airflow_db, tmp_path):
    """The provider's own listener (file transport) in a separate process: what a user's backend receives."""
    import json
    import os
    import subprocess

    server = mics()
    source = tmp_path / "crm.csv"
    source.write_text("id,name\n1,Ann\n2,Bo\n")
    events = tmp_path / "events.jsonl"
    env = {**os.environ, "AIRFLOW__OPENLINEAGE__TRANSPORT": json.dumps(
        {"type": "file", "log_file_path": str(events), "append": True}), "PYTHONPATH": os.getcwd()}
    done = subprocess.run([sys.executable, "-c", OL_DAG, str(source), str(tmp_path / "out.ndjson"),
                           _new_import(server)], env=env, capture_output=True, text=True, timeout=300)
    assert "dag run state: success" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]
    complete = {}
    for line in events.read_text().splitlines():
        event = json.loads(line)
        if event["eventType"] == "COMPLETE" and "." in event["job"]["name"]:
            complete[event["job"]["name"]] = (
                [(d["namespace"], d["name"]) for d in event["inputs"]], [(d["namespace"], d["name"]) for d in event["outputs"]])
    host = server.url.split("://")[1]
    assert complete == {
        "ol_events.prepare": ([("file", str(source))], [("file", str(tmp_path / "out.ndjson"))]),
        "ol_events.upload": ([("file", str(tmp_path / "out.ndjson"))], [(f"mediarithmics://{host}", "datamart/1000")]),
    }
    assert "tok-operators" not in events.read_text()  # the connection's token is in no event
