"""Streamed readers for CSV, NDJSON and Parquet from a local path or object storage.

Every reader yields ``InputBatch`` objects of bounded size, each row carrying the input line number
where it starts (for Parquet and SQL: the 1-based row number), so rejects and errors can point a
person at the exact place. Nothing reads a whole file into memory.

CSV is cut into blocks at record boundaries here (quote-aware, so a quoted field with newlines
stays whole) and each block is parsed by pyarrow's multithreaded CSV parser; a block with a
malformed row is re-read with the ``csv`` module, which knows line numbers, to say where it is.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from airflow_provider_profiles.formats.hashing import hash_strings
from airflow_provider_profiles.prepare.errors import InputError, guess_format  # noqa: F401 (re-exported)
from airflow_provider_profiles.storage import open_binary

# Peak memory grows with the block (each block's output lines are about 5x its bytes), not with
# the input: 1 MB blocks peaked 40 MB lower than 2 MB ones but took 10-15% longer (per-batch work).
DEFAULT_BLOCK_BYTES = 2 << 20
DEFAULT_BATCH_ROWS = 65_536
FORMATS = ("csv", "ndjson", "parquet")


@dataclass
class InputBatch:
    """A bounded slice of input: columnar (``table``) and/or row dicts, plus line numbers.

    ``table`` is set for CSV and Parquet (the fast path works on it); ``rows()`` gives dicts for
    everything. ``rejected`` holds rows of this slice that could not even be parsed:
    (line, identifier-or-None, reason).
    """

    lines: np.ndarray
    table: pa.Table | None = None
    row_dicts: list[dict[str, Any]] | None = None
    rejected: list[tuple[int, str | None, str]] = field(default_factory=list)
    row_hashes: np.ndarray | None = None  # hash of each row's raw CSV record (see UnparsedRecords)
    skipped: SkippedRecords | None = None
    unparsed: UnparsedRecords | None = None
    bytes_read: int | None = None  # of the input file once this batch is read, for progress

    def __len__(self) -> int:
        return len(self.lines)

    def rows(self) -> list[dict[str, Any]]:
        if self.row_dicts is None:
            self.row_dicts = self.table.to_pylist()
        return self.row_dicts


@dataclass
class RecordHashes:
    """Asks a CSV read for the hash of each record's raw bytes (``InputBatch.row_hashes``). With
    ``defer`` (set before reading starts), batches come unparsed (``InputBatch.unparsed``), for the
    consumer to parse only the records it does not know; otherwise the reader parses them.
    ``deferred_block_bytes`` sets the block size of unparsed batches."""

    defer: bool = False
    deferred_block_bytes: int | None = None


@dataclass
class SkippedRecords:
    """Records of a batch left unparsed: their first line, place in the snapshot and bytes."""

    lines: np.ndarray
    places: np.ndarray
    block: bytes | bytearray
    spans: np.ndarray  # (start, end) of each record in block
    names: list[str]
    delimiter: str

    def __len__(self) -> int:
        return len(self.lines)

    def row(self, index: int) -> dict[str, str]:
        """The record parsed after all (to name it in a reject)."""
        start, end = self.spans[index]
        text = bytes(self.block[start:end]).decode("utf-8", errors="replace")
        values = next(csv.reader(io.StringIO(text, newline=""), delimiter=self.delimiter), [])
        return dict(zip(self.names, values))


def read_input(
    path: Any,
    format: str | None = None,
    *,
    delimiter: str = ",",
    encoding: str = "utf-8",
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    records: RecordHashes | None = None,
) -> tuple[list[str], Iterator[InputBatch]]:
    """Open an input file; returns its column names and an iterator of batches.

    ``records`` (CSV only) asks for the hash of each record's raw bytes (see ``RecordHashes``).
    """
    format = (format or guess_format(path)).lower()
    if format == "csv":
        return _read_csv(path, delimiter=delimiter, encoding=encoding, block_bytes=block_bytes, records=records)
    if format in ("ndjson", "jsonl", "json"):
        return [], _read_ndjson(path, encoding=encoding, block_bytes=block_bytes)
    if format == "parquet":
        return _read_parquet(path, batch_rows=batch_rows)
    raise ValueError(f"unknown input format {format!r}; use one of {', '.join(FORMATS)}")


# --- CSV ----------------------------------------------------------------------------------------


class RecordTooLong(ValueError):
    """No record end within ``MAX_RECORD_BYTES``: most likely a quote that is never closed."""


class UnclosedQuote(ValueError):
    """The input ends inside a quoted value (``at_end``), or one runs past ``MAX_RECORD_BYTES``:
    the quote at ``block[offset]`` opens it."""

    def __init__(self, block, offset: int, at_end: bool = True):
        super().__init__("a quote is never closed")
        self.block, self.offset, self.at_end = block, offset, at_end


# A record longer than this is taken for an unclosed quote, which would otherwise make the rest
# of the file one record, held in memory.
MAX_RECORD_BYTES = 64 << 20


def record_blocks(stream, block_bytes: int | Callable[[], int], delimiter: str = ",") -> Iterator[bytearray]:
    """Yield blocks of ``stream`` that each end at a record boundary (``last_record_end``); the
    block size may be a function, asked before each read. Raises ``UnclosedQuote`` if the input
    ends inside a quoted value (csv would make the rest of the file that one value).

    Each block is read straight into its own buffer after the previous block's unfinished record,
    and cut by removing the tail: no byte is copied twice.
    """
    carry = b""
    while True:
        if len(carry) > MAX_RECORD_BYTES:
            opened = scan_records(carry, delimiter=delimiter).open_quote
            if opened >= 0:
                raise UnclosedQuote(carry, opened, at_end=False)
            raise RecordTooLong(f"no record ends within {len(carry) / 2**20:.1f} MB: is a quote left open?")
        block = _Block(len(carry) + (block_bytes() if callable(block_bytes) else block_bytes))
        block[: len(carry)] = carry
        read = stream.readinto(memoryview(block)[len(carry) :]) or 0
        del block[len(carry) + read :]
        if not read:
            if block:
                opened = scan_records(block, delimiter=delimiter, complete=True).open_quote
                if opened >= 0:
                    raise UnclosedQuote(block, opened)
                yield block
            return
        cut, block.paired, block.quotes = _last_record_end(block, 0, len(block), True, delimiter)
        carry = bytes(block[cut:])
        del block[cut:]
        if block:
            yield block


class _Block(bytearray):
    """A block of ``record_blocks``; ``paired``: its quotes are known to pair up (see
    ``_quotes_pair_up``), which spares ``scan_records`` that check; ``quotes``: where they are,
    when the cut found them (``scan_records`` need not look again)."""

    paired = False
    quotes: np.ndarray | None = None


# Record ends, as Python's csv module reads them (and pyarrow's parser, which agrees): a line ends
# at LF, CR or CRLF; a quote opens a value only as the first character of a field, where "" is a
# quote and a lone quote closes it; a line end inside such a value does not end the record, and a
# quote anywhere else (5" screen) is a character. Blocks start at a record start. Shared with
# ``split``.


@dataclass
class Records:
    """Where the lines and records of block[start:end] end (offsets from ``start`` of the last
    byte of each line end), and the offset of the quote opening a value still open at ``end``
    (-1 if none)."""

    lines: np.ndarray
    ends: np.ndarray
    open_quote: int = -1
    paired: bool = True  # counting quotes finds the values (see _quotes_pair_up)


def scan_records(block, start: int = 0, end: int | None = None, quoted: bool = True, delimiter: str = ",",
                 complete: bool = False) -> Records:
    """The ``Records`` of block[start:end], vectorised. ``complete``: nothing follows ``end`` that
    could make a CR there the start of a CRLF (the end of the input, or a record end)."""
    end = len(block) if end is None else end
    data = np.frombuffer(block, dtype=np.uint8, count=end - start, offset=start)
    lines = _line_ends(block, start, end, data, complete)
    if not quoted or block.find(b'"', start, end) < 0:
        return Records(lines, lines)
    whole = start == 0 and end == len(block)
    quotes = getattr(block, "quotes", None) if whole else None
    if not (whole and getattr(block, "paired", False)):
        quotes = np.flatnonzero(data == 34)
        if not _quotes_pair_up(data, quotes, delimiter):
            return _walk_records(block, start, end, lines, delimiter)
    # a line end is inside a value when an odd number of quotes precede it
    inside = _odd_quotes_before(data, lines, quotes)
    ends = lines[~inside] if inside.any() else lines
    open_quote = -1
    if (len(quotes) if quotes is not None else count_byte(block, b'"', start, end)) & 1:
        # the last value is open: where it opened ("" inside it excluded)
        quotes = np.flatnonzero(data == 34) if quotes is None else quotes
        openers, closers = quotes[0::2], quotes[1::2]
        escaped = np.zeros(len(openers), dtype=bool)
        escaped[1:] = openers[1:] - closers[: len(openers) - 1] == 1
        open_quote = int(openers[~escaped][-1])
    return Records(lines, ends, open_quote)


def _odd_quotes_before(data: np.ndarray, lines: np.ndarray, quotes: np.ndarray | None) -> np.ndarray:
    if quotes is not None:
        return (np.searchsorted(quotes, lines) & 1).astype(bool)
    if not len(lines):
        return np.zeros(0, dtype=bool)
    # quotes per line, counted in bytes (which wrap at 256 but keep the parity), then their sum
    per_line = np.add.reduceat((data[: lines[-1] + 1] == 34).view(np.uint8), np.concatenate(([0], lines[:-1] + 1)), dtype=np.uint8)
    return (np.cumsum(per_line & 1) & 1).astype(bool)


@functools.lru_cache(maxsize=8)
def _field_edges(delimiter: str) -> np.ndarray:
    """Bytes that may stand before a quote that opens a value."""
    edges = np.zeros(256, dtype=bool)
    edges[[ord(delimiter), 10, 13, 34]] = True
    return edges


def _quotes_pair_up(data: np.ndarray, quotes: np.ndarray, delimiter: str) -> bool:
    """Whether counting quotes finds the values csv finds: whether each even quote (an opener)
    starts a field, or follows the quote before it ("" in a value). Else a quote is a character
    somewhere (5" screen). Text after a closing quote ("a"b) needs no check: csv appends it to
    the value, and the field ends at the next delimiter or line end either way (a quote in that
    text would be an even quote after a character, so found here)."""
    openers = quotes[0::2]
    if len(openers) and openers[0] == 0:  # at the range start: a record start
        openers = openers[1:]
    # take: a third faster than data[openers - 1]
    return bool(_field_edges(delimiter).take(data.take(openers - 1)).all())


def _line_ends(block, start: int, end: int, data: np.ndarray, complete: bool) -> np.ndarray:
    newlines = np.flatnonzero(data == 10)
    returns = block.count(b"\r", start, end) if block.find(b"\r", start, end) >= 0 else 0
    if not returns or returns == block.count(b"\r\n", start, end):
        return newlines  # no CR, or each one the start of a CRLF (whose LF ends the line)
    cr = np.flatnonzero(data == 13)
    following = data[np.minimum(cr + 1, len(data) - 1)]
    lone = cr[(following != 10) & (cr + 1 < len(data))]
    if complete and data[-1] == 13:
        lone = np.append(lone, len(data) - 1)
    return np.union1d(newlines, lone)


@functools.lru_cache(maxsize=8)
def _quoted_value(delimiter: str) -> re.Pattern:
    """A quoted value at the start of a field, to its closing quote or (open) the end."""
    edge = re.escape(delimiter.encode())
    return re.compile(rb'(?:\A|(?<=[' + edge + rb'\r\n]))"(?:[^"]++|"")*+("?)')


def _walk_records(block, start: int, end: int, lines: np.ndarray, delimiter: str) -> Records:
    """``scan_records`` where quotes are characters too: the quoted values, found in order."""
    spans = [(match.start(), match.end(), bool(match.group(1)))
             for match in _quoted_value(delimiter).finditer(memoryview(block)[start:end])]
    if not spans:
        return Records(lines, lines, paired=False)
    opened, closed = np.array([span[0] for span in spans]), np.array([span[1] for span in spans])
    at = np.searchsorted(opened, lines, side="right") - 1
    inside = (at >= 0) & (lines < closed[np.maximum(at, 0)])
    return Records(lines, lines[~inside], -1 if spans[-1][2] else spans[-1][0], paired=False)


def count_lines(block, start: int = 0, end: int | None = None) -> int:
    """Line ends in block[start:end] as csv counts them (LF, CR, CRLF); a CR at ``end`` counts."""
    end = len(block) if end is None else end
    lines = count_byte(block, b"\n", start, end)
    if block.find(b"\r", start, end) >= 0:
        lines += block.count(b"\r", start, end) - block.count(b"\r\n", start, end)
    return lines


def ends_a_line(block) -> bool:
    return block[-1:] in (b"\n", b"\r")


def first_record_end(block, quoted: bool = True, delimiter: str = ",") -> int | None:
    """Position just after the first record end of ``block``, None if it has none (for certain)."""
    for end in (min(len(block), 1 << 16), len(block)):  # a header is seldom longer than the first
        ends = scan_records(block, 0, end, quoted, delimiter).ends
        if len(ends):
            return int(ends[0]) + 1
        if end == len(block):
            return None


def last_record_end(block, start: int = 0, end: int | None = None, quoted: bool = True, delimiter: str = ",") -> int:
    """Position just after the last record end in block[start:end], or ``start``."""
    return _last_record_end(block, start, len(block) if end is None else end, quoted, delimiter)[0]


def _last_record_end(block, start: int, end: int, quoted: bool, delimiter: str) -> tuple[int, bool, np.ndarray | None]:
    """``last_record_end``, whether the quotes before it are known to pair up, and (when found)
    where those quotes are, as offsets from ``start``."""
    newline = block.rfind(b"\n", start, end)
    if newline >= 0 and block.find(b"\r", newline, end) < 0:  # the last line end is that LF
        if not quoted or block.find(b'"', start, newline) < 0:  # memchr: the usual case
            return newline + 1, True, None
        # outside quotes if the quotes before it pair up, and are even (no line end needed)
        data = np.frombuffer(block, dtype=np.uint8, count=newline - start, offset=start)
        quotes = np.flatnonzero(data == 34)
        if len(quotes) % 2 == 0 and _quotes_pair_up(data, quotes, delimiter):
            return newline + 1, True, quotes.astype(np.int32)  # kept with the block: half the memory
    records = scan_records(block, start, end, quoted, delimiter)
    return (start + int(records.ends[-1]) + 1 if len(records.ends) else start), records.paired, None


def record_ends(block, start: int = 0, end: int | None = None, quoted: bool = True, delimiter: str = ",") -> np.ndarray:
    """Every record end (the position after its line end) in block[start:end], which ends at a
    record end or the end of the input."""
    return scan_records(block, start, end, quoted, delimiter, complete=True).ends + start + 1


def describe_open_quote(block, offset: int, delimiter: str = ",") -> tuple[int, int, int, int]:
    """For a quote at block[offset] left open: the line ends before it, the start of its record,
    its field there (0-based) and its character on its line (1-based)."""
    before = scan_records(block, 0, offset, True, delimiter, complete=True)
    record_start = int(before.ends[-1]) + 1 if len(before.ends) else 0
    prefix = bytes(block[record_start:offset]).decode("utf-8", errors="replace")
    field = len(next(csv.reader(io.StringIO(prefix, newline=""), delimiter=delimiter), [""])) - 1
    line_start = int(before.lines[-1]) + 1 if len(before.lines) else 0
    character = len(bytes(block[line_start:offset]).decode("utf-8", errors="replace")) + 1
    return len(before.lines), record_start, field, character


def open_quote_message(character: int, at_end: bool = True) -> str:
    what = ("is never closed: the rest of the file would be one value." if at_end else
            f"opens a value longer than {MAX_RECORD_BYTES / 2**20:.1f} MB: is it left open?")
    return f'the quote at character {character} of this line {what} Close it, or write a quote inside a quoted value as ""'



def _unclosed_quote_error(path: Any, error: UnclosedQuote, first_line: int, names: list[str] | None,
                          delimiter: str) -> InputError:
    lines, record_start, field, character = describe_open_quote(error.block, error.offset, delimiter)
    if names is None and record_start:  # in the first block, after the header (not read yet)
        header = bytes(error.block[:record_start]).decode("utf-8", errors="replace").lstrip("\ufeff")
        names = [name.strip() for name in next(csv.reader(io.StringIO(header, newline=""), delimiter=delimiter), [])]
    column = names[field] if names and 0 <= field < len(names) else None  # None: in the header
    return InputError(path, open_quote_message(character, error.at_end), line=first_line + lines, column=column)


def count_byte(data: bytes | bytearray, byte: bytes, start: int = 0, end: int | None = None) -> int:
    """``data.count(byte, start, end)`` for one byte, with numpy: 8x faster on a 2 MB block."""
    end = len(data) if end is None else end
    return int(np.count_nonzero(np.frombuffer(data, dtype=np.uint8, count=end - start, offset=start) == byte[0]))


def _split_header(first: bytes, path: Any, delimiter: str) -> tuple[list[str], bytes, int]:
    """Parse the header record from the first block; returns (names, rest, header line count)."""
    end = first_record_end(first, delimiter=delimiter) or len(first)
    text = first[:end].decode("utf-8", errors="strict")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        names = next(reader)
    except StopIteration:
        raise InputError(path, "the file is empty: expected a header row", line=1) from None
    header_lines = count_lines(first, 0, end) or 1
    offset = end
    names = [name.strip() for name in names]
    for index, name in enumerate(names):
        if not name:
            raise InputError(path, f"header field {index + 1} is empty: every column needs a name", line=1)
        if name in names[:index]:
            raise InputError(path, f"column {name!r} appears twice in the header", line=1, column=name)
    return names, first[offset:], header_lines


def _read_csv(path: Any, *, delimiter: str, encoding: str, block_bytes: int, records: RecordHashes | None = None):
    stream = open_binary(path)
    size = block_bytes
    if records is not None and records.deferred_block_bytes:  # known only once reading starts
        size = lambda: records.deferred_block_bytes if records.defer else block_bytes  # noqa: E731
    blocks = record_blocks(stream, size, delimiter)
    transcode = encoding.lower().replace("_", "-") not in ("utf-8", "utf8", "utf-8-sig")

    def decode(block: bytes, line: int) -> bytes:
        if not transcode:
            return block
        try:
            return block.decode(encoding).encode("utf-8")
        except UnicodeDecodeError as error:
            bad_line = line + count_lines(block, 0, error.start)
            raise InputError(path, f"not valid {encoding}: {error.reason}", line=bad_line) from None

    try:
        first = next(blocks, b"")
    except RecordTooLong as error:
        stream.close()
        raise InputError(path, str(error), line=1) from None
    except UnclosedQuote as error:  # the whole file is one block
        stream.close()
        raise _unclosed_quote_error(path, error, 1, None, delimiter) from None
    except Exception:
        stream.close()
        raise
    first = decode(first, 1)
    if first.startswith(b"\xef\xbb\xbf"):
        first = first[3:]
    if not first.strip():
        stream.close()
        raise InputError(path, "the file is empty: expected a header row", line=1)
    try:
        names, rest, header_lines = _split_header(first, path, delimiter)
    except UnicodeDecodeError as error:
        stream.close()
        raise InputError(path, f"header is not valid UTF-8 ({error.reason}); pass encoding=", line=1) from None

    def batches() -> Iterator[InputBatch]:
        next_line = header_lines + 1
        try:
            for index, block in enumerate(_chain_first(rest, blocks)):
                if index or not rest:
                    block = decode(block, next_line)
                if not block.strip(b"\r\n"):  # only blank lines (a space is a value, as csv has it)
                    next_line += count_lines(block)
                    continue
                if records is not None:
                    unparsed = UnparsedRecords(path, block, names, delimiter, next_line)
                    batch = InputBatch(np.zeros(0, np.int64), unparsed=unparsed) if records.defer else unparsed.parse()
                    next_line += unparsed.line_count
                else:
                    newlines = count_lines(block)
                    batch = _parse_csv_block(path, block, names, next_line, delimiter, newlines)
                    next_line += newlines + (0 if ends_a_line(block) else 1)
                if len(batch) or batch.rejected or batch.unparsed:
                    batch.bytes_read = _position(stream)
                    yield batch
        except RecordTooLong as error:
            raise InputError(path, f"from this line on, {error}", line=next_line) from None
        except UnclosedQuote as error:
            raise _unclosed_quote_error(path, error, next_line, names, delimiter) from None
        finally:
            stream.close()

    return names, batches()


def _position(stream, unused: int = 0) -> int | None:
    """Bytes of the file read so far, less ``unused`` bytes held back for the next batch."""
    try:
        return stream.tell() - unused
    except Exception:  # a stream that cannot say: no ETA
        return None


def _chain_first(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _parse_csv_block(
    path: Any, block: bytes, names: list[str], first_line: int, delimiter: str, newlines: int | None = None
) -> InputBatch:
    malformed = []

    def on_invalid_row(row) -> str:
        malformed.append(row)
        return "skip"

    has_quotes = b'"' in block
    if newlines is None:
        newlines = count_lines(block)
    newlines += 0 if ends_a_line(block) else 1

    def parse(value_type: pa.DataType) -> pa.Table | None:
        try:
            return pacsv.read_csv(
                pa.BufferReader(block),  # the block itself, not a copy
                # One chunk, parsed in this (reader) thread: it already runs beside the encoder,
                # and Arrow's thread pool cost more than it gained on a busy 2-core worker.
                read_options=pacsv.ReadOptions(column_names=names, use_threads=False, block_size=len(block) + 1),
                parse_options=pacsv.ParseOptions(
                    delimiter=delimiter, newlines_in_values=has_quotes, invalid_row_handler=on_invalid_row
                ),
                convert_options=pacsv.ConvertOptions(
                    column_types={name: value_type for name in names},
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
        except pa.ArrowInvalid as error:
            if "UTF8" in str(error) or "utf8" in str(error).lower():
                return None
            malformed.append(error)
            return None

    # Strings directly (pyarrow checks UTF-8 as it goes); only when that fails, read the block as
    # bytes again to find the line and column of the bad value.
    table = parse(pa.string())
    if malformed:
        return _parse_csv_block_slowly(path, block, names, first_line, delimiter)
    if table is None:
        raw = parse(pa.binary())
        if raw is None or malformed:
            return _parse_csv_block_slowly(path, block, names, first_line, delimiter)
        lines = _record_lines(block, first_line, raw.num_rows, newlines, delimiter)
        for name, column in zip(names, raw.columns):
            try:
                column.cast(pa.string())
            except pa.ArrowInvalid:
                _raise_bad_utf8(path, column, name, lines)
        return _parse_csv_block_slowly(path, block, names, first_line, delimiter)
    # one chunk per column: the Arrow kernels downstream pay a cost per chunk
    table = table.combine_chunks()
    return InputBatch(lines=_record_lines(block, first_line, table.num_rows, newlines, delimiter), table=table)


class UnparsedRecords:
    """A CSV block cut into records, each with the hash of its raw bytes; parsed on demand.

    A sync compares those hashes with the last snapshot's: a record with the very bytes the last
    sync sent needs no parsing at all (``parse(places)``).
    """

    def __init__(self, path: Any, block, names: list[str], delimiter: str, first_line: int):
        if not ends_a_line(block):
            block = bytes(block) + b"\n"  # the file's last record: hashed like the others
        self.path, self.block, self.names, self.delimiter, self.first_line = path, block, names, delimiter, first_line
        self.starts, line_starts, self.hashes = _record_hashes(block, delimiter)
        self.ends = np.append(self.starts[1:], len(block))
        self.spans = np.diff(line_starts)  # lines per record
        self.lines = first_line + line_starts[:-1]
        self.line_count = int(line_starts[-1])  # of the block, its last line ended
        self.blank = _blank(block, self.starts, self.ends)

    def parse(self, places: np.ndarray | None = None) -> InputBatch:
        """The batch, without the records with a place in the snapshot (``places``: one per record,
        -1 where the snapshot does not know its hash): those go to ``skipped``, and only the others
        are parsed."""
        places = places if places is not None else np.full(len(self.starts), -1)
        chosen = np.flatnonzero(~self.blank & (places < 0))
        skipped = np.flatnonzero(~self.blank & (places >= 0))
        path, names, delimiter, record_lines = self.path, self.names, self.delimiter, self.lines
        if not len(skipped):
            batch = _parse_csv_block(path, self.block, names, self.first_line, delimiter)
            parsed_lines = record_lines[~self.blank]

            def original(line):
                return line
        else:
            part = b"".join([self.block[self.starts[i] : self.ends[i]] for i in chosen])
            part_lines = 1 + np.concatenate(([0], np.cumsum(self.spans[chosen])[:-1])).astype(np.int64)
            parsed_lines = record_lines[chosen]

            def original(line):  # line in the part -> line in the file
                index = np.searchsorted(part_lines, line, side="right") - 1
                return record_lines[chosen][index] + line - part_lines[index]

            try:
                batch = _parse_csv_block(path, part, names, 1, delimiter) if len(chosen) else InputBatch(np.zeros(0, np.int64), row_dicts=[])
            except InputError as error:
                line = None if error.line is None else int(original(error.line))
                raise InputError(path, error.message, line, error.column) from None
            spans = np.stack((self.starts[skipped], self.ends[skipped]), 1)
            batch.skipped = SkippedRecords(record_lines[skipped], places[skipped], self.block, spans, names, delimiter)
        if len(batch) == len(parsed_lines) and not batch.rejected:
            batch.lines = parsed_lines  # one row per record: exact even after blank lines
        else:  # the careful path ran: its lines count from the parsed block
            batch.lines = np.asarray(original(batch.lines), dtype=np.int64)
            batch.rejected = [(int(original(line)), identifier, reason) for line, identifier, reason in batch.rejected]
        batch.row_hashes = self.hashes[np.searchsorted(record_lines, batch.lines)]
        return batch


def _record_starts(block, delimiter: str) -> tuple[np.ndarray, np.ndarray]:
    """Where each record of ``block`` (which ends with a line end) starts, and the line it starts
    on counted from the block's first (one more entry: the block's line count)."""
    scanned = scan_records(block, delimiter=delimiter, complete=True)
    newlines, ends = scanned.lines, scanned.ends
    starts = np.concatenate(([0], ends[:-1] + 1)).astype(np.int64)
    if len(ends) == len(newlines):  # no newline inside a value: a record a line
        return starts, np.arange(len(starts) + 1)
    return starts, np.append(np.searchsorted(newlines, starts), len(newlines))


def _blank(block, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Records that are an empty line (the CSV parser skips them)."""
    length = ends - starts
    return (length == 1) | ((length == 2) & (np.frombuffer(block, np.uint8)[starts] == 13))


def _record_hashes(block, delimiter: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_record_starts``, and the hash of each record's bytes (its line end included)."""
    starts, line_starts = _record_starts(block, delimiter)
    offsets = np.append(starts, len(block)).astype(np.int32)
    records = pa.Array.from_buffers(pa.binary(), len(starts), [None, pa.py_buffer(offsets), pa.py_buffer(block)])
    return starts, line_starts, hash_strings(records)


def _record_lines(block, first_line: int, rows: int, newlines: int, delimiter: str) -> np.ndarray:
    """Line where each of the ``rows`` parsed records starts: one line each, unless the block has
    blank lines (skipped by the parser) or newlines inside quoted values."""
    if newlines == rows:
        return np.arange(first_line, first_line + rows, dtype=np.int64)
    if not ends_a_line(block):
        block = bytes(block) + b"\n"
    starts, line_starts = _record_starts(block, delimiter)
    lines = first_line + line_starts[:-1][~_blank(block, starts, np.append(starts[1:], len(block)))]
    return lines if len(lines) == rows else np.arange(first_line, first_line + rows, dtype=np.int64)


def _raise_bad_utf8(path: Any, column: pa.ChunkedArray, name: str, lines: np.ndarray):
    for index, value in enumerate(column.to_pylist()):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                path,
                f"not valid UTF-8 ({error.reason} at byte {error.start} of the value); "
                "pass encoding='latin-1' (or the file's encoding) if the file is not UTF-8",
                line=int(lines[index]),
                column=name,
            ) from None
    raise InputError(path, "not valid UTF-8", column=name)


def _parse_csv_block_slowly(path: Any, block: bytes, names: list[str], first_line: int, delimiter: str) -> InputBatch:
    """The careful path for a block with malformed rows: the csv module tracks line numbers."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as error:
        line = first_line + count_lines(block, 0, error.start)
        raise InputError(
            path, f"not valid UTF-8 ({error.reason}); pass encoding= if the file is not UTF-8", line=line
        ) from None
    # not strict: text after a closing quote ("a"b) is kept as pyarrow keeps it; a quote left open
    # at the end is found (and named) before any parsing
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows, lines, rejected = [], [], []
    previous_end = 0
    while True:
        start_line = first_line + previous_end
        try:
            record = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise InputError(path, f"malformed CSV: {error}", line=first_line + reader.line_num - 1) from None
        previous_end = reader.line_num
        if not record:
            continue  # a blank line (a line of "" is a value, as csv has it)
        if len(record) != len(names):
            identifier = record[0] if record else None
            rejected.append(
                (start_line, identifier, f"ragged row: expected {len(names)} fields, found {len(record)}")
            )
            continue
        rows.append(dict(zip(names, record)))
        lines.append(start_line)
    return InputBatch(lines=np.asarray(lines, dtype=np.int64), row_dicts=rows, rejected=rejected)


# --- NDJSON -------------------------------------------------------------------------------------


def _read_ndjson(path: Any, *, encoding: str, block_bytes: int) -> Iterator[InputBatch]:
    import msgspec

    decoder = msgspec.json.Decoder()
    with open_binary(path) as stream:
        next_line = 1
        carry = b""
        while True:
            data = stream.read(block_bytes)
            if not data and not carry:
                return
            block = carry + data
            if data:
                cut = block.rfind(b"\n") + 1
                if cut == 0:
                    if len(block) > MAX_RECORD_BYTES:  # else the rest of the file becomes one line, in memory
                        raise InputError(path, f"no line ends within {len(block) / 2**20:.1f} MB from here: is this "
                                         "NDJSON (one JSON object a line)?", line=next_line)
                    carry = block
                    continue
                block, carry = block[:cut], block[cut:]
            else:
                carry = b""
            rows, lines, rejected = [], [], []
            for offset, raw in enumerate(block.split(b"\n")):
                line = next_line + offset
                if not raw.strip():
                    continue
                try:
                    if encoding.lower() not in ("utf-8", "utf8"):
                        raw = raw.decode(encoding).encode("utf-8")
                    value = decoder.decode(raw)
                except (msgspec.DecodeError, UnicodeDecodeError) as error:
                    rejected.append((line, None, f"not valid JSON: {error}"))
                    continue
                if not isinstance(value, dict):
                    rejected.append((line, None, f"expected a JSON object, found {type(value).__name__}"))
                    continue
                rows.append(value)
                lines.append(line)
            next_line += block.count(b"\n")
            yield InputBatch(lines=np.asarray(lines, dtype=np.int64), row_dicts=rows, rejected=rejected,
                             bytes_read=_position(stream, len(carry)))
            if not data:
                return


# --- Parquet ------------------------------------------------------------------------------------


def _read_parquet(path: Any, *, batch_rows: int):
    import pyarrow.parquet as pq

    stream = open_binary(path)
    try:
        parquet = pq.ParquetFile(stream)
    except Exception as error:
        stream.close()
        raise InputError(path, f"not a readable Parquet file: {error}") from None
    names = parquet.schema_arrow.names

    def batches() -> Iterator[InputBatch]:
        row = 1
        try:
            for record_batch in parquet.iter_batches(batch_size=batch_rows):
                table = pa.Table.from_batches([record_batch])
                yield InputBatch(lines=np.arange(row, row + table.num_rows, dtype=np.int64), table=table)
                row += table.num_rows
        finally:
            stream.close()

    return names, batches()


# --- SQL ----------------------------------------------------------------------------------------


def read_cursor(cursor, batch_rows: int = DEFAULT_BATCH_ROWS) -> tuple[list[str], Iterator[InputBatch]]:
    """Batches from an executed DB-API cursor via ``fetchmany`` (never ``fetchall``)."""
    first = cursor.fetchmany(batch_rows)  # a server-side cursor describes its columns only now
    names = [description[0] for description in cursor.description or ()]

    def batches() -> Iterator[InputBatch]:
        row = 1
        records = first
        while records:
            yield InputBatch(
                lines=np.arange(row, row + len(records), dtype=np.int64),
                row_dicts=[dict(zip(names, record)) for record in records],
            )
            row += len(records)
            records = cursor.fetchmany(batch_rows)

    return names, batches()
