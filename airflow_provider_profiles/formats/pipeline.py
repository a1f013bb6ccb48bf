"""Prepare a vendor file: read in batches -> map -> validate -> encode -> write, with rejects.

Every input row ends up written, rejected (with its line and reason in the rejects file) or, in an
incremental sync, unchanged since the last committed sync: ``read == written + rejected +
unchanged`` is checked before returning. Memory is bounded by the block size (a reader thread
parses the next block, a writer thread writes the previous one), plus the duplicate check (a
16 MB bit filter and 8 bytes per distinct identifier; ``duplicates="keep"`` turns it off, see
``default_duplicates``) and, in an incremental sync, about 18 bytes per key of the previous
snapshot.

Vendor writers encode one row at a time. For writers whose output is a fixed template around
plain values (Localytics assign lines), a columnar encoder here builds whole batches with Arrow
kernels and hands every row it is not sure about (escapes, blanks, long values, non-string
types) to the writer itself; a sample of its lines is checked against the writer on each batch.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
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
from airflow_provider_profiles.formats.mapping import FieldMapping, lookup
from airflow_provider_profiles.formats.reader import InputBatch, InputError, read_input
from airflow_provider_profiles.formats.sync import (
    PreviousSnapshot,
    SnapshotWriter,
    SyncState,
)
from airflow_provider_profiles.storage import as_storage_path, open_binary

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


# --- hashing (stable across processes, vectorised) ----------------------------------------------

_WORD_KEYS = np.random.default_rng(20_261_122).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)
_LENGTH_KEY = np.uint64(0x632BE59BD9B4E019)
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_FIXED_WIDTHS = tuple(range(8, 264, 8))  # values up to 256 bytes go through the matrix


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole 64-bit result."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def hash_strings(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash per string, the same in every process (the keys are seeded).

    The UTF-8 bytes, zero-padded to whole 64-bit words, are summed with a key per word position
    (multilinear hashing), the byte length is added, and the sum is mixed. Values of up to 32
    bytes (identifiers, most attributes) are hashed together as a fixed-width matrix built by
    Arrow kernels; longer ones one by one, with the same result.
    """
    if isinstance(array, pa.ChunkedArray):
        parts = [hash_strings(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    if not pa.types.is_binary(array.type):
        if not pa.types.is_string(array.type):
            array = array.cast(pa.string())
        array = array.view(pa.binary())  # same buffers: no copy, no UTF-8 check
    count = len(array)
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    nulls = to_numpy(array.is_null()) if array.null_count else None
    if nulls is not None:
        array = pc.coalesce(array, pa.scalar(b"", pa.binary()))
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=count + 1, offset=array.offset * 4)
    lengths = np.diff(offsets).astype(np.int64)
    width = next((w for w in _FIXED_WIDTHS if w >= int(lengths.max())), _FIXED_WIDTHS[-1])
    if int(lengths.max()) <= width:
        # value + as many zeros as make ``width`` bytes: one kernel, rows back to back
        padded = pc.binary_join_element_wise(array, _zero_pads(width - lengths), b"")
    else:  # some values are longer than the matrix: cut every row at ``width`` bytes
        padded = pc.binary_slice(pc.binary_join_element_wise(array, b"\x00" * width, b""), 0, width)
    with np.errstate(over="ignore"):
        sums = _matrix_sums(padded, count, width)
        long_rows = np.flatnonzero(lengths > width)
        if len(long_rows):
            values = array.take(pa.array(long_rows)).to_pylist()
            sums[long_rows] = np.fromiter((_word_sum(value) for value in values), np.uint64, len(long_rows))
        hashes = _mix(sums + lengths.astype(np.uint64) * _LENGTH_KEY)
    if nulls is not None:
        hashes[nulls] = _NULL_HASH
    return hashes


def _matrix_sums(padded: pa.Array, count: int, width: int) -> np.ndarray:
    """Word sums of ``count`` values of exactly ``width`` bytes each, stored back to back."""
    start = int(np.frombuffer(padded.buffers()[1], dtype=np.int32, count=1, offset=padded.offset * 4)[0])
    words = np.frombuffer(padded.buffers()[2], dtype="<u8", count=count * width // 8, offset=start)
    # integer matmul wraps modulo 2**64 like the sum, and is several times faster than * then sum
    return words.reshape(count, width // 8) @ _WORD_KEYS[: width // 8]


_zero_buffer = pa.py_buffer(b"")
_BINARY = pa.binary()


def _zero_pads(sizes: np.ndarray, value_type: pa.DataType = _BINARY) -> pa.Array:
    """An array of ``sizes[i]`` zero bytes each (valid UTF-8 too), views of one shared zero buffer."""
    global _zero_buffer
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    if _zero_buffer.size < total:
        _zero_buffer = pa.py_buffer(np.zeros(max(total, 2 * _zero_buffer.size), dtype=np.uint8))
    return pa.Array.from_buffers(value_type, len(sizes), [None, pa.py_buffer(offsets), _zero_buffer])


def _word_sum(value: bytes | None) -> int:
    """The per-value sum of ``hash_strings``, for values the matrix path does not take."""
    if value is None:
        return 0
    value += b"\x00" * (-len(value) % 8)
    total = 0
    for index in range(len(value) // 8):
        total += int.from_bytes(value[8 * index : 8 * index + 8], "little") * int(_WORD_KEYS[index % 64])
    return total & 0xFFFFFFFFFFFFFFFF


def hash_columns(columns: Iterable[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One hash per row over several columns (a unit separator keeps the fields apart).

    Equal to ``hash_strings`` of the joined row. The usual case builds the padded matrix with
    one kernel: the row, a separator, then zeros up to the width; the separator byte's share
    of the sum is then taken out again, which leaves the sum of the row padded with zeros.
    """
    columns = [column if pa.types.is_string(column.type) else column.cast(pa.string()) for column in columns]
    arrays = [_single_array(column) for column in columns]
    if arrays and all(array is not None for array in arrays) and len(arrays[0]):
        lengths = np.full(len(arrays[0]), len(arrays) - 1, dtype=np.int64)
        for array in arrays:
            lengths += _lengths(array)
            if array.null_count:  # a null becomes the one-byte replacement
                lengths += to_numpy(array.is_null())
        width = next((w for w in _FIXED_WIDTHS if w > int(lengths.max())), None)
        if width is not None:
            padded = pc.binary_join_element_wise(
                *arrays,
                _zero_pads(width - 1 - lengths, pa.string()),
                "\x1f",
                null_handling="replace",
                null_replacement="\x00",
            ).view(pa.binary())
            with np.errstate(over="ignore"):
                sums = _matrix_sums(padded, len(lengths), width)
                unsigned = lengths.astype(np.uint64)
                shift = np.uint64(8) * (unsigned % np.uint64(8))
                separator_share = (np.uint64(0x1F) << shift) * _WORD_KEYS[lengths // 8]
                return _mix(sums - separator_share + unsigned * _LENGTH_KEY)
    joined = pc.binary_join_element_wise(*columns, "\x1f", null_handling="replace", null_replacement="\x00")
    return hash_strings(joined)


def _single_array(column: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else None
    return column


class SeenKeys:
    """Set of 64-bit key hashes: sorted arrays merged like an LSM tree (8 bytes a key), behind a
    fixed 16 MB bit filter, so that only keys whose bit is already set are searched for."""

    MAX_LEVEL = 1_000_000  # a merge briefly holds twice this many keys: 16 MB
    FILTER_BITS = 27  # 2**27 bits: at 10M keys about 7% of new keys need a search

    def __init__(self):
        self.levels: list[np.ndarray] = []
        self.filter = np.zeros(1 << (self.FILTER_BITS - 6), dtype=np.uint64)

    def _filter_slots(self, hashes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slot = hashes >> np.uint64(64 - self.FILTER_BITS)
        return (slot >> np.uint64(6)).astype(np.int64), np.uint64(1) << (slot & np.uint64(63))

    def add_new(self, hashes: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Adds ``hashes[valid]``; returns a mask of rows whose key was seen before (or earlier here)."""
        duplicate = np.zeros(len(hashes), dtype=bool)
        index = np.flatnonzero(valid)
        if not len(index):
            return duplicate
        candidates = hashes[index]
        order = np.argsort(candidates)
        ordered = candidates[order]
        repeated_sorted = np.zeros(len(ordered), dtype=bool)
        repeated_sorted[1:] = ordered[1:] == ordered[:-1]
        if repeated_sorted.any():  # the first of equal keys in input order must be the one kept
            order = np.argsort(candidates, kind="stable")
        words, bits = self._filter_slots(ordered)
        maybe = np.flatnonzero((self.filter[words] & bits) != 0)
        if len(maybe):
            needles = ordered[maybe]
            for level in self.levels:
                position = np.minimum(np.searchsorted(level, needles), len(level) - 1)
                repeated_sorted[maybe] |= level[position] == needles
        # ``ordered`` is sorted, so its filter words are too: OR the bits per word run at once
        # (``np.bitwise_or.at`` would do one unbuffered update per key)
        if len(words):
            run_starts = np.flatnonzero(np.concatenate(([True], words[1:] != words[:-1])))
            self.filter[words[run_starts]] |= np.bitwise_or.reduceat(bits, run_starts)
        repeated = np.empty(len(ordered), dtype=bool)
        repeated[order] = repeated_sorted
        duplicate[index[repeated]] = True
        fresh = ordered[~repeated_sorted]
        if len(fresh):
            self.levels.append(fresh)
        # Merge small levels into bigger ones (few arrays to search), but stop at MAX_LEVEL keys:
        # a merge briefly holds both inputs and the result, which would double the memory.
        while (
            len(self.levels) > 1
            and len(self.levels[-2]) <= len(self.levels[-1]) * 2
            and len(self.levels[-2]) + len(self.levels[-1]) <= self.MAX_LEVEL
        ):
            top = self.levels.pop()
            below = self.levels.pop()
            merged = np.concatenate((below, top))
            del top, below
            merged.sort(kind="stable")  # timsort: two sorted runs merge in linear time
            self.levels.append(merged)
        return duplicate


# --- columnar encoders ---------------------------------------------------------------------------

_WHITESPACE_2 = np.array([0xC285, 0xC2A0], dtype=np.int64)
_WHITESPACE_3 = np.array(
    [0xE19A80, *range(0xE28080, 0xE2808B), 0xE280A8, 0xE280A9, 0xE280AF, 0xE2819F, 0xE38080], dtype=np.int64
)


def plain_text_mask(array: pa.Array | pa.ChunkedArray, max_bytes: int) -> np.ndarray:
    if isinstance(array, pa.ChunkedArray):
        masks = [_plain_chunk(chunk, max_bytes) for chunk in array.chunks]
        return np.concatenate(masks) if masks else np.zeros(0, dtype=bool)
    return _plain_chunk(array, max_bytes)


def _plain_chunk(array: pa.Array, max_bytes: int) -> np.ndarray:
    """True where a string needs no JSON escape, has no surrounding whitespace and fits ``max_bytes``.

    Checked on the raw UTF-8 bytes with numpy: far cheaper than a regex per cell.
    """
    count = len(array)
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=count + 1, offset=array.offset * 4).astype(np.int64)
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8) if array.buffers()[2] is not None else np.zeros(1, np.uint8)
    lengths = np.diff(offsets)
    plain = lengths <= max_bytes
    span = data[offsets[0] : offsets[-1]]
    special = np.flatnonzero((span < 0x20) | (span == 0x22) | (span == 0x5C))
    if len(special):
        rows = np.searchsorted(offsets, special + offsets[0], side="right") - 1
        plain[rows] = False
    filled = np.flatnonzero(lengths > 0)
    if len(filled):
        padded = np.concatenate((data, np.zeros(3, np.uint8)))
        first = offsets[:-1][filled]
        last = offsets[1:][filled] - 1
        head, tail = padded[first], padded[last]
        plain[filled[(head == 0x20) | (tail == 0x20)]] = False
        # Unicode spaces (U+0085, U+00A0, U+2000..) start with byte C2, E1, E2 or E3 and end
        # with a continuation byte: only such edges need the exact 2- and 3-byte comparison.
        suspects = np.flatnonzero((head >= 0xC2) & (head <= 0xE3) | (tail >= 0x80))
        if len(suspects):
            first, last = first[suspects].astype(np.int64), last[suspects].astype(np.int64)
            wide = padded.astype(np.int64)
            head2 = (wide[first] << 8) | wide[first + 1]
            head3 = (head2 << 8) | wide[first + 2]
            tail2 = (wide[np.maximum(last - 1, 0)] << 8) | wide[last]
            tail3 = (wide[np.maximum(last - 2, 0)] << 16) | tail2
            edge = np.isin(head2, _WHITESPACE_2) | np.isin(head3, _WHITESPACE_3)
            edge |= np.isin(tail2, _WHITESPACE_2) | np.isin(tail3, _WHITESPACE_3)
            plain[filled[suspects[edge]]] = False
    if array.null_count:
        plain &= ~to_numpy(array.is_null())
    return plain


class LocalyticsAssignEncoder:
    """Columnar twin of ``ProfileChangesWriter`` for assign-only attributes of string columns."""

    MAX_BYTES = 255  # bytes <= 255 means characters <= 255; longer values go to the writer

    def __init__(self, writer: FormatWriter):
        self.writer = writer
        self.id_column = writer.identifier_field
        self.pieces = []
        for column, spec in writer.attributes.items():
            attr = json.dumps(spec.attr, ensure_ascii=False)
            on_empty = spec.empty or writer.empty
            empty_piece = f',{{"op":"delete","attr":{attr}}}' if on_empty == "delete" else ""
            self.pieces.append((column, f',{{"op":"assign","attr":{attr},"value":"', empty_piece))

    @classmethod
    def applies_to(cls, writer: FormatWriter) -> bool:
        from airflow_provider_profiles.formats.localytics import ProfileChangesWriter

        return type(writer) is ProfileChangesWriter and all(
            spec.op == "assign" and spec.kind is None for spec in writer.attributes.values()
        )

    def encode(self, table: pa.Table) -> tuple[pa.ChunkedArray, np.ndarray] | None:
        """Lines, and a mask of the rows whose line is right (the others go to the writer).

        None if the table does not fit at all (a column missing or not a string).

        Arrow's string kernels are fastest on chunks of some thousands of rows, as the CSV reader
        delivers them, so the columns are never combined into one big array here.
        """
        names = set(table.column_names)
        if self.id_column not in names or any(column not in names for column, _, _ in self.pieces):
            return None
        identifier = table.column(self.id_column)
        values = [table.column(column) for column, _, _ in self.pieces]
        if any(not pa.types.is_string(column.type) for column in [identifier, *values]):
            return None
        fast = plain_text_mask(identifier, self.MAX_BYTES) & (_lengths(identifier) > 0)
        empties = [_lengths(column) == 0 for column in values]
        any_empty = np.zeros(len(fast), dtype=bool)
        for column, empty in zip(values, empties):
            fast &= plain_text_mask(column, self.MAX_BYTES)
            any_empty |= empty
        if not any_empty.any():
            arguments = ['{"customer_id":"', identifier]
            head = '","changes":['
            for index, ((_, prefix, _), column) in enumerate(zip(self.pieces, values)):
                arguments += [head + (prefix if index else prefix[1:]), column]
                head = '"}'
            arguments += ['"}]}\n', ""]
            lines = pc.binary_join_element_wise(*arguments)
        else:
            lines = self._encode_with_empties(identifier, values, empties)
            fast &= self._has_change(empties)
        return lines, fast

    def _has_change(self, empties: list[np.ndarray]) -> np.ndarray:
        changed = np.zeros(len(empties[0]), dtype=bool)
        for (_, _, empty_piece), empty in zip(self.pieces, empties):
            changed |= ~empty | bool(empty_piece)
        return changed

    def _encode_with_empties(self, identifier, values, empties) -> pa.ChunkedArray:
        """Rows where some cells are empty: each change knows whether one came before it (comma)."""
        count = len(empties[0])
        emitted = np.zeros(count, dtype=bool)
        parts = []
        for (_, prefix, empty_piece), column, empty in zip(self.pieces, values, empties):
            first = pa.array(~emitted)
            head = pc.if_else(first, prefix[1:], prefix)
            assigned = pc.binary_join_element_wise(head, column, '"}', "")
            if empty_piece:
                skipped = pc.if_else(first, empty_piece[1:], empty_piece)
                emitted |= True
            else:
                skipped = pa.scalar("", pa.string())
                emitted |= ~empty
            parts.append(pc.if_else(pa.array(empty), skipped, assigned))
        return pc.binary_join_element_wise('{"customer_id":"', identifier, '","changes":[', *parts, "]}\n", "")


def _lengths(column) -> np.ndarray:
    return to_numpy(pc.binary_length(column)).astype(np.int64)


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Booleans and integers from their Arrow buffers (``to_numpy`` imports pandas: a second)."""
    if isinstance(values, pa.ChunkedArray):
        parts = [to_numpy(chunk) for chunk in values.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool if pa.types.is_boolean(values.type) else np.int64)
    if values.null_count:
        values = pc.coalesce(values, pa.scalar(False if pa.types.is_boolean(values.type) else 0, values.type))
    buffer = values.buffers()[1]
    if pa.types.is_boolean(values.type):
        if buffer is None:
            return np.zeros(len(values), dtype=bool)
        bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
        return bits[values.offset : values.offset + len(values)].astype(bool)
    dtype = np.dtype(values.type.to_pandas_dtype())
    return np.frombuffer(buffer, dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)


COLUMNAR_ENCODERS = (LocalyticsAssignEncoder,)


def columnar_encoder(writer: FormatWriter):
    for encoder in COLUMNAR_ENCODERS:
        if encoder.applies_to(writer):
            return encoder(writer)
    return None


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
    attributes = getattr(writer, "attributes", None)
    accumulates = isinstance(attributes, dict) and any(
        getattr(spec, "op", "assign") in ACCUMULATING_OPS for spec in attributes.values()
    )
    return "keep" if type(writer).__name__ == "ProfileChangesWriter" and accumulates else "reject"


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
        if sync is not None and not sync_run_key:
            raise ValueError("an incremental sync needs a run key (e.g. the run_id)")
        if deletions and sync is None:
            raise ValueError("deletions of vanished ids need only_changed=True (an incremental sync)")
        if deletions and type(writer).__name__ not in DELETE_ROWS:
            raise ValueError(f"{type(writer).__name__} cannot express a deletion; deletions need one of {sorted(DELETE_ROWS)}")
        self.writer = writer
        self.mapping = mapping
        self.duplicates = duplicates
        self.result = PrepareResult(output=str(output), rejects=str(rejects) if rejects is not None else None)
        self.output = _Output(output, writer)
        self.rejects = RejectsFile(_prepared_path(rejects)) if rejects is not None else _CountingRejects()
        self.seen = SeenKeys() if duplicates == "reject" else None
        self.fast_encoder = columnar_encoder(writer) if fast else None
        self.sync = sync
        self.previous: PreviousSnapshot | None = None
        self.snapshot: SnapshotWriter | None = None
        self.delete_columns = list(
            delete_columns
            or DELETE_COLUMNS.get(type(writer).__name__)
            or ([writer.identifier_field] if writer.identifier_field else [])
        )
        self.deletions = deletions
        if sync is not None:
            described = (mapping.fingerprint() if mapping else "-") + "|" + writer_fingerprint(writer)
            self.fingerprint = hashlib.sha256(described.encode()).hexdigest()[:16]
            self.previous = sync.previous(self.fingerprint)
            if self.previous is None:
                self.result.notes.append("no committed sync snapshot for this mapping: every row is sent")
            self.snapshot = sync.writer(sync_run_key, self.delete_columns if deletions else [])
            self.result.sync_run_key = sync_run_key
            self.result.sync_state = str(sync.directory)

    # Each batch is first brought to one shape: a mapped table (columnar) or mapped row dicts.
    def add(self, batch: InputBatch) -> None:
        result = self.result
        result.read += len(batch) + len(batch.rejected)
        for line, identifier, reason in batch.rejected:
            self.rejects.add(line, identifier, reason)
        if not len(batch):
            return
        table = batch.table
        if table is not None and self.fast_encoder and (self.mapping is None or self.mapping.columnar):
            table = self.mapping.apply_table(table) if self.mapping else table
            if all(pa.types.is_string(column.type) for column in table.columns):
                self._add_table(table, batch.lines)
                return
        self._add_rows(batch.rows(), batch.lines)

    def _add_rows(self, rows: list[dict[str, Any]], lines: np.ndarray) -> None:
        mapped: list[dict[str, Any] | None] = []
        reasons: dict[int, tuple[str | None, str]] = {}
        for index, row in enumerate(rows):
            try:
                mapped.append(self.mapping.apply(row) if self.mapping else row)
            except RowRejected as error:
                mapped.append(None)
                reasons[index] = (self._input_identifier(row), error.reason)
        keys = [None if m is None else _identifier_of(self.writer, m) for m in mapped]
        key_array = pa.array(keys, pa.string())
        to_send = np.array([m is not None for m in mapped], dtype=bool)
        row_hashes = None
        if self.sync is not None:
            row_hashes = hash_columns([pa.array([_canonical(m) if m is not None else None for m in mapped], pa.string())])
        sendable, key_hashes = self._filter(key_array, to_send, row_hashes, reasons)
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
        self._finish(written, lines, key_array, key_hashes, row_hashes, reasons, mapped=mapped)

    def _input_identifier(self, row: dict[str, Any]) -> str | None:
        """The identifier of an input row the mapping rejected (read from its source column)."""
        target = self.writer.identifier_field
        for spec in self.mapping.fields if self.mapping else ():
            if spec.target == target and not spec.is_const:
                value = lookup(row, spec.source)
                return None if value is None or str(value).strip() == "" else str(value).strip()
        return _identifier_of(self.writer, row)

    def _add_table(self, table: pa.Table, lines: np.ndarray) -> None:
        writer = self.writer
        reasons: dict[int, tuple[str | None, str]] = {}
        id_column = writer.identifier_field
        if id_column in table.column_names:
            keys = pc.utf8_trim_whitespace(table.column(id_column).cast(pa.string()))
        else:
            keys = pa.chunked_array([pa.nulls(table.num_rows, pa.string())])
        row_hashes = hash_columns(table.columns) if self.sync is not None else None
        sendable, key_hashes = self._filter(keys, np.ones(table.num_rows, dtype=bool), row_hashes, reasons)
        selected = np.flatnonzero(sendable)
        written = np.zeros(table.num_rows, dtype=bool)
        if len(selected):
            subset = table.take(pa.array(selected)) if len(selected) < table.num_rows else table
            encoded = self.fast_encoder.encode(subset) if self.fast_encoder else None
            if encoded is not None and not self._sample_agrees(subset, *encoded):
                log.warning("columnar encoder disagrees with %s; using the writer for every row", type(writer).__name__)
                self.fast_encoder = encoded = None
            if encoded is None:
                fast_lines, fast = pa.chunked_array([], pa.string()), np.zeros(len(selected), dtype=bool)
            else:
                fast_lines, fast = encoded
            slow = np.flatnonzero(~fast)
            self.result.fast_rows += len(selected) - len(slow)
            overrides: dict[int, str] = {}
            for position, row in zip(slow, subset.take(pa.array(slow)).to_pylist() if len(slow) else []):
                try:
                    overrides[int(position)] = writer.encode(row)
                except RowRejected as error:
                    reasons[int(selected[position])] = (_identifier_of(writer, row), error.reason)
            self.result.written += self.output.write_mixed(fast_lines, fast, overrides)
            done = fast.copy()
            done[list(overrides)] = True
            written[selected[done]] = True
        self._finish(written, lines, keys, key_hashes, row_hashes, reasons, table=table)

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

    def _filter(self, keys: pa.Array, candidates: np.ndarray, row_hashes, reasons) -> tuple[np.ndarray, np.ndarray]:
        """Rows to encode: not rejected already, not a duplicate, and (sync) new or changed."""
        key_hashes = hash_strings(keys)
        has_key = ~to_numpy(keys.is_null()) & candidates
        if len(keys) and has_key.any():
            has_key &= to_numpy(pc.not_equal(keys, ""))
        sendable = candidates.copy()
        if self.seen is not None:
            duplicate = self.seen.add_new(key_hashes, has_key)
            for index in np.flatnonzero(duplicate):
                reasons[int(index)] = (keys[int(index)].as_py(), "duplicate identifier: an earlier row has the same id")
            sendable &= ~duplicate
        if self.previous is not None:
            changed = self.previous.changed(key_hashes, row_hashes)
            self._unchanged = sendable & has_key & ~changed
            sendable &= ~self._unchanged
        else:
            self._unchanged = np.zeros(len(keys), dtype=bool)
        return sendable, key_hashes

    def _finish(self, written: np.ndarray, lines, keys, key_hashes, row_hashes, reasons, table=None, mapped=None) -> None:
        result = self.result
        unchanged = self._unchanged
        result.unchanged += int(unchanged.sum())
        for index in sorted(reasons):
            identifier, reason = reasons[index]
            self.rejects.add(int(lines[index]), identifier, reason)
        result.rejected += len(reasons)
        if self.snapshot is not None:
            keep = written | unchanged
            keep &= ~to_numpy(keys.is_null())
            if keep.any():
                selection = pa.array(np.flatnonzero(keep))
                extra = []
                if self.deletions:
                    for name in self.delete_columns:
                        if table is not None:
                            column = table.column(name) if name in table.column_names else None
                            extra.append(column.take(selection) if column is not None else pa.nulls(len(selection), pa.string()))
                        else:
                            extra.append(pa.array([_text_or_none((mapped[i] or {}).get(name)) for i in np.flatnonzero(keep)], pa.string()))
                self.snapshot.add(key_hashes[keep], row_hashes[keep], extra)

    def finish(self) -> PrepareResult:
        result = self.result
        try:
            if self.deletions and self.previous is not None:
                self._write_deletions()
        finally:
            self.rejects.close()
            if self.snapshot is not None:
                self.snapshot.close()
            self.output.close()  # last: it re-raises a write error
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


class _CountingRejects:
    def __init__(self):
        self.count = 0

    def add(self, *args, **kwargs) -> None:
        self.count += 1

    def close(self) -> None:
        pass


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
        for batch in batches:
            preparer.add(batch)
    except BaseException:
        preparer.rejects.close()
        if preparer.snapshot is not None:
            preparer.snapshot.close()
        try:
            preparer.output.close()
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
    names, batches = read_input(source, input_format, delimiter=delimiter, encoding=encoding)
    check_columns(source, names, writer, options.get("mapping"))
    result = prepare_batches(prefetched(batches), writer, output, **options)
    if result.read == 0 and not allow_empty:
        raise InputError(source, "no data rows (a header only, or an empty file); pass allow_empty=True if that is expected")
    return result


def check_columns(source: Any, names: list[str], writer: FormatWriter, mapping: FieldMapping | None) -> None:
    """Fail before anything is written when the input lacks a column the mapping or writer needs."""
    if not names:
        return  # NDJSON: keys differ per row; missing values are rejected row by row
    if mapping is not None:
        missing = mapping.missing_columns(names)
        if missing:
            raise InputError(source, f"no column(s) {', '.join(map(repr, missing))} in the header; it has {names}", line=1)
        return
    checker = getattr(writer, "check_columns", None)
    if checker is not None:
        try:
            checker(names)
        except ValueError as error:
            raise InputError(source, str(error), line=1) from None
