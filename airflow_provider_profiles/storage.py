"""Where files live: a plain local path, or object storage through Airflow's ``ObjectStoragePath``.

Every module that reads or writes the files passed between tasks (prepared files, chunks, rejects,
sync state, uploads) goes through these functions, so local paths stay fast (the OS file, no
fsspec) and URLs (s3://, gs://, file://, memory://...) work the same everywhere.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

TEMPORARY_SUFFIX = ".tmp"  # a file being written aside by ``write_whole``
UPLOAD_PROGRESS_INTERVAL = 15.0  # seconds between an upload's progress lines in the task log


def is_local(path: Any) -> bool:
    return getattr(path, "protocol", "") in ("", "file", "local")


def local_path(path: Any) -> str:
    return getattr(path, "path", None) or str(path)


def path_text(path: Any) -> str:
    """The text a path is handed on as (return values, XCom, ``.expand()``): the plain path for a
    local file, the URL otherwise, in the same form on every supported Airflow.

    ``ObjectStoragePath`` on universal-pathlib < 0.3 (Airflow < 3.2) writes ``memory:///bucket/x``
    where newer releases, and universal-pathlib's own memory path, write ``memory://bucket/x``; the
    memory filesystem reads both as the same object, so the newer form is the one handed on.
    """
    if is_local(path):
        return local_path(path)
    text = str(path)
    if getattr(path, "protocol", "") == "memory" and text.startswith("memory:///"):
        text = "memory://" + text[len("memory:///"):]
    return text


def as_storage_path(path: Any, conn_id: str | None = None):
    """``ObjectStoragePath`` for URLs (or any path when ``conn_id`` names the storage connection),
    ``pathlib.Path`` for plain local paths (no need to import Airflow's I/O layer for those)."""
    if conn_id is None and (hasattr(path, "protocol") or isinstance(path, pathlib.PurePath)):
        return path
    text = os.fspath(path) if hasattr(path, "__fspath__") else str(path)
    if "://" not in text and conn_id is None:
        return pathlib.Path(text)
    from airflow.sdk import ObjectStoragePath

    return ObjectStoragePath(text, conn_id=conn_id) if conn_id else ObjectStoragePath(text)


def open_binary(path: Any, mode: str = "rb"):
    """Open for binary I/O: the OS file for local paths (fastest), fsspec otherwise; parents made for writes."""
    path = as_storage_path(path)
    if is_local(path):
        name = local_path(path)
        if "w" in mode:
            os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
            # A new file rather than the old one truncated: ext4 writes a truncated-and-rewritten
            # file back to disk when it is closed (auto_da_alloc), 0.3 s for a 900 MB output.
            if os.path.isfile(name) and not os.path.islink(name):
                os.unlink(name)
        return open(name, mode)  # noqa: SIM115  (the caller closes it)
    if "w" in mode:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path.open(mode)


def write_whole(path: Any, text: str) -> None:
    """Writes ``text`` so that a reader sees the old content or the new, never a part of it: a
    local file is written aside and renamed over the old one (``os.replace``); an object store's
    upload is all or nothing already (the object appears when the upload completes)."""
    path = as_storage_path(path)
    if not is_local(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return
    name = local_path(path)
    os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
    aside = f"{name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    try:
        with open(aside, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(aside, name)
    finally:
        if os.path.exists(aside):
            os.unlink(aside)


@dataclasses.dataclass(frozen=True)
class Upload:
    """What an upload sends: ``body`` (bytes, a binary file open at its start, or an iterator of bytes
    chunks), its ``size`` in bytes where known, the file ``name`` a form gives, and a ``label`` for messages."""

    body: Any
    size: int | None
    name: str
    label: str


@contextlib.contextmanager
def open_upload(source: Any, default_name: str = "upload", *, progress_interval: float | None = None,
                clock: Any = None) -> Iterator[Upload]:
    """The upload of a local path or an ``ObjectStoragePath`` / URL string (opened here, closed after),
    an open binary file (sent from where it is, left open), bytes, or an iterable of bytes chunks.

    A streamed body logs its progress as the HTTP client reads it: bytes sent, rate and ETA every
    ``progress_interval`` seconds (default ``UPLOAD_PROGRESS_INTERVAL``), then a closing line."""
    with _opened_upload(source, default_name) as upload:
        if isinstance(upload.body, bytes):  # in memory, sent in one go: nothing to follow
            yield upload
            return
        from airflow_provider_profiles.progress import CountingReader, Progress, counted_chunks

        interval = UPLOAD_PROGRESS_INTERVAL if progress_interval is None else progress_interval
        progress = Progress(upload.size, interval, unit="bytes", label=f"upload progress of {upload.label}",
                            doing="sending", done_verb="sent", **({"clock": clock} if clock else {}))
        body = (CountingReader(upload.body, progress) if hasattr(upload.body, "read")
                else counted_chunks(upload.body, progress))
        with progress:
            yield dataclasses.replace(upload, body=body)


@contextlib.contextmanager
def _opened_upload(source: Any, default_name: str) -> Iterator[Upload]:
    if isinstance(source, (bytes, bytearray)):
        yield Upload(bytes(source), len(source), default_name, "the upload")
    elif isinstance(source, (str, os.PathLike)) or hasattr(source, "protocol"):
        path = as_storage_path(source)
        with open_binary(path) as handle:
            yield Upload(handle, int(path.stat().st_size), path.name or default_name, path_text(path))
    elif hasattr(source, "read"):
        name = str(getattr(source, "name", "") or "")
        yield Upload(source, _remaining(source), os.path.basename(name) or default_name, name or "the upload")
    elif isinstance(source, Iterable):
        yield Upload(iter(source), None, default_name, "the upload")  # sent chunked, its size unknown
    else:
        raise TypeError(f"cannot upload a {type(source).__name__}: give a path, a URL, a binary file or bytes chunks")


def _remaining(handle: Any) -> int | None:
    """Bytes from the file's position to its end, or None where it cannot tell (a pipe)."""
    try:
        start = handle.tell()
        end = handle.seek(0, os.SEEK_END)
        handle.seek(start)
        return end - start
    except (AttributeError, OSError, ValueError):
        return None
