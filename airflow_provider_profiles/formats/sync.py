"""Incremental sync state: what the last successful sync sent, kept next to the data.

Layout under the state directory (any ``ObjectStoragePath``)::

    CURRENT.json                      {"snapshot": "snapshots/<attempt>.arrow", "fingerprint": ...,
                                       "as_of": ..., "resend": [<attempt>, ...], ...}
    pending/<attempt>.json            a prepare started (and the CURRENT it compares with)
    snapshots/<attempt>.arrow         row_hash, key_hash of every row sent or unchanged, in input order
    snapshots/<attempt>.order.arrow   row_order, key_order: the permutations that sort them
    snapshots/<attempt>.ids.parquet   key_hash and identifier columns, kept for deletions (opt-in)
    snapshots/<attempt>.sent.arrow    key_hash of the rows it sent (and deleted)
    snapshots/<attempt>.json          what the prepare step recorded: the attempt finished

An attempt is one prepare: ``<run key>.<random token>``, so a re-run or a retry of a run never
writes a file CURRENT or another run uses. A prepare step compares its rows with the snapshot
CURRENT names and writes only new and changed rows, and its attempt's snapshot. CURRENT moves to
it only when ``commit`` runs after every upload succeeded, and only if CURRENT is still the
snapshot the prepare compared with (see ``SyncState``), so a failed run changes nothing and the
next run resends what is still pending. CURRENT is always replaced whole (written aside and
renamed; an object store's upload is all or nothing).

The row hash of a CSV input is the hash of the record's raw bytes, so a record the last sync
sent byte for byte is recognised before it is parsed (``PreviousSnapshot.known_records``); the
header, delimiter and encoding are part of the snapshot's fingerprint. Other inputs hash the
mapped values. A row is first looked for where the last input had it (after the row found before
it), then through the sort orders; nothing is sorted when a snapshot is loaded, and the next one
merges the few rows sent into the orders of the rows kept. Memory: about 30 bytes per row of the
previous snapshot (two 64-bit hashes, two orders, the row's place in the next snapshot, a flag,
the bounds of the search buckets).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from airflow_provider_profiles.formats.hashing import to_numpy
from airflow_provider_profiles.storage import TEMPORARY_SUFFIX, as_storage_path, open_binary, write_whole

CURRENT = "CURRENT.json"
# Part of every snapshot's fingerprint: a snapshot of another layout is not read (its run resends
# every row once) instead of failing.
SNAPSHOT_FORMAT = "snapshot-2"
IDS_SUFFIX = ".ids.parquet"
ORDER_SUFFIX = ".order.arrow"
# The hashes and orders are Arrow IPC files: random bits, which compression, dictionaries or
# statistics would not shrink; they are written and read as they are held (2M rows: 5-20 ms to
# read, Parquet took 75-90 ms).


def run_key_of(text: str) -> str:
    """A file-name-safe, deterministic key for a run (``run_id`` has ``:`` and ``+``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not key:
        raise ValueError(f"cannot make a run key from {text!r}")
    return key


class PreviousSnapshot:
    """The committed snapshot's hashes; classifies rows as new, changed or unchanged.

    As stored: the key and row hash of each row in the order of the input they came from (a
    row's place is its index there), and the two orders that sort them, so loading sorts nothing.
    Lookups try first the place that follows the last row found: an input in the same order as
    last time (by id, by creation) finds almost every row there, with one comparison; the others
    are searched for through the orders.
    """

    def __init__(self, row_hashes, key_hashes, row_order, key_order, ids_path: Any = None):
        self.row_hashes, self.key_hashes, self.ids_path = row_hashes, key_hashes, ids_path
        self.row_order, self.key_order = row_order, key_order
        self.records = _SortedIndex(row_hashes, row_order)
        self.keys = _SortedIndex(key_hashes, key_order)
        self.seen = np.zeros(len(row_hashes), dtype=bool)
        self._seen_count = 0  # of seen: counting the flags is how repeats within a batch show
        # the place in the next snapshot of each row carried over to it unchanged (set by its writer)
        self.new_place = np.full(len(row_hashes), -1, _place_type(len(row_hashes)))
        self._record_cursor = self._key_cursor = 0

    @classmethod
    def of(cls, key_hashes: np.ndarray, row_hashes: np.ndarray, ids_path: Any = None) -> PreviousSnapshot:
        """From hashes in input order (a snapshot holds each key once)."""
        return cls(row_hashes, key_hashes, sort_order(row_hashes), sort_order(key_hashes), ids_path)

    @classmethod
    def load(cls, path: Any, order_path: Any, ids_path: Any = None) -> PreviousSnapshot:
        row_hashes, key_hashes = _read_columns(path, HASH_COLUMNS)
        row_order, key_order = _read_columns(order_path, ORDER_COLUMNS)
        return cls(row_hashes, key_hashes, row_order, key_order, ids_path if ids_path is not None and ids_path.exists() else None)

    def __len__(self) -> int:
        return len(self.row_hashes)

    def forgetting(self, key_hashes: np.ndarray) -> PreviousSnapshot:
        """This snapshot with the rows of these keys taken as changed (their row hash inverted, so
        no row matches it): they are sent again. Sorts the row order again, only when there are
        such keys."""
        places = self.keys.find(key_hashes)
        places = places[places >= 0]
        if not len(places):
            return self
        row_hashes = self.row_hashes.copy()
        row_hashes[places] = ~row_hashes[places]
        return PreviousSnapshot(row_hashes, self.key_hashes, sort_order(row_hashes), self.key_order, self.ids_path)

    def find(self, key_hashes: np.ndarray, in_order: bool = False) -> np.ndarray:
        """Place of each key in the snapshot, -1 where the snapshot does not hold it. With
        ``in_order`` (every row of the input, batch after batch), each place is guessed first."""
        if not in_order:
            return self.keys.find(key_hashes)
        places, self._key_cursor = _guessed(self.key_hashes, self.keys, key_hashes, self._key_cursor)
        return places

    def known_records(self, row_hashes: np.ndarray) -> np.ndarray:
        """Place of the snapshot row with each of these row hashes, -1 where there is none; for
        every row of the input, batch after batch (each place is guessed first).

        For hashes of raw records, which hold their key: the same hash is the same key with the
        same values.
        """
        places, self._record_cursor = _guessed(self.row_hashes, self.records, row_hashes, self._record_cursor)
        return places

    @property
    def carried(self) -> np.ndarray:
        return self.new_place >= 0

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
        carried = self.carried
        yield from self._ids_where(lambda places: (places >= 0) & carried[np.maximum(places, 0)], batch_rows)

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
    """Finds values in an array of uniform 64-bit hashes through the permutation that sorts it.

    The hashes are uniform, so their top bits cut the array into buckets of a few values each: a
    lookup is one read of the bucket bounds plus a short binary search there, instead of a search
    over the whole array (and no sort of the needles to keep it cached).
    """

    def __init__(self, values: np.ndarray, order: np.ndarray):
        self.values, self.order = values, order  # values[order] is sorted
        # 8 values a bucket: a search of 5 steps (2 a bucket took 4, and 20% less time, but lookups
        # in input order seldom search, and the bounds would take 3 times the memory)
        self.bucket_bits = int(min(max(np.ceil(np.log2(max(len(values), 1) / 8)), 0), 24))
        # counted, not searched: the counts are the same in any order (no sorted copy needed)
        sizes = np.zeros(1 << self.bucket_bits, np.int64)
        for start in range(0, len(values), CHUNK_ROWS):
            sizes += np.bincount(self._bucket(values[start : start + CHUNK_ROWS]), minlength=len(sizes))
        self.bucket_starts = np.concatenate(([0], np.cumsum(sizes))).astype(_place_type(len(values)))
        self.search_steps = int(np.ceil(np.log2(int(sizes.max()) + 1))) if len(values) else 0

    def _bucket(self, values: np.ndarray) -> np.ndarray:
        return (values >> np.uint64(64 - self.bucket_bits)).astype(np.intp) if self.bucket_bits else np.zeros(len(values), np.intp)

    def rank(self, needles: np.ndarray) -> np.ndarray:
        """How many values are below each needle (where it would go in sorted order)."""
        bucket = self._bucket(needles)
        low, high = self.bucket_starts[bucket], self.bucket_starts[bucket + 1]
        last = max(len(self.values) - 1, 0)
        for _ in range(self.search_steps):  # lower-bound binary search, all needles in step
            middle = (low + high) >> 1
            below = self.values[self.order[np.minimum(middle, last)]] < needles
            below &= middle < high
            low = np.where(below, middle + 1, low)
            high = np.where(below, high, middle)
        return low

    def find(self, needles: np.ndarray) -> np.ndarray:
        """Index of each needle in the array, -1 where it is not there."""
        if not len(self.values):
            return np.full(len(needles), -1, dtype=np.int64)
        found = self.order[np.minimum(self.rank(needles), len(self.values) - 1)]
        return np.where(self.values[found] == needles, found, -1)


def sort_order(keys: np.ndarray) -> np.ndarray:
    """``np.argsort(keys)`` in half the time and memory: each key's top bits and its index, packed
    in one integer, are sorted by value (several times faster than an argsort), then the rare
    keys that share those top bits are put in order."""
    count = len(keys)
    index_bits = np.uint64(max(count - 1, 1).bit_length())
    packed = keys >> index_bits  # in place from here: fewer large arrays to allocate
    packed <<= index_bits
    for start in range(0, count, CHUNK_ROWS):
        packed[start : start + CHUNK_ROWS] |= np.arange(start, min(start + CHUNK_ROWS, count), dtype=np.uint64)
    packed.sort()
    packed &= (np.uint64(1) << index_bits) - np.uint64(1)
    order = packed.astype(_place_type(count))
    del packed
    last = None
    for start in range(0, count, CHUNK_ROWS):  # in order already, unless top bits tie
        ordered = keys[order[start : start + CHUNK_ROWS]]
        if (ordered[1:] < ordered[:-1]).any() or (last is not None and ordered[0] < last):
            return order[np.argsort(keys[order], kind="stable")]  # nearly sorted: timsort takes one pass
        last = ordered[-1]
    return order


def _place_type(count: int) -> type:
    return np.int32 if count < 2**31 else np.int64


CHUNK_ROWS = 1 << 18  # rows a pass over a snapshot takes at a time: temporaries stay small
HASH_COLUMNS = ["row_hash", "key_hash"]
ORDER_COLUMNS = ["row_order", "key_order"]


def _guessed(values: np.ndarray, index: _SortedIndex, needles: np.ndarray, cursor: int) -> tuple[np.ndarray, int]:
    """Places of ``needles`` in ``values``: those that follow on from ``cursor`` as they did
    there, with one comparison each; the others through ``index``. Also the cursor for the next
    needles: after the last one found."""
    places = np.full(len(needles), -1, np.int64)
    count = min(len(needles), max(len(values) - cursor, 0))
    matched = np.flatnonzero(values[cursor : cursor + count] == needles[:count])
    places[matched] = matched + cursor
    if len(matched) < len(needles):
        rest = np.flatnonzero(places < 0)
        places[rest] = index.find(needles[rest])
    found = np.flatnonzero(places >= 0)
    return places, (int(places[found[-1]]) + 1 if len(found) else cursor + len(needles))


def next_order(previous: PreviousSnapshot | None, by_key: bool, added_values, added_places, total: int) -> np.ndarray:
    """One order of the next snapshot (the permutation that sorts its rows by key or by row
    hash): its rows carried from ``previous`` keep their order there, and the added ones
    (``added_values`` at ``added_places``) are sorted and merged in: a merge is linear, where a
    sort of every row would not be."""
    by_value = sort_order(added_values)
    if previous is None:  # every row is added, at its own place
        return by_value
    added_values, added_places = added_values[by_value], added_places[by_value]
    previous_order, previous_index = (previous.key_order, previous.keys) if by_key else (previous.row_order, previous.records)
    carried = previous.carried[previous_order]  # in the previous order
    at = previous_index.rank(added_values)  # added row j goes in before previous row at[j]
    place_type = _place_type(total)
    order = np.empty(total, place_type)
    added_place = np.arange(len(at), dtype=place_type)  # in the merged order: j + carried rows before at[j]
    carried_before = 0
    for start in range(0, len(carried), CHUNK_ROWS):  # chunk by chunk: no place per row held
        end = min(start + CHUNK_ROWS, len(carried))
        low, high = np.searchsorted(at, [start, end])
        inside = at[low:high] - start
        kept = carried[start:end]
        carried_so_far = np.cumsum(kept, dtype=place_type)
        added_so_far = low + np.cumsum(np.bincount(inside, minlength=end - start), dtype=place_type)
        merged_place = (carried_before - 1 + carried_so_far + added_so_far)[kept]
        order[merged_place] = previous.new_place[previous_order[start:end][kept]]
        added_place[low:high] += carried_before + np.where(inside > 0, carried_so_far[np.maximum(inside - 1, 0)], 0).astype(place_type)
        carried_before += int(carried_so_far[-1])
    added_place[np.searchsorted(at, len(carried)) :] += carried_before
    order[added_place] = added_places
    return order


def _read_columns(path: Any, names: list[str], wanted: np.ndarray | None = None) -> list[np.ndarray]:
    """Whole columns (or their ``wanted`` rows), read one batch at a time into arrays of their
    size (no second copy)."""
    with open_binary(path) as stream:
        reader = ipc.open_file(stream)
        count = reader.count_rows() if wanted is None else int(np.count_nonzero(wanted))
        columns = [np.empty(count, reader.schema.field(name).type.to_pandas_dtype()) for name in names]
        done = taken = 0
        for index in range(reader.num_record_batches):
            batch = reader.get_batch(index)
            rows = slice(None) if wanted is None else wanted[done : done + batch.num_rows]
            size = batch.num_rows if wanted is None else int(np.count_nonzero(rows))
            for column, name in zip(columns, names):
                column[taken : taken + size] = to_numpy(batch.column(name))[rows]
            done, taken = done + batch.num_rows, taken + size
    return columns


class SnapshotWriter:
    """Writes the next snapshot as the batches go: each row kept, in input order, either added
    (sent in this run) or carried over unchanged from ``previous``. With ``extra_columns``, the
    identifier columns of the added rows go to the ids file (for deletions). ``finish`` reads
    the added rows back and writes the orders, and (with a ``sent_path`` and a ``previous``
    snapshot) the keys this run sends: added rows, and with deletions the keys that vanished."""

    def __init__(self, path: Any, order_path: Any, ids_path: Any, extra_columns: list[str], previous: PreviousSnapshot | None = None,
                 sent_path: Any = None):
        self.path, self.order_path, self.ids_path, self.sent_path = path, order_path, ids_path, sent_path
        self.previous = previous
        self.extra_columns = list(extra_columns)
        self.rows = 0
        self._stream = open_binary(path, "wb")
        self._hashes = ipc.new_file(self._stream, pa.schema([(name, pa.uint64()) for name in HASH_COLUMNS]))
        self._ids = None
        if self.extra_columns:
            fields = [("key_hash", pa.uint64())] + [(f"delete.{name}", pa.string()) for name in self.extra_columns]
            self._ids_schema = pa.schema(fields)
            self._ids_stream = open_binary(ids_path, "wb")
            self._ids = pq.ParquetWriter(self._ids_stream, self._ids_schema, compression="zstd")

    def add(self, key_hashes: np.ndarray, row_hashes: np.ndarray, previous_places: np.ndarray, extra: list[pa.Array] = ()) -> None:
        """Rows kept, in input order; ``previous_places`` holds each carried row's place in the
        previous snapshot and -1 for the added ones, which ``extra`` (if any) describes in order."""
        added = previous_places < 0
        if not added.all():
            self.previous.new_place[previous_places[~added]] = self.rows + np.flatnonzero(~added)
        arrays = [pa.array(row_hashes, pa.uint64()), pa.array(key_hashes, pa.uint64())]
        self._hashes.write_batch(pa.record_batch(arrays, names=HASH_COLUMNS))
        self.rows += len(key_hashes)
        if self._ids is not None and added.any():
            self._write_ids(np.asarray(key_hashes)[added], list(extra))

    def _write_ids(self, key_hashes, extra: list) -> None:
        arrays = [pa.array(key_hashes, pa.uint64())] + [column.cast(pa.string()) for column in extra]
        self._ids.write_table(pa.Table.from_arrays(arrays, schema=self._ids_schema))

    def finish(self, helper: Executor | None = None) -> int:
        """Completes the snapshot (the ids of the carried rows, the orders); returns its row count.
        A ``helper`` thread, if given, builds one of the orders meanwhile."""
        previous = self.previous
        if self._ids is not None and previous is not None:
            for table in previous.carried_ids():
                extra = [table.column(name) if name in table.column_names else pa.nulls(table.num_rows, pa.string())
                         for name in self._ids_schema.names[1:]]
                self._write_ids(to_numpy(table.column("key_hash")), extra)
        self.close()
        added = None  # without a previous snapshot: every row
        if previous is not None:
            added = np.ones(self.rows, bool)
            added[previous.new_place[previous.carried]] = False
        # numpy lets go of the GIL in the large steps: the two merges run side by side (not the
        # sorts of a first snapshot, which would hold twice their memory at once)
        if helper is not None and previous is not None:
            row_order = helper.submit(self._order, False, added)
            key_order = self._order(True, added)
            row_order = row_order.result()
        else:
            row_order = self._order(False, added)
            key_order = self._order(True, added)
        with open_binary(self.order_path, "wb") as stream:
            batch = pa.record_batch([pa.array(row_order), pa.array(key_order)], names=ORDER_COLUMNS)
            with ipc.new_file(stream, batch.schema) as writer:
                writer.write_batch(batch)
        if self.sent_path is not None and previous is not None:
            sent = _read_columns(self.path, ["key_hash"], added)[0]
            if self.extra_columns:  # deletions: every key not seen again may have been deleted
                sent = np.concatenate((sent, previous.key_hashes[~previous.seen]))
            write_keys(self.sent_path, sent)
        return self.rows

    def _order(self, by_key: bool, added: np.ndarray | None) -> np.ndarray:
        """One order of the snapshot, with the hashes of the ``added`` rows read back from the file
        (held in memory all along, they would add 16 bytes a row to the peak)."""
        values = _read_columns(self.path, ["key_hash" if by_key else "row_hash"], added)[0]
        places = np.flatnonzero(added) if added is not None else None
        return next_order(self.previous, by_key, values, places, self.rows)

    def close(self) -> None:
        if self._hashes is not None:
            self._hashes.close()
            self._stream.close()
            self._hashes = None
        if self._ids is not None:
            self._ids.close()
            self._ids_stream.close()
            self._ids = None


def write_keys(path: Any, key_hashes: np.ndarray) -> None:
    with open_binary(path, "wb") as stream:
        batch = pa.record_batch([pa.array(key_hashes, pa.uint64())], names=["key_hash"])
        with ipc.new_file(stream, batch.schema) as writer:
            writer.write_batch(batch)


class SyncStateError(Exception):
    """A sync state that cannot be used as it is; the message names the file and what to do."""


class SyncConflict(SyncStateError):
    """A commit refused: another run committed since this run's prepare, or this run's data is
    older than the committed one's. What the run sent is marked to be sent again."""


META_SUFFIX = ".json"
SENT_SUFFIX = ".sent.arrow"  # the keys an attempt sent, kept while CURRENT lists it under "resend"
ATTEMPT_SUFFIXES = (".arrow", ORDER_SUFFIX, IDS_SUFFIX, META_SUFFIX, SENT_SUFFIX)
RESEND_ALL = "*"
# An attempt that started this long ago and never finished its prepare is taken as dead, and a
# note that a run's attempt was refused is dropped.
STALE_AFTER = dt.timedelta(days=7)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _instant(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _text(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _attempt_of(pointer: dict[str, Any] | None) -> str | None:
    """The attempt a CURRENT names (states written before attempts existed name the run)."""
    return None if pointer is None else pointer.get("attempt") or pointer["run_key"]


class SyncState:
    """The sync state directory: read the committed snapshot, write a pending one, commit it.

    Every prepare is an attempt with files of its own, ``snapshots/<run key>.<token>.*``: a
    re-run or a retry never writes what CURRENT or another run uses. ``pending/<attempt>.json``
    says an attempt started (and which CURRENT it compares with, its base); its
    ``snapshots/<attempt>.json`` that it finished. CURRENT is only ever replaced whole.

    ``commit`` is a compare-and-swap on the base: a run whose base is no longer current (another
    run committed meanwhile), or whose data is older than the committed one's (``as_of``: for a
    DAG run, the end of its data interval), is refused with ``SyncConflict`` unless ``allow_older``. A commit also retires every other finished
    attempt, which can no longer be committed. A refused or retired attempt may have sent rows
    that CURRENT does not hold: its sent keys go to CURRENT's ``resend`` list, and the next
    prepare sends those keys again (its commit clears the entries it took into account).

    Commits of one state directory should not run at the very same moment: the compare and the
    swap are two steps (object stores have no portable conditional write).
    """

    def __init__(self, directory: Any, as_of: Any = None, allow_older: bool = False):
        self.directory = as_storage_path(directory)
        self.as_of = _instant(as_of)  # the time this run's data stands for (None: not compared)
        self.allow_older = allow_older
        self.attempt: str | None = None  # started by the last ``writer``
        self._base: dict[str, Any] | None = None  # the CURRENT ``previous`` read for the next writer
        self._base_read = False

    def _file(self, relative: str):
        return self.directory / relative

    def _path(self, attempt: str, suffix: str):
        return self._file(f"snapshots/{attempt}{suffix}")

    def _pointer_path(self, attempt: str):
        return self._file(f"pending/{attempt}.json")

    def _read_json(self, path: Any, what: str, advice: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise SyncStateError(f"{path}: {what} is missing. {advice}") from None
        try:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            raise SyncStateError(f"{path}: {what} is damaged ({error}). {advice}") from None
        return value

    def _resend_everything(self) -> str:
        return f"Delete {self._file(CURRENT)} to send every row again on the next run."

    def current(self) -> dict[str, Any] | None:
        """CURRENT: the committed snapshot and what the sync knows of it, or None."""
        pointer = self._file(CURRENT)
        current = self._read_json(pointer, "the committed sync state", "Delete it to send every row again on the next run.",
                                  missing_ok=True)
        if current is not None and not isinstance(current.get("snapshot"), str):
            raise SyncStateError(f"{pointer}: the committed sync state names no snapshot. Delete it to send every row again on the next run.")
        return current

    # --- a prepare: read the committed snapshot, write the attempt's own ---------------------------

    def previous(self, fingerprint: str) -> PreviousSnapshot | None:
        """The committed snapshot, or None when there is none or the mapping changed since. Keys
        CURRENT lists to be sent again come back as changed. Refuses (``SyncConflict``, before
        anything is sent) a run older than the committed one, unless ``allow_older``."""
        current = self._base = self.current()
        self._base_read = True
        if current is None:
            return None
        self._check_not_older(current, self.as_of, self.allow_older, "sending its rows")
        resend = current.get("resend", [])
        if current.get("fingerprint") != fingerprint or RESEND_ALL in resend:
            return None
        snapshot = self._load(current)
        if resend:
            snapshot = snapshot.forgetting(np.concatenate([self._sent_keys(attempt) for attempt in resend]))
        return snapshot

    def _load(self, current: dict[str, Any]) -> PreviousSnapshot:
        attempt, path = _attempt_of(current), self._file(current["snapshot"])
        try:
            return PreviousSnapshot.load(path, self._path(attempt, ORDER_SUFFIX), self._path(attempt, IDS_SUFFIX))
        except (OSError, pa.ArrowException, KeyError) as error:
            raise SyncStateError(
                f"{path} (or its {ORDER_SUFFIX} file), the snapshot {CURRENT} names, cannot be read: {error}. "
                + self._resend_everything()
            ) from None

    def _sent_keys(self, attempt: str) -> np.ndarray:
        path = self._path(attempt, SENT_SUFFIX)
        try:
            return _read_columns(path, ["key_hash"])[0]
        except (OSError, pa.ArrowException, KeyError) as error:
            raise SyncStateError(f"{path}, keys {CURRENT} lists to be sent again, cannot be read: {error}. "
                                 + self._resend_everything()) from None

    def _check_not_older(self, current: dict[str, Any], when: dt.datetime | None, allow_older: bool, doing: str) -> None:
        committed = _instant(current.get("as_of"))
        if when is None or committed is None or when >= committed or allow_older:
            return
        raise SyncConflict(
            f"this run's data is as of {when.isoformat()}, older than {committed.isoformat()}, that of run "
            f"{current.get('run_key')!r} whose sync state is committed in {self.directory}: {doing} would put "
            "older data over newer. Pass allow_older=True (sync_allow_older=True on a prepare operator) to do it anyway."
        )

    def writer(self, run_key: str, extra_columns: list[str] = (), previous: PreviousSnapshot | None = None) -> SnapshotWriter:
        """Starts this run's attempt: files of its own, named by the run key and a fresh token."""
        base = self._base if self._base_read else self.current()
        self._attempt_base, self._base_read = base, False
        self._sent_all = previous is None  # nothing to compare with: every row is sent
        key = run_key_of(run_key)
        self.attempt = f"{key}.{uuid.uuid4().hex[:12]}"
        pointer = {"run_key": key, "attempt": self.attempt, "base": _attempt_of(base), "started_at": _now().isoformat()}
        write_whole(self._pointer_path(self.attempt), json.dumps(pointer))
        paths = [self._path(self.attempt, suffix) for suffix in (".arrow", ORDER_SUFFIX, IDS_SUFFIX)]
        return SnapshotWriter(*paths, list(extra_columns), previous, sent_path=self._path(self.attempt, SENT_SUFFIX))

    def record_pending(self, run_key: str, fingerprint: str, rows: int, counts: dict[str, Any]) -> None:
        """Marks the attempt finished: it can be committed once what it wrote is uploaded."""
        base = self._attempt_base
        meta = {
            "run_key": run_key_of(run_key), "attempt": self.attempt, "fingerprint": fingerprint, "rows": rows,
            "counts": counts, "base": _attempt_of(base), "base_resend": (base or {}).get("resend", []),
            "sent_all": self._sent_all, "as_of": _text(self.as_of), "prepared_at": _now().isoformat(),
        }
        write_whole(self._path(self.attempt, META_SUFFIX), json.dumps(meta))

    # --- a commit ----------------------------------------------------------------------------------

    def commit(self, run_key: str, keep: int = 2, as_of: Any = None, allow_older: bool | None = None) -> dict[str, Any]:
        """Make the run's last finished attempt current; keep ``keep`` committed snapshots.

        Refused (``SyncConflict``) when CURRENT is no longer the one the attempt compared with, or
        is as of a later time (unless ``allow_older``). Committing the same attempt again
        returns CURRENT unchanged.
        """
        key = run_key_of(run_key)
        current = self.current()
        found = self._last_attempt(key)
        if found is None and current is not None and current.get("run_key") == key:
            return current  # committed already: the commit ran again
        attempt, meta = self._finished(key, found)
        if current is not None and _attempt_of(current) == attempt:  # stopped right after its swap
            self._unlink(self._pointer_path(attempt))
            return current
        when = _instant(as_of) or self.as_of or _instant(meta.get("as_of"))
        allow_older = self.allow_older if allow_older is None else allow_older
        if meta.get("base") != _attempt_of(current):
            reason = (
                f"run {key!r} compared its rows with snapshot {meta.get('base') or '(none)'}, which is no longer "
                f"current: {CURRENT} in {self.directory} now names {_attempt_of(current) or 'none'} "
                "(another run committed meanwhile). Not committed; what this run sent will be sent again next time."
            )
            self._retire(attempt, meta, reason)
            raise SyncConflict(reason)
        if current is not None:
            try:
                self._check_not_older(current, when, allow_older, "committing its snapshot")
            except SyncConflict as refused:
                self._retire(attempt, meta, str(refused))
                raise
        for suffix in (".arrow", ORDER_SUFFIX):
            if not self._path(attempt, suffix).exists():
                raise SyncStateError(f"{self._path(attempt, suffix)}, part of run {key!r}'s pending snapshot, is missing: "
                                     "run the prepare step again before committing.")
        history = [_attempt_of(current), *current.get("history", [])] if current else []
        committed = {
            "snapshot": f"snapshots/{attempt}.arrow",
            "attempt": attempt,
            "run_key": key,
            "fingerprint": meta["fingerprint"],
            "rows": meta["rows"],
            "as_of": _text(when),
            # keys to send again: those that this run's prepare did not send already
            "resend": [entry for entry in (current or {}).get("resend", []) if entry not in meta.get("base_resend", [])],
            "history": [name for name in history if name != attempt][: max(keep - 1, 0)],
            "committed_at": _now().isoformat(timespec="seconds"),
        }
        write_whole(self._file(CURRENT), json.dumps(committed))
        self._unlink(self._pointer_path(attempt))
        for pointer in self._pointers():  # finished attempts of other runs can no longer commit
            if not pointer.get("retired") and pointer["run_key"] == key and pointer["started_at"] < found["started_at"] \
                    and not self._path(pointer["attempt"], META_SUFFIX).exists():
                self._unlink(self._pointer_path(pointer["attempt"]))  # an earlier try of this run's prepare died
            elif not pointer.get("retired") and self._path(pointer["attempt"], META_SUFFIX).exists():
                other = self._read_json(self._path(pointer["attempt"], META_SUFFIX), "a pending snapshot's record",
                                        "Delete it and the files named like it.")
                self._retire(pointer["attempt"], other, (
                    f"run {key!r} committed after run {pointer['run_key']!r}'s prepare, so the snapshot that run "
                    "compared with is no longer current. Not committed; what it sent will be sent again next time."))
                if pointer["run_key"] == key:  # an earlier attempt of this run: nothing to tell
                    self._unlink(self._pointer_path(pointer["attempt"]))
        committed = self.current()
        self._prune(committed)
        return committed

    def refuse(self, run_key: str, reason: str) -> None:
        """Does not commit the run's last finished attempt, and has its sent keys sent again."""
        key = run_key_of(run_key)
        attempt, meta = self._finished(key, self._last_attempt(key))
        self._retire(attempt, meta, reason)

    def _pointers(self) -> list[dict[str, Any]]:
        folder = self._file("pending")
        if not folder.exists():
            return []
        pointers = []
        for entry in folder.iterdir():
            if entry.name.endswith(".json"):  # (one may go meanwhile: its run committed)
                pointers.append(self._read_json(entry, "a pending attempt's note", "Delete it.", missing_ok=True))
        return sorted(filter(None, pointers), key=lambda pointer: pointer["started_at"])

    def _last_attempt(self, key: str) -> dict[str, Any] | None:
        mine = [pointer for pointer in self._pointers() if pointer["run_key"] == key]
        return mine[-1] if mine else None

    def _finished(self, key: str, pointer: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        if pointer is None:
            raise SyncStateError(
                f"no pending sync snapshot for run {key!r} in {self.directory}: did the prepare step run with "
                "only_changed=True and the same sync_run_key in this run?"
            )
        if pointer.get("retired"):
            raise SyncConflict(f"run {key!r} cannot be committed: {pointer['retired']}")
        attempt = pointer["attempt"]
        meta = self._read_json(self._path(attempt, META_SUFFIX), f"the record of run {key!r}'s last prepare ({attempt})",
                               "Its prepare did not finish: run the prepare step again before committing.")
        return attempt, meta

    def _retire(self, attempt: str, meta: dict[str, Any], reason: str) -> None:
        """Takes a finished attempt out of the running: the keys it sent with rows CURRENT does
        not hold go to CURRENT's resend list, its snapshot files go, and its note says why (for
        its commit to tell)."""
        current = self.current()
        counts = meta.get("counts") or {}
        if current is not None and (counts.get("written") or counts.get("deleted")):
            entry = self._resend_entry(attempt, meta, current)
            if entry is not None:
                write_whole(self._file(CURRENT), json.dumps({**current, "resend": [*current.get("resend", []), entry]}))
        for suffix in (".arrow", ORDER_SUFFIX, IDS_SUFFIX, META_SUFFIX):
            self._unlink(self._path(attempt, suffix))
        note = self._read_json(self._pointer_path(attempt), "a pending attempt's note", "Delete it.", missing_ok=True)
        note = note or {"run_key": meta.get("run_key"), "attempt": attempt, "started_at": _now().isoformat()}
        write_whole(self._pointer_path(attempt), json.dumps({**note, "retired": reason, "retired_at": _now().isoformat()}))

    def _resend_entry(self, attempt: str, meta: dict[str, Any], current: dict[str, Any]) -> str | None:
        """Writes the keys the attempt sent whose row in CURRENT differs from the one it sent (or
        that it deleted); returns the resend entry (None: no such key, "*": every key)."""
        sent_path = self._path(attempt, SENT_SUFFIX)
        try:
            mine = PreviousSnapshot.load(self._path(attempt, ".arrow"), self._path(attempt, ORDER_SUFFIX))
            sent = mine.key_hashes if meta.get("sent_all") else _read_columns(sent_path, ["key_hash"])[0]
            if meta.get("fingerprint") == current.get("fingerprint"):  # else the rows cannot be compared
                committed = self._load(current)
                theirs, ours = committed.find(sent), mine.find(sent)
                both = np.flatnonzero((theirs >= 0) & (ours >= 0))
                same = np.zeros(len(sent), dtype=bool)
                same[both] = mine.row_hashes[ours[both]] == committed.row_hashes[theirs[both]]
                sent = sent[(theirs >= 0) & ~same]
        except (OSError, pa.ArrowException, KeyError, SyncStateError):
            return RESEND_ALL
        if not len(sent):
            return None
        write_keys(sent_path, sent)
        return attempt

    @staticmethod
    def _unlink(path: Any) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _prune(self, current: dict[str, Any]) -> None:
        """Deletes the files that neither CURRENT (its snapshot, the ones it keeps, its resend
        list) nor a pending attempt refers to; and notes of attempts dead or retired long ago.

        The files are listed before the notes: an attempt writes its note before its first file,
        so every file listed belongs to a note listed after it.
        """
        folder = self._file("snapshots")
        entries = list(folder.iterdir()) if folder.exists() else []
        keep = {_attempt_of(current), *current.get("history", [])}
        stale = (_now() - STALE_AFTER).isoformat()
        for pointer in self._pointers():
            attempt = pointer["attempt"]
            if pointer.get("retired"):
                if pointer["retired_at"] < stale:
                    self._unlink(self._pointer_path(attempt))
            elif self._path(attempt, META_SUFFIX).exists() or pointer["started_at"] >= stale:
                keep.add(attempt)
            else:  # never finished, for a week: its prepare died
                self._unlink(self._pointer_path(attempt))
        names = {f"{attempt}{suffix}" for attempt in keep for suffix in ATTEMPT_SUFFIXES}
        names |= {f"{attempt}{SENT_SUFFIX}" for attempt in current.get("resend", [])}
        for entry in entries:
            if entry.name not in names and not entry.name.endswith(TEMPORARY_SUFFIX):
                self._unlink(entry)
