"""Nightly CRM profiles to mediarithmics: CSV -> USER_PROFILE commands -> chunks -> one new document
import for the run -> one execution per chunk (deferred) -> report once all are done.

mediarithmics recommends a new document import per batch of files (here: per run, named with the
run's date) and files of at most 100 MB, so the prepared file is split and each chunk becomes one
execution, uploaded by a mapped task. Rows without exactly one user identifier (user account id,
with its compartment or in the default one, or email hash) never leave: they go to the rejects
file with the reason.

Needs a connection ``mediarithmics_default``: API token as password, extra ``{"datamart_id": "..."}``.
Against the local emulator, no account needed::

    python scripts/run_dag.py example_mediarithmics
"""

from __future__ import annotations

import datetime
import os
import tempfile
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider_profiles.writers.mediarithmics import UserProfileWriter
from airflow_provider_profiles.operators.mediarithmics import (
    MediarithmicsCreateDocumentImportOperator,
    MediarithmicsUploadOperator,
)

PROFILES_CSV = str(Path(__file__).parent / "data" / "mediarithmics_profiles.csv")
# Where prepared files go: object storage (s3://...) on a multi-worker deployment; PROFILES_DATA_DIR
# or a temp folder when everything runs on one machine (the demo).
WORK_DIR = os.environ.get("PROFILES_DATA_DIR") or os.path.join(tempfile.gettempdir(), "profiles-examples")

with DAG(
    dag_id="example_mediarithmics",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    params={
        "source": Param(PROFILES_CSV, type="string", description="CSV of CRM profiles (local path or object storage URL)"),
        "work_dir": Param(f"{WORK_DIR}/mediarithmics", type="string"),
        "max_chunk_bytes": Param(95 * 1024 * 1024, type="integer", description="under the 100 MB per-file limit"),
        "max_chunk_rows": Param(6, type=["null", "integer"],
                                description="small here so the example fans out; null for real loads"),
    },
    tags=["example", "mediarithmics"],
) as dag:

    @task
    def prepare(params: dict | None = None, run_id: str | None = None) -> dict:
        """One UPSERT command per row, merging into the existing profile (PARTIAL_UPDATE)."""
        from airflow_provider_profiles.prepare.engine import prepare as prepare_file

        folder = f"{params['work_dir']}/{run_id.replace(':', '_').replace('+', '_')}"
        return prepare_file(
            params["source"],
            UserProfileWriter(update_strategy="PARTIAL_UPDATE"),
            f"{folder}/profiles.ndjson",
            rejects=f"{folder}/profiles.rejects.csv",
        ).to_dict()

    @task
    def chunks(prepared: dict, params: dict | None = None) -> list[str]:
        from airflow_provider_profiles.prepare.split import split_file

        return split_file(prepared["output"], max_bytes=params["max_chunk_bytes"], max_rows=params["max_chunk_rows"],
                          file_format="ndjson")

    prepared = prepare()
    document_import = MediarithmicsCreateDocumentImportOperator(
        task_id="create_document_import",
        document_type="USER_PROFILE",
        mime_type="APPLICATION_X_NDJSON",
        name="User profiles from CRM - {{ dag_run.run_after | ds }}",
        retries=2,  # a retry reuses the definition its first try created
    )
    upload = MediarithmicsUploadOperator.partial(
        task_id="upload",
        document_import_id=document_import.output,
        deferrable=True,  # the worker is free while mediarithmics imports
        poll_interval=5,
        job_timeout=datetime.timedelta(hours=6),  # then a still PENDING execution is canceled
        max_failed_ratio=0.1,
        retries=2,  # a retry reattaches to the execution its first try created
    ).expand(file=chunks(prepared))

    @task
    def report(prepared: dict, uploaded: list[dict]) -> dict:
        """Every input row is imported, failed at mediarithmics, or rejected before sending."""
        from airflow_provider_profiles.operators.result import results_of, total

        uploaded = results_of(uploaded)  # the shared result of every upload task
        imported, failed = total(uploaded, "vendor_succeeded"), total(uploaded, "vendor_failed")
        summary = {"read": prepared["read"], "rejected_before_upload": prepared["rejected"], "sent": prepared["written"],
                   "imported": imported, "failed_at_mediarithmics": failed, "rejects_file": prepared["rejects"],
                   "executions": [u["details"]["execution_id"] for u in uploaded],
                   "error_files": [u["details"]["error_file_uri"] for u in uploaded if u["details"]["error_file_uri"]]}
        if imported is None or imported + failed != prepared["written"]:
            raise ValueError(f"mediarithmics counted {imported + failed} lines, {prepared['written']} were sent: {summary}")
        print(summary)
        return summary

    report(prepared, upload.output)
