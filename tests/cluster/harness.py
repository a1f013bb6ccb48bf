"""The e2e cluster (tests/e2e/cluster.py) on the Celery executor, spread as across machines: PostgreSQL
as Airflow's metadata database (SQLite cannot serve several hosts), Redis as the broker, two Celery
workers that share nothing but S3 (moto's server on 127.0.0.1) and the metadata database, each with its
own HOME, TMPDIR, working folder and name (the hostname Airflow records on the task instances it runs).
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Any

from tests.e2e.cluster import PROCESSES, AirflowCluster
from tests.services import _Server

WORKERS = ("worker-1", "worker-2")
WORKER_CONCURRENCY = 2
STORAGE_CONN_ID = "profiles_storage"
# moto accepts any key; these only have to be the same on both sides
ACCESS_KEY, SECRET_KEY, REGION = "cluster-tier-key", "cluster-tier-secret", "us-east-1"


class MotoServer(_Server):
    """moto's S3 in server mode on 127.0.0.1: the object storage every worker shares."""

    name = "moto"

    def start(self) -> MotoServer:
        self._spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)])
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def keys(self, bucket: str) -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return [item["Key"] for page in pages for item in page.get("Contents", [])]

    def read(self, bucket: str, key: str) -> bytes:
        return self.client().get_object(Bucket=bucket, Key=key)["Body"].read()

    def airflow_connection(self) -> dict:
        return {"conn_type": "aws", "login": ACCESS_KEY, "password": SECRET_KEY,
                "extra": {"endpoint_url": self.url, "region_name": REGION}}


class CeleryCluster(AirflowCluster):
    def __init__(self, home: Path, dags_folder: Path, *, metadata_db: str, broker_url: str, source: dict,
                 storage: dict, data_dir: str, **kwargs: Any):
        self.metadata_db, self.broker_url, self.source, self.storage = metadata_db, broker_url, source, storage
        self.data_dir = data_dir
        self.process_args = {**PROCESSES, **{name: [
            "celery", "worker", "--concurrency", str(WORKER_CONCURRENCY), "--celery-hostname", f"{name}@127.0.0.1",
            "--pid", str(home / f"{name}.pid"), "--skip-serve-logs"] for name in WORKERS}}
        super().__init__(home, dags_folder, **kwargs)

    def _env(self) -> dict[str, str]:
        env = super()._env()
        env.update({
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.metadata_db.replace("postgresql://", "postgresql+psycopg2://", 1),
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__PARALLELISM": "8",
            "AIRFLOW__CELERY__BROKER_URL": self.broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.metadata_db,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.cluster.identity.hostname",
            "AIRFLOW_CONN_PROFILES_SOURCE": json.dumps(self.source),
            f"AIRFLOW_CONN_{STORAGE_CONN_ID.upper()}": json.dumps(self.storage),
            "PROFILES_DATA_DIR": self.data_dir,
        })
        return env

    def up(self) -> CeleryCluster:
        super().up()
        for name in WORKERS:  # a worker that cannot start would otherwise show only as a run that never ends
            self.wait_for(lambda name=name: self._worker_ready(name), 120, f"{name} to be ready")
        return self

    def down(self) -> None:
        for name in WORKERS:  # a worker's warm shutdown would wait for the tasks it runs: nothing is kept
            if name in self.processes:
                self.kill(name)
        super().down()

    def _worker_ready(self, name: str) -> bool:
        if self.processes[name].poll() is not None:
            log = (self.home / f"{name}.log").read_text(errors="replace")
            raise RuntimeError(f"{name} exited with {self.processes[name].returncode}:\n{log[-3000:]}")
        return f"{name}@127.0.0.1 ready." in (self.home / f"{name}.log").read_text(errors="replace")

    # each worker as if on its own machine -------------------------------------------------------------
    def worker_folder(self, name: str) -> Path:
        return self.home / "workers" / name

    def process_env(self, name: str) -> dict[str, str]:
        env = {**self.env, "PROFILES_PROCESS_NAME": name}
        if name in WORKERS:
            folder = self.worker_folder(name)
            for sub in ("home", "tmp"):
                (folder / sub).mkdir(parents=True, exist_ok=True)
            env.update({"HOME": str(folder / "home"), "TMPDIR": str(folder / "tmp")})
        return env

    def process_cwd(self, name: str) -> Path | None:
        return self.worker_folder(name) / "home" if name in WORKERS else None

    def worker_files(self) -> dict[str, list[str]]:
        """{worker: files left under its folder (HOME, TMPDIR, working folder)}, relative to that folder."""
        return {name: sorted(str(p.relative_to(self.worker_folder(name))) for p in self.worker_folder(name).rglob("*")
                             if p.is_file()) for name in WORKERS}

    # the metadata database is PostgreSQL here ----------------------------------------------------------
    def query(self, sql: str, *params: Any) -> list[tuple]:
        import psycopg2

        with contextlib.closing(psycopg2.connect(self.metadata_db)) as db, db, db.cursor() as cursor:
            cursor.execute(sql.replace("?", "%s"), params)
            return cursor.fetchall()

    def hostnames(self, dag_id: str, run_id: str) -> dict[str, str]:
        """{task (mapped ones as task[i]): the name of the process that ran its last try}."""
        rows = self.query("select task_id, map_index, hostname from task_instance where dag_id = ? and run_id = ?",
                          dag_id, run_id)
        return {(t if m < 0 else f"{t}[{m}]"): h for t, m, h in rows}
