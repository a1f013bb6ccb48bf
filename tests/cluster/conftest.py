"""One Celery cluster per session (tests/cluster/harness.py), its servers started here from scratch.

Another DAG or other params on the same cluster: the example DAGs are all there (add a test DAG's file
from tests/dags to EXTRA_DAG_FILES), and ``run_phase(celery_cluster, name, [dag_id], conf={...})``
(tests/e2e/conftest.py) runs it and records what the emulators hold.
"""

from __future__ import annotations

import pytest

from tests.cluster.harness import STORAGE_CONN_ID, CeleryCluster, MotoServer
from tests.e2e.cluster import airflow_home
from tests.services import PostgresServer, RedisServer

BUCKET = "profiles-cluster"
EXTRA_DAG_FILES: tuple[str, ...] = ("partitioned_sync.py",)  # from tests/dags, beside the example DAGs
WAREHOUSE = "warehouse"  # the source database, beside Airflow's own in the same PostgreSQL


@pytest.fixture(scope="session")
def moto():
    with MotoServer() as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@pytest.fixture(scope="session")
def postgres():
    with PostgresServer("airflow") as server:
        server.psql(f"CREATE DATABASE {WAREHOUSE}", database="postgres")
        yield server


@pytest.fixture(scope="session")
def celery_cluster(tmp_path_factory, postgres, moto):
    home, dags = airflow_home(tmp_path_factory, "PROFILES_CLUSTER_HOME", "cluster-airflow", EXTRA_DAG_FILES)
    source = {**postgres.airflow_connection(), "schema": WAREHOUSE}
    with RedisServer() as redis:
        cluster = CeleryCluster(home, dags, metadata_db=postgres.uri(), broker_url=redis.uri(), source=source,
                                storage=moto.airflow_connection(), data_dir=f"s3://{STORAGE_CONN_ID}@{BUCKET}/data",
                                # the lines each execution received: what "sent once" is checked against
                                emulator_config={"mediarithmics": {"keep_lines": True}})
        try:
            yield cluster.up()
        finally:
            cluster.down()
