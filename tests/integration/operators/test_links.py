"""Links to the vendor on the task page: stored in XCom while the task runs, read back the way Airflow's
API server renders them (``XComOperatorLink`` over the serialized operator), under real ``dag.test()``."""

from __future__ import annotations

import pytest
from airflow.sdk import DAG

from airflow_provider_profiles.operators.apsis_one import APSIS_ONE_APP
from airflow_provider_profiles.operators.links import console_or_api, public_url, storage_url
from airflow_provider_profiles.operators.mediarithmics import (
    MediarithmicsCreateDocumentImportOperator,
    MediarithmicsUploadOperator,
)
from airflow_provider_profiles.hooks.apsis_one import ApsisOneHook
from tests.integration.operators.test_mediarithmics import chunks, mics, run_inline_dag  # noqa: F401 (fixture)

TOKEN = "tok-links-secret"


def rendered_links(dag, dag_run, task_id: str, map_index: int = -1) -> dict[str, str]:
    """What the task page shows: the serialized operator's links (``XComOperatorLink``), read from the DB."""
    from airflow.models.taskinstancekey import TaskInstanceKey
    try:
        from airflow.serialization.serialized_objects import DagSerialization
    except ImportError:  # Airflow before 3.2
        from airflow.serialization.serialized_objects import SerializedDAG as DagSerialization

    task = DagSerialization.from_dict(DagSerialization.to_dict(dag)).get_task(task_id)
    key = TaskInstanceKey(dag_run.dag_id, task_id, dag_run.run_id, 1, map_index)
    return {link.name: link.get_link(task, ti_key=key) for link in task.operator_extra_links}


def test_mediarithmics_links_are_stored_and_rendered_after_a_deferred_upload(mics, airflow_db, tmp_path):
    server = mics(token=TOKEN, pending_seconds=0.2, running_seconds=0.2)
    [file] = chunks(tmp_path, [3], bad=1)
    with DAG("links_mics", schedule=None, catchup=False) as dag:
        create = MediarithmicsCreateDocumentImportOperator(task_id="create", document_type="USER_PROFILE",
                                                           name="links {{ run_id }}")
        MediarithmicsUploadOperator(task_id="upload", document_import_id=create.output, file=file,
                                    deferrable=True, poll_interval=0.2)
    dag_run = run_inline_dag(dag)
    execution_id = dag_run.get_task_instance("upload").xcom_pull(task_ids="upload", key="execution_id")
    import_id = dag_run.get_task_instance("create").xcom_pull(task_ids="create")
    links = rendered_links(dag, dag_run, "upload")
    imports = f"{server.url}/v1/datamarts/1000/document_imports/{import_id}"
    assert links["mediarithmics document import"] == imports
    assert links["mediarithmics execution"] == f"{imports}/executions/{execution_id}"
    assert links["mediarithmics error file"].startswith(f"{server.url}/v1/data_file/data?uri=")  # one bad line
    assert rendered_links(dag, dag_run, "create") == {"mediarithmics document import": imports}
    assert not any(TOKEN in url for url in links.values())


def test_a_link_is_the_console_only_for_the_vendors_production_hosts():
    status = "audience/sections/s1/imports/i1"
    assert console_or_api("https://api.apsis.one", ApsisOneHook, APSIS_ONE_APP, status) == APSIS_ONE_APP
    assert console_or_api("https://api-apac.apsis.one", ApsisOneHook, APSIS_ONE_APP, status) == APSIS_ONE_APP
    # an emulator or a private deployment: the resource on that host, never production
    assert console_or_api("http://127.0.0.1:8081", ApsisOneHook, APSIS_ONE_APP, status) == \
        "http://127.0.0.1:8081/audience/sections/s1/imports/i1"
    assert console_or_api("http://127.0.0.1:8081", ApsisOneHook, APSIS_ONE_APP, None) is None


@pytest.mark.parametrize("url", [
    "https://user:pass@api.example.com/x",  # credentials in the URL
    "https://bucket.s3.amazonaws.com/errors.json?X-Amz-Signature=abc&X-Amz-Credential=k",  # presigned
    "file:///etc/passwd", "javascript:alert(1)", "errors.example.com/no-scheme.json", "",
])
def test_urls_with_secrets_or_odd_schemes_are_not_stored(url):
    assert public_url(url) is None


def test_files_link_where_their_storage_has_an_address():
    assert storage_url("s3://bucket/out/users.rejects.csv") == \
        "https://s3.console.aws.amazon.com/s3/object/bucket?prefix=out/users.rejects.csv"
    assert storage_url("gs://bucket/a b.csv") == "https://console.cloud.google.com/storage/browser/_details/bucket/a%20b.csv"
    assert storage_url("https://files.example.com/r.csv") == "https://files.example.com/r.csv"
    assert storage_url("/tmp/users.rejects.csv") is None and storage_url("memory://bucket/x.csv") is None


def test_a_files_link_names_its_bucket_without_the_connection():
    """``ObjectStoragePath`` hands a path on with its connection (s3://conn_id@bucket/key); the console
    knows only the bucket (found by the Celery tier, tests/cluster)."""
    assert storage_url("s3://aws_storage@bucket/out/users.rejects.csv") == \
        "https://s3.console.aws.amazon.com/s3/object/bucket?prefix=out/users.rejects.csv"
    assert storage_url("gs://gcp_storage@bucket/a.csv") == \
        "https://console.cloud.google.com/storage/browser/_details/bucket/a.csv"


def test_a_localytics_import_links_to_its_status_on_the_emulator_not_to_production(emulator, airflow_connection,
                                                                                    airflow_db, tmp_path):
    from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator

    server = emulator("localytics", time_scale=20)
    airflow_connection("localytics_links", "localytics", login="localytics-key", password="localytics-secret", host=server.url,
                       extra={"org_id": "60"})
    file = tmp_path / "changes.ndjson"
    file.write_text('{"customer_id":"c1","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n')
    with DAG("links_localytics", schedule=None, catchup=False) as dag:
        LocalyticsProfileImportOperator(task_id="upload", file=str(file), conn_id="localytics_links",
                                        poll_interval=0.2)
    dag_run = run_inline_dag(dag)
    activity_id = dag_run.get_task_instance("upload").xcom_pull(task_ids="upload", key="activity_id")
    links = rendered_links(dag, dag_run, "upload")
    assert links["Localytics dashboard"] == f"{server.url}/v1/imports/profiles/status/{activity_id}"
    assert "localytics.com" not in links["Localytics dashboard"] and "localytics-secret" not in str(links)


def test_the_gainsight_px_loader_links_its_app_only_in_production(emulator, airflow_connection, tmp_path):
    from tests.integration.operators.test_gainsight_px_load import SECRET, FakeTI, write_csv
    from airflow_provider_profiles.operators.gainsight_px import PX_APP, GainsightPXLoadOperator
    from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook

    server = emulator("gainsight_px", api_key=SECRET, rate_limit=None)
    airflow_connection("gainsight_px_default", "gainsight_px", host=server.url, password=SECRET,
                       extra={"product_key": server.emulator.product_key})
    source = write_csv(tmp_path / "users.csv", ["id", "email"], [("u1", "a@x.com"), ("", "no-id@x.com")])
    ti = FakeTI()
    GainsightPXLoadOperator(task_id="load", source=source, field_mapping={"identifyId": "id", "email": "email"},
                            dry_run=True).execute({"ti": ti})
    # an emulator has no app to open; a local rejects file has no address to link
    assert not [key for key in ti.xcoms if key.startswith("_link_")]
    assert console_or_api("https://api-eu.aptrinsic.com/v1", GainsightPXHook, PX_APP, None) == PX_APP
