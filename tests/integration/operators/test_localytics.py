"""Localytics operators and sensor run by Airflow (``dag.test``) against the emulator.

``dag.test`` serializes deferred tasks and runs their trigger inline, so the deferrable paths here
go through the real trigger (async hook, aiohttp) and ``execute_complete``.
"""

from __future__ import annotations

import threading
import uuid

import pytest

from tests.conftest import HAS_TASK_STATE_STORE

from airflow_provider_profiles.hooks.localytics import LocalyticsHook
from airflow_provider_profiles.operators.localytics import (
    LocalyticsAudienceImportOperator,
    LocalyticsProfileImportOperator,
)
from airflow_provider_profiles.sensors.localytics import LocalyticsImportSensor

GOOD = '{"customer_id":"%s","changes":[{"op":"assign","attr":"plan","value":"gold"}]}\n'
BAD = '{"customer_id":"%s","changes":[{"op":"assign","attr":"bio","value":"%s"}]}\n'


@pytest.fixture
def localytics(emulator, airflow_connection, airflow_db):
    def start(extra=None, **config):
        config.setdefault("time_scale", 20)
        server = emulator("localytics", **config)
        conn_id = f"localytics_{uuid.uuid4().hex[:8]}"
        airflow_connection(conn_id, "localytics", login="localytics-key", password="localytics-secret",
                           host=server.url, extra={"org_id": "60", **(extra or {})})
        return server, conn_id

    return start


DAG_HEADER = """
import datetime as dt
from airflow.sdk import DAG
from airflow_provider_profiles.operators.localytics import (
    LocalyticsAudienceImportOperator, LocalyticsProfileImportOperator)
from airflow_provider_profiles.sensors.localytics import LocalyticsImportSensor

with DAG({dag_id!r}, schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
"""


def run(tmp_path, body, **values):
    """Run a DAG whose task lines are ``body`` (formatted with ``values``) with ``dag.test``.

    Returns {task_id[map_index]: (state, return value, pushed activity id)}.
    """
    import textwrap

    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    from tests.conftest import run_dag_file

    dag_id = f"localytics_{uuid.uuid4().hex[:10]}"
    source = DAG_HEADER.format(dag_id=dag_id) + textwrap.indent(textwrap.dedent(body).format(**{
        k: repr(v) for k, v in values.items()}), "    ")
    dag_file = tmp_path / f"{dag_id}.py"
    dag_file.write_text(source)
    dag_run, states = run_dag_file(dag_file)

    def xcom(task_id, map_index, key, session):
        row = session.scalars(XComModel.get_many(run_id=dag_run.run_id, dag_ids=dag_id, task_ids=task_id,
                                                 map_indexes=map_index, key=key)).first()
        return XComModel.deserialize_value(row) if row is not None else None

    results = {}
    with create_session() as session:
        for ti in dag_run.get_task_instances(session=session):
            name = ti.task_id if ti.map_index < 0 else f"{ti.task_id}[{ti.map_index}]"
            results[name] = (str(ti.state), xcom(ti.task_id, ti.map_index, "return_value", session),
                             xcom(ti.task_id, ti.map_index, "activity_id", session))
    return results


def changes_file(tmp_path, text, name="changes.json"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("deferrable", [False, True], ids=["in_worker", "deferred"])
def test_profile_import_returns_statistics(localytics, tmp_path, deferrable):
    # pending for 1 s of real time: the check right after the upload sees it pending even on a
    # loaded machine, so the polling below is really exercised
    server, conn_id = localytics(pending_seconds=20)
    file = changes_file(tmp_path, GOOD % "a" + BAD % ("b", "x" * 256) + GOOD % "c")
    results = run(tmp_path, """
        LocalyticsProfileImportOperator(task_id="import", conn_id={conn_id}, file={file}, deferrable={deferrable},
                                        poll_interval=0.1)
    """, conn_id=conn_id, file=file, deferrable=deferrable)
    state, result, activity_id = results["import"]
    assert state == "success"
    assert activity_id and result["details"]["activity_id"] == activity_id
    assert {key: value for key, value in result.items() if key != "details"} == {
        "read": 3, "rejected": 0, "skipped": 0, "sent": 3, "vendor_succeeded": 2, "vendor_failed": 1}
    assert result["details"]["upload_statistics"]["total_number_of_imports"] == 3  # the vendor's own counters
    assert result["details"]["first_errors"][0]["line"] == 2
    assert server.emulator.snapshot()["profiles"]["org_id:60"].keys() == {"a", "c"}
    # checked once right after the upload (still Pending), then polled by the worker or the trigger
    assert server.emulator.counters[f"GET /v1/imports/profiles/status/{activity_id}"] >= 2


@pytest.mark.parametrize("deferrable", [False, True], ids=["in_worker", "deferred"])
def test_failed_import_and_failed_ratio_fail_the_task(localytics, tmp_path, deferrable, capsys):
    _, conn_id = localytics()
    all_bad = changes_file(tmp_path, BAD % ("b", "q" * 256), "bad.json")
    half_bad = changes_file(tmp_path, GOOD % "a" + BAD % ("b", "w" * 256), "half.json")
    results = run(tmp_path, """
        common = dict(conn_id={conn_id}, deferrable={deferrable}, poll_interval=0.1)
        LocalyticsProfileImportOperator(task_id="failed", file={all_bad}, **common)
        LocalyticsProfileImportOperator(task_id="too_many_failed", file={half_bad}, max_failed_ratio=0.25, **common)
        LocalyticsProfileImportOperator(task_id="tolerated", file={half_bad}, max_failed_ratio=0.5, **common)
    """, conn_id=conn_id, deferrable=deferrable, all_bad=all_bad, half_bad=half_bad)
    assert results["failed"][0] == "failed"
    assert results["too_many_failed"][0] == "failed"
    assert results["tolerated"][0] == "success"
    logs = capsys.readouterr().out
    assert "Failed" in logs and "longer than 255" in logs  # the error log's first lines reach the task log
    assert "50.00% of the records failed" in logs
    assert "localytics-secret" not in logs


def test_operator_checks_arguments_at_parse_time():
    with pytest.raises(ValueError, match="not both"):
        LocalyticsProfileImportOperator(task_id="x", file="f", org_id="1", app_id="a")
    with pytest.raises(ValueError, match="action 'create' needs audience_name, file"):
        LocalyticsAudienceImportOperator(task_id="y", action="create", app_id="app-1")
    with pytest.raises(ValueError, match="action must be"):
        LocalyticsAudienceImportOperator(task_id="z", action="merge")
    with pytest.raises(ValueError, match="on_unknown_outcome must be one of check, resend"):
        LocalyticsProfileImportOperator(task_id="w", file="f", on_unknown_outcome="ignore")
    with pytest.raises(ValueError, match="kind must be"):
        LocalyticsImportSensor(task_id="s", activity_id="a", kind="events")
    templated = LocalyticsProfileImportOperator(task_id="t", file="{{ params.f }}", app_id="{{ params.app }}")
    assert set(templated.template_fields) >= {"file", "org_id", "app_id"}


def test_audience_actions_in_one_dag(localytics, tmp_path):
    server, conn_id = localytics()
    first = changes_file(tmp_path, '{"customer_id":"a"}\n{"customer_id":"b"}\n', "first.json")
    second = changes_file(tmp_path, '{"customer_id":"c"}\n', "second.json")
    results = run(tmp_path, """
        create = LocalyticsAudienceImportOperator(task_id="create", conn_id={conn_id}, app_id="app-1",
                                                  audience_name="vip", file={first}, poll_interval=0.1)
        replace = LocalyticsAudienceImportOperator(task_id="replace", conn_id={conn_id}, action="replace",
                                                   app_id="app-1", audience_name="vip", file={second},
                                                   deferrable=True, poll_interval=0.1)
        rename = LocalyticsAudienceImportOperator(
            task_id="rename", conn_id={conn_id}, action="rename", audience_name="vip-renamed",
            audience_list_id="{{{{ ti.xcom_pull(task_ids='create')['details']['audience_list_id'] }}}}")
        create >> replace >> rename
    """, conn_id=conn_id, first=first, second=second)
    assert {task: r[0] for task, r in results.items()} == {"create": "success", "replace": "success", "rename": "success"}
    list_id = results["create"][1]["details"]["audience_list_id"]
    assert results["replace"][1]["details"]["audience_list_id"] == list_id
    assert (results["create"][1]["vendor_succeeded"], results["replace"][1]["vendor_succeeded"]) == (2, 1)
    renamed = results["rename"][1]  # no records: true zeros, and the vendor's answer in details
    assert (renamed["sent"], renamed["details"]["action"]) == (0, "rename")
    audience = server.emulator.snapshot()["audiences"][str(list_id)]
    assert (audience["name"], audience["version"], audience["record_count"]) == ("vip-renamed", 2, 1)

    results = run(tmp_path, """
        LocalyticsAudienceImportOperator(task_id="delete", conn_id={conn_id}, action="delete", audience_list_id={list_id})
    """, conn_id=conn_id, list_id=list_id)
    assert results["delete"][0] == "success"
    assert server.emulator.snapshot()["audiences"] == {}


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferred"])
def test_sensor_waits_for_an_import(localytics, tmp_path, deferrable):
    # Imports stay Pending until the first status check has been answered; then an hour passes at once.
    server, conn_id = localytics(time_scale=1, pending_seconds=3600, running_seconds=0)
    emulator, stop = server.emulator, threading.Event()

    def finish_after_first_poll():
        while not stop.wait(0.02):
            if any(path.startswith("GET /v1/imports/") and "/status/" in path for path in list(emulator.counters)):
                emulator.clock.advance(3600)
                return

    watcher = threading.Thread(target=finish_after_first_poll, daemon=True)
    watcher.start()
    hook = LocalyticsHook(conn_id)
    profiles = hook.upload_profiles(changes_file(tmp_path, GOOD % "a"))
    audience = hook.create_audience(app_id="app-1", audience_name="n",
                                    file=changes_file(tmp_path, '{"customer_id":"x"}\n', "x.json"))
    failing = hook.upload_profiles(changes_file(tmp_path, BAD % ("b", "e" * 300), "bad.json"))
    results = run(tmp_path, """
        common = dict(conn_id={conn_id}, deferrable={deferrable}, poke_interval=0.1, timeout=30)
        LocalyticsImportSensor(task_id="profiles", activity_id={profiles}, **common)
        LocalyticsImportSensor(task_id="audiences", activity_id={audience}, kind="audiences", **common)
        LocalyticsImportSensor(task_id="failing", activity_id={failing}, kind="profiles", **common)
    """, conn_id=conn_id, deferrable=deferrable, profiles=profiles, audience=audience, failing=failing)
    stop.set()
    assert results["profiles"][0] == "success" and results["profiles"][1]["statistics"]["succeeded"] == 1
    assert results["audiences"][0] == "success" and results["audiences"][1]["audience_list_id"]
    assert results["failing"][0] == "failed"
    # the sensors run one after another: at least the first saw its import unfinished and waited
    polls = server.emulator.counters
    status_calls = [polls[f"GET /v1/imports/profiles/status/{a}"] for a in (profiles, failing)]
    status_calls.append(polls[f"GET /v1/imports/audiences/list/status/{audience}"])
    assert max(status_calls) >= 2, status_calls


def test_many_uploads_under_the_hourly_limit_all_succeed(localytics, tmp_path):
    # 12 mapped uploads, 10 allowed per (compressed: 1 s) hour: two wait for the window, none fails
    server, conn_id = localytics(time_scale=3600, extra={"rate_limits": {"upload": [10, 1]}})
    files = [changes_file(tmp_path, GOOD % n, f"chunk{n}.json") for n in range(12)]
    results = run(tmp_path, """
        LocalyticsProfileImportOperator.partial(task_id="upload", conn_id={conn_id}, poll_interval=0.05).expand(
            file={files})
    """, conn_id=conn_id, files=files)
    assert len(results) == 12 and {r[0] for r in results.values()} == {"success"}
    assert len(server.emulator.snapshot()["profiles"]["org_id:60"]) == 12


def test_retry_reattaches_instead_of_uploading_again(localytics, tmp_path, capsys):
    # Each upload costs one of the 10 per hour: a retry must follow the import its first try started.
    server, conn_id = localytics(time_scale=5)
    file = changes_file(tmp_path, GOOD % "a")
    results = run(tmp_path, """
        class CrashWhileWaiting(LocalyticsProfileImportOperator):
            def wait_in_worker(self, job, deadline):
                if self._first_try:
                    raise RuntimeError("worker lost while waiting")
                return super().wait_in_worker(job, deadline)

            def execute(self, context):
                self._first_try = context["ti"].try_number == 1
                return super().execute(context)

        CrashWhileWaiting(task_id="import", conn_id={conn_id}, file={file}, poll_interval=0.1, retries=1,
                          retry_delay=dt.timedelta(seconds=0))
    """, conn_id=conn_id, file=file)
    state, result, _ = results["import"]
    assert state == "success"
    logs = capsys.readouterr().out
    assert "worker lost while waiting" in logs and "reattaching to job" in logs  # the first try did crash
    assert server.emulator.counters["POST /v1/imports/profiles/upload"] == 1
    assert result["details"]["activity_id"] in server.emulator.jobs


INCREMENT = '{"customer_id":"%s","changes":[{"op":"increment","attr":"visits","value":1}]}\n'
LOST_ANSWER_TASK = """
    LocalyticsProfileImportOperator(task_id="import", conn_id={conn_id}, file={file}, poll_interval=0.1,
                                    retries=1, retry_delay=dt.timedelta(0){extra})
"""


def test_lost_upload_answer_with_increments_stops_instead_of_counting_twice(localytics, tmp_path, capsys):
    server, conn_id = localytics(pending_seconds=0)
    file = changes_file(tmp_path, INCREMENT % "a" + GOOD % "b")
    server.emulator.inject("drop_after", match="POST /v1/imports/profiles/upload")
    results = run(tmp_path, LOST_ANSWER_TASK.replace("{extra}", ""), conn_id=conn_id, file=file)
    assert results["import"][0] == "failed"
    assert server.emulator.counters["POST /v1/imports/profiles/upload"] == 1  # the retry did not send it again
    assert server.emulator.snapshot()["profiles"]["org_id:60"]["a"]["visits"] == 1
    logs = capsys.readouterr().out
    assert "increment (line 1)" in logs and "on_unknown_outcome='resend'" in logs
    # how to remove the kept intent: the task state store (Airflow 3.3+), else its Variable
    assert ("/state-store/job" if HAS_TASK_STATE_STORE else "airflow variables delete profiles_job_") in logs


def test_lost_upload_answer_of_a_repeatable_file_is_sent_again(localytics, tmp_path):
    server, conn_id = localytics(pending_seconds=0)
    file = changes_file(tmp_path, GOOD % "a" + GOOD % "b")
    server.emulator.inject("status_after", match="POST /v1/imports/profiles/upload", status=502)
    results = run(tmp_path, LOST_ANSWER_TASK.replace("{extra}", ""), conn_id=conn_id, file=file)
    state, result, activity_id = results["import"]
    assert state == "success" and result["vendor_succeeded"] == 2
    assert server.emulator.counters["POST /v1/imports/profiles/upload"] == 2  # sent once more, as it is safe
    assert {k: v["plan"] for k, v in server.emulator.snapshot()["profiles"]["org_id:60"].items()} == {
        "a": "gold", "b": "gold"}


def test_resend_on_unknown_outcome_when_told(localytics, tmp_path):
    server, conn_id = localytics(pending_seconds=0)
    file = changes_file(tmp_path, INCREMENT % "a")
    server.emulator.inject("drop_after", match="POST /v1/imports/profiles/upload")
    results = run(tmp_path, LOST_ANSWER_TASK.replace("{extra}", ", on_unknown_outcome='resend'"), conn_id=conn_id,
                  file=file)
    assert results["import"][0] == "success"
    assert server.emulator.snapshot()["profiles"]["org_id:60"]["a"]["visits"] == 2  # the user chose this


def test_lost_audience_create_answer_stops_instead_of_making_a_second_list(localytics, tmp_path, capsys):
    server, conn_id = localytics(pending_seconds=0)
    members = changes_file(tmp_path, '{"customer_id":"a"}\n{"customer_id":"b"}\n', "members.json")
    server.emulator.inject("drop_after", match="POST /v1/imports/audiences/list")
    results = run(tmp_path, """
        LocalyticsAudienceImportOperator(task_id="create", conn_id={conn_id}, action="create", app_id="app-1",
                                         audience_name="vip", file={file}, poll_interval=0.1, retries=1,
                                         retry_delay=dt.timedelta(0))
    """, conn_id=conn_id, file=members)
    assert results["create"][0] == "failed"
    assert sum(v for k, v in server.emulator.counters.items() if k.startswith("POST /v1/imports/audiences")) == 1
    assert "look for an audience list named 'vip' in app app-1" in capsys.readouterr().out
