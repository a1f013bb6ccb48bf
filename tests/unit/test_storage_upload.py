"""``storage.open_upload``: the one way every hook opens what it uploads (real files, fsspec's memory://)."""

from __future__ import annotations

import io
import uuid

import pytest

from airflow_provider_profiles.storage import open_upload


def test_a_local_path_is_opened_sized_named_and_closed(tmp_path):
    path = tmp_path / "chunk-0001.ndjson"
    path.write_bytes(b'{"a": 1}\n')
    for source in (path, str(path)):
        with open_upload(source) as upload:
            assert (upload.size, upload.name, upload.label) == (9, "chunk-0001.ndjson", str(path))
            assert upload.body.read() == b'{"a": 1}\n'
        assert upload.body.closed


def test_an_object_storage_url_goes_through_fsspec():
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())  # as s3:// would be
    bucket = f"uploads-{uuid.uuid4().hex[:8]}"
    url = f"memory://{bucket}/profiles.csv"
    try:
        ObjectStoragePath(url).write_bytes(b"email\na@b.se\n")
        for source in (url, ObjectStoragePath(url)):
            with open_upload(source) as upload:
                assert (upload.size, upload.name, upload.label) == (13, "profiles.csv", url)
                assert upload.body.read() == b"email\na@b.se\n"
    finally:
        MemoryFileSystem().rm(bucket, recursive=True)


def test_an_open_file_is_sent_from_where_it_is_and_left_open(tmp_path):
    path = tmp_path / "data.json"
    path.write_bytes(b"0123456789")
    with open(path, "rb") as handle:
        handle.seek(4)
        with open_upload(handle, "upload.json") as upload:
            assert (upload.size, upload.name, upload.body.tell()) == (6, "data.json", 4)
        assert not handle.closed


def test_bytes_chunks_and_nameless_streams():
    with open_upload(b"abc", "upload.json") as upload:
        assert (upload.body, upload.size, upload.name, upload.label) == (b"abc", 3, "upload.json", "the upload")
    with open_upload(iter([b"a", b"b"])) as upload:
        assert (list(upload.body), upload.size) == ([b"a", b"b"], None)
    with open_upload(io.BytesIO(b"xyz")) as upload:
        assert (upload.size, upload.name) == (3, "upload")
    with pytest.raises(TypeError, match="cannot upload a int"):
        with open_upload(42):
            pass
