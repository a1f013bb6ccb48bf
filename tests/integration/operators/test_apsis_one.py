"""ApsisOneProfileImportOperator and ApsisOneImportSensor under ``dag.test()`` against the emulator."""

from __future__ import annotations

import pytest
from airflow.utils.state import TaskInstanceState

from tests.integration.hooks.test_apsis_one_support import (
    CLIENT_SECRET,
    FAST,
    IMPORT_KWARGS,
    PROFILES,
    connect,
    run_dag,
    write_csv,
    xcom,
)

SUCCESS, FAILED = TaskInstanceState.SUCCESS, TaskInstanceState.FAILED


@pytest.fixture
def apsis(emulator, monkeypatch, airflow_db, tmp_path):
    def start(**config):
        server = emulator("apsis_one", **{**FAST, **config})
        connect(monkeypatch, server)
        return server

    return start


APSIS_COUNTS = {"read": 3, "rejected": 0, "skipped": 0, "sent": 3, "vendor_succeeded": 2, "vendor_failed": 1}


def counts(result):
    """The counts of the shared result, once its details show Apsis One's own counters behind them."""
    assert {key: result["details"][key] for key in ("profiles_found", "profiles_processed", "profiles_failed")} == \
        {"profiles_found": 3, "profiles_processed": 2, "profiles_failed": 1}
    assert set(result["details"]["job"]) == {"section", "import_id"}
    return {key: value for key, value in result.items() if key != "details"}


@pytest.mark.parametrize("deferrable", [False, True], ids=["waiting", "deferred"])
def test_import_completes_and_returns_counts(apsis, tmp_path, deferrable, capfd):
    server = apsis()
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, deferrable=DEFER, **KW)",
                       FILE=str(data), DEFER=deferrable, KW=IMPORT_KWARGS)
    assert tis["imp"].state == SUCCESS
    assert counts(xcom(run, "imp")) == APSIS_COUNTS
    imports = server.emulator.snapshot()["imports"]
    assert len(imports) == 1
    assert xcom(run, "imp", "import_id") in imports
    output = "".join(capfd.readouterr())
    assert "Uploaded" in output and CLIENT_SECRET not in output  # the task log was captured, without the secret


@pytest.mark.parametrize("deferrable", [False, True], ids=["waiting", "deferred"])
def test_import_in_error_fails_the_task_with_details(apsis, tmp_path, deferrable, capfd):
    server = apsis(fail_imports=True)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, deferrable=DEFER, retries=0, **KW)",
                       FILE=str(data), DEFER=deferrable, KW=IMPORT_KWARGS)
    assert tis["imp"].state == FAILED
    assert "the import failed while processing" in "".join(capfd.readouterr())
    assert [i["result"]["status"] for i in server.emulator.snapshot()["imports"].values()] == ["error"]


@pytest.mark.parametrize("deferrable", [False, True], ids=["waiting", "deferred"])
def test_import_outliving_job_timeout_fails_the_task(apsis, tmp_path, deferrable, capfd):
    server = apsis(processing_seconds=60)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, deferrable=DEFER, "
                                 "job_timeout=0.6, **KW)",
                       FILE=str(data), DEFER=deferrable, KW=IMPORT_KWARGS)
    assert tis["imp"].state == FAILED
    assert "still in_progress after job_timeout=1s" in "".join(capfd.readouterr())
    assert [i["result"]["status"] for i in server.emulator.snapshot()["imports"].values()] == ["in_progress"]


def test_retry_reattaches_to_the_running_import(apsis, tmp_path, capfd):
    server = apsis(processing_seconds=1.0)
    # the first try's status check after the upload is refused (not retryable): the task fails, then retries
    server.emulator.inject("status", match=r"^GET /audience/sections/.*/imports/", count=1, status=400,
                           body={"title": "Bad Request", "detail": "injected", "status": 400})
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, retries=1, "
                                 "retry_delay=datetime.timedelta(0), **KW)",
                       FILE=str(data), KW=IMPORT_KWARGS)
    assert tis["imp"].state == SUCCESS
    assert tis["imp"].try_number == 2
    assert "reattaching to job" in "".join(capfd.readouterr())
    snapshot = server.emulator.snapshot()
    assert len(snapshot["imports"]) == 1  # never a second import
    (only,) = snapshot["imports"].values()
    assert only["uploads"] == 1 and only["result"]["status"] == "completed"
    assert counts(xcom(run, "imp")) == APSIS_COUNTS


@pytest.mark.parametrize("deferrable", [False, True], ids=["poke", "deferred"])
def test_sensor_waits_for_an_import_created_upstream(apsis, tmp_path, deferrable):
    server = apsis(processing_seconds=0.5)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    tasks = """
        imp = ApsisOneProfileImportOperator(task_id='imp', file=FILE, wait_for_completion=False, **KW)
        wait = ApsisOneImportSensor(task_id='wait', section=KW['section'], deferrable=DEFER, poll_interval=0.1,
                                    timeout=30, import_id="{{ ti.xcom_pull(task_ids='imp', key='import_id') }}")
        imp >> wait
    """
    run, tis = run_dag(tmp_path, tasks, FILE=str(data), DEFER=deferrable, KW=IMPORT_KWARGS)
    assert tis["imp"].state == SUCCESS and tis["wait"].state == SUCCESS
    handed_over = xcom(run, "imp")  # the shared result: the vendor has counted nothing yet, so no count is made up
    assert handed_over["details"]["handed_over"] and handed_over["details"]["job"]["import_id"]
    assert [handed_over[key] for key in ("read", "sent", "vendor_succeeded", "vendor_failed")] == [None] * 4
    result = xcom(run, "wait")
    assert result["status"] == "completed" and result["profiles_found"] == 3
    assert len(server.emulator.snapshot()["imports"]) == 1


def test_sensor_fails_on_an_import_in_error(apsis, tmp_path):
    apsis(fail_imports=True)
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    tasks = """
        imp = ApsisOneProfileImportOperator(task_id='imp', file=FILE, wait_for_completion=False, **KW)
        wait = ApsisOneImportSensor(task_id='wait', section=KW['section'], deferrable=True, poll_interval=0.1,
                                    timeout=30, import_id="{{ ti.xcom_pull(task_ids='imp', key='import_id') }}")
        imp >> wait
    """
    run, tis = run_dag(tmp_path, tasks, FILE=str(data), KW=IMPORT_KWARGS)
    assert tis["imp"].state == SUCCESS and tis["wait"].state == FAILED


def test_max_failed_ratio_fails_the_task(apsis, tmp_path):
    apsis()
    data = write_csv(tmp_path / "profiles.csv", PROFILES)  # 1 of 3 rows has an invalid email
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, max_failed_ratio=0.2, **KW)",
                       FILE=str(data), KW=IMPORT_KWARGS)
    assert tis["imp"].state == FAILED


def test_retry_reuses_the_import_whose_upload_failed(apsis, tmp_path, capfd):
    """The first try's upload fails for good: its import waits for a file in one of the 3 slots, and the
    retry uploads to it rather than creating a second import."""
    server = apsis()
    server.emulator.inject("status", match=r"^POST /file-import-uploads", count=3, status=503)  # every attempt
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, retries=1, "
                                 "retry_delay=datetime.timedelta(0), **KW)",
                       FILE=str(data), KW=IMPORT_KWARGS)
    assert tis["imp"].state == SUCCESS and tis["imp"].try_number == 2
    snapshot = server.emulator.snapshot()
    assert len(snapshot["imports"]) == 1  # the waiting import was reused
    (only,) = snapshot["imports"].values()
    assert only["uploads"] == 1 and only["result"]["status"] == "completed"
    assert counts(xcom(run, "imp")) == APSIS_COUNTS
    assert "uploading to import" in "".join(capfd.readouterr())


def test_lost_create_answer_says_a_slot_may_be_held(apsis, tmp_path, capfd):
    """Apsis lists no imports: the one whose answer was lost cannot be found; the retry creates another
    (importing the same rows again sets the same values) and says the first holds a slot until it expires."""
    server = apsis()
    server.emulator.inject("drop_after", match=r"^POST /v2/audience/sections/.*/imports$")
    data = write_csv(tmp_path / "profiles.csv", PROFILES)
    run, tis = run_dag(tmp_path, "ApsisOneProfileImportOperator(task_id='imp', file=FILE, retries=1, "
                                 "retry_delay=datetime.timedelta(0), **KW)",
                       FILE=str(data), KW=IMPORT_KWARGS)
    assert tis["imp"].state == SUCCESS and tis["imp"].try_number == 2
    statuses = sorted(i["result"]["status"] for i in server.emulator.snapshot()["imports"].values())
    assert statuses == ["completed", "waiting_for_file"]
    assert "may hold one of the account's 3 import slots until" in "".join(capfd.readouterr())
