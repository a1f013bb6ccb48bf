"""Operators, sensor and trigger against the emulator: waiting in the worker, deferring (the trigger runs
for real under ``dag.test()``), mapped uploads over chunks, failures, cancel on timeout and kill."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException
from airflow.sdk import DAG, task

from airflow_provider_profiles.hooks.base import VendorNotFoundError
from airflow_provider_profiles.hooks.mediarithmics import MediarithmicsHook
from airflow_provider_profiles.operators.mediarithmics import (
    MediarithmicsCreateDocumentImportOperator,
    MediarithmicsUploadOperator,
)
from airflow_provider_profiles.sensors.mediarithmics import MediarithmicsExecutionSensor
from airflow_provider_profiles.triggers.base import status_from_event
from airflow_provider_profiles.triggers.base import JobTrigger

GOOD = '{"operation":"UPSERT","email_hash":"h%d","user_profile":{"score":%d}}\n'
BAD = '{"operation":"UPSERT","user_profile":{"score":1}}\n'


@pytest.fixture
def mics(emulator, airflow_connection):
    def start(**config):
        config.setdefault("token", "tok-operators")
        server = emulator("mediarithmics", **config)
        airflow_connection("mediarithmics_default", "mediarithmics", password=config["token"], host=server.url,
                           extra={"datamart_id": "1000"})
        return server

    return start


def chunks(directory: Path, sizes: list[int], bad: int = 0, prefix: str = "chunk") -> list[str]:
    paths = []
    for number, size in enumerate(sizes):
        path = directory / f"{prefix}_{number:03d}.ndjson"
        path.write_text("".join(GOOD % (i, i) for i in range(size)) + BAD * bad)
        paths.append(str(path))
    return paths


def run_inline_dag(dag):
    """``dag.test()`` for a DAG defined in a test: it must be serialized in the metadata DB first."""
    from airflow.dag_processing.bundles.manager import DagBundlesManager
    from airflow.dag_processing.collection import update_dag_parsing_results_in_db
    from airflow.serialization.serialized_objects import LazyDeserializedDAG
    from airflow.utils.session import create_session

    DagBundlesManager().sync_bundles_to_db()
    with create_session() as session:
        update_dag_parsing_results_in_db("dags-folder", None, [LazyDeserializedDAG.from_dag(dag)], {}, None, set(),
                                         session=session)
    return dag.test()


def states(dag_run) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for ti in sorted(dag_run.get_task_instances(), key=lambda t: (t.task_id, t.map_index)):
        found.setdefault(ti.task_id, []).append(str(ti.state))
    return found


@pytest.mark.parametrize("deferrable", [False, True], ids=["wait_in_worker", "deferred"])
def test_new_import_then_mapped_uploads_over_chunks(mics, airflow_db, tmp_path, deferrable):
    server = mics(pending_seconds=0.3, running_seconds=0.3)
    files = chunks(tmp_path, [3, 4, 5], bad=1)
    report = tmp_path / "report.json"
    with DAG(f"mics_mapped_{deferrable}", schedule=None, catchup=False) as dag:
        create = MediarithmicsCreateDocumentImportOperator(
            task_id="create", document_type="USER_PROFILE", name="CRM profiles {{ run_id }}")
        upload = MediarithmicsUploadOperator.partial(
            task_id="upload", document_import_id=create.output, deferrable=deferrable, poll_interval=0.2,
            max_failed_ratio=0.5,
        ).expand(file=files)
        upload_only = MediarithmicsUploadOperator(
            task_id="upload_only", document_import_id=create.output, file=files[0], wait_for_completion=False)
        watch = MediarithmicsExecutionSensor(
            task_id="watch", document_import_id=create.output, deferrable=deferrable, poke_interval=0.2,
            execution_id="{{ ti.xcom_pull(task_ids='upload_only', key='execution_id') }}",
        )

        @task
        def collect(totals, watched, ti=None):
            job = ti.xcom_pull(task_ids="upload", key="job", map_indexes=0)
            report.write_text(json.dumps({"totals": list(totals), "job": job, "watched": watched,
                                          "started": ti.xcom_pull(task_ids="upload_only")}))

        upload_only >> watch
        collect(upload.output, watch.output)
    dag_run = run_inline_dag(dag)
    assert states(dag_run) == {"collect": ["success"], "create": ["success"], "upload": ["success"] * 3,
                               "upload_only": ["success"], "watch": ["success"]}
    snapshot = server.emulator.snapshot()
    [definition] = snapshot["document_imports"].values()
    assert definition["name"] == f"CRM profiles {dag_run.run_id}"
    assert sorted(e["status"] for e in snapshot["executions"].values()) == ["SUCCEEDED"] * 4
    result = json.loads(report.read_text())
    # the sensor waited for the execution that upload_only started and returned its final state
    started = result["started"]  # handed over: the job's ids, and no count the platform has not reported yet
    assert started["details"]["handed_over"] and (started["sent"], started["vendor_succeeded"]) == (None, None)
    assert result["watched"]["id"] == started["details"]["job"]["execution_id"]
    assert result["watched"]["status"] == "SUCCEEDED"
    assert [(t["read"], t["sent"], t["vendor_succeeded"], t["vendor_failed"]) for t in result["totals"]] == \
        [(4, 4, 3, 1), (5, 5, 4, 1), (6, 6, 5, 1)]
    assert [t["details"]["total_failure"] for t in result["totals"]] == [1, 1, 1]  # the platform's own counter
    assert result["job"] == {"datamart_id": "1000", "document_import_id": definition["id"],
                             "execution_id": result["totals"][0]["details"]["execution_id"]}
    assert result["totals"][0]["details"]["job"] == result["job"]
    assert ledger_entries(f"mics_mapped_{deferrable}") == []  # upload_only too: it does not wait, nor retry


def test_vendor_failure_and_failed_ratio_fail_the_task(mics, airflow_db, tmp_path):
    """Both tasks fail on their last try; neither leaves its retry-ledger entry behind."""
    server = mics(pending_seconds=0.2, running_seconds=0.2)
    import_id = MediarithmicsHook().create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "errors")["id"]
    [all_bad] = chunks(tmp_path, [0], bad=2, prefix="all_bad")
    [half_bad] = chunks(tmp_path, [1], bad=2, prefix="half_bad")
    with DAG("mics_failures", schedule=None, catchup=False, default_args={"retries": 0}) as dag:
        common = {"document_import_id": import_id, "poll_interval": 0.1}
        MediarithmicsUploadOperator(task_id="vendor_failed", file=all_bad, **common)
        MediarithmicsUploadOperator(task_id="too_many_failures", file=half_bad, max_failed_ratio=0.5, **common)
    dag_run = run_inline_dag(dag)
    assert states(dag_run) == {"too_many_failures": ["failed"], "vendor_failed": ["failed"]}
    assert sorted(e["status"] for e in server.emulator.snapshot()["executions"].values()) == ["FAILED", "SUCCEEDED"]
    assert ledger_entries("mics_failures") == []


@pytest.mark.parametrize("deferrable", [False, True], ids=["wait_in_worker", "deferred"])
def test_timeout_cancels_the_pending_execution(mics, airflow_db, tmp_path, deferrable):
    server = mics(pending_seconds=600)
    [file] = chunks(tmp_path, [2])
    with DAG(f"mics_timeout_{deferrable}", schedule=None, catchup=False, default_args={"retries": 0}) as dag:
        create = MediarithmicsCreateDocumentImportOperator(task_id="create", document_type="USER_PROFILE", name="t")
        MediarithmicsUploadOperator(task_id="upload", document_import_id=create.output, file=file,
                                    deferrable=deferrable, poll_interval=0.2, job_timeout=1)
    dag_run = run_inline_dag(dag)
    assert states(dag_run)["upload"] == ["failed"]
    assert [e["status"] for e in server.emulator.snapshot()["executions"].values()] == ["CANCELED"]
    assert ledger_entries(f"mics_timeout_{deferrable}") == []  # cancelled: nothing for a retry to reattach to


def memory_ledger(monkeypatch) -> tuple[dict, dict]:
    """(context, ledger) for an operator called outside a task runner: the retry ledger kept in a dict."""
    from airflow_provider_profiles.operators import base as operator_base

    ledger: dict[str, dict] = {}
    monkeypatch.setattr(operator_base, "_ledger_get", lambda ctx: ledger.get("entry"))
    monkeypatch.setattr(operator_base, "_ledger_set", lambda ctx, entry: ledger.__setitem__("entry", entry))
    monkeypatch.setattr(operator_base, "_ledger_clear", lambda ctx: ledger.pop("entry", None))
    ti = SimpleNamespace(dag_id="d", run_id="r", task_id="u", map_index=-1, try_number=1, max_tries=0,
                         xcom_push=lambda key, value: None)
    return {"ti": ti}, ledger


def test_failed_event_message_and_too_large_file(mics, tmp_path, monkeypatch):
    mics()
    context, ledger = memory_ledger(monkeypatch)
    upload = MediarithmicsUploadOperator(task_id="u", document_import_id="1", file=str(tmp_path / "big.ndjson"))
    event = {"status": "failed", "job": {"datamart_id": "1000", "document_import_id": "1", "execution_id": "9"},
             "vendor_status": "FAILED", "message": "execution 9 FAILED: no line could be imported", "result": {}}
    ledger["entry"] = {"job": event["job"]}
    with pytest.raises(AirflowException, match="ended FAILED: execution 9 FAILED: no line could be imported"):
        upload.execute_complete(context, event)
    assert ledger == {}  # a failed job leaves nothing behind
    with (tmp_path / "big.ndjson").open("wb") as sparse:  # 101 MB on paper, nothing on disk
        sparse.truncate(101 * 1024 * 1024)
    # over the 100 MB recommendation the file is not refused: the hook goes on to the platform (here
    # about an import that does not exist, so nothing big is sent)
    with pytest.raises(VendorNotFoundError, match="document import 1 not found"):
        upload.execute(context)
    assert ledger == {}  # refused by the platform (a 4xx): no intent left


def test_on_kill_cancels_a_pending_execution(mics):
    server = mics(pending_seconds=600)
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "k")["id"]
    execution_id = hook.create_execution(import_id, (GOOD % (1, 1)).encode())["id"]
    upload = MediarithmicsUploadOperator(task_id="u", document_import_id=import_id, file="unused")
    upload._job = {"datamart_id": "1000", "document_import_id": import_id, "execution_id": execution_id}
    upload.on_kill()
    assert server.emulator.snapshot()["executions"][execution_id]["status"] == "CANCELED"


def test_trigger_runs_for_real_and_round_trips(mics):
    mics(pending_seconds=0.2, running_seconds=0.2)
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "trig")["id"]
    execution_id = hook.create_execution(import_id, (GOOD % (1, 1) + BAD).encode())["id"]
    job = {"datamart_id": "1000", "document_import_id": import_id, "execution_id": execution_id}
    trigger = JobTrigger(vendor="mediarithmics", conn_id="mediarithmics_default", job=job, deadline=time.time() + 30,
                                            poll_interval=0.1)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_profiles.triggers.base.JobTrigger"
    revived = JobTrigger(**kwargs)

    async def first_event():
        return [event async for event in revived.run()]

    [event] = asyncio.run(first_event())
    assert event.payload["status"] == "success" and event.payload["vendor_status"] == "SUCCEEDED"
    assert event.payload["result"]["result"]["total_failure"] == 1
    upload = MediarithmicsUploadOperator(task_id="u", document_import_id=import_id, file="x")
    totals = upload.on_success({}, status_from_event(event.payload))
    assert (totals["sent"], totals["vendor_succeeded"], totals["vendor_failed"]) == (2, 1, 1)


def test_create_reuses_its_definition_on_retry_only(mics):
    server = mics()
    create = MediarithmicsCreateDocumentImportOperator(task_id="c", document_type="USER_SEGMENT",
                                                       mime_type="TEXT_CSV", name="VIP 2024-05-01")
    def ti(try_number):  # the task instance's parts the operator uses (the link goes to XCom)
        return SimpleNamespace(try_number=try_number, xcom_push=lambda key, value: None)

    first = create.execute({"ti": ti(1)})
    assert create.execute({"ti": ti(2)}) == first  # the retry finds it by name
    assert create.execute({"ti": ti(1)}) != first  # a new run's first try creates
    assert len(server.emulator.snapshot()["document_imports"]) == 2


def test_a_retry_reattaches_to_its_execution_instead_of_uploading_again(mics, airflow_db, tmp_path):
    server = mics(pending_seconds=0.2, running_seconds=0.2)
    import_id = MediarithmicsHook().create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "retry")["id"]
    [file] = chunks(tmp_path, [3])
    # the first status check after the upload fails for good: the first try dies with its execution created
    server.emulator.inject("status", match=r"GET .*/executions/\d+$", count=1, status=404)
    report = tmp_path / "report.json"
    with DAG("mics_reattach", schedule=None, catchup=False,
             default_args={"retries": 1, "retry_delay": datetime.timedelta(0)}) as dag:
        upload = MediarithmicsUploadOperator(task_id="upload", document_import_id=import_id, file=file,
                                             poll_interval=0.1)

        @task
        def collect(totals, ti=None):
            report.write_text(json.dumps({"totals": totals, "execution_id": ti.xcom_pull(task_ids="upload", key="execution_id")}))

        collect(upload.output)
    dag_run = run_inline_dag(dag)
    assert states(dag_run) == {"collect": ["success"], "upload": ["success"]}
    [ti] = [t for t in dag_run.get_task_instances() if t.task_id == "upload"]
    assert ti.try_number == 2
    [execution_id] = server.emulator.snapshot()["executions"]  # one upload across both tries
    result = json.loads(report.read_text())
    assert result["totals"]["details"]["execution_id"] == result["execution_id"] == execution_id
    assert result["totals"]["vendor_succeeded"] == 3


def test_a_failed_execution_fails_with_its_error_and_logs_the_first_bad_lines(mics, caplog, capsys):
    mics(pending_seconds=0, running_seconds=0)
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_PROFILE", "APPLICATION_X_NDJSON", "bad")["id"]
    execution_id = hook.create_execution(import_id, (BAD * 2).encode())["id"]
    job = {"datamart_id": "1000", "document_import_id": import_id, "execution_id": execution_id}
    upload = MediarithmicsUploadOperator(task_id="u", document_import_id=import_id, file="bad.ndjson")
    with pytest.raises(AirflowException, match="ended FAILED: .*no line could be imported: 2 line"):
        upload.raise_if_failed(job, hook.job_status(**job))
    logged = caplog.text + capsys.readouterr().out
    assert "first errors" in logged and logged.count("exactly one user identifier") == 2


ACTIVITY = '{"$email_hash":"h%d","$type":"SITE_VISIT","$ts":%d,"$events":[]}\n'


@pytest.mark.parametrize("fault", ["drop_after", "status_after"])
def test_a_lost_upload_response_then_a_retry_imports_the_file_once(mics, airflow_db, tmp_path, fault):
    """The execution was created but its response was lost (connection dropped, or a 502 after the
    platform acted): the retry finds it instead of uploading again."""
    server = mics(pending_seconds=0.2, running_seconds=0.2)
    import_id = MediarithmicsHook().create_document_import("USER_ACTIVITY", "APPLICATION_X_NDJSON", "lost")["id"]
    file = tmp_path / "activities.ndjson"
    file.write_text("".join(ACTIVITY % (i, 1_700_000_000_000 + i) for i in range(5)))
    server.emulator.inject(fault, match=r"POST .*/executions$", count=1, status=502)
    with DAG(f"mics_lost_response_{fault}", schedule=None, catchup=False,
             default_args={"retries": 1, "retry_delay": datetime.timedelta(0)}) as dag:
        MediarithmicsUploadOperator(task_id="upload", document_import_id=import_id, file=str(file), poll_interval=0.1)
    dag_run = run_inline_dag(dag)
    assert states(dag_run) == {"upload": ["success"]}
    executions = server.emulator.snapshot()["executions"].values()
    assert [e["parameters"]["number_of_lines"] for e in executions] == [5]  # 5 activities, not 10
    assert server.emulator.counters[f"POST /v1/datamarts/1000/document_imports/{import_id}/executions"] == 1
    assert ledger_entries(f"mics_lost_response_{fault}") == []  # nothing left behind once the task succeeded


def ledger_entries(dag_id: str) -> list[str]:
    """The retry-ledger Variables the DAG's tasks left behind."""
    from airflow.models import Variable as VariableModel
    from airflow.utils.session import create_session

    with create_session() as session:
        return [v.key for v in session.query(VariableModel).all()
                if v.key.startswith("profiles_job_") and f"of {dag_id}." in (v.description or "")]


def test_unknown_outcome_with_nothing_created_uploads_and_with_two_candidates_stops(mics, tmp_path, monkeypatch):
    server = mics(pending_seconds=0, running_seconds=0)
    context, ledger = memory_ledger(monkeypatch)
    hook = MediarithmicsHook()
    import_id = hook.create_document_import("USER_ACTIVITY", "APPLICATION_X_NDJSON", "unknown")["id"]
    file = tmp_path / "activities.ndjson"
    file.write_text("".join(ACTIVITY % (i, 1_700_000_000_000 + i) for i in range(2)))
    upload = MediarithmicsUploadOperator(task_id="u", document_import_id=import_id, file=str(file), poll_interval=0.1)
    lost = {"intent": {"action": "uploaded it", "at": time.time(), "size": file.stat().st_size}}
    ledger["entry"] = dict(lost)  # the earlier try's request never reached the platform
    assert upload.execute(context)["vendor_succeeded"] == 2
    assert len(server.emulator.snapshot()["executions"]) == 1 and ledger == {}
    hook.create_execution(import_id, file.read_bytes())  # another upload of the same size since
    ledger["entry"] = dict(lost)
    with pytest.raises(AirflowFailException, match=r"executions \d+, \d+ of document import .* could each be it.*"
                                                   r"airflow variables delete profiles_job_"):
        upload.execute(context)
    assert len(server.emulator.snapshot()["executions"]) == 2 and ledger == {"entry": lost}  # kept until checked
