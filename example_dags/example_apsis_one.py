"""Import profiles into Apsis One: map CSV columns to attributes, tags and consent, then wait deferred.

Two ways to wait: ``import_profiles`` creates the import, uploads the file and defers until Apsis
reports it ``completed``; ``start_import`` only creates and uploads, and ``wait_for_import`` (a
sensor) waits for it, e.g. when another DAG starts imports. Both return the vendor's counts.

Needs a connection ``apsis_one_default`` (client id as login, client secret as password, extra
``{"region": "eu"}``). Against the local emulator, no account needed::

    python scripts/run_dag.py example_apsis_one
"""

from __future__ import annotations

import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_provider_profiles.operators.apsis_one import ApsisOneProfileImportOperator
from airflow_provider_profiles.sensors.apsis_one import ApsisOneImportSensor

PROFILES_CSV = str(Path(__file__).parent / "data" / "apsis_one_profiles.csv")

# column -> what it feeds in Apsis One; attributes and tags by name (resolved to their current ids)
MAPPING = dict(
    keyspace="email",
    keyspace_column="email",
    attributes={"first_name": "First name", "city": "City"},
    tags={"vip": "VIP"},
    consents=[{"column": "newsletter", "topic": "usercreated.topics.news-0k9d", "channel": "email", "type": "opt-in"}],
    update_existing_profiles=True,
    clear_existing_attributes=False,
)

with DAG(
    dag_id="example_apsis_one",
    schedule=None,
    start_date=datetime.datetime(2024, 1, 1),
    catchup=False,
    params={"section": "com.apsis1.sections.default", "file": PROFILES_CSV},
    tags=["example", "apsis_one"],
) as dag:
    import_profiles = ApsisOneProfileImportOperator(
        task_id="import_profiles",
        section="{{ params.section }}",
        file="{{ params.file }}",
        deferrable=True,
        poll_interval=2,
        job_timeout=datetime.timedelta(hours=2),
        max_failed_ratio=0.2,  # a few bad rows are tolerated; more fail the task
        retries=2,  # a retry reattaches to the running import instead of creating a second one
        **MAPPING,
    )

    start_import = ApsisOneProfileImportOperator(
        task_id="start_import",
        section="{{ params.section }}",
        file="{{ params.file }}",
        wait_for_completion=False,
        **MAPPING,
    )
    wait_for_import = ApsisOneImportSensor(
        task_id="wait_for_import",
        section="{{ params.section }}",
        import_id="{{ ti.xcom_pull(task_ids='start_import', key='import_id') }}",
        deferrable=True,
        poke_interval=2,
        timeout=3600,
        retries=2,
    )

    @task
    def report(imported: dict, sensed: dict) -> dict:
        return {"import_profiles": imported, "wait_for_import": {k: v for k, v in sensed.items() if k != "status"}}

    start_import >> wait_for_import
    report(import_profiles.output, wait_for_import.output)
