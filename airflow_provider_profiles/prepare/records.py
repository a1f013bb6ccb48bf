"""Where CSV records end in a block of bytes, as Python's csv module reads them (used by ``split``).

A line ends at LF, CR or CRLF. A quote opens a value only as the first character of a field; in
such a value ``""`` is a quote, a lone quote closes it, and a line end does not end the record. A
quote anywhere else (``5" screen``) is a character. A block always starts at a record start.

The usual case is vectorised: when every quote that would open a value (each even one) starts a
field or follows the quote before it, a line end is inside a value exactly when an odd number of
quotes precede it. Otherwise the quoted values are found one by one with a regular expression.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from dataclasses import dataclass

import numpy as np

QUOTE, LF, CR = 34, 10, 13


@dataclass
class Records:
    """block[start:end]'s line ends and record ends (offsets from ``start`` of the last byte of
    each line end), and the offset of the quote opening a value still open at ``end`` (or -1)."""

    lines: np.ndarray
    ends: np.ndarray
    open_quote: int = -1


def scan(block, start: int = 0, end: int | None = None, quoted: bool = True, delimiter: str = ",",
         complete: bool = False) -> Records:
    """The ``Records`` of block[start:end]. ``complete``: nothing follows ``end`` that could make a
    CR there the start of a CRLF (the input ends there, or a record does)."""
    end = len(block) if end is None else end
    data = np.frombuffer(block, dtype=np.uint8, count=end - start, offset=start)
    lines = _line_ends(block, start, end, data, complete)
    if not quoted or block.find(b'"', start, end) < 0:
        return Records(lines, lines)
    quotes = np.flatnonzero(data == QUOTE)
    if not _quotes_pair_up(data, quotes, delimiter):
        return _walk(block, start, end, lines, delimiter)
    inside = (np.searchsorted(quotes, lines) & 1).astype(bool)
    open_quote = -1
    if len(quotes) & 1:  # the last value is open: where it opened (a "" inside it is no opener)
        openers, closers = quotes[0::2], quotes[1::2]
        escaped = np.zeros(len(openers), dtype=bool)
        escaped[1:] = openers[1:] - closers[: len(openers) - 1] == 1
        open_quote = int(openers[~escaped][-1])
    return Records(lines, lines[~inside], open_quote)


def _line_ends(block, start: int, end: int, data: np.ndarray, complete: bool) -> np.ndarray:
    newlines = np.flatnonzero(data == LF)
    if block.find(b"\r", start, end) < 0:
        return newlines
    returns = np.flatnonzero(data == CR)
    lone = returns[(returns + 1 < len(data)) & (data[np.minimum(returns + 1, len(data) - 1)] != LF)]
    if complete and data[-1] == CR:
        lone = np.append(lone, len(data) - 1)
    return np.union1d(newlines, lone)


@functools.lru_cache(maxsize=8)
def _field_edges(delimiter: str) -> np.ndarray:
    """The bytes a quote that opens a value may follow."""
    edges = np.zeros(256, dtype=bool)
    edges[[ord(delimiter), LF, CR, QUOTE]] = True
    return edges


def _quotes_pair_up(data: np.ndarray, quotes: np.ndarray, delimiter: str) -> bool:
    """Whether each even quote starts a field (or the range) or follows a quote (``""``). Text
    after a closing quote (``"a"b``) needs no check: csv appends it to the value either way."""
    openers = quotes[0::2]
    if len(openers) and openers[0] == 0:
        openers = openers[1:]
    return bool(_field_edges(delimiter)[data[openers - 1]].all())


@functools.lru_cache(maxsize=8)
def _quoted_value(delimiter: str) -> re.Pattern:
    """A quoted value at the start of a field, to its closing quote (group 1) or the end."""
    edge = re.escape(delimiter.encode())
    return re.compile(rb'(?:\A|(?<=[' + edge + rb'\r\n]))"(?:[^"]++|"")*+("?)')


def _walk(block, start: int, end: int, lines: np.ndarray, delimiter: str) -> Records:
    """``scan`` where some quotes are characters: the quoted values, found in order."""
    spans = [(match.start(), match.end(), bool(match.group(1)))
             for match in _quoted_value(delimiter).finditer(memoryview(block)[start:end])]
    if not spans:
        return Records(lines, lines)
    opened = np.array([span[0] for span in spans])
    closed = np.array([span[1] for span in spans])
    at = np.searchsorted(opened, lines, side="right") - 1
    inside = (at >= 0) & (lines < closed[np.maximum(at, 0)])
    return Records(lines, lines[~inside], -1 if spans[-1][2] else spans[-1][0])


def first_record_end(block, quoted: bool = True, delimiter: str = ",") -> int | None:
    """The position just after the first record end of ``block``; None if none is certain yet."""
    ends = scan(block, 0, len(block), quoted, delimiter).ends
    return int(ends[0]) + 1 if len(ends) else None


def last_record_end(block, start: int = 0, end: int | None = None, quoted: bool = True, delimiter: str = ",") -> int:
    """The position just after the last record end in block[start:end], or ``start``."""
    end = len(block) if end is None else end
    newline = block.rfind(b"\n", start, end)
    if newline >= 0 and block.find(b"\r", newline, end) < 0:  # the last line end is that LF
        if not quoted or block.find(b'"', start, newline) < 0:
            return newline + 1  # no quote before it: the usual case, by memchr
        data = np.frombuffer(block, dtype=np.uint8, count=newline - start, offset=start)
        quotes = np.flatnonzero(data == QUOTE)
        if len(quotes) % 2 == 0 and _quotes_pair_up(data, quotes, delimiter):
            return newline + 1  # every value before it closed
    ends = scan(block, start, end, quoted, delimiter).ends
    return start + int(ends[-1]) + 1 if len(ends) else start


def record_ends(block, start: int = 0, end: int | None = None, quoted: bool = True, delimiter: str = ",") -> np.ndarray:
    """The position after each record end in block[start:end], where the range ends at a record
    end or at the end of the input."""
    return scan(block, start, end, quoted, delimiter, complete=True).ends + start + 1


def count_lines(block, start: int = 0, end: int | None = None, after_cr: bool = False) -> int:
    """Line ends (LF, CR, CRLF) in block[start:end] (bytes or text); a CR at ``end`` counts, and an
    LF at ``start`` right after a CR (``after_cr``) does not: that CR ended its line."""
    end = len(block) if end is None else end
    lf, cr = ("\n", "\r") if isinstance(block, str) else (b"\n", b"\r")
    lines = block.count(lf, start, end)
    if block.find(cr, start, end) >= 0:
        lines += block.count(cr, start, end) - block.count(cr + lf, start, end)
    return lines - 1 if after_cr and start < end and block[start:start + 1] == lf else lines


def describe_open_quote(block, offset: int, delimiter: str = ",") -> tuple[int, int, int, int]:
    """For the quote at block[offset] left open: the line ends before it, the start of its
    record, its field there (0-based) and its character on its line (1-based)."""
    before = scan(block, 0, offset, True, delimiter, complete=True)
    record_start = int(before.ends[-1]) + 1 if len(before.ends) else 0
    prefix = bytes(block[record_start:offset]).decode("utf-8", errors="replace")
    field = len(next(csv.reader(io.StringIO(prefix, newline=""), delimiter=delimiter), [""])) - 1
    line_start = int(before.lines[-1]) + 1 if len(before.lines) else 0
    character = len(bytes(block[line_start:offset]).decode("utf-8", errors="replace")) + 1
    return len(before.lines), record_start, field, character
