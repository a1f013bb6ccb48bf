"""Files in S3 named with the connection in the URL (``s3://<conn_id>@bucket/key``, the form
``ObjectStoragePath`` hands on), read by the engine: quick checks against moto, no Airflow cluster."""

from __future__ import annotations

import json

import duckdb
import pytest

from tests.cluster.conftest import BUCKET
from tests.cluster.harness import STORAGE_CONN_ID

pytestmark = pytest.mark.cluster


@pytest.fixture
def storage_connection(moto, monkeypatch):
    monkeypatch.setenv(f"AIRFLOW_CONN_{STORAGE_CONN_ID.upper()}", json.dumps(moto.airflow_connection()))


@pytest.mark.parametrize(("name", "body"), [
    ("users.ndjson", b'{"id": "u-1", "city": "Lyon"}\n{"id": "u-2", "city": "Paris"}\n'),
    ("users.csv", b"id,city\nu-1,Lyon\nu-2,Paris\n"),
])
def test_the_engine_reads_a_source_named_with_its_connection(moto, storage_connection, name, body):
    from airflow_provider_profiles.prepare.source import open_source

    moto.client().put_object(Bucket=BUCKET, Key=f"paths/{name}", Body=body)
    with duckdb.connect() as connection:
        source = open_source(connection, f"s3://{STORAGE_CONN_ID}@{BUCKET}/paths/{name}")
        rows = connection.execute(f"SELECT id, city FROM {source.relation} ORDER BY id").fetchall()
    assert rows == [("u-1", "Lyon"), ("u-2", "Paris")]


def test_apsis_reads_an_import_files_header_from_s3(moto, storage_connection):
    """fsspec's files take no size in readline(): the header check failed on every S3 chunk."""
    from airflow_provider_profiles.hooks.apsis_one import read_header
    from airflow_provider_profiles.storage import as_storage_path

    moto.client().put_object(Bucket=BUCKET, Key="paths/chunk.csv", Body=b"email,first_name\r\na@example.com,Ann\r\n")
    assert read_header(as_storage_path(f"s3://{STORAGE_CONN_ID}@{BUCKET}/paths/chunk.csv")) == ["email", "first_name"]
