"""Prepare, split and sync through object storage (fsspec), not only local files."""

from __future__ import annotations

import json
import uuid

import pytest

from airflow_provider_profiles.writers import get_writer
from airflow_provider_profiles.prepare.engine import prepare
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.split import split_file
from airflow_provider_profiles.prepare.sync import SyncState


@pytest.fixture
def bucket():
    """A fresh ``memory://`` bucket, attached to Airflow's object storage like s3:// would be."""
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())
    root = f"memory://bucket-{uuid.uuid4().hex[:8]}"
    yield root, ObjectStoragePath
    MemoryFileSystem().rm(root.removeprefix("memory://"), recursive=True)


def test_prepare_split_and_sync_in_object_storage(bucket):
    root, Path = bucket
    source = Path(f"{root}/in/users.csv")
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text('id,name,city\n1,Ann,"Paris\nNord"\n2,Bo,Oslo\n,No id,X\n')
    writer = get_writer("localytics", "changes", attributes={"name": "name", "city": "city"}, customer_id="id")
    state = SyncState(f"{root}/state")

    result = prepare(str(source), writer, f"{root}/out/users.ndjson", rejects=f"{root}/out/rejects.csv",
                     sync=state, sync_run_key="r1")
    assert (result.read, result.written, result.rejected) == (3, 2, 1)
    # Paths are handed on in one form on every Airflow (memory:///... before universal-pathlib 0.3).
    assert (result.output, result.rejects) == (f"{root}/out/users.ndjson", f"{root}/out/rejects.csv")
    lines = [json.loads(line) for line in Path(f"{root}/out/users.ndjson").read_text().splitlines()]
    assert lines[0]["changes"][1]["value"] == "Paris\nNord"
    assert Path(f"{root}/out/rejects.csv").read_text().splitlines()[1].startswith("3,,id: customer id is empty")  # the third record

    chunks = split_file(f"{root}/out/users.ndjson", max_rows=1)
    assert chunks == [f"{root}/out/users.chunks/users.part-00000.ndjson", f"{root}/out/users.chunks/users.part-00001.ndjson"]
    assert [json.loads(Path(c).read_text())["customer_id"] for c in chunks] == ["1", "2"]
    csv_chunks = split_file(str(source), max_bytes=40)
    assert all(Path(c).read_text().startswith("id,name,city\n") for c in csv_chunks)

    state.commit("r1")
    assert state.current()["rows"] == 2
    again = prepare(str(source), writer, f"{root}/out/again.ndjson", sync=state, sync_run_key="r2")
    assert (again.written, again.unchanged, again.rejected) == (0, 2, 1)


def test_errors_name_the_object(bucket):
    root, Path = bucket
    source = Path(f"{root}/bad.csv")
    source.write_bytes("id,name,city\n1,Jos\xe9,X\n".encode("latin-1"))
    writer = get_writer("localytics", "changes", attributes={"name": "name", "city": "city"}, customer_id="id")
    with pytest.raises(InputError, match=r"bad.csv, line 2, column 'name': not valid UTF-8"):
        prepare(str(source), writer, f"{root}/out.ndjson")
