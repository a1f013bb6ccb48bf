"""Columnar encoders: whole batches of vendor lines built with Arrow kernels.

For writers whose output is a fixed template around plain values (Localytics assign lines), an
encoder builds every line of a batch at once and hands each row it is not sure about (escapes,
blanks, long values, non-string types) to the writer itself; the pipeline checks a sample of its
lines against the writer on each batch.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_profiles.formats.base import FormatWriter
from airflow_provider_profiles.formats.hashing import byte_lengths, to_numpy

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
        first = offsets[:-1][filled]
        last = offsets[1:][filled] - 1
        head, tail = data[first], data[last]
        plain[filled[(head == 0x20) | (tail == 0x20)]] = False
        # Unicode spaces (U+0085, U+00A0, U+2000..) start with byte C2, E1, E2 or E3 and end
        # with a continuation byte: only such edges need the exact 2- and 3-byte comparison.
        suspects = np.flatnonzero((head >= 0xC2) & (head <= 0xE3) | (tail >= 0x80))
        if len(suspects):
            first, last = first[suspects], last[suspects]

            def byte(at: np.ndarray) -> np.ndarray:
                # UTF-8 is valid here, so a value is long enough wherever a space can match; the
                # clip only keeps the reads for shorter values inside the buffer
                return data[np.clip(at, 0, len(data) - 1)].astype(np.int64)

            head2 = (byte(first) << 8) | byte(first + 1)
            head3 = (head2 << 8) | byte(first + 2)
            tail2 = (byte(last - 1) << 8) | byte(last)
            tail3 = (byte(last - 2) << 16) | tail2
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
        fast = plain_text_mask(identifier, self.MAX_BYTES) & (byte_lengths(identifier) > 0)
        empties = [byte_lengths(column) == 0 for column in values]
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


COLUMNAR_ENCODERS = (LocalyticsAssignEncoder,)


def columnar_encoder(writer: FormatWriter):
    for encoder in COLUMNAR_ENCODERS:
        if encoder.applies_to(writer):
            return encoder(writer)
    return None
