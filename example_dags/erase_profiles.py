"""Erase people everywhere (GDPR right to erasure): one list of ids -> Gainsight PX, Apsis One,
Localytics and mediarithmics -> one report per platform, and a summary.

The ids come from a CSV/NDJSON file (local path or object storage URL; ``ids_file``) or, when
``sql_conn_id`` is set, from two queries on that database (``user_ids_sql``: the CRM user id, which
is the Gainsight PX identifyId, the Localytics customer id and the mediarithmics user account id;
``emails_sql``: the Apsis One email key). Each platform's task returns (or, when an id failed,
fails and pushes to XCom ``erasure_report``) the shared result of ``operators.result``: ids erased
are ``vendor_succeeded``, ids the platform does not know ``skipped``, ids it failed ``vendor_failed``
(with the reasons in ``details["failures"]``), and ``read = skipped + vendor_succeeded + vendor_failed``.

- Gainsight PX: users deleted with ``hardDelete``.
- Apsis One: profiles deleted from the email keyspace.
- Localytics: org-level profiles deleted through the Profile API.
- mediarithmics: one USER_POINTS_DELETION execution (user points with their identifiers, segments
  and profiles), waited on in the triggerer.

Needs the four ``*_default`` connections. Against the local emulators (no account needed)::

    python scripts/run_dag.py erase_profiles
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.sdk import DAG, Param, task

from airflow_provider_profiles.operators.apsis_one import ApsisOneEraseOperator
from airflow_provider_profiles.operators.gainsight_px import GainsightPXEraseOperator
from airflow_provider_profiles.operators.localytics import LocalyticsEraseOperator
from airflow_provider_profiles.operators.mediarithmics import MediarithmicsEraseOperator

REQUESTS_CSV = str(Path(__file__).parent / "data" / "erasure_requests.csv")
# a file, unless a SQL connection is given: then the queries, and no file
FROM_FILE = "{{ '' if params.sql_conn_id else params.ids_file }}"
USER_IDS_SQL = "{{ params.user_ids_sql if params.sql_conn_id else '' }}"
EMAILS_SQL = "{{ params.emails_sql if params.sql_conn_id else '' }}"

with DAG(
    dag_id="erase_profiles",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    params={
        "ids_file": Param(REQUESTS_CSV, type="string", description="CSV/NDJSON with user_id and email columns"),
        "sql_conn_id": Param("", type="string", description="read the ids with the queries below instead"),
        "user_ids_sql": Param("SELECT user_id FROM erasure_requests", type="string"),
        "emails_sql": Param("SELECT email FROM erasure_requests", type="string"),
    },
    tags=["example", "erasure", "gdpr"],
) as dag:
    by_user_id = {"ids_file": FROM_FILE, "id_column": "user_id", "sql": USER_IDS_SQL,
                  "sql_conn_id": "{{ params.sql_conn_id }}"}
    erasures = [
        GainsightPXEraseOperator(task_id="gainsight_px", entity="user", hard_delete=True, **by_user_id),
        ApsisOneEraseOperator(task_id="apsis_one", keyspace="email", ids_file=FROM_FILE, id_column="email",
                              sql=EMAILS_SQL, sql_conn_id="{{ params.sql_conn_id }}"),
        LocalyticsEraseOperator(task_id="localytics", **by_user_id),
        MediarithmicsEraseOperator(task_id="mediarithmics", document_type="USER_POINTS_DELETION",
                                   id_type="user_account_id", deferrable=True, poll_interval=5,
                                   name="GDPR erasure {{ run_id }}", **by_user_id),
    ]

    @task(trigger_rule="all_done")
    def summary(ti=None) -> dict:
        """Every platform's report (from a failed task too), so one place shows what is left to do."""
        reports = {}
        for erasure in erasures:
            report = ti.xcom_pull(task_ids=erasure.task_id) or ti.xcom_pull(task_ids=erasure.task_id,
                                                                            key="erasure_report")
            reports[erasure.task_id] = report or {"error": "the task failed before erasing (see its log)"}
        print("erasure summary:", {vendor: {k: v for k, v in r.items() if k != "details"}
                                   for vendor, r in reports.items()})
        return reports

    erasures >> summary()
