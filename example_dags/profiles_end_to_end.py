"""One warehouse table of users, pushed to all four platforms on a schedule.

    seed_source (demo only) -> prepare_<vendor> (SQL -> vendor format, rejects file)
        -> split to the vendor's limits -> upload each chunk (.expand, deferred) -> report

Every user row ends up sent, rejected before sending (rejects file, with line and reason), or
reported failed by the vendor; ``report`` checks that the counts add up for each vendor.

Connections: ``profiles_source`` (any SQL connection; SQLite in the demo) and the vendors' defaults
``gainsight_px_default``, ``apsis_one_default``, ``localytics_default``, ``mediarithmics_default``.
Against the local emulators, with no account::

    make demo      # python scripts/run_dag.py profiles_end_to_end
"""

from __future__ import annotations

import datetime
import os
import tempfile

from airflow.sdk import DAG, Param, task

from airflow_provider_profiles.operators.apsis_one import ApsisOneProfileImportOperator
from airflow_provider_profiles.operators.gainsight_px import GainsightPXLoadOperator
from airflow_provider_profiles.operators.localytics import LocalyticsProfileImportOperator
from airflow_provider_profiles.operators.mediarithmics import (
    MediarithmicsCreateDocumentImportOperator,
    MediarithmicsUploadOperator,
)
from airflow_provider_profiles.operators.prepare import SplitFileOperator, SqlToProfilesFileOperator

# Prepared files go to object storage (s3://...) when tasks run on several workers; PROFILES_DATA_DIR
# or a temp folder when everything runs on one machine (the demo).
WORK_DIR = os.environ.get("PROFILES_DATA_DIR") or os.path.join(tempfile.gettempdir(), "profiles-examples")
RUN_DIR = "{{ params.work_dir }}/{{ run_id | replace(':', '_') | replace('+', '_') }}"
SOURCE_CONN_ID = "profiles_source"

GPX_FIELDS = {"identifyId": "user_id", "email": "email", "firstName": "first_name", "location.city": "city",
              "customAttributes.plan": "plan"}

with DAG(
    dag_id="profiles_end_to_end",
    schedule="@daily",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "work_dir": Param(f"{WORK_DIR}/profiles_end_to_end", type="string"),
        "users": Param(300, type="integer", description="demo rows seeded into the source table"),
        "chunk_rows": Param(120, type=["null", "integer"],
                            description="small so the demo fans out; null: split by the vendors' size limits only"),
    },
    default_args={"retries": 2, "retry_delay": datetime.timedelta(seconds=10)},
    tags=["example", "end_to_end"],
) as dag:

    @task
    def seed_source(params: dict | None = None) -> int:
        """Demo only: a `users` table with a few bad rows (no id, bad email, a name too long)."""
        from airflow.providers.common.compat.sdk import BaseHook

        hook = BaseHook.get_connection(SOURCE_CONN_ID).get_hook()
        rows = []
        for i in range(1, params["users"] + 1):
            user_id = None if i % 89 == 0 else f"u-{i:05d}"
            email = "not-an-email" if i % 97 == 0 else f"user{i}@example.com"
            first_name = "X" * 300 if i % 101 == 0 else f"First{i}"
            rows.append((user_id, email, first_name, ["Paris", "Lyon", "Malmö"][i % 3], ["free", "pro"][i % 2],
                         "true" if i % 5 == 0 else "false", i % 2, i % 100))
        hook.run(["DROP TABLE IF EXISTS users",
                  "CREATE TABLE users (user_id TEXT, email TEXT, first_name TEXT, city TEXT, plan TEXT, "
                  "vip TEXT, newsletter INTEGER, score INTEGER)"])
        hook.insert_rows("users", rows, target_fields=["user_id", "email", "first_name", "city", "plan", "vip",
                                                        "newsletter", "score"])
        return len(rows)

    seeded = seed_source()

    # --- Gainsight PX: records, then the pooled, rate-limited loader (no bulk-file API) -----------
    gpx_prepared = SqlToProfilesFileOperator(
        task_id="prepare_gainsight_px", conn_id=SOURCE_CONN_ID,
        sql="SELECT user_id, email, first_name, city, plan FROM users",
        vendor="gainsight_px", writer_options={"entity": "USER", "field_mapping": GPX_FIELDS},
        output_path=f"{RUN_DIR}/gainsight_px/users.ndjson",
    )
    gpx_loaded = GainsightPXLoadOperator(
        task_id="load_gainsight_px", source="{{ ti.xcom_pull(task_ids='prepare_gainsight_px')['output'] }}",
        input_format="ndjson", entity="USER", field_mapping={field: field for field in GPX_FIELDS},
        insert_missing=True, max_failed_ratio=0.05,
    )

    # --- Apsis One: CSV, split under 50 MB, one import per chunk (3 at a time: the hook waits) ---
    apsis_prepared = SqlToProfilesFileOperator(
        task_id="prepare_apsis_one", conn_id=SOURCE_CONN_ID,
        sql="SELECT email, first_name, city, vip, newsletter FROM users",
        vendor="apsis_one",
        writer_options={"columns": ["email", "first_name", "city", "vip", "newsletter"], "keyspace_field": "email",
                        "keyspace": "email"},
        output_path=f"{RUN_DIR}/apsis_one/profiles.csv",
    )
    apsis_chunks = SplitFileOperator(
        task_id="split_apsis_one", source_path=apsis_prepared.output, vendor="apsis_one",
        output_dir=f"{RUN_DIR}/apsis_one/chunks", max_rows="{{ params.chunk_rows }}",
    )
    apsis_imported = ApsisOneProfileImportOperator.partial(
        task_id="import_apsis_one", section="com.apsis1.sections.default",
        keyspace="email", keyspace_column="email",
        attributes={"first_name": "First name", "city": "City"}, tags={"vip": "VIP"},
        consents=[{"column": "newsletter", "topic": "usercreated.topics.news-0k9d", "channel": "email",
                   "type": "opt-in"}],
        deferrable=True, poll_interval=5, max_failed_ratio=0.05,
    ).expand(file=apsis_chunks.output)

    # --- Localytics: change lines in one upload (10 uploads an hour: split only when needed) -----
    localytics_prepared = SqlToProfilesFileOperator(
        task_id="prepare_localytics", conn_id=SOURCE_CONN_ID,
        sql="SELECT user_id, first_name, city, plan FROM users",
        vendor="localytics", writer_format="changes",
        writer_options={"customer_id": "user_id", "attributes": {"first_name": "first_name", "city": "city",
                                                                 "plan": "plan"}},
        output_path=f"{RUN_DIR}/localytics/profiles.ndjson",
    )
    localytics_imported = LocalyticsProfileImportOperator(
        task_id="import_localytics", file="{{ ti.xcom_pull(task_ids='prepare_localytics')['output'] }}",
        deferrable=True, poll_interval=5, max_failed_ratio=0.05, pool="default_pool",
    )

    # --- mediarithmics: a new document import per run, one execution per chunk -------------------
    mics_prepared = SqlToProfilesFileOperator(
        task_id="prepare_mediarithmics", conn_id=SOURCE_CONN_ID,
        sql="SELECT user_id AS user_account_id, 1600 AS compartment_id, plan, city, score FROM users",
        vendor="mediarithmics", writer_format="USER_PROFILE",
        output_path=f"{RUN_DIR}/mediarithmics/profiles.ndjson",
    )
    mics_chunks = SplitFileOperator(
        task_id="split_mediarithmics", source_path=mics_prepared.output, vendor="mediarithmics",
        output_dir=f"{RUN_DIR}/mediarithmics/chunks", max_rows="{{ params.chunk_rows }}",
    )
    mics_import = MediarithmicsCreateDocumentImportOperator(
        task_id="create_mediarithmics_import", document_type="USER_PROFILE", mime_type="APPLICATION_X_NDJSON",
        name="User profiles from the warehouse - {{ dag_run.run_after | ds }}",
    )
    mics_uploaded = MediarithmicsUploadOperator.partial(
        task_id="upload_mediarithmics", document_import_id=mics_import.output,
        deferrable=True, poll_interval=5, max_failed_ratio=0.05,
    ).expand(file=mics_chunks.output)

    seeded >> [gpx_prepared, apsis_prepared, localytics_prepared, mics_prepared]
    # these two read the prepared file's path from a template, so the dependency is stated
    gpx_prepared >> gpx_loaded
    localytics_prepared >> localytics_imported

    @task
    def report(prepared: dict, uploaded: dict) -> dict:
        """Per vendor: rows read, rejected before sending, unchanged, sent, and what the vendor says of
        them. Every upload, load or erase task returns the same result (``operators.result``), so
        this is one code path for every vendor."""
        from airflow_provider_profiles.operators.result import results_of, total

        summary = {}
        for vendor, prep in prepared.items():
            results = results_of(uploaded[vendor], vendor)  # one result, or one per mapped chunk
            counts = {
                "read": prep["read"],
                "rejected": prep["rejected"] + total(results, "rejected"),
                "skipped": prep["unchanged"] + total(results, "skipped"),
                "sent": total(results, "sent"),
                "vendor_succeeded": total(results, "vendor_succeeded"),
                "vendor_failed": total(results, "vendor_failed"),
            }
            # what the prepare task wrote is what its upload tasks read (for a file: the vendor counted)
            handed_on = total(results, "read")
            if handed_on != prep["written"] or \
                    counts["read"] != counts["rejected"] + counts["skipped"] + counts["sent"] or \
                    counts["sent"] != counts["vendor_succeeded"] + counts["vendor_failed"]:
                raise ValueError(f"{vendor}: counts do not reconcile ({prep['written']} written, {handed_on} "
                                 f"read by the uploads): {counts}")
            print(f"{vendor:<14} {counts}")
            summary[vendor] = counts
        return summary

    report(
        prepared={"gainsight_px": gpx_prepared.output, "apsis_one": apsis_prepared.output,
                  "localytics": localytics_prepared.output, "mediarithmics": mics_prepared.output},
        uploaded={"gainsight_px": gpx_loaded.output, "apsis_one": apsis_imported.output,
                  "localytics": localytics_imported.output, "mediarithmics": mics_uploaded.output},
    )
