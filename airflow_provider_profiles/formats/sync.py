"""Incremental sync state: what the last successful sync sent, kept next to the data.

Layout under the state directory (any ``ObjectStoragePath``)::

    CURRENT.json                    {"snapshot": "snapshots/<run>.parquet", "fingerprint": ..., ...}
    snapshots/<run>.parquet         key_hash, row_hash (+ delete columns) of every row sent
    snapshots/<run>.json            what the prepare step recorded about that snapshot

A prepare step compares its rows with the snapshot CURRENT names and writes only new and changed
rows, and a new snapshot under its own run key. CURRENT moves to the new snapshot only when
``commit`` runs after every upload succeeded, so a failed run changes nothing and the next run
resends what is still pending. One small JSON write is the commit, which object stores do
atomically.

The row hash of a CSV input is the hash of the record's raw bytes, so a record the last sync
sent byte for byte is recognised before it is parsed (``PreviousSnapshot.known_records``); the
header, delimiter and encoding are part of the snapshot's fingerprint. Other inputs hash the
mapped values. Memory: about 20 bytes per key of the previous snapshot (two 64-bit hashes, two
flags, bucket bounds; 4 more for a CSV input: keys are then found through a permutation).
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

from airflow_provider_profiles.storage import as_storage_path, open_binary

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

    def __init__(self, path: Any, key_hashes: np.ndarray, row_hashes: np.ndarray | None = None, *, order=None, by_record=False):
        """Sorted by key (``order`` if already known), or with ``by_record`` by row hash, for
        ``known_records``: keys are then found through a permutation (4 bytes a key, where a
        second sorted copy with its places would take 12)."""
        self.path = path
        key_rank = None
        if by_record:
            key_rank = sort_order(key_hashes)
            order = sort_order(row_hashes)
        elif order is None:
            order = sort_order(key_hashes)  # keys are unique in a snapshot: any sort will do
        self.key_hashes = key_hashes[order]
        self.row_hashes = row_hashes[order] if row_hashes is not None else None
        self.seen = np.zeros(len(order), dtype=bool)
        self.carried = np.zeros(len(order), dtype=bool)  # unchanged rows left unparsed (see known_records)
        self.records: _SortedIndex | None = None
        if key_rank is None:
            self.keys = _SortedIndex(self.key_hashes)
        else:
            place = np.empty(len(order), dtype=np.int32 if len(order) < 2**31 else np.int64)
            place[order] = np.arange(len(order), dtype=place.dtype)
            self.keys = _SortedIndex(self.key_hashes, place[key_rank])
            self.records = _SortedIndex(self.row_hashes)

    @classmethod
    def load(cls, path: Any, by_record: bool = False) -> PreviousSnapshot:
        """Sorted by key, it reads one column at a time and sorts as it goes: the peak is about 3
        arrays of 8 bytes a key, not the 9 that reading, combining, copying and sorting both
        columns at once held. ``ParquetFile.read`` also spares the import of the dataset layer."""
        with open_binary(path) as stream:
            parquet = pq.ParquetFile(stream)
            keys = _uint64_column(parquet, "key_hash")
            if by_record:
                return cls(path, keys, _uint64_column(parquet, "row_hash"), by_record=True)
            order = sort_order(keys)
            snapshot = cls(path, keys, None, order=order)
            del keys
            snapshot.row_hashes = _uint64_column(parquet, "row_hash")[order]
        return snapshot

    def __len__(self) -> int:
        return len(self.key_hashes)

    def find(self, key_hashes: np.ndarray) -> np.ndarray:
        """Place of each key in the snapshot, -1 where the snapshot does not hold it."""
        return self.keys.find(key_hashes)

    def known_records(self, row_hashes: np.ndarray) -> np.ndarray:
        """Place of the snapshot row with each of these row hashes, -1 where there is none.

        For hashes of raw records, which hold their key: the same hash is the same key with the
        same values. Read-only, so a reader thread may call it.
        """
        return self.records.find(row_hashes)

    def carried_rows(self, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """Snapshot rows marked ``carried``, with their delete columns (streamed back from the file)."""
        if not self.carried.any():
            return
        if self.columns() == ["key_hash", "row_hash"]:  # all in memory
            rows = np.flatnonzero(self.carried)
            for start in range(0, len(rows), batch_rows):
                part = rows[start : start + batch_rows]
                yield pa.table({"key_hash": self.key_hashes[part], "row_hash": self.row_hashes[part]})
            return
        with open_binary(self.path) as stream:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=batch_rows):
                mask = self.carried[np.maximum(self.find(_uint64_array(batch.column("key_hash"))), 0)]
                if mask.any():
                    yield pa.Table.from_batches([batch]).filter(pa.array(mask))

    def columns(self) -> list[str]:
        with open_binary(self.path) as stream:
            return pq.ParquetFile(stream).schema_arrow.names

    def repeats(self, positions: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """True for the ``valid`` rows found in the snapshot whose key came before in this run (in
        an earlier batch or an earlier row of this one); marks their keys as seen.

        The duplicate check of the snapshot's keys: a flag per key, where a set of hashes would
        cost 8 bytes a key more.
        """
        rows = np.flatnonzero(valid & (positions >= 0))
        at = positions[rows]
        repeated = self.seen[at]
        self.seen[at] = True
        ordered = np.sort(at)
        if len(ordered) > 1 and (ordered[1:] == ordered[:-1]).any():
            order = np.argsort(at, kind="stable")  # the first row of each key stays first
            repeated[order[1:][at[order][1:] == at[order][:-1]]] = True
        flags = np.zeros(len(positions), dtype=bool)
        flags[rows] = repeated
        return flags

    def unchanged(self, positions: np.ndarray, row_hashes: np.ndarray) -> np.ndarray:
        """True for rows found in the snapshot with the same row hash."""
        if not len(self.key_hashes):
            return np.zeros(len(positions), dtype=bool)
        return (positions >= 0) & (self.row_hashes[np.maximum(positions, 0)] == row_hashes)

    def vanished(self, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """Snapshot rows whose key was not seen in this run (streamed back from the file)."""
        unseen = np.sort(self.key_hashes[~self.seen])
        if not len(unseen):
            return
        with open_binary(self.path) as stream:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=batch_rows):
                hashes = _uint64_array(batch.column("key_hash"))
                index = np.minimum(np.searchsorted(unseen, hashes), len(unseen) - 1)
                mask = unseen[index] == hashes
                if mask.any():
                    yield pa.Table.from_batches([batch]).filter(pa.array(mask))


class _SortedIndex:
    """Finds values in a sorted array of uniform 64-bit hashes.

    The hashes are uniform, so their top bits cut the array into buckets of a few values each: a
    lookup is one read of the bucket bounds plus a short binary search there, instead of a search
    over the whole array (and no sort of the needles to keep it cached).
    """

    def __init__(self, values: np.ndarray, order: np.ndarray | None = None):
        self.values = values
        self.order = order  # values[order] is sorted; None: values is
        self.bucket_bits = int(min(max(np.ceil(np.log2(max(len(values), 1) / 8)), 0), 24))
        if self.bucket_bits:
            edges = np.arange(1 << self.bucket_bits, dtype=np.uint64) << np.uint64(64 - self.bucket_bits)
            bounds = np.searchsorted(values if order is None else values[order], edges)
        else:
            bounds = np.zeros(1, np.int64)
        self.bucket_starts = np.append(bounds, len(values)).astype(np.int64)
        sizes = np.diff(self.bucket_starts)
        self.search_steps = int(np.ceil(np.log2(int(sizes.max()) + 1))) if len(sizes) else 0

    def find(self, needles: np.ndarray) -> np.ndarray:
        """Index of each needle in the array, -1 where it is not there."""
        if not len(self.values):
            return np.full(len(needles), -1, dtype=np.int64)
        if self.bucket_bits:
            bucket = (needles >> np.uint64(64 - self.bucket_bits)).astype(np.int64)
        else:
            bucket = np.zeros(len(needles), np.int64)
        low, high = self.bucket_starts[bucket], self.bucket_starts[bucket + 1]
        last = len(self.values) - 1

        def place(index: np.ndarray) -> np.ndarray:
            return index if self.order is None else self.order[index]

        for _ in range(self.search_steps):  # lower-bound binary search, all needles in step
            middle = (low + high) >> 1
            below = self.values[place(np.minimum(middle, last))] < needles
            below &= middle < high
            low = np.where(below, middle + 1, low)
            high = np.where(below, high, middle)
        found = place(np.minimum(low, last))
        return np.where(self.values[found] == needles, found, -1)


def sort_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys)`` in half the time: each key's top bits and its index, packed in one
    integer, are sorted by value (several times faster than an argsort), then the rare keys that
    share those top bits are put in order."""
    count = len(keys)
    index_bits = np.uint64(max(count - 1, 1).bit_length())
    packed = keys >> index_bits  # in place from here: fewer large arrays to allocate
    packed <<= index_bits
    packed |= np.arange(count, dtype=np.uint64)
    packed.sort()
    packed &= (np.uint64(1) << index_bits) - np.uint64(1)
    order = packed.astype(np.int32 if count < 2**31 else np.int64)
    del packed
    ordered = keys[order]
    if (ordered[1:] < ordered[:-1]).any():
        order = order[np.argsort(ordered, kind="stable")]  # nearly sorted: timsort takes one pass
    return order


def _uint64_column(parquet: pq.ParquetFile, name: str) -> np.ndarray:
    column = parquet.read(columns=[name]).column(name)
    if not column.num_chunks:
        return np.zeros(0, dtype=np.uint64)
    return np.concatenate([_uint64_array(chunk) for chunk in column.chunks])


def _uint64_array(array: pa.Array) -> np.ndarray:
    """Straight from the Arrow buffer (hashes have no nulls): ``to_numpy`` may import pandas."""
    return np.frombuffer(array.buffers()[1], dtype=np.uint64, count=len(array), offset=array.offset * 8)


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
        # (nor would dictionaries or statistics: each would cost a pass over the data for nothing)
        self._writer = pq.ParquetWriter(
            self._stream,
            schema,
            compression="none" if not extra_columns else "zstd",
            use_dictionary=[f"delete.{name}" for name in self.extra_columns],
            write_statistics=False,
        )
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

    def previous(self, fingerprint: str, by_record: bool = False) -> PreviousSnapshot | None:
        """The committed snapshot, or None when there is none or the mapping changed since."""
        current = self.current()
        if current is None or current.get("fingerprint") != fingerprint:
            return None
        return PreviousSnapshot.load(self._file(current["snapshot"]), by_record)

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
