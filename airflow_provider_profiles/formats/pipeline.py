"""Prepare a vendor file: read in batches -> map -> validate -> encode -> write, with rejects.

Every input row ends up written, rejected (with its line and reason in the rejects file) or, in an
incremental sync, unchanged since the last committed sync: ``read == written + rejected +
unchanged`` is checked before returning. Three threads work beside this one: a reader parses
ahead, a helper digests the batch after the current one (its lines, or in a sync its hashes; for a
CSV sync it parses just the records the last snapshot does not know: this thread looks them up
first), a writer writes. Memory is bounded by the block size and the few batches in flight, plus
the duplicate check (a fixed 40 MB, see ``keys``; ``duplicates="keep"`` turns it off, see
``default_duplicates``) and, in an incremental sync, about 30 bytes per row of the previous
snapshot (see ``sync``).

Vendor writers encode one row at a time; where a columnar encoder fits the writer (``columnar``),
whole batches are encoded with Arrow kernels instead.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_profiles.formats.base import (
    FormatWriter,
    RejectsFile,
    RowRejected,
)
from airflow_provider_profiles.formats.columnar import columnar_encoder
from airflow_provider_profiles.formats.hashing import (
    hash_columns,
    hash_strings,
    to_numpy,
)
from airflow_provider_profiles.formats.keys import SeenKeys
from airflow_provider_profiles.formats.mapping import FieldMapping, lookup
from airflow_provider_profiles.formats.reader import (
    InputBatch,
    InputError,
    RecordHashes,
    guess_format,
    read_input,
)
from airflow_provider_profiles.formats.sync import (
    SNAPSHOT_FORMAT,
    PreviousSnapshot,
    SnapshotWriter,
    SyncState,
)
from airflow_provider_profiles.formats.values import canonical_id, decode_row
from airflow_provider_profiles.storage import as_storage_path, is_local, local_path, open_binary

log = logging.getLogger(__name__)

# Rows a vendor takes to mean "delete this id", for sync deletions of vanished ids, and the
# columns the snapshot keeps to build them.
DELETE_ROWS: dict[str, dict[str, Any]] = {
    "UserProfileWriter": {"operation": "DELETE"},
    "UserSegmentWriter": {"operation": "DELETE"},
}
_MEDIARITHMICS_IDS = ["user_account_id", "compartment_id", "email_hash", "user_agent_id"]
# Formats where one identifier may rightly have several lines (events, memberships, consents per
# processing), or whose writer rejects repeats itself: no duplicate check unless asked for.
MANY_LINES_PER_ID = frozenset(
    {"UserActivityWriter", "UserSegmentWriter", "UserChoiceWriter", "UserIdentifiersAssociationWriter", "AudienceLinesWriter"}
)
# Localytics change operations whose repeats for one customer add up instead of conflicting.
ACCUMULATING_OPS = frozenset({"increment", "set-add", "set-remove"})
DELETE_COLUMNS: dict[str, list[str]] = {"UserProfileWriter": _MEDIARITHMICS_IDS, "UserSegmentWriter": _MEDIARITHMICS_IDS}


DUPLICATE = "duplicate identifier: an earlier row has the same id"


@dataclass
class PrepareResult:
    output: str
    read: int = 0
    written: int = 0
    rejected: int = 0
    unchanged: int = 0
    deleted: int = 0
    bytes_written: int = 0
    rejects: str | None = None
    sync_run_key: str | None = None
    sync_state: str | None = None
    fast_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- the pipeline --------------------------------------------------------------------------------


def writer_fingerprint(writer: FormatWriter) -> str:
    public = {k: v for k, v in vars(writer).items() if not k.startswith("_")}
    return f"{type(writer).__module__}.{type(writer).__qualname__}:" + json.dumps(public, sort_keys=True, default=repr)


def _canonical(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str, ensure_ascii=False)


class _Output:
    """The output file: header once, then lines in bulk, written by a thread.

    Writing a large file is often bound by the disk; the thread lets encoding go on meanwhile.
    The queue is short, so at most a few batches of lines wait in memory.
    """

    def __init__(self, path: Any, writer: FormatWriter, queue_depth: int = 2):
        import queue
        import threading

        self.path = path
        self.stream = open_binary(path, "wb")
        self.bytes = 0
        self._error: BaseException | None = None
        self._queue: queue.Queue = queue.Queue(maxsize=queue_depth)
        self._thread = threading.Thread(target=self._drain, name="profiles-writer", daemon=True)
        self._thread.start()
        header = writer.header()
        if header:
            self.write_bytes(header.encode("utf-8"))

    def _drain(self) -> None:
        while True:
            data = self._queue.get()
            if data is None:
                return
            if self._error is None:
                try:
                    self.stream.write(data)
                except BaseException as error:  # re-raised in the caller's thread
                    self._error = error

    def write_bytes(self, data: bytes | memoryview) -> None:
        if self._error is not None:
            raise self._error
        if len(data):
            self._queue.put(data)  # a memoryview keeps its Arrow buffer alive until written
            self.bytes += len(data)

    def write_mixed(self, lines: pa.ChunkedArray, use: np.ndarray, overrides: dict[int, str]) -> int:
        """Writes, in row order, ``lines[i]`` where ``use[i]`` and ``overrides[i]`` where given.

        Runs of consecutive lines go out as one slice of the chunk's data buffer (no copy).
        """
        written = 0
        pending = sorted(overrides)
        cursor = 0  # next entry of pending
        start = 0
        chunks = lines.chunks if len(lines) else [pa.nulls(len(use), pa.string())]
        for chunk in chunks:
            end = start + len(chunk)
            mask = use[start:end]
            offsets = np.frombuffer(chunk.buffers()[1], dtype=np.int32, count=len(chunk) + 1, offset=chunk.offset * 4)
            data = memoryview(chunk.buffers()[2]) if chunk.buffers()[2] is not None else memoryview(b"")
            edges = np.diff(np.concatenate(([0], mask.view(np.int8), [0])))
            for run_start, run_end in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)):
                while cursor < len(pending) and pending[cursor] < start + run_start:
                    self.write_bytes(overrides[pending[cursor]].encode("utf-8"))
                    cursor += 1
                self.write_bytes(data[int(offsets[run_start]) : int(offsets[run_end])])
                written += int(run_end - run_start)
            while cursor < len(pending) and pending[cursor] < end:
                self.write_bytes(overrides[pending[cursor]].encode("utf-8"))
                cursor += 1
            start = end
        for position in pending[cursor:]:
            self.write_bytes(overrides[position].encode("utf-8"))
        return written + len(pending)

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        self.stream.close()
        if self._error is not None:
            raise self._error


def default_duplicates(writer: FormatWriter, syncing: bool = False) -> str:
    """``"reject"`` where a repeated identifier is a conflict, ``"keep"`` where it is normal.

    Localytics change lines with only ``assign`` (or ``delete``) changes are a profile's state:
    two rows for one customer would overwrite each other in file order, so the repeat is
    rejected. With ``increment`` or ``set-add``/``set-remove`` several rows per customer add up
    (two purchases on one day), so they are kept, and the check costs no memory; an incremental
    sync compares one row per identifier, so it checks them. Formats with several lines per
    identifier by nature (``MANY_LINES_PER_ID``) never check unless asked.
    """
    if type(writer).__name__ in MANY_LINES_PER_ID:
        return "keep"
    if syncing:
        return "reject"
    return "keep" if accumulating_ops(writer) else "reject"


def accumulating_ops(writer: FormatWriter) -> list[str]:
    """The writer's attributes whose changes add up at the vendor (``ACCUMULATING_OPS``)."""
    attributes = getattr(writer, "attributes", None)
    if type(writer).__name__ != "ProfileChangesWriter" or not isinstance(attributes, dict):
        return []
    return [column for column, spec in attributes.items() if getattr(spec, "op", "assign") in ACCUMULATING_OPS]


def check_sync_writer(writer: FormatWriter) -> None:
    """Refuses a writer an incremental sync cannot serve: a sync sends a row only when it differs
    from the last one sent, but an increment or a set change of the same value on two days is two
    changes (the second would be taken as unchanged and lost)."""
    columns = accumulating_ops(writer)
    if columns:
        raise ValueError(
            f"only_changed=True cannot send column(s) {columns}: their changes ({', '.join(sorted(ACCUMULATING_OPS))}) "
            "add up at the vendor, and a sync would skip a repeat of yesterday's value as unchanged. "
            "Prepare them in a task without only_changed."
        )


class Preparer:
    """Runs batches through mapping, duplicate check, sync comparison, encoding and writing."""

    def __init__(
        self,
        writer: FormatWriter,
        output: Any,
        *,
        rejects: Any = None,
        mapping: FieldMapping | None = None,
        duplicates: str | None = None,
        sync: SyncState | None = None,
        sync_run_key: str | None = None,
        deletions: bool = False,
        delete_columns: list[str] | None = None,
        fast: bool = True,
        input_description: str | None = None,
        records: RecordHashes | None = None,
        progress_interval: float | None = 15.0,
        input_bytes: int | None = None,
    ):
        if duplicates is None:
            duplicates = default_duplicates(writer, sync is not None)
        if duplicates not in ("reject", "keep"):
            raise ValueError("duplicates must be 'reject' or 'keep'")
        if sync is not None and duplicates != "reject":
            raise ValueError(
                "an incremental sync compares one row per identifier: it needs duplicates='reject' "
                f"(and a format with one line per identifier, not {type(writer).__name__})"
            )
        if sync is not None:
            check_sync_writer(writer)
        if sync is not None and not sync_run_key:
            raise ValueError("an incremental sync needs a run key (e.g. the run_id)")
        if deletions and sync is None:
            raise ValueError("deletions of vanished ids need only_changed=True (an incremental sync)")
        if deletions and type(writer).__name__ not in DELETE_ROWS:
            raise ValueError(f"{type(writer).__name__} cannot express a deletion; deletions need one of {sorted(DELETE_ROWS)}")
        self.writer = writer
        self.mapping = mapping
        self.duplicates = duplicates
        # a progress line every progress_interval seconds (None: none); with the input's size, an ETA
        self.progress_interval = progress_interval
        self.input_bytes = input_bytes
        self._started_at = self._last_progress = time.monotonic()
        self.result = PrepareResult(output=str(output), rejects=str(rejects) if rejects is not None else None)
        self.output = _Output(output, writer)
        self.rejects = RejectsFile(_prepared_path(rejects)) if rejects is not None else _CountingRejects()
        self.seen = SeenKeys() if duplicates == "reject" else None
        self.fast_encoder = columnar_encoder(writer) if fast else None
        # work that does not depend on the key checks runs here meanwhile (its thread starts on first use)
        self.helper = ThreadPoolExecutor(1, thread_name_prefix="profiles-helper")
        self.sync = sync
        self.previous: PreviousSnapshot | None = None
        self.snapshot: SnapshotWriter | None = None
        self.delete_columns = list(
            delete_columns
            or DELETE_COLUMNS.get(type(writer).__name__)
            or ([writer.identifier_field] if writer.identifier_field else [])
        )
        self.deletions = deletions
        # per batch, set by _filter for _finish: rows unchanged since the last sync, and records
        # the reader left unparsed that were unchanged (a count) or repeated (rejects)
        self._unchanged = np.zeros(0, dtype=bool)
        self._positions: np.ndarray | None = None
        self._skipped_kept = np.zeros(0, dtype=bool)
        self._skipped_rejects: list[tuple[int, str | None, str]] = []
        if sync is not None:
            # how rows are hashed is part of it: raw CSV records (input_description) or values
            described = f"{SNAPSHOT_FORMAT}|" + (mapping.fingerprint() if mapping else "-") + "|" + writer_fingerprint(writer)
            described += f"|{input_description}" if input_description else ""
            self.fingerprint = hashlib.sha256(described.encode()).hexdigest()[:16]
            self.previous = sync.previous(self.fingerprint)
            if self.previous is None:
                self.result.notes.append("no committed sync snapshot for this mapping: every row is sent")
            self.snapshot = sync.writer(sync_run_key, self.delete_columns if deletions else [], self.previous)
            self.result.sync_run_key = sync_run_key
            self.result.sync_state = str(sync.directory)
        # CSV records with the very bytes the last sync sent are not even parsed: the reader hands
        # them over unparsed (without a snapshot to compare with, it parses them itself)
        self.known_records = None
        if records is not None and self.previous is not None:
            self.known_records = self.previous.known_records
            records.defer = True

    # Each batch is first brought to one shape: a mapped table (columnar) or mapped row dicts.
    def add(self, batch: InputBatch) -> None:
        self.complete(self.start(batch))

    def start(self, batch: InputBatch) -> _Started:
        """Begins a batch: what depends on it alone is computed in the helper thread, so that
        ``prepare_batches`` can start the next batch before it completes this one."""
        if batch.unparsed is not None:  # CSV records: parsed there too, only those not known
            # (looked up here: the helper has the parsing, and this thread has time while it waits)
            places = self.known_records(batch.unparsed.hashes) if self.known_records else None
            return _Started(batch, parsing=self.helper.submit(self._parse, batch.unparsed, places, self.fast_encoder))
        table = self._columnar(batch, self.fast_encoder)
        if table is None:
            return _Started(batch)
        encode = self.previous is None  # else a sync: most rows are probably unchanged
        return _Started(batch, table, self.helper.submit(self._digest, table, self.fast_encoder, batch.row_hashes, encode, True))

    def _parse(self, unparsed, places, encoder) -> _Started:
        batch = unparsed.parse(places)  # the records left are new or changed: encoded
        table = self._columnar(batch, encoder)
        if table is None:
            return _Started(batch)
        digest: Future = Future()
        digest.set_result(self._digest(table, encoder, batch.row_hashes, True))
        return _Started(batch, table, digest)

    def _columnar(self, batch: InputBatch, encoder) -> pa.Table | None:
        """The mapped table, if the batch can take the columnar path."""
        table = batch.table
        if len(batch) and table is not None and encoder and (self.mapping is None or self.mapping.columnar):
            table = self.mapping.apply_table(table) if self.mapping else table
            if all(pa.types.is_string(column.type) for column in table.columns):
                return table
        return None

    def complete(self, started: _Started) -> None:
        """Checks, encodes and writes a started batch; batches complete in input order."""
        bytes_read = started.batch.bytes_read  # a deferred batch's parsed twin does not carry it
        if started.parsing is not None:
            started = started.parsing.result()
        batch = started.batch
        self.result.read += len(batch) + len(batch.rejected) + len(batch.skipped or ())
        for line, identifier, reason in batch.rejected:
            self.rejects.add(line, identifier, reason)
        if started.digest is not None:
            self._add_table(started.table, batch, started.digest.result())
        elif len(batch) or batch.skipped:
            self._add_rows(batch.rows() if len(batch) else [], batch)
        self._log_progress(bytes_read)

    def _log_progress(self, bytes_read: int | None) -> None:
        """Rows read and their rate, and with the input's size the share read and an ETA."""
        if self.progress_interval is None:
            return
        now = time.monotonic()
        if now - self._last_progress < self.progress_interval:
            return
        self._last_progress = now
        elapsed = max(now - self._started_at, 1e-6)
        rows = self.result.read
        message = f"prepare progress: {rows:,} rows read, {rows / elapsed:,.0f} rows/s"
        if self.input_bytes and bytes_read is not None:
            share = min(bytes_read / self.input_bytes, 1.0)
            message += f"; {share:.0%} of {self.input_bytes / 1e6:,.1f} MB"
            if share:
                message += f", ETA {dt.timedelta(seconds=round(elapsed * (1 - share) / share))}"
        log.info("%s", message)

    def _digest(self, table: pa.Table, encoder, row_hashes: np.ndarray | None, encode: bool, every_row: bool = False) -> _Digest:
        """Runs in the helper thread: the trimmed keys; in a sync, the key and row hashes and the
        keys' places in the last snapshot (guessed first if the batches bring ``every_row`` in
        input order); and if ``encode`` (most rows will be sent), every row's line."""
        id_column = self.writer.identifier_field
        if id_column in table.column_names:
            keys = pc.utf8_trim_whitespace(table.column(id_column).cast(pa.string()))
        else:
            keys = pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
        digest = _Digest(keys)
        if self.sync is not None:
            digest.key_hashes = hash_strings(keys)
            digest.row_hashes = row_hashes if row_hashes is not None else hash_columns(table.columns)
            if self.previous is not None:
                digest.positions = self.previous.find(digest.key_hashes, in_order=every_row)
        if encode:
            digest.encoded = encoder.encode(table)
        return digest

    def _add_rows(self, rows: list[dict[str, Any]], batch: InputBatch) -> None:
        lines = batch.lines
        mapped: list[dict[str, Any] | None] = []
        reasons: dict[int, tuple[str | None, str]] = {}
        for index, row in enumerate(rows):
            try:
                row = decode_row(row)  # binary values (Parquet, database BLOBs) as text, once
                mapped.append(self.mapping.apply(row) if self.mapping else row)
            except RowRejected as error:
                mapped.append(None)
                reasons[index] = (self._input_identifier(row), error.reason)
        keys = [None if m is None else _identifier_of(self.writer, m) for m in mapped]
        key_array = pa.array(keys, pa.string())
        to_send = np.array([m is not None for m in mapped], dtype=bool)
        row_hashes = batch.row_hashes
        if self.sync is not None and row_hashes is None:
            row_hashes = hash_columns([pa.array([_canonical(m) if m is not None else None for m in mapped], pa.string())])
        sendable, key_hashes = self._filter(key_array, to_send, reasons, row_hashes=row_hashes, lines=lines, skipped=batch.skipped)
        encoded: list[str] = []
        written = np.zeros(len(rows), dtype=bool)
        for index in np.flatnonzero(sendable):
            try:
                encoded.append(self.writer.encode(mapped[index]))
                written[index] = True
            except RowRejected as error:
                reasons[int(index)] = (keys[index], error.reason)
        self.output.write_bytes("".join(encoded).encode("utf-8"))
        self.result.written += len(encoded)
        self._finish(written, lines, key_array, key_hashes, row_hashes, reasons, batch.skipped, mapped=mapped)

    def _input_identifier(self, row: dict[str, Any]) -> str | None:
        """The identifier of an input row the mapping rejected: the writer's, from the raw values of
        the mapped fields (canonical, as the duplicate check would have seen them)."""
        if self.mapping is None:
            return _identifier_of(self.writer, row)
        fields = [spec for spec in self.mapping.fields if len(spec.path) == 1]
        raw = {spec.target: spec.const if spec.is_const else canonical_id(lookup(row, spec.source)) for spec in fields}
        return _identifier_of(self.writer, raw)

    def _add_table(self, table: pa.Table, batch: InputBatch, digest: _Digest) -> None:
        writer = self.writer
        lines = batch.lines
        reasons: dict[int, tuple[str | None, str]] = {}
        keys = digest.keys
        sendable, key_hashes = self._filter(
            keys, np.ones(table.num_rows, dtype=bool), reasons, digest.key_hashes, digest.positions, digest.row_hashes,
            lines, batch.skipped,
        )
        row_hashes = digest.row_hashes
        if digest.encoded is not None and self.fast_encoder is not None:
            encoded_table, rows, send, encoded = table, np.arange(table.num_rows), sendable, digest.encoded
        else:  # a sync with a snapshot sends few rows: only those are encoded
            rows = np.flatnonzero(sendable)  # input row of each row of encoded_table
            encoded_table = table.take(pa.array(rows)) if len(rows) < table.num_rows else table
            send = np.ones(len(rows), dtype=bool)
            encoded = self.fast_encoder.encode(encoded_table) if self.fast_encoder and len(rows) else None
        written = np.zeros(table.num_rows, dtype=bool)
        if send.any():
            if encoded is not None and not self._sample_agrees(encoded_table, *encoded):
                log.warning("columnar encoder disagrees with %s; using the writer for every row", type(writer).__name__)
                self.fast_encoder = encoded = None
            if encoded is None:
                fast_lines, fast = pa.chunked_array([], pa.string()), np.zeros(len(rows), dtype=bool)
            else:
                fast_lines, fast = encoded[0], encoded[1] & send
            slow = np.flatnonzero(send & ~fast)
            self.result.fast_rows += int(fast.sum())
            overrides: dict[int, str] = {}
            for position, row in zip(slow, encoded_table.take(pa.array(slow)).to_pylist() if len(slow) else []):
                try:
                    overrides[int(position)] = writer.encode(row)
                except RowRejected as error:
                    reasons[int(rows[position])] = (_identifier_of(writer, row), error.reason)
            self.result.written += self.output.write_mixed(fast_lines, fast, overrides)
            done = fast.copy()
            done[list(overrides)] = True
            written[rows[done]] = True
        self._finish(written, lines, keys, key_hashes, row_hashes, reasons, batch.skipped, table=table)

    def _sample_agrees(self, table: pa.Table, lines: pa.ChunkedArray, fast: np.ndarray) -> bool:
        valid = np.flatnonzero(fast)
        for index in valid[:: max(len(valid) // 3, 1)][:3]:
            row = table.slice(int(index), 1).to_pylist()[0]
            try:
                if self.writer.encode(row) != lines[int(index)].as_py():
                    return False
            except RowRejected:
                return False
        return True

    def _filter(self, keys, candidates, reasons, key_hashes=None, positions=None, row_hashes=None, lines=None, skipped=None):
        """Rows to encode: not rejected already, not a duplicate, and (sync) new or changed.

        Returns them and the key hashes; hashes and snapshot places computed ahead are passed in.
        Records the reader ``skipped`` (unchanged, unparsed) count as unchanged unless repeated.
        """
        if key_hashes is None:
            key_hashes = hash_strings(keys)
        has_key = ~to_numpy(keys.is_null()) & candidates
        if len(keys) and has_key.any():
            has_key &= to_numpy(pc.not_equal(keys, ""))
        sendable = candidates.copy()
        if self.previous is not None and positions is None:
            positions = self.previous.find(key_hashes, in_order=True)
        duplicate = np.zeros(len(keys), dtype=bool)
        if self.seen is not None:  # the snapshot checks its own keys; only new ones go to the set
            duplicate = self.seen.add_new(key_hashes, has_key if positions is None else has_key & (positions < 0))
        self._skipped_rejects = []
        self._skipped_kept = np.zeros(0, dtype=bool)
        self._positions = positions
        if positions is not None:
            duplicate |= self._repeats(positions, has_key, lines, skipped)
        for index in np.flatnonzero(duplicate):
            reasons[int(index)] = (keys[int(index)].as_py(), DUPLICATE)
        sendable &= ~duplicate
        if self.previous is not None:
            self._unchanged = sendable & has_key & self.previous.unchanged(positions, row_hashes)
            sendable &= ~self._unchanged
        else:
            self._unchanged = np.zeros(len(keys), dtype=bool)
        return sendable, key_hashes

    def _repeats(self, positions, valid, lines, skipped) -> np.ndarray:
        """Rows whose snapshot key came before in this run; skipped records are checked with them,
        in line order, and those not repeated are carried into the new snapshot unchanged."""
        if not skipped:
            return self.previous.repeats(positions, valid)
        at, skipped_at = _merged_by_line(lines, skipped.lines)
        places = np.empty(len(at) + len(skipped_at), dtype=np.int64)
        places[at], places[skipped_at] = positions, skipped.places
        checked = np.ones(len(places), dtype=bool)
        checked[at] = valid
        flags = self.previous.repeats(places, checked)
        repeated = flags[skipped_at]
        for index in np.flatnonzero(repeated):
            self._skipped_rejects.append((int(skipped.lines[index]), self._input_identifier(skipped.row(int(index))), DUPLICATE))
        self._skipped_kept = ~repeated
        return flags[at]

    def _finish(self, written: np.ndarray, lines, keys, key_hashes, row_hashes, reasons, skipped=None, table=None, mapped=None) -> None:
        result = self.result
        result.unchanged += int(self._unchanged.sum()) + int(self._skipped_kept.sum())
        entries = [(int(lines[index]), *reasons[index]) for index in reasons] + self._skipped_rejects
        for line, identifier, reason in sorted(entries, key=lambda entry: entry[0]):
            self.rejects.add(line, identifier, reason)
        result.rejected += len(entries)
        if self.snapshot is not None:
            extra = []
            added = written & ~to_numpy(keys.is_null())
            if self.deletions and added.any():
                selection = pa.array(np.flatnonzero(added))
                for name in self.delete_columns:
                    if table is not None:
                        column = table.column(name) if name in table.column_names else None
                        extra.append(column.take(selection) if column is not None else pa.nulls(len(selection), pa.string()))
                    else:
                        extra.append(pa.array([_text_or_none((mapped[i] or {}).get(name)) for i in np.flatnonzero(added)], pa.string()))
            self._keep(added, lines, key_hashes, row_hashes, skipped, extra)

    def _keep(self, added, lines, key_hashes, row_hashes, skipped, extra) -> None:
        """The batch's rows for the next snapshot, in input order: those sent (added) and those
        unchanged, parsed or skipped (carried, with their place in the last snapshot)."""
        carried = self._unchanged
        kept = added | carried
        places = np.full(len(kept), -1, np.int64)
        if carried.any():
            places[carried] = self._positions[carried]
        places, lines, key_hashes, row_hashes = places[kept], lines[kept], key_hashes[kept], row_hashes[kept]
        if skipped and self._skipped_kept.any():  # merged in by line
            skipped_places, skipped_lines = skipped.places[self._skipped_kept], skipped.lines[self._skipped_kept]
            at, skipped_at = _merged_by_line(lines, skipped_lines)
            unparsed = skipped_places, self.previous.key_hashes[skipped_places], self.previous.row_hashes[skipped_places]
            merged = []
            for parsed_column, skipped_column in zip((places, key_hashes, row_hashes), unparsed):
                column = np.empty(len(at) + len(skipped_at), parsed_column.dtype)
                column[at], column[skipped_at] = parsed_column, skipped_column
                merged.append(column)
            places, key_hashes, row_hashes = merged
        if len(places):
            self.snapshot.add(key_hashes, row_hashes, places, extra)

    def finish(self) -> PrepareResult:
        result = self.result
        try:
            if self.deletions and self.previous is not None:
                self._write_deletions()
            if self.snapshot is not None:
                # memory the batches freed goes back first: the orders of the next snapshot are built here
                pa.default_memory_pool().release_unused()
                self.snapshot.finish(self.helper)
        finally:
            self.close()
        result.rejected = self.rejects.count
        result.bytes_written = self.output.bytes
        if result.rejected == 0:
            result.rejects = None
        if result.read != result.written + result.rejected + result.unchanged:
            raise RuntimeError(
                f"counts do not reconcile: read {result.read} != written {result.written} + rejected "
                f"{result.rejected} + unchanged {result.unchanged}"
            )
        if self.sync is not None:
            self.sync.record_pending(result.sync_run_key, self.fingerprint, self.snapshot.rows, result.to_dict())
        return result

    def close(self) -> None:
        self.helper.shutdown()
        self.rejects.close()
        if self.seen is not None:
            self.seen.close()
        if self.snapshot is not None:
            self.snapshot.close()
        self.output.close()  # last: it re-raises a write error

    def _write_deletions(self) -> None:
        template = DELETE_ROWS[type(self.writer).__name__]
        for table in self.previous.vanished():
            lines = []
            for row in table.to_pylist():
                values = {name: row.get(f"delete.{name}") for name in self.delete_columns}
                values = {name: value for name, value in values.items() if value not in (None, "")}
                try:
                    lines.append(self.writer.encode({**values, **template}))
                except RowRejected as error:
                    self.result.notes.append(f"cannot delete {values}: {error.reason}")
            self.output.write_bytes("".join(lines).encode("utf-8"))
            self.result.deleted += len(lines)


@dataclass
class _Digest:
    keys: pa.ChunkedArray
    key_hashes: np.ndarray | None = None
    positions: np.ndarray | None = None
    row_hashes: np.ndarray | None = None
    encoded: tuple[pa.ChunkedArray, np.ndarray] | None = None


@dataclass
class _Started:
    batch: InputBatch
    table: pa.Table | None = None
    digest: Future | None = None  # of a _Digest
    parsing: Future | None = None  # of a _Started with the parsed batch


class _CountingRejects:
    def __init__(self):
        self.count = 0

    def add(self, *args, **kwargs) -> None:
        self.count += 1

    def close(self) -> None:
        pass


def _merged_by_line(lines: np.ndarray, skipped_lines: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where the rows of a batch and its skipped records (each in line order) go when merged."""
    at = np.arange(len(lines)) + np.searchsorted(skipped_lines, lines)
    skipped = np.ones(len(lines) + len(skipped_lines), dtype=bool)
    skipped[at] = False
    return at, np.flatnonzero(skipped)


def _identifier_of(writer: FormatWriter, row: dict[str, Any]) -> str | None:
    try:
        value = writer.identifier(row)
    except Exception:  # a malformed row must still reach the rejects file
        return None
    if value is None:
        return None
    value = str(value).strip()
    return value or None


def _prepared_path(path: Any):
    path = as_storage_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _text_or_none(value: Any) -> str | None:
    return None if value is None else str(value)


def prefetched(batches: Iterator[InputBatch], depth: int = 1) -> Iterator[InputBatch]:
    """Reads the next batches in a thread while this one is processed (parsing frees the GIL)."""
    import queue
    import threading

    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in batches:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as error:  # handed to the consumer, which re-raises it
            slots.put(error)

    thread = threading.Thread(target=produce, name="profiles-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


@contextlib.contextmanager
def _returning_memory_pool() -> Iterator[None]:
    """Arrow's jemalloc pool while preparing, unless the user chose a pool (environment variable).

    The default mimalloc pool keeps freed blocks of every thread (reader, encoder, writer) for
    reuse: the peak RSS of a 1M-row prepare was 270-285 MB with it and 217-224 MB with jemalloc,
    at the same speed. Buffers remember their pool, so switching back afterwards is safe. (The
    pool is process-wide: two prepares in threads of one process may restore it early, which
    costs memory, never correctness.)
    """
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        yield
        return
    try:
        pool = pa.jemalloc_memory_pool()
    except (NotImplementedError, pa.ArrowNotImplementedError):  # a build without jemalloc
        yield
        return
    previous = pa.default_memory_pool()
    pa.set_memory_pool(pool)
    try:
        yield
    finally:
        pa.set_memory_pool(previous)


def prepare_batches(batches: Iterator[InputBatch], writer: FormatWriter, output: Any, **options: Any) -> PrepareResult:
    with _returning_memory_pool():
        return _prepare_batches(batches, writer, output, **options)


def _prepare_batches(batches: Iterator[InputBatch], writer: FormatWriter, output: Any, **options: Any) -> PrepareResult:
    preparer = Preparer(writer, output, **options)
    try:
        started = None
        for batch in batches:  # one batch ahead: the helper digests it while this one completes
            following = preparer.start(batch)
            if started is not None:
                preparer.complete(started)
            started = following
        if started is not None:
            preparer.complete(started)
    except BaseException:
        try:
            preparer.close()
        except Exception:  # the first error is the one to report
            log.exception("closing %s after an error", preparer.output.path)
        raise
    return preparer.finish()


def prepare_file(
    source: Any,
    writer: FormatWriter,
    output: Any,
    *,
    input_format: str | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    allow_empty: bool = False,
    **options: Any,
) -> PrepareResult:
    """Read ``source`` (CSV, NDJSON or Parquet; local or object storage) and write ``output``."""
    input_format = (input_format or guess_format(source)).lower()
    # a CSV sync hashes each record's raw bytes, so that unchanged records need no parsing
    # (in larger blocks than a parse: most records stay unparsed, and the work per batch is less so)
    records = RecordHashes(deferred_block_bytes=4 << 20) if options.get("sync") is not None and input_format == "csv" else None
    names, batches = read_input(source, input_format, delimiter=delimiter, encoding=encoding, records=records)
    check_columns(source, names, writer, options.get("mapping"))
    if records is not None:
        options.update(records=records, input_description=f"csv records|{delimiter}|{encoding}|{names}")
    options.setdefault("input_bytes", _input_size(source))
    result = prepare_batches(prefetched(batches), writer, output, **options)
    if result.read == 0 and not allow_empty:
        raise InputError(source, "no data rows (a header only, or an empty file); pass allow_empty=True if that is expected")
    return result


def check_columns(source: Any, names: list[str], writer: FormatWriter, mapping: FieldMapping | None) -> None:
    """Fail before anything is written when the input lacks a column the mapping or writer needs.

    With a mapping, the writer's columns must be among the mapping's targets (a writer column
    nobody maps would be empty on every row); without one, among the input's columns. NDJSON has
    no header: keys differ per row, and missing values are rejected row by row.
    """
    checker = getattr(writer, "check_columns", None)
    if mapping is not None:
        missing = mapping.missing_columns(names) if names else []
        if missing:
            raise InputError(source, f"no column(s) {', '.join(map(repr, missing))} in the header; it has {names}", line=1)
        if checker is not None and (names or not mapping.keep_unmapped):
            targets = list(dict.fromkeys(field.path[0] for field in mapping.fields))
            try:
                checker(targets + (list(names) if mapping.keep_unmapped else []))
            except ValueError as error:
                raise InputError(source, f"the mapping gives the writer no column for it: {error}") from None
        return
    if names and checker is not None:
        try:
            checker(names)
        except ValueError as error:
            raise InputError(source, str(error), line=1) from None


def _input_size(source: Any) -> int | None:
    """The input's size in bytes, for progress and ETA; None where storage cannot say cheaply."""
    try:
        path = as_storage_path(source)
        if is_local(path):
            return os.path.getsize(local_path(path))
        return int(getattr(path.stat(), "st_size", None) or 0) or None
    except Exception:  # progress is a courtesy: never a reason to fail
        return None
