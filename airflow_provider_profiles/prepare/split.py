"""Split a CSV or NDJSON file into chunks at record boundaries.

Chunks are cut only after a newline that ends a record: for CSV, a newline outside quotes (an even
number of quote characters since the last boundary), so a quoted field with newlines is never cut,
nor a multi-byte UTF-8 character. Every CSV chunk starts with the header. Chunk names are
deterministic (``<stem>.part-00000.csv``...), so a retry overwrites its own chunks; leftovers of an
earlier, longer attempt are removed. Memory stays at about one read block.
"""

from __future__ import annotations

import csv
import io
import os
import re
from typing import Any

import numpy as np

from airflow_provider_profiles.prepare.records import (
    describe_open_quote,
    first_record_end,
    last_record_end,
    record_ends,
    scan,
)
from airflow_provider_profiles.prepare.errors import InputError, guess_format, open_quote_message
from airflow_provider_profiles.prepare.lines import lines_before
from airflow_provider_profiles.storage import (
    as_storage_path,
    is_local,
    open_binary,
    path_text,
)

BLOCK_BYTES = 16 << 20
# Without a byte limit, a record longer than this is taken for a quote left open, which would
# otherwise make the rest of the file one record, held in memory.
MAX_RECORD_BYTES = 64 << 20


class RecordTooLarge(ValueError):
    pass


def chunk_name(stem: str, index: int, suffix: str) -> str:
    return f"{stem}.part-{index:05d}{suffix}"


def _read_header(stream, quoted: bool, delimiter: str) -> tuple[bytes, bytes]:
    """The first record (with its line end) and whatever was read past it."""
    buffer = b""
    while True:
        data = stream.read(1 << 16)
        buffer += data
        end = first_record_end(buffer, quoted, delimiter)
        if end is not None:
            return buffer[:end], buffer[end:]
        if not data:
            _check_closed(buffer, 0, quoted, delimiter)
            return buffer, b""


def split_file(
    source: Any,
    output_dir: Any = None,
    *,
    max_bytes: int | None = None,
    max_rows: int | None = None,
    file_format: str | None = None,
    header: bool | None = None,
    block_bytes: int = BLOCK_BYTES,
    delimiter: str = ",",
) -> list[str]:
    """Cut ``source`` into chunks of at most ``max_bytes`` (header included) and/or ``max_rows``.

    Returns the chunk paths in order, as strings (ready for ``.expand()``). With neither limit the
    file is returned as is; a file without a record gives one chunk without a record (an empty list
    would skip a task mapped over it, and every task after it). CSV (``file_format="csv"``, or guessed
    from the name) repeats its header; NDJSON has none. A quoted CSV value never closed is an
    ``InputError`` at the line of that quote.
    """
    source = as_storage_path(source)
    quoted = (file_format or guess_format(source)).lower() == "csv"
    header = quoted if header is None else header
    if max_bytes is None and max_rows is None:
        return [path_text(source)]
    if max_bytes is not None and max_bytes <= 0 or max_rows is not None and max_rows <= 0:
        raise ValueError("max_bytes and max_rows must be positive")
    output_dir = as_storage_path(output_dir) if output_dir is not None else source.parent / f"{source.stem}.chunks"
    stem, suffix = source.stem, source.suffix

    with open_binary(source) as stream:
        head, ranges = _plan(source, stream, max_bytes, max_rows, quoted, header, block_bytes, delimiter)
    if not ranges:  # no record: still one chunk (the header alone), so a mapped upload runs once and reports 0
        ranges = [(len(head), len(head))]
    chunks = []
    for index, (start, end) in enumerate(ranges):
        target = output_dir / chunk_name(stem, index, suffix)
        _copy_range(source, target, head, start, end)
        chunks.append(path_text(target))
    _remove_stale(output_dir, stem, suffix, len(chunks))
    return chunks


def _plan(source, stream, max_bytes, max_rows, quoted: bool, header: bool, block_bytes: int,
          delimiter: str) -> tuple[bytes, list[tuple[int, int]]]:
    """The header to repeat and the chunks' byte ranges; ``InputError`` for a quote left open,
    ``RecordTooLarge`` for a record no chunk can hold."""
    try:
        head, pending = _read_header(stream, quoted, delimiter) if header else (b"", b"")
    except _OpenQuote as error:
        raise _open_quote_error(source, stream, error, b"", delimiter) from None
    limit = (max_bytes - len(head)) if max_bytes is not None else None
    if limit is not None and limit <= 0:
        raise RecordTooLarge(f"max_bytes={max_bytes} does not even hold the {len(head)}-byte header")
    try:
        if not quoted and max_rows is None and not pending:
            return head, _plan_by_seeking(stream, len(head), limit)
        return head, _plan_by_scanning(stream, len(head), pending, limit, max_rows, quoted, block_bytes, delimiter)
    except _OpenQuote as error:
        raise _open_quote_error(source, stream, error, head, delimiter) from None
    except _TooLarge as error:
        stream.seek(0)
        line = 1 + lines_before(stream, [error.offset])[0]
        if limit is None:
            raise RecordTooLarge(f"{source}: the record at line {line} runs over {MAX_RECORD_BYTES / 2**20:.1f} MB: "
                                 "is a quote left open?") from None
        raise RecordTooLarge(f"{source}: the record at line {line} is larger than max_bytes={max_bytes} minus the "
                             "header; no cut can keep it whole") from None


class _TooLarge(Exception):
    def __init__(self, offset: int):
        self.offset = offset


class _OpenQuote(Exception):
    """The input ends inside a quoted value; ``block`` starts at the record's start, at
    ``block_start`` in the file."""

    def __init__(self, block, block_start: int, offset: int):
        self.block, self.block_start, self.offset = block, block_start, offset


def _check_closed(block, block_start: int, quoted: bool, delimiter: str) -> None:
    """The last part of the input, from a record start: no quote may be left open in it."""
    if quoted and block:
        opened = scan(block, delimiter=delimiter, complete=True).open_quote
        if opened >= 0:
            raise _OpenQuote(block, block_start, opened)


def _open_quote_error(source, stream, error: _OpenQuote, head: bytes, delimiter: str) -> InputError:
    lines, _, field, character = describe_open_quote(error.block, error.offset, delimiter)
    stream.seek(0)
    line = 1 + lines_before(stream, [error.block_start])[0] + lines
    names = next(csv.reader(io.StringIO(head.decode("utf-8", errors="replace"), newline=""), delimiter=delimiter), [])
    column = names[field] if 0 <= field < len(names) else None
    return InputError(source, open_quote_message(character), line=line, column=column)


def _plan_by_seeking(stream, start: int, limit: int) -> list[tuple[int, int]]:
    """NDJSON by size alone: every newline ends a record, so read only near each cut point."""
    size = stream.seek(0, 2)
    ranges, position = [], start
    while position < size:
        target = position + limit
        if target >= size:
            ranges.append((position, size))
            break
        window = 1 << 16
        while True:
            window_start = max(position, target - window)
            stream.seek(window_start)
            newline = stream.read(target - window_start).rfind(b"\n")
            if newline >= 0:
                cut = window_start + newline + 1
                break
            if window_start == position:
                raise _TooLarge(position)
            window *= 4
        ranges.append((position, cut))
        position = cut
    return ranges


class _Planner:
    """Collects chunk ranges (absolute byte offsets) as the scan decides the cuts."""

    def __init__(self):
        self.ranges: list[tuple[int, int]] = []
        self.current: tuple[int, int] | None = None
        self.bytes = 0
        self.rows = 0

    def take(self, start: int, end: int, rows: int | None) -> None:
        self.current = (self.current[0] if self.current else start, end)
        self.bytes += end - start
        self.rows += rows or 0

    def close(self) -> None:
        if self.current is not None:
            self.ranges.append(self.current)
        self.current = None
        self.bytes = 0
        self.rows = 0


def _plan_by_scanning(stream, start: int, pending: bytes, limit, max_rows, quoted, block_bytes, delimiter=",") -> list[tuple[int, int]]:
    """The general case: read the file once, cutting at record ends (quote-aware for CSV)."""
    plan = _Planner()
    block_start = start  # absolute offset of block[0]
    while True:
        data = stream.read(block_bytes)
        block = pending + data if pending else data
        if not block:
            break
        at_end = not data
        if at_end:
            _check_closed(block, block_start, quoted, delimiter)
        # block[:usable] holds complete records; the rest waits for more data
        usable = len(block) if at_end else last_record_end(block, 0, len(block), quoted, delimiter)
        if usable <= 0 and not at_end:
            # a record that cannot fit a chunk (or, without a byte limit, an unclosed quote):
            # said now, rather than once the rest of the file is held as one record
            if len(block) > (limit if limit is not None else MAX_RECORD_BYTES):
                raise _TooLarge(block_start)
            pending = block
            continue
        _cut_block(plan, block, block_start, usable, limit, max_rows, quoted, delimiter)
        pending = block[usable:]
        block_start += usable
        if at_end:
            break
    plan.close()
    return plan.ranges


def _cut_block(plan: _Planner, block: bytes, block_start: int, usable: int, limit, max_rows, quoted, delimiter) -> None:
    """Adds block[:usable] (whole records) to the plan, closing a chunk wherever a limit is reached."""
    position = 0
    while position < usable:
        cut = _next_cut(block, position, usable, plan, limit, max_rows, quoted, delimiter)
        if cut <= position:
            if plan.bytes == 0:
                raise _TooLarge(block_start + position)
            plan.close()
            continue
        rows = _count_records(block, position, cut, quoted, delimiter) if max_rows else None
        plan.take(block_start + position, block_start + cut, rows)
        position = cut
        if (limit is not None and plan.bytes >= limit) or (max_rows is not None and plan.rows >= max_rows):
            plan.close()


def _copy_range(source, target, head: bytes, start: int, end: int) -> None:
    """The header, then bytes [start, end) of the source: in the kernel when both are local."""
    with open_binary(target, "wb") as out, open_binary(source) as stream:
        if head:
            out.write(head)
        if is_local(source) and is_local(target):
            out.flush()
            if _kernel_copy(stream.fileno(), out.fileno(), start, end - start):
                return
        stream.seek(start)
        remaining = end - start
        while remaining > 0:
            data = stream.read(min(BLOCK_BYTES, remaining))
            if not data:
                raise OSError(f"{source} ended early while copying bytes {start}..{end}")
            out.write(data)
            remaining -= len(data)


def _kernel_copy(source_fd: int, target_fd: int, offset: int, count: int) -> bool:
    """copy_file_range, else sendfile; False if neither works here (nothing written then)."""
    copied = 0
    for name in ("copy_file_range", "sendfile"):
        copy = getattr(os, name, None)
        if copy is None:
            continue
        try:
            while copied < count:
                if name == "sendfile":
                    done = os.sendfile(target_fd, source_fd, offset + copied, count - copied)
                else:
                    done = os.copy_file_range(source_fd, target_fd, count - copied, offset + copied)
                if done == 0:
                    raise OSError("the source ended early")
                copied += done
            return True
        except OSError:
            if copied:
                raise
    return False


def _count_records(block: bytes, start: int, end: int, quoted: bool, delimiter: str) -> int:
    count = len(record_ends(block, start, end, quoted, delimiter))
    return count if block[end - 1 : end] in (b"\n", b"\r") else count + 1


def _next_cut(block: bytes, position: int, usable: int, state: _Planner, limit, max_rows, quoted, delimiter) -> int:
    """Where the current chunk should stop in block[position:usable]: as far as both limits allow."""
    end = usable
    if limit is not None:
        end = min(end, position + limit - state.bytes)
        if end < usable:
            end = last_record_end(block, position, end, quoted, delimiter)
    if max_rows is not None and end > position:
        room = max_rows - state.rows
        ends = record_ends(block, position, end, quoted, delimiter)
        if end == usable and (not len(ends) or ends[-1] != end):
            ends = np.append(ends, end)  # the final record of the file may lack its newline
        if len(ends) > room:
            end = int(ends[room - 1])
    return end


def _remove_stale(folder, stem: str, suffix: str, count: int) -> None:
    if not folder.exists():
        return
    pattern = re.compile(re.escape(stem) + r"\.part-(\d{5,})" + re.escape(suffix) + "$")
    for entry in folder.iterdir():
        match = pattern.match(entry.name)
        if match and int(match.group(1)) >= count:
            entry.unlink()
