"""Incremental sync state: what the last successful sync sent, kept next to the data.

Layout under the state directory (any ``ObjectStoragePath``)::

    CURRENT.json                    {"snapshot": "snapshots/<run>.parquet", "fingerprint": ..., ...}
    snapshots/<run>.parquet         key_hash, row_hash (+ delete columns) of every row sent
    snapshots/<run>.json            what the prepare step recorded about that snapshot

A prepare step compares its rows with the snapshot CURRENT names and writes only new and changed
rows, and a new snapshot under its own run key. CURRENT moves to the new snapshot only when
``commit`` runs after every upload succeeded, so a failed run changes nothing and the next run
resends what is still pending. One small JSON write is the commit, which object stores do
atomically. Memory: 17 bytes per key of the previous snapshot (two 64-bit hashes and a flag).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from airflow_provider_profiles.formats.reader import as_storage_path, open_binary

CURRENT = "CURRENT.json"
SNAPSHOT_SCHEMA = pa.schema([("key_hash", pa.uint64()), ("row_hash", pa.uint64())])


def run_key_of(text: str) -> str:
    """A file-name-safe, deterministic key for a run (``run_id`` has ``:`` and ``+``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not key:
        raise ValueError(f"cannot make a run key from {text!r}")
    return key


class PreviousSnapshot:
    """The committed snapshot as sorted hash arrays; classifies rows as new, changed or unchanged."""

    def __init__(self, path: Any, key_hashes: np.ndarray, row_hashes: np.ndarray):
        order = np.argsort(key_hashes, kind="stable")
        self.path = path
        self.key_hashes = key_hashes[order]
        self.row_hashes = row_hashes[order]
        self.seen = np.zeros(len(order), dtype=bool)

    @classmethod
    def load(cls, path: Any) -> PreviousSnapshot:
        with open_binary(path) as stream:
            table = pq.read_table(stream, columns=["key_hash", "row_hash"])
        return cls(
            path,
            table.column("key_hash").combine_chunks().to_numpy().astype(np.uint64, copy=True),
            table.column("row_hash").combine_chunks().to_numpy().astype(np.uint64, copy=True),
        )

    def __len__(self) -> int:
        return len(self.key_hashes)

    def changed(self, key_hashes: np.ndarray, row_hashes: np.ndarray) -> np.ndarray:
        """True for rows that are new or differ from the snapshot; marks their keys as seen."""
        if not len(self.key_hashes):
            return np.ones(len(key_hashes), dtype=bool)
        # searching in sorted order keeps the big array's cache lines warm: much faster
        order = np.argsort(key_hashes)
        index = np.empty(len(key_hashes), dtype=np.int64)
        index[order] = np.searchsorted(self.key_hashes, key_hashes[order])
        index_clipped = np.minimum(index, len(self.key_hashes) - 1)
        found = self.key_hashes[index_clipped] == key_hashes
        self.seen[index_clipped[found]] = True
        same = found & (self.row_hashes[index_clipped] == row_hashes)
        return ~same

    def vanished(self, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """Snapshot rows whose key was not seen in this run (streamed back from the file)."""
        unseen = np.sort(self.key_hashes[~self.seen])
        if not len(unseen):
            return
        with open_binary(self.path) as stream:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=batch_rows):
                hashes = batch.column("key_hash").to_numpy()
                index = np.minimum(np.searchsorted(unseen, hashes), len(unseen) - 1)
                mask = unseen[index] == hashes
                if mask.any():
                    yield pa.Table.from_batches([batch]).filter(pa.array(mask))


class SnapshotWriter:
    """Streams the new snapshot (one row per row sent or unchanged) to a Parquet file."""

    def __init__(self, path: Any, extra_columns: list[str]):
        self.path = path
        self.extra_columns = list(extra_columns)
        schema = SNAPSHOT_SCHEMA
        for name in self.extra_columns:
            schema = schema.append(pa.field(f"delete.{name}", pa.string()))
        self.schema = schema
        self._stream = open_binary(path, "wb")
        # the hashes are random bits: compression would cost time and save nothing
        self._writer = pq.ParquetWriter(self._stream, schema, compression="none" if not extra_columns else "zstd")
        self.rows = 0

    def add(self, key_hashes: np.ndarray, row_hashes: np.ndarray, extra: list[pa.Array] = ()) -> None:
        arrays = [pa.array(key_hashes, pa.uint64()), pa.array(row_hashes, pa.uint64())]
        arrays += [column.cast(pa.string()) for column in extra]
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema))
        self.rows += len(key_hashes)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._stream.close()
            self._writer = None


class SyncState:
    """The sync state directory: read the committed snapshot, write a pending one, commit it."""

    def __init__(self, directory: Any):
        self.directory = as_storage_path(directory)

    def _file(self, relative: str):
        return self.directory / relative

    def current(self) -> dict[str, Any] | None:
        pointer = self._file(CURRENT)
        if not pointer.exists():
            return None
        return json.loads(pointer.read_text())

    def snapshot_path(self, run_key: str):
        return self._file(f"snapshots/{run_key_of(run_key)}.parquet")

    def meta_path(self, run_key: str):
        return self._file(f"snapshots/{run_key_of(run_key)}.json")

    def previous(self, fingerprint: str) -> PreviousSnapshot | None:
        """The committed snapshot, or None when there is none or the mapping changed since."""
        current = self.current()
        if current is None or current.get("fingerprint") != fingerprint:
            return None
        return PreviousSnapshot.load(self._file(current["snapshot"]))

    def writer(self, run_key: str, extra_columns: list[str] = ()) -> SnapshotWriter:
        return SnapshotWriter(self.snapshot_path(run_key), list(extra_columns))

    def record_pending(self, run_key: str, fingerprint: str, rows: int, counts: dict[str, Any]) -> None:
        meta = {"run_key": run_key_of(run_key), "fingerprint": fingerprint, "rows": rows, "counts": counts}
        self.meta_path(run_key).write_text(json.dumps(meta))

    def commit(self, run_key: str, keep: int = 2) -> dict[str, Any]:
        """Make the run's snapshot current; keep ``keep`` committed snapshots, drop the rest.

        Snapshots of failed runs go too: run one incremental sync per state directory at a time
        (``max_active_runs=1``), as a second live run would compare against a moving target.
        """
        key = run_key_of(run_key)
        meta_path, snapshot = self.meta_path(key), self.snapshot_path(key)
        if not meta_path.exists() or not snapshot.exists():
            raise FileNotFoundError(
                f"no pending sync snapshot for run {key!r} in {self.directory}: "
                "did the prepare step run with only_changed=True in this run?"
            )
        meta = json.loads(meta_path.read_text())
        previous = self.current()
        history = ([previous["run_key"], *previous.get("history", [])] if previous else [])
        history = [name for name in history if name != key][: max(keep - 1, 0)]
        current = {
            "snapshot": f"snapshots/{key}.parquet",
            "fingerprint": meta["fingerprint"],
            "rows": meta["rows"],
            "run_key": key,
            "history": history,
            "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
        self._file(CURRENT).write_text(json.dumps(current))
        self._prune({key, *history})
        return current

    def _prune(self, keep: set[str]) -> None:
        folder = self._file("snapshots")
        if not folder.exists():
            return
        for entry in list(folder.iterdir()):
            if entry.name.rsplit(".", 1)[0] not in keep:
                entry.unlink()
