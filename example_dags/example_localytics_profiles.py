"""Push CRM profile changes to Localytics: CSV -> profile change lines -> upload -> wait deferred -> report.

Localytics takes 10 profile uploads per hour per API key, so the file is only split when it is
larger than ``max_chunk_bytes`` (one upload per run is the norm), and uploads run in the Airflow
pool ``localytics_uploads`` so that several workers together stay under the limit; a worker that
still meets the limit waits for a slot instead of failing. Create the pool once::

    airflow pools set localytics_uploads 1 "Localytics profile uploads (10 per hour per key)"

Needs a connection ``localytics_default``: API key as login, API secret as password, extra
``{"org_id": "..."}``. Against the local emulator (no account needed), point it there::

    python -m airflow_provider_profiles.testing localytics --port 8093
    export AIRFLOW_CONN_LOCALYTICS_DEFAULT='{"conn_type": "localytics", "login": "localytics-key",
        "password": "localytics-secret", "host": "http://127.0.0.1:8093", "extra": {"org_id": "60"}}'
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider_profiles.writers.localytics import AttributeChange, ProfileChangesWriter
from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator

PROFILES_CSV = str(Path(__file__).parent / "data" / "localytics_profiles.csv")
# Where prepared files go: object storage (s3://...) on a multi-worker deployment; PROFILES_DATA_DIR
# or a temp folder when everything runs on one machine (the demo).
WORK_DIR = os.environ.get("PROFILES_DATA_DIR") or os.path.join(tempfile.gettempdir(), "profiles-examples")

# input column -> Localytics attribute and op; empty cells are skipped unless said otherwise
ATTRIBUTES = {
    "plan": {"attr": "plan", "empty": "delete"},  # a blank plan removes the attribute
    "signup_date": AttributeChange("signup_date", kind="date"),  # sent as YYYY-MM-DD
    "interests": AttributeChange("interests", "set-add", list_separator="|"),
    "logins_since_last_sync": AttributeChange("login_count", "increment"),
    "churned_flag": AttributeChange("retention_offer", "delete"),  # a true flag deletes the attribute
}

with DAG(
    dag_id="example_localytics_profiles",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    params={
        "source": Param(PROFILES_CSV, type="string", description="CSV of profiles (local path or object storage URL)"),
        "work_dir": Param(f"{WORK_DIR}/localytics", type="string"),
        "max_chunk_bytes": Param(50_000_000, type="integer", description="split only above this size"),
        "max_rejected_ratio": Param(0.5, type="number"),
    },
    tags=["example", "localytics"],
) as dag:

    @task
    def prepare(params: dict | None = None, run_id: str | None = None) -> dict:
        """Write the change lines; bad rows go to the rejects file with their line and reason."""
        from airflow_provider_profiles.prepare.engine import prepare as prepare_file

        folder = f"{params['work_dir']}/{run_id.replace(':', '_').replace('+', '_')}"
        result = prepare_file(
            params["source"],
            ProfileChangesWriter(ATTRIBUTES, customer_id="customer_id"),
            f"{folder}/profiles.ndjson",
            rejects=f"{folder}/profiles.rejects.csv",
        ).to_dict()
        if result["read"] and result["rejected"] / result["read"] > params["max_rejected_ratio"]:
            raise ValueError(f"{result['rejected']} of {result['read']} rows rejected; see {result['rejects']}")
        return result

    @task
    def chunks(prepared: dict, params: dict | None = None) -> list[str]:
        """As few files as possible: each one costs one of the 10 uploads of the hour."""
        from airflow_provider_profiles.prepare.split import split_file

        return split_file(prepared["output"], max_bytes=params["max_chunk_bytes"], file_format="ndjson")

    prepared = prepare()
    upload = LocalyticsProfileImportOperator.partial(
        task_id="upload",
        pool="localytics_uploads",
        deferrable=True,  # a deferred task frees its worker and its pool slot while Localytics works
        poll_interval=30,
        job_timeout=datetime.timedelta(hours=2),
        max_failed_ratio=0.1,
        retries=2,  # a retry reattaches to the import its first try created
    ).expand(file=chunks(prepared))

    @task
    def report(prepared: dict, uploaded: list[dict]) -> dict:
        """Every input row is sent and imported, sent and failed, or rejected before sending."""
        from airflow_provider_profiles.operators.result import results_of, total

        uploaded = results_of(uploaded)  # the shared result of every upload task
        imported, failed = total(uploaded, "vendor_succeeded"), total(uploaded, "vendor_failed")
        summary = {"read": prepared["read"], "rejected_before_upload": prepared["rejected"],
                   "sent": prepared["written"], "imported": imported, "failed_at_localytics": failed,
                   "rejects_file": prepared["rejects"],
                   "activity_ids": [u["details"]["activity_id"] for u in uploaded]}
        if imported is None or imported + failed != prepared["written"]:
            raise ValueError(f"Localytics counted {imported + failed} lines but {prepared['written']} were sent")
        print(summary)
        return summary

    report(prepared, upload.output)
