"""Line numbers of an input: the line ends before given byte offsets (``lines_before``), and the
input line where each record of a CSV or NDJSON source starts, in step with DuckDB's rows.

DuckDB numbers the records it reads (``__record`` of ``prepare.source``) and lists the unreadable
ones with their line, but does not say on which line a readable record starts (a quoted value may
hold line ends, blank lines are skipped). ``RecordLines`` walks the file once more, a block at a
time, numbering its records as csv does (CSV) or its non-blank lines (NDJSON); the records not
listed as unreadable are DuckDB's readable rows, in order.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from airflow_provider_profiles.prepare.records import count_lines, scan
from airflow_provider_profiles.storage import open_binary

BLOCK_BYTES = 1 << 20
CR = 13


def lines_before(stream, offsets: list[int]) -> list[int]:
    """Line ends (LF, CR, CRLF) between the stream's position and each of ``offsets`` (in any
    order), in one pass, each byte counted once; a CR just before an offset counts."""
    order = iter(sorted(range(len(offsets)), key=offsets.__getitem__))
    counts, index = [0] * len(offsets), next(order, None)
    lines, base, after_cr = 0, 0, False  # line ends before ``base``; whether the byte before it is a CR
    while index is not None:
        data, at = stream.read(BLOCK_BYTES), 0
        while index is not None and (offsets[index] <= base + len(data) or not data):
            upto = max(at, min(offsets[index] - base, len(data)))
            lines += count_lines(data, at, upto, after_cr=data[at - 1] == CR if at else after_cr)
            at, counts[index], index = upto, lines, next(order, None)
        if not data:
            break
        lines += count_lines(data, at, len(data), after_cr=data[at - 1] == CR if at else after_cr)
        base, after_cr = base + len(data), data.endswith(b"\r")
    return counts


class RecordLines:
    """Walks ``path``'s records: ``take(n)`` gives the lines of the next ``n`` readable records and
    the unreadable records met on the way, as (line, first value or None, reason); ``rest()`` the
    unreadable records after the last readable one. ``unreadable``: (line, reason), by line."""

    def __init__(self, path: Any, input_format: str, unreadable: Iterable[tuple[int, str]], *,
                 delimiter: str = ",", encoding: str = "utf-8", block_bytes: int = BLOCK_BYTES):
        self.delimiter = delimiter
        walk = _csv_records if input_format == "csv" else _ndjson_records
        self._records = walk(path, encoding, delimiter, block_bytes)
        self._unreadable = iter(unreadable)
        self._next_bad = next(self._unreadable, None)

    def take(self, count: int) -> tuple[list[int], list[tuple[int, str | None, str]]]:
        lines: list[int] = []
        rejected: list[tuple[int, str | None, str]] = []
        while len(lines) < count:
            line, text = next(self._records, (None, None))
            if line is None:
                raise LinesOutOfStep(f"the file has fewer records than DuckDB read ({len(lines)} of {count} found)")
            if self._next_bad is not None and line == self._next_bad[0]:
                rejected.append((line, self._first_value(text), self._next_bad[1]))
                self._next_bad = next(self._unreadable, None)
            else:
                lines.append(line)
        return lines, rejected

    def rest(self) -> list[tuple[int, str | None, str]]:
        rejected = []
        for line, text in self._records:
            if self._next_bad is None or line != self._next_bad[0]:
                raise LinesOutOfStep(f"line {line} starts a record DuckDB did not read")
            rejected.append((line, self._first_value(text), self._next_bad[1]))
            self._next_bad = next(self._unreadable, None)
        if self._next_bad is not None:
            raise LinesOutOfStep(f"DuckDB names line {self._next_bad[0]}, where no record starts")
        return rejected

    def _first_value(self, text: bytes | None) -> str | None:
        """A CSV record's first value (its identifier, most often); None for NDJSON."""
        if text is None:
            return None
        values = next(csv.reader(io.StringIO(text.decode("utf-8", errors="replace"), newline=""),
                                 delimiter=self.delimiter), [])
        return values[0] if values else None


class LinesOutOfStep(RuntimeError):
    """The walk and DuckDB disagree on the records: never expected (lines are then unknown)."""


def _utf8_blocks(path: Any, encoding: str, block_bytes: int) -> Iterator[bytes]:
    """The file in blocks, as UTF-8 (the bytes the record scan knows)."""
    utf8 = codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")
    decoder = None if utf8 else codecs.getincrementaldecoder(encoding)(errors="replace")
    with open_binary(path) as stream:
        while True:
            raw = stream.read(block_bytes)
            data = raw if decoder is None else decoder.decode(raw, final=not raw).encode("utf-8")
            if data:
                yield data
            if not raw:
                return


def _csv_records(path: Any, encoding: str, delimiter: str, block_bytes: int) -> Iterator[tuple[int, bytes]]:
    """(first line, bytes) of every record after the header, blank lines left out."""
    carry, line, header = b"", 1, True
    blocks = _utf8_blocks(path, encoding, block_bytes)
    while True:
        data = next(blocks, b"")
        block = carry + data
        if not block:
            return
        found = scan(block, 0, len(block), True, delimiter, complete=not data)
        cut = int(found.ends[-1]) + 1 if len(found.ends) else 0
        if not data and cut < len(block):  # the last record, without a line end
            ends = np.append(found.ends, len(block) - 1)
            cut = len(block)
        else:
            ends = found.ends
        starts = np.concatenate(([0], ends[:-1] + 1)) if len(ends) else ends
        first_lines = line + np.searchsorted(found.lines, starts)
        # a blank line: a record of only its line end (LF, CR or CRLF)
        first_bytes = np.frombuffer(block, np.uint8)[starts]
        sizes = ends + 1 - starts
        blank = ((sizes == 1) & np.isin(first_bytes, (10, CR))) | ((sizes == 2) & (first_bytes == CR))
        for start, end, first, empty in zip(starts.tolist(), (ends + 1).tolist(), first_lines.tolist(), blank.tolist()):
            if empty:
                continue
            if header:
                header = False
                continue
            yield first, block[start:end]
        line += int(np.searchsorted(found.lines, cut))
        carry = block[cut:]
        if not data:
            return


def _ndjson_records(path: Any, encoding: str, delimiter: str, block_bytes: int) -> Iterator[tuple[int, None]]:
    """(line, None) of every line that is not blank."""
    carry, line = b"", 1
    for data in _utf8_blocks(path, encoding, block_bytes):
        parts = (carry + data).split(b"\n")
        carry = parts.pop()
        for part in parts:
            if part.strip():
                yield line, None
            line += 1
    if carry.strip():
        yield line, None
