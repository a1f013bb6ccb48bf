"""One declared sync in four partitions (``ProfilesSync(partitions=4)``) from the ``profiles_source``
warehouse to mediarithmics: each partition's query keeps the users whose id hashes to it
(PostgreSQL's ``hashtext``), and each partition is prepared, uploaded and committed by its own tasks.
Run by the Celery tier (tests/cluster/test_partitioned_sync.py); the table ``partitioned_users`` is the
test's."""

from __future__ import annotations

import datetime
import os
import tempfile

from airflow.sdk import DAG

from airflow_provider_profiles.sync_group import Destination, ProfilesSync, SqlSource

WORK_DIR = os.environ.get("PROFILES_DATA_DIR", tempfile.gettempdir())  # S3 on the Celery tier
SQL = ("SELECT user_id, plan, city FROM partitioned_users "
       "WHERE (hashtext(user_id) & 2147483647) % {{ params.partitions }} = {{ params.partition }}")

with DAG(dag_id="partitioned_sync", schedule=None, start_date=datetime.datetime(2026, 1, 1), catchup=False,
         max_active_runs=1, tags=["test"]) as dag:
    ProfilesSync(
        group_id="users", source=SqlSource("profiles_source", SQL), partitions=4,
        destination=Destination("mediarithmics", document_type="USER_PROFILE"),
        mapping={"user_account_id": "user_id", "compartment_id": {"const": 1600, "type": "int"}, "plan": "plan",
                 "city": "city"},
        work_folder=f"{WORK_DIR}/partitioned_sync", split_options={"max_rows": 200},
        upload_options={"poll_interval": 2, "retries": 1, "retry_delay": datetime.timedelta(seconds=1)},
    )
