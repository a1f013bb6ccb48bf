"""Keep a Localytics audience list in step with a CRM segment: create it the first time, replace it after.

CSV of customer ids -> ``{"customer_id": ...}`` lines (duplicates and blanks go to the rejects
file) -> create or replace the list -> a deferrable sensor waits for the import -> report.
Audience routes allow 60 requests per minute per key and 500 lists per app.

Needs a connection ``localytics_default`` (API key as login, API secret as password). Against the
local emulator, see ``example_localytics_profiles.py``; the emulator's apps are ``app-1`` and ``app-2``.
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider_profiles.writers.localytics import AudienceLinesWriter
from airflow_provider_profiles.operators.localytics import LocalyticsAudienceImportOperator
from airflow_provider_profiles.sensors.localytics import LocalyticsImportSensor

AUDIENCE_CSV = str(Path(__file__).parent / "data" / "localytics_audience.csv")
# Where prepared files go: object storage (s3://...) on a multi-worker deployment; PROFILES_DATA_DIR
# or a temp folder when everything runs on one machine (the demo).
WORK_DIR = os.environ.get("PROFILES_DATA_DIR") or os.path.join(tempfile.gettempdir(), "profiles-examples")

with DAG(
    dag_id="example_localytics_audiences",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    params={
        "source": Param(AUDIENCE_CSV, type="string"),
        "app_id": Param("app-1", type="string"),
        "audience_name": Param("crm-vip", type="string"),
        "work_dir": Param(f"{WORK_DIR}/localytics", type="string"),
    },
    tags=["example", "localytics"],
) as dag:

    @task
    def prepare(params: dict | None = None, run_id: str | None = None) -> dict:
        from airflow_provider_profiles.prepare.engine import prepare as prepare_file

        folder = f"{params['work_dir']}/{run_id.replace(':', '_').replace('+', '_')}"
        return prepare_file(params["source"], AudienceLinesWriter(customer_id="customer_id"),
                            f"{folder}/audience.ndjson", rejects=f"{folder}/audience.rejects.csv").to_dict()

    @task(retries=2)
    def choose_action(params: dict | None = None) -> dict:
        """Replace the list if the app already has one by that name, else create it."""
        from airflow_provider_profiles.hooks.localytics import LocalyticsHook

        existing = LocalyticsHook().find_audience(params["app_id"], params["audience_name"])
        if existing is None:
            return {"action": "create", "audience_list_id": None}
        return {"action": "replace", "audience_list_id": existing["id"]}

    prepared = prepare()
    choice = choose_action()
    start_import = LocalyticsAudienceImportOperator(
        task_id="start_import",
        action="{{ ti.xcom_pull(task_ids='choose_action')['action'] }}",
        app_id="{{ params.app_id }}",
        audience_name="{{ params.audience_name }}",
        audience_list_id="{{ ti.xcom_pull(task_ids='choose_action')['audience_list_id'] or '' }}",
        file="{{ ti.xcom_pull(task_ids='prepare')['output'] }}",
        wait_for_completion=False,  # the sensor below waits, deferred
    )
    wait_for_import = LocalyticsImportSensor(
        task_id="wait_for_import",
        kind="audiences",
        activity_id="{{ ti.xcom_pull(task_ids='start_import', key='activity_id') }}",  # survives a retry's reattach
        deferrable=True,
        poke_interval=10,
        timeout=3600,
        retries=2,
    )

    @task
    def report(prepared: dict, status: dict) -> dict:
        stats = status["statistics"]
        summary = {"read": prepared["read"], "rejected_before_upload": prepared["rejected"],
                   "sent": prepared["written"], "in_list": stats["succeeded"], "failed": stats["failed"],
                   "audience_list_id": status["audience_list_id"]}
        print(summary)
        return summary

    [prepared, choice] >> start_import >> wait_for_import
    report(prepared, wait_for_import.output)
