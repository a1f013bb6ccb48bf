"""Incremental sync state: what the last successful sync sent, kept next to the data.

Layout under the state directory (any ``ObjectStoragePath``)::

    CURRENT.json                    {"snapshot": "snapshots/<run>.parquet", "fingerprint": ..., ...}
    snapshots/<run>.parquet         row_hash, key_hash of every row sent or unchanged, by row hash,
                                    and key_order: their places in key order
    snapshots/<run>.ids.parquet     key_hash and identifier columns, kept for deletions (opt-in)
    snapshots/<run>.json            what the prepare step recorded about that snapshot

A prepare step compares its rows with the snapshot CURRENT names and writes only new and changed
rows, and a new snapshot under its own run key. CURRENT moves to the new snapshot only when
``commit`` runs after every upload succeeded, so a failed run changes nothing and the next run
resends what is still pending. One small JSON write is the commit, which object stores do
atomically.

The row hash of a CSV input is the hash of the record's raw bytes, so a record the last sync
sent byte for byte is recognised before it is parsed (``PreviousSnapshot.known_records``); the
header, delimiter and encoding are part of the snapshot's fingerprint. Other inputs hash the
mapped values. The snapshot is stored sorted both ways, so a sync loads it without sorting and
writes the next one by merging the few rows it sent into the rows it kept. Memory: about 26
bytes per row of the previous snapshot (two 64-bit hashes, the key order, two flags, the bounds
of the search buckets) and 16 per row sent.
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

from airflow_provider_profiles.formats.hashing import to_numpy
from airflow_provider_profiles.storage import as_storage_path, open_binary

CURRENT = "CURRENT.json"
IDS_SUFFIX = ".ids.parquet"


def run_key_of(text: str) -> str:
    """A file-name-safe, deterministic key for a run (``run_id`` has ``:`` and ``+``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not key:
        raise ValueError(f"cannot make a run key from {text!r}")
    return key


class PreviousSnapshot:
    """The committed snapshot's hashes; classifies rows as new, changed or unchanged.

    As stored: rows in row-hash order (``known_records`` searches them directly) with their key
    hashes, and the key order over them (``find`` searches keys through it), so loading sorts
    nothing. A place is a row's index in that order.
    """

    def __init__(self, row_hashes: np.ndarray, key_hashes: np.ndarray, key_order: np.ndarray, ids_path: Any = None):
        self.row_hashes, self.key_hashes, self.key_order, self.ids_path = row_hashes, key_hashes, key_order, ids_path
        self.seen = np.zeros(len(row_hashes), dtype=bool)
        self._seen_count = 0  # of seen: counting the flags is how repeats within a batch show
        self.carried = np.zeros(len(row_hashes), dtype=bool)  # rows that stay in the next snapshot as they are
        self.records = _SortedIndex(row_hashes)
        self.keys = _SortedIndex(key_hashes, key_order)

    @classmethod
    def of(cls, key_hashes: np.ndarray, row_hashes: np.ndarray, ids_path: Any = None) -> PreviousSnapshot:
        """From hashes in any order (a snapshot holds each key once)."""
        columns = zip(*next_snapshot(None, key_hashes, row_hashes))
        return cls(*(np.concatenate(parts) for parts in columns), ids_path)

    @classmethod
    def load(cls, path: Any, ids_path: Any = None) -> PreviousSnapshot:
        with open_binary(path) as stream:
            parquet = pq.ParquetFile(stream)  # not pq.read_table: spares the import of the dataset layer
            schema, count = parquet.schema_arrow, parquet.metadata.num_rows
            columns = [np.empty(count, schema.field(name).type.to_pandas_dtype()) for name in INDEX_COLUMNS]
            done = 0
            for group in range(parquet.num_row_groups):  # one row group at a time: no second copy
                table = parquet.read_row_group(group, columns=INDEX_COLUMNS)
                for column, name in zip(columns, INDEX_COLUMNS):
                    column[done : done + table.num_rows] = to_numpy(table.column(name))
                done += table.num_rows
        return cls(*columns, ids_path if ids_path is not None and ids_path.exists() else None)

    def __len__(self) -> int:
        return len(self.row_hashes)

    def find(self, key_hashes: np.ndarray) -> np.ndarray:
        """Place of each key in the snapshot, -1 where the snapshot does not hold it."""
        return self.keys.find(key_hashes)

    def known_records(self, row_hashes: np.ndarray) -> np.ndarray:
        """Place of the snapshot row with each of these row hashes, -1 where there is none.

        For hashes of raw records, which hold their key: the same hash is the same key with the
        same values. Read-only, so a reader thread may call it.
        """
        return self.records.find(row_hashes)

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
        seen_before, self._seen_count = self._seen_count, int(np.count_nonzero(self.seen))
        if self._seen_count - seen_before < len(at) - int(np.count_nonzero(repeated)):  # a key twice in these rows
            order = np.argsort(at, kind="stable")  # the first row of each key stays first
            repeated[order[1:][at[order][1:] == at[order][:-1]]] = True
        flags = np.zeros(len(positions), dtype=bool)
        flags[rows] = repeated
        return flags

    def unchanged(self, positions: np.ndarray, row_hashes: np.ndarray) -> np.ndarray:
        """True for rows found in the snapshot with the same row hash."""
        if not len(self):
            return np.zeros(len(positions), dtype=bool)
        return (positions >= 0) & (self.row_hashes[np.maximum(positions, 0)] == row_hashes)

    def carried_ids(self, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """The kept identifier columns of the ``carried`` rows (streamed back from the file)."""
        yield from self._ids_where(lambda places: (places >= 0) & self.carried[np.maximum(places, 0)], batch_rows)

    def vanished(self, batch_rows: int = 65_536) -> Iterator[pa.Table]:
        """The kept identifier columns of the rows whose key was not seen in this run."""
        yield from self._ids_where(lambda places: (places >= 0) & ~self.seen[np.maximum(places, 0)], batch_rows)

    def _ids_where(self, wanted, batch_rows: int) -> Iterator[pa.Table]:
        if self.ids_path is None:
            return
        with open_binary(self.ids_path) as stream:
            for batch in pq.ParquetFile(stream).iter_batches(batch_size=batch_rows):
                mask = wanted(self.find(to_numpy(batch.column("key_hash"))))
                if mask.any():
                    yield pa.Table.from_batches([batch]).filter(pa.array(mask))


class _SortedIndex:
    """Finds values in a sorted array of uniform 64-bit hashes (or one sorted through ``order``).

    The hashes are uniform, so their top bits cut the array into buckets of a few values each: a
    lookup is one read of the bucket bounds plus a short binary search there, instead of a search
    over the whole array (and no sort of the needles to keep it cached).
    """

    def __init__(self, values: np.ndarray, order: np.ndarray | None = None):
        self.values = values
        self.order = order  # values[order] is sorted; None: values is
        # two values a bucket: a search of 4 steps (8 a bucket took 5, and 25% longer)
        self.bucket_bits = int(min(max(np.ceil(np.log2(max(len(values), 1) / 2)), 0), 24))
        # counted, not searched: the counts are the same in any order (no sorted copy needed)
        sizes = np.zeros(1 << self.bucket_bits, np.int64)
        for start in range(0, len(values), CHUNK_ROWS):
            sizes += np.bincount(self._bucket(values[start : start + CHUNK_ROWS]), minlength=len(sizes))
        self.bucket_starts = np.concatenate(([0], np.cumsum(sizes))).astype(_place_type(len(values)))
        self.search_steps = int(np.ceil(np.log2(int(sizes.max()) + 1))) if len(values) else 0

    def _bucket(self, values: np.ndarray) -> np.ndarray:
        return (values >> np.uint64(64 - self.bucket_bits)).astype(np.intp) if self.bucket_bits else np.zeros(len(values), np.intp)

    def _place(self, index: np.ndarray) -> np.ndarray:
        return index if self.order is None else self.order[index]

    def rank(self, needles: np.ndarray) -> np.ndarray:
        """How many values are below each needle (where it would go in sorted order)."""
        bucket = self._bucket(needles)
        low, high = self.bucket_starts[bucket], self.bucket_starts[bucket + 1]
        last = max(len(self.values) - 1, 0)
        for _ in range(self.search_steps):  # lower-bound binary search, all needles in step
            middle = (low + high) >> 1
            below = self.values[self._place(np.minimum(middle, last))] < needles
            below &= middle < high
            low = np.where(below, middle + 1, low)
            high = np.where(below, high, middle)
        return low

    def find(self, needles: np.ndarray) -> np.ndarray:
        """Index of each needle in the array, -1 where it is not there."""
        if not len(self.values):
            return np.full(len(needles), -1, dtype=np.int64)
        found = self._place(np.minimum(self.rank(needles), len(self.values) - 1))
        return np.where(self.values[found] == needles, found, -1)


def sort_order(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.argsort(keys)`` in half the time, and the keys in that order: each key's top bits and
    its index, packed in one integer, are sorted by value (several times faster than an argsort),
    then the rare keys that share those top bits are put in order."""
    count = len(keys)
    index_bits = np.uint64(max(count - 1, 1).bit_length())
    packed = keys >> index_bits  # in place from here: fewer large arrays to allocate
    packed <<= index_bits
    packed |= np.arange(count, dtype=np.uint64)
    packed.sort()
    packed &= (np.uint64(1) << index_bits) - np.uint64(1)
    order = packed.astype(_place_type(count))
    del packed
    ordered = keys[order]
    if (ordered[1:] < ordered[:-1]).any():
        fix = np.argsort(ordered, kind="stable")  # nearly sorted: timsort takes one pass
        order, ordered = order[fix], ordered[fix]
    return order, ordered


def _place_type(count: int) -> type:
    return np.int32 if count < 2**31 else np.int64


CHUNK_ROWS = 1 << 18  # rows a pass over a snapshot takes at a time: temporaries stay small


def next_snapshot(previous: PreviousSnapshot | None, key_hashes: np.ndarray, row_hashes: np.ndarray, chunk_rows: int = CHUNK_ROWS):
    """The next snapshot, the ``carried`` rows of ``previous`` and the added rows (any order), in
    chunks of (row hashes, key hashes, key order), as ``PreviousSnapshot`` reads them back.

    The carried rows are already in row order and in key order: the added ones are sorted and
    merged in (a merge is linear), chunk by chunk, so that beyond the key order being written,
    memory holds two places per row of ``previous``.
    """
    order, added_rows = sort_order(row_hashes)
    added_keys = key_hashes[order]
    del order, key_hashes, row_hashes  # the caller passes them on: they are freed here
    if previous is None or not len(previous):  # nothing to merge with
        key_order = sort_order(added_keys)[0]
        for start in range(0, max(len(added_rows), 1), chunk_rows):
            end = start + chunk_rows
            yield added_rows[start:end], added_keys[start:end], key_order[start:end]
        return
    carried = previous.carried
    total = int(carried.sum()) + len(added_rows)
    place_type = _place_type(total)
    # rows: added row j goes in before previous row at[j]
    at = np.searchsorted(previous.row_hashes, added_rows)
    new_place, added_place = _merged_places(carried, at, place_type, chunk_rows)
    # keys: the carried rows in the previous key order, the added ones by key
    by_key, keys_in_order = sort_order(added_keys)
    carried_by_key = carried[previous.key_order]
    key_place, added_key_place = _merged_places(carried_by_key, previous.keys.rank(keys_in_order), place_type, chunk_rows)
    key_order = np.empty(total, place_type)
    for start in range(0, len(previous), chunk_rows):
        kept = carried_by_key[start : start + chunk_rows]
        key_order[key_place[start : start + chunk_rows][kept]] = new_place[previous.key_order[start : start + chunk_rows][kept]]
    key_order[added_key_place] = added_place[by_key]
    del key_place, carried_by_key, new_place
    # the rows, chunk by chunk, with the key order in slices of the same length
    done = 0
    for start in range(0, len(previous), chunk_rows):
        end = min(start + chunk_rows, len(previous))
        low, high = np.searchsorted(at, [start, end if end < len(previous) else end + 1])
        kept = carried[start:end]
        rows, keys = previous.row_hashes[start:end][kept], previous.key_hashes[start:end][kept]
        inserted = np.searchsorted(rows, added_rows[low:high])
        rows, keys = np.insert(rows, inserted, added_rows[low:high]), np.insert(keys, inserted, added_keys[low:high])
        for part in range(0, len(rows), chunk_rows):  # added rows may make a chunk longer
            size = len(rows[part : part + chunk_rows])
            yield rows[part : part + chunk_rows], keys[part : part + chunk_rows], key_order[done : done + size]
            done += size


def _merged_places(kept: np.ndarray, at: np.ndarray, place_type, chunk_rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the ``kept`` entries of a sequence and added entries land when merged, added entry j
    going in before entry ``at[j]`` (``at`` ascending; entries not kept have no place)."""
    places = np.zeros(len(kept), place_type)
    added = np.arange(len(at), dtype=place_type)  # j, plus the kept entries before at[j]
    kept_before = 0
    for start in range(0, len(kept), chunk_rows):
        end = min(start + chunk_rows, len(kept))
        low, high = np.searchsorted(at, [start, end])
        inside = at[low:high] - start
        kept_so_far = np.cumsum(kept[start:end], dtype=place_type)
        added_so_far = low + np.cumsum(np.bincount(inside, minlength=end - start), dtype=place_type)
        places[start:end] = kept_before - 1 + kept_so_far + added_so_far
        added[low:high] += kept_before + np.where(inside > 0, kept_so_far[np.maximum(inside - 1, 0)], 0).astype(place_type)
        kept_before += int(kept_so_far[-1])
    added[np.searchsorted(at, len(kept)) :] += kept_before
    return places, added


INDEX_COLUMNS = ["row_hash", "key_hash", "key_order"]


class SnapshotWriter:
    """Collects the next snapshot: the hashes of the rows sent (in memory, 16 bytes a row) and,
    with ``extra_columns``, their identifier columns (streamed to the ids file, for deletions);
    ``finish`` adds the previous snapshot's carried rows and writes the index."""

    def __init__(self, path: Any, ids_path: Any, extra_columns: list[str]):
        self.path, self.ids_path = path, ids_path
        self.extra_columns = list(extra_columns)
        self._keys: list[np.ndarray] = []
        self._rows: list[np.ndarray] = []
        self._ids = None
        self.rows = 0
        if self.extra_columns:
            fields = [("key_hash", pa.uint64())] + [(f"delete.{name}", pa.string()) for name in self.extra_columns]
            self._ids_schema = pa.schema(fields)
            self._ids_stream = open_binary(ids_path, "wb")
            self._ids = pq.ParquetWriter(self._ids_stream, self._ids_schema, compression="zstd")

    def add(self, key_hashes: np.ndarray, row_hashes: np.ndarray, extra: list[pa.Array] = ()) -> None:
        self._keys.append(np.asarray(key_hashes, np.uint64))
        self._rows.append(np.asarray(row_hashes, np.uint64))
        if self._ids is not None:
            self._write_ids(key_hashes, list(extra))

    def _write_ids(self, key_hashes, extra: list) -> None:
        arrays = [pa.array(key_hashes, pa.uint64())] + [column.cast(pa.string()) for column in extra]
        self._ids.write_table(pa.Table.from_arrays(arrays, schema=self._ids_schema))

    def finish(self, previous: PreviousSnapshot | None) -> int:
        """Writes the snapshot: this run's rows and those carried from ``previous``; returns its row count."""
        if self._ids is not None and previous is not None:
            for table in previous.carried_ids():
                extra = [table.column(name) if name in table.column_names else pa.nulls(table.num_rows, pa.string())
                         for name in self._ids_schema.names[1:]]
                self._write_ids(to_numpy(table.column("key_hash")), extra)
        self.close()
        writer = None
        with open_binary(self.path, "wb") as stream:
            for chunk in next_snapshot(previous, *self._take_added()):
                table = pa.Table.from_arrays([pa.array(column) for column in chunk], names=INDEX_COLUMNS)
                if writer is None:
                    # random bits: compression, dictionaries or statistics would cost time and save nothing
                    writer = pq.ParquetWriter(stream, table.schema, compression="none", use_dictionary=False, write_statistics=False)
                writer.write_table(table)
                self.rows += table.num_rows
            writer.close()
        return self.rows

    def _take_added(self) -> tuple[np.ndarray, np.ndarray]:
        keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.uint64)
        self._keys = []  # freed before the rows are joined
        rows = np.concatenate(self._rows) if self._rows else np.zeros(0, np.uint64)
        self._rows = []
        return keys, rows

    def close(self) -> None:
        if self._ids is not None:
            self._ids.close()
            self._ids_stream.close()
            self._ids = None


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

    def ids_path(self, run_key: str):
        return self._file(f"snapshots/{run_key_of(run_key)}{IDS_SUFFIX}")

    def previous(self, fingerprint: str) -> PreviousSnapshot | None:
        """The committed snapshot, or None when there is none or the mapping changed since."""
        current = self.current()
        if current is None or current.get("fingerprint") != fingerprint:
            return None
        return PreviousSnapshot.load(self._file(current["snapshot"]), self.ids_path(current["run_key"]))

    def writer(self, run_key: str, extra_columns: list[str] = ()) -> SnapshotWriter:
        return SnapshotWriter(self.snapshot_path(run_key), self.ids_path(run_key), list(extra_columns))

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
            run = next((entry.name[: -len(end)] for end in (IDS_SUFFIX, ".parquet", ".json") if entry.name.endswith(end)), None)
            if run not in keep:
                entry.unlink()
