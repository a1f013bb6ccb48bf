"""Load users into Gainsight PX from a CSV, inserting the missing ones, then export them to check the load.

Connection ``gainsight_px_default``: password = API key, extras ``{"data_center": "us", "product_key":
"AP-XXXXXXXXXXXX-2"}``. To try it locally against the emulator::

    python -m airflow_provider_profiles.testing gainsight_px --port 8081
    export AIRFLOW_CONN_GAINSIGHT_PX_DEFAULT='{"conn_type": "gainsight_px", "host": "http://127.0.0.1:8081",
        "password": "gpx-emulator-key", "extra": {"product_key": "AP-EMULATOR-2"}}'
    airflow dags test example_gainsight_px

The sample file has one bad row (an invalid email): it goes to the rejects file, the rest loads.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime

from airflow.sdk import DAG, Param

from airflow_provider_profiles.operators.gainsight_px import GainsightPXExportOperator, GainsightPXLoadOperator

SAMPLE_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "gainsight_px_users.csv")
# Where prepared files go: object storage (s3://...) on a multi-worker deployment; PROFILES_DATA_DIR
# or a temp folder when everything runs on one machine (the demo).
WORK_DIR = os.environ.get("PROFILES_DATA_DIR") or os.path.join(tempfile.gettempdir(), "profiles-examples")

with DAG(
    dag_id="example_gainsight_px",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["example", "gainsight_px"],
    params={
        "source": Param(SAMPLE_CSV, type="string", description="CSV of users (local path or object storage URI)"),
        "output_dir": Param(os.path.join(WORK_DIR, "gainsight_px"), type="string"),
    },
) as dag:
    load_users = GainsightPXLoadOperator(
        task_id="load_users",
        source="{{ params.source }}",
        entity="USER",
        field_mapping={
            "identifyId": "id",
            "email": "email",
            "firstName": "first_name",
            "lastName": "last_name",
            "title": "title",
            "location.city": "city",
            "location.stateCode": "state",
            "location.coordinates.latitude": "latitude",
            "location.coordinates.longitude": "longitude",
            "customAttributes.plan": "plan",
            "customAttributes.acceptDate": "accept_date",
        },
        field_types={"customAttributes.acceptDate": "date"},
        insert_missing=True,
        rejects_path="{{ params.output_dir }}/{{ run_id | replace(':', '_') }}/users.rejects.csv",
        max_failed_ratio=0.25,
    )

    export_users = GainsightPXExportOperator(
        task_id="export_users",
        entity="USER",
        filters=[{"customAttributes.plan": "pro"}, {"customAttributes.plan": "enterprise"}],
        output_path="{{ params.output_dir }}/{{ run_id | replace(':', '_') }}/paying_users.csv",
        fields=["identifyId", "email", "location.city", "customAttributes.plan"],
    )

    load_users >> export_users
