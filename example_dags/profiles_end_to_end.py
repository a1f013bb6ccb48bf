"""One warehouse table of users, pushed to all four platforms on a schedule: four declared syncs.

    seed_source (demo only) -> <vendor>.prepare -> <vendor>.split -> <vendor>.upload[...] (deferred)
        -> <vendor>.commit -> <vendor>.report                       (Gainsight PX: prepare -> load)
    -> report (the four reports side by side)

Each ``ProfilesSync`` is a task group (``airflow_provider_profiles.sync_group``): only the rows new
or changed since the last committed run are sent, and each group's ``report`` task returns read,
invalid (with reasons), sent, what the vendor says of them, seconds per stage, and writes one CSV of
the rows that did not make it beside the run's files.

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

from airflow_provider_profiles.sync_group import Destination, ProfilesSync, SqlSource

# Files and sync state go to object storage (s3://...) when tasks run on several workers;
# PROFILES_DATA_DIR or a temp folder when everything runs on one machine (the demo).
WORK_DIR = os.environ.get("PROFILES_DATA_DIR") or os.path.join(tempfile.gettempdir(), "profiles-examples")
SOURCE_CONN_ID = "profiles_source"
USERS = "SELECT user_id, email, first_name, city, plan, vip, newsletter, score FROM users"
# the same options for every group: the folder, small chunks so the demo fans out, alert thresholds
COMMON = dict(work_folder="{{ params.work_dir }}", max_invalid_ratio=0.05, max_vendor_failed_ratio=0.05,
              split_options={"max_rows": "{{ params.chunk_rows }}"})
WAIT = {"poll_interval": 5, "max_failed_ratio": 0.05}

with DAG(
    dag_id="profiles_end_to_end",
    schedule="@daily",
    start_date=datetime.datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    params={
        "work_dir": Param(f"{WORK_DIR}/profiles_end_to_end", type="string"),
        "users": Param(300, type="integer", description="demo rows seeded into the source table"),
        "seed": Param(True, type="boolean",
                      description="false: keep the source table as it is (rows changed since the last run)"),
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
        if not params["seed"]:
            return hook.get_first("SELECT count(*) FROM users")[0]
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

    gainsight_px = ProfilesSync(
        group_id="gainsight_px", source=SqlSource(SOURCE_CONN_ID, USERS),
        destination=Destination("gainsight_px", entity="USER"),
        mapping={"identifyId": "user_id", "email": "email", "firstName": "first_name", "location.city": "city",
                 "customAttributes.plan": "plan"},
        mode="upsert", upload_options={"max_failed_ratio": 0.05}, **{**COMMON, "split_options": None},
    )
    apsis_one = ProfilesSync(
        group_id="apsis_one", source=SqlSource(SOURCE_CONN_ID, USERS),
        destination=Destination("apsis_one", section="com.apsis1.sections.default", keyspace="email",
                                attributes={"first_name": "First name", "city": "City"}),
        mapping={"email": "email", "first_name": "first_name", "city": "city", "vip": "vip", "newsletter": "newsletter"},
        upload_options={**WAIT, "tags": {"vip": "VIP"}, "consents": [
            {"column": "newsletter", "topic": "usercreated.topics.news-0k9d", "channel": "email", "type": "opt-in"}]},
        **COMMON,
    )
    localytics = ProfilesSync(
        group_id="localytics", source=SqlSource(SOURCE_CONN_ID, USERS),
        destination=Destination("localytics", customer_id="user_id"),
        mapping={"user_id": "user_id", "first_name": "first_name", "city": "city", "plan": "plan"},
        upload_options=WAIT, **{**COMMON, "split_options": None},  # 10 uploads an hour: one file
    )
    mediarithmics = ProfilesSync(
        group_id="mediarithmics", source=SqlSource(SOURCE_CONN_ID, USERS),
        destination=Destination("mediarithmics", document_type="USER_PROFILE"),
        mapping={"user_account_id": "user_id", "compartment_id": {"const": 1600, "type": "int"}, "plan": "plan",
                 "city": "city", "score": {"source": "score", "type": "int"}},
        upload_options=WAIT, **COMMON,
    )
    groups = {"gainsight_px": gainsight_px, "apsis_one": apsis_one, "localytics": localytics,
              "mediarithmics": mediarithmics}
    seeded >> list(groups.values())

    @task
    def report(reports: dict) -> dict:
        """The four groups' reports side by side, in the shared result's words (rejected: invalid
        before sending; skipped: unchanged since the last sync, or skipped by the vendor)."""
        summary = {}
        for vendor, counts in reports.items():
            summary[vendor] = {
                "read": counts["read"], "rejected": counts["invalid"],
                "skipped": counts["unchanged"] + (counts["skipped"] or 0), "sent": counts["sent"],
                "vendor_succeeded": counts["vendor_succeeded"], "vendor_failed": counts["vendor_failed"],
                "seconds": counts["seconds"], "bottleneck": counts["bottleneck"],
                "not_sent_file": counts["not_sent_file"],
            }
            print(f"{vendor:<14} {summary[vendor]}")
        return summary

    report({vendor: dag.get_task(f"{vendor}.report").output for vendor in groups})
