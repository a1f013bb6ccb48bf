"""Inputs opened as DuckDB relations: CSV, NDJSON and Parquet files (local or object storage) and
DB-API cursors, with the trust rules of the provider's reader kept.

Every relation carries ``__record``, the 1-based number of each readable record in input order
(``row_number() OVER ()`` is a streaming window that keeps the scan's order; Parquet has its own
row numbers, a cursor's are counted as its batches come). Records that cannot be parsed go to
``Source.unreadable`` with their physical line; input that would be read wrongly as a whole (a
quote never closed, bytes not in the declared encoding) stops the run with an ``InputError``
naming file, line and column. A CSV is read ahead for those, unless the read that uses the
relation can find them itself (``read_once``: then ``Source.settle`` turns its findings into
``Source.unreadable`` after that read).

CSV rules (those of Python's csv module, which the provider has always followed): every value is
text, an empty value is "" (never NULL); a quote opens a value only at the start of a field, so
``5" screen`` is text; a line ends at LF, CR or CRLF, mixed in one file too; blank lines are
skipped; a record with too few or too many fields is unreadable. One deviation: text after a
closing quote (``"a"b``) stops the run (csv glued it to the value: ``ab``).
"""

from __future__ import annotations

import codecs
import csv
import decimal
import io
import json
import os
import re
import tempfile
import uuid
import weakref
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.prepare.errors import InputError, guess_format, open_quote_message
from airflow_provider_profiles.prepare.lines import lines_before
from airflow_provider_profiles.prepare.records import count_lines
from airflow_provider_profiles.storage import as_storage_path, is_local, local_path, open_binary

CHUNK_BYTES = 4 << 20
# DuckDB cuts the text of a rejected record here; past it a quoted value is taken as left open.
REJECT_TEXT_CHARS = 10_000
MAX_HEADER_CHARS = 1 << 20


@dataclass
class Source:
    relation: str
    names: list[str]
    types: dict[str, str]
    unreadable: str | None
    description: str
    # a read that finds its unreadable records itself (``ReadRejects``): ``unreadable`` is known
    # once ``settle.after_read()`` ran, after the relation was read
    settle: ReadRejects | None = None
    # several files read as one (``open_sources``): their names; ``__record`` is
    # ``(file index << FILE_SHIFT) + record within the file`` (see ``file_record``)
    files: list[str] | None = None
    # columns of ``relation`` the mapping passes on as they are, beside ``__record`` (a sync's row hash)
    carried: tuple[str, ...] = ()


# Several files read as one: each file's records are numbered from 1 within it, the file's index
# in the upper bits, so input order is file after file and a record says its file and number.
FILE_SHIFT = 40


def file_record(record: int, files: list[str] | None) -> tuple[str | None, int]:
    """(file, record within it) of a ``__record`` of ``open_sources``; (None, record) for one file."""
    if not files:
        return None, record
    return files[record >> FILE_SHIFT], record & ((1 << FILE_SHIFT) - 1)


def _unique(prefix: str) -> str:
    return f"__{prefix}_{uuid.uuid4().hex[:12]}"


def _types(connection, relation: str) -> dict[str, str]:
    rows = connection.execute(f"DESCRIBE SELECT * FROM {relation}").fetchall()
    return {row[0]: row[1] for row in rows if row[0] != "__record"}


def open_source(connection, source, input_format: str | None = None, *, delimiter: str = ",",
                encoding: str = "utf-8", read_once: bool = False) -> Source:
    """Open ``source`` (a local path, an ``ObjectStoragePath`` or an fsspec URL) on ``connection``.

    ``read_once``: a CSV that needs no rewriting is not read ahead for its unreadable records:
    the relation's read finds them, and ``Source.settle`` says so after it (the caller runs
    ``settle.after_read()`` once the relation has been read, and asks ``settle.failure(error)``
    about an error the read raised)."""
    path = as_storage_path(source)
    input_format = (input_format or guess_format(path)).lower()
    if input_format == "csv":
        return _open_csv(connection, path, delimiter, encoding, read_once)
    if input_format in ("ndjson", "jsonl", "json"):
        return _open_ndjson(connection, path, encoding)
    if input_format == "parquet":
        return _open_parquet(connection, path)
    raise ValueError(f"unknown input format {input_format!r}; use one of csv, ndjson, parquet")


def open_sources(connection, sources, input_format: str | None = None, *, delimiter: str = ",",
                 encoding: str = "utf-8") -> Source:
    """Several files of one layout read as one input, file after file (``Source.files``): every
    file must have the same columns (an ``InputError`` names the first that differs). Records are
    numbered within their file; unreadable ones say their file."""
    paths = [as_storage_path(source) for source in sources]
    if not paths:
        raise ValueError("open_sources needs at least one file")
    opened = [open_source(connection, path, input_format, delimiter=delimiter, encoding=encoding) for path in paths]
    names = opened[0].names
    for path, one in zip(paths[1:], opened[1:]):
        if sorted(one.names) != sorted(names):
            raise InputError(path, f"its columns {one.names} differ from those of {paths[0]}, {names}: files read "
                             "together need the same columns", line=1)
    columns = ", ".join(sql.ident(name) for name in names)
    relation = " UNION ALL BY NAME ".join(
        f"(SELECT {columns}, __record + {index << FILE_SHIFT} AS __record FROM {one.relation})"
        for index, one in enumerate(opened))
    relation = f"(SELECT * FROM ({relation}))" if len(opened) > 1 else relation
    unreadable = _unique("unreadable")
    connection.execute(f"CREATE TEMP TABLE {unreadable} (line BIGINT, reason VARCHAR)")
    for path, one in zip(paths, opened):
        if one.unreadable:
            named = sql.literal(f"{path}, ")
            connection.execute(f"""INSERT INTO {unreadable} SELECT NULL, {named} || CASE WHEN line IS NULL THEN reason
                                   ELSE 'line ' || line || ': ' || reason END FROM {one.unreadable}""")
    descriptions = list(dict.fromkeys(one.description for one in opened))
    # the layout, not the file names: a sync over files that come and go keeps its snapshot
    description = descriptions[0] if len(descriptions) == 1 else "files|" + json.dumps(sorted(descriptions))
    types = _types(connection, relation) if names else {}
    return Source(relation, names, types, unreadable, description, files=[str(path) for path in paths])


def _location(connection, path) -> str:
    """What DuckDB reads: a local file by its name; anything else through its fsspec filesystem,
    registered with the connection once per protocol."""
    if is_local(path):
        return local_path(path)
    # DuckDB keeps the first filesystem registered for a protocol: one store (one set of
    # credentials) per protocol and connection.
    try:
        connection.register_filesystem(path.fs)
    except duckdb.Error as error:
        if "already been registered" not in str(error):
            raise
    # the filesystem's own form of the URL: str() of an ObjectStoragePath keeps its connection
    # (s3://conn_id@bucket/key), which the filesystem would read as part of the bucket's name
    return f"{path.protocol}://{path.path}"


def _utf8(encoding: str) -> bool:
    return codecs.lookup(encoding).name in ("utf-8", "utf-8-sig")


# --- CSV ----------------------------------------------------------------------------------------


def _open_csv(connection, path, delimiter: str, encoding: str, read_once: bool = False) -> Source:
    if len(delimiter) != 1 or delimiter in '"\r\n':
        raise ValueError(f"the delimiter must be one character other than a quote or a line end, not {delimiter!r}")
    names, blank_lines, mixed = _csv_header(path, delimiter, encoding)
    description = f"csv|{delimiter}|{codecs.lookup(encoding).name}|{json.dumps(names)}"
    if not names:  # an empty file: no rows (the engine says what that means)
        return Source("(SELECT NULL::BIGINT AS __record WHERE false)", [], {}, None, description)
    types = {name: "VARCHAR" for name in names}
    location = _location(connection, path)
    if read_once and _utf8(encoding) and not mixed and _lf_only(location):
        # nothing to rewrite and no line end of another kind to retry with: the main read stores
        # what it cannot read (every column read, so every value's UTF-8 is checked)
        settle = ReadRejects(connection, path, location, names, delimiter)
        every_column = " + ".join(f"strlen({sql.ident(name)})" for name in names)
        relation = (f"(SELECT * FROM {_csv_relation(location, names, delimiter, blank_lines, settle.tables)} "
                    f"WHERE {every_column} >= 0)")
        return Source(relation, names, types, settle.table, description, settle)
    location, rejects = _scan_until_readable(connection, path, location, names, delimiter, encoding, blank_lines, mixed)
    unreadable = _csv_unreadable(connection, path, location, names, delimiter, rejects)
    return Source(_csv_relation(location, names, delimiter, blank_lines), names, types, unreadable, description)


def _csv_relation(location: str, names: list[str], delimiter: str, blank_lines: int,
                  rejects: tuple[str, str] | None = None) -> str:
    columns = ", ".join(f"coalesce({sql.ident(name)}, '') AS {sql.ident(name)}" for name in names)
    return f"(SELECT {columns}, row_number() OVER () AS __record FROM {_read_csv(location, names, delimiter, blank_lines, rejects)})"


def _lf_only(location: str) -> bool:
    """A local file without a CR: its line ends are of one kind (LF)."""
    if not (os.path.isabs(location) and os.path.exists(location)):
        return False
    with open(location, "rb") as stream:
        while data := stream.read(CHUNK_BYTES):
            if b"\r" in data:
                return False
    return True


def _scan_until_readable(connection, path, location: str, names: list[str], delimiter: str, encoding: str,
                         blank_lines: int, mixed: bool) -> tuple[str, list[tuple]]:
    """What DuckDB reads (a rewritten copy where it cannot read the file as strict UTF-8 CSV:
    another encoding, or line ends of more than one kind) and its rejects, found by one read."""
    if mixed:  # seen at the start (DuckDB would take the rest of the file for the header)
        location = _transcoded(connection, path, encoding, delimiter, line_ends=True)
    elif not _utf8(encoding):
        location = _transcoded(connection, path, encoding, delimiter)
    for line_ends_made_one in (mixed, True):
        try:
            rejects = _scan_csv(connection, location, names, delimiter, blank_lines)
        except duckdb.InvalidInputException as error:
            if "invalid state" not in str(error) or line_ends_made_one:
                raise InputError(path, f"not readable as CSV: {_first_line(error)}") from None
        else:
            # a quote DuckDB finds unclosed may be one closed before a line end of another kind
            if line_ends_made_one or not any(reject[3] == "UNQUOTED VALUE" for reject in rejects):
                break
        location = _transcoded(connection, path, encoding, delimiter, line_ends=True)
    return location, rejects


class ReadRejects:
    """The rejects a CSV read stores (``store_rejects``), turned into ``Source.unreadable`` once the
    relation has been read: the read that maps the rows finds the unreadable ones too."""

    def __init__(self, connection, path, location: str, names: list[str], delimiter: str):
        self.connection, self.path, self.location, self.names, self.delimiter = connection, path, location, names, delimiter
        self.tables = (_unique("csv_rejects"), _unique("csv_scans"))
        self.table = _unique("unreadable")

    def after_read(self) -> None:
        """Fills the unreadable table (InputError for a problem of the whole file); the rejects of
        the last read only (a relation read twice stores them twice)."""
        rejects, scans = self.tables
        try:
            found = self.connection.execute(
                f"SELECT line_byte_position, column_idx, column_name, error_type, csv_line, error_message FROM {rejects} "
                f"WHERE scan_id = (SELECT max(scan_id) FROM {rejects}) ORDER BY line_byte_position, column_idx").fetchall()
            self.connection.execute(f"DROP TABLE IF EXISTS {rejects}; DROP TABLE IF EXISTS {scans}")
        except duckdb.CatalogException:  # no reject at all: DuckDB made no table
            found = []
        _csv_unreadable(self.connection, self.path, self.location, self.names, self.delimiter, found, self.table)

    def failure(self, error: BaseException) -> InputError | None:
        """The InputError for a read that stopped on the file as a whole, or None."""
        if isinstance(error, duckdb.InvalidInputException) and "invalid state" in str(error):
            return InputError(self.path, f"not readable as CSV: {_first_line(error)}")
        return None


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]


def _read_csv(location: str, names: list[str], delimiter: str, blank_lines: int,
              rejects: tuple[str, str] | None = None) -> str:
    columns = "{" + ", ".join(f"{sql.literal(name)}: 'VARCHAR'" for name in names) + "}"
    errors = (f"store_rejects=true, rejects_table={sql.literal(rejects[0])}, rejects_scan={sql.literal(rejects[1])}"
              if rejects else "ignore_errors=true")
    return (f"read_csv({sql.literal(location)}, auto_detect=false, header=true, skip={blank_lines}, delim={sql.literal(delimiter)}, "
            f"quote='\"', escape='\"', columns={columns}, strict_mode=true, encoding='utf-8', {errors})")


def _scan_csv(connection, location: str, names: list[str], delimiter: str, blank_lines: int) -> list[tuple]:
    """Reads the file once to find its unreadable records: (record start, column index, column
    name, error type, record text, DuckDB's message), in file order."""
    table, scans = _unique("csv_rejects"), _unique("csv_scans")
    try:
        # every column read (count(*) alone lets DuckDB skip the values and their UTF-8 check)
        counts = ", ".join(f"count({sql.ident(name)})" for name in names)
        connection.execute(f"SELECT {counts} FROM {_read_csv(location, names, delimiter, blank_lines, (table, scans))}").fetchall()
        return connection.execute(
            f"SELECT line_byte_position, column_idx, column_name, error_type, csv_line, error_message "
            f"FROM {table} ORDER BY line_byte_position, column_idx").fetchall()
    finally:
        connection.execute(f"DROP TABLE IF EXISTS {table}; DROP TABLE IF EXISTS {scans}")


def _csv_header(path, delimiter: str, encoding: str) -> tuple[list[str], int, bool]:
    """The names in the first record, as csv reads it ([] for an empty file), the blank lines
    before it (csv skips them; DuckDB would take the first for the header), and whether the text
    read has line ends of more than one kind."""
    # bytes that do not decode show as U+FFFD: only those in the header matter here
    decoder = codecs.getincrementaldecoder("utf-8-sig" if _utf8(encoding) else encoding)(errors="replace")
    text = ""
    with open_binary(path) as stream:
        while True:
            data = stream.read(1 << 16)
            text += decoder.decode(data, final=not data)
            end = _first_record_end(text, delimiter)
            if end is not None or not data or len(text) > MAX_HEADER_CHARS:  # a quote left open: said below
                break
    if not text.strip("\r\n"):
        return [], 0, False
    unquoted = "".join(_quoted_values(delimiter, True).split(text.removesuffix("\r"))[0::2])
    crlf = unquoted.count("\r\n")
    mixed = sum(1 for count in (crlf, unquoted.count("\r") - crlf, unquoted.count("\n") - crlf) if count) > 1
    stripped = text.lstrip("\r\n")
    blank = text[: len(text) - len(stripped)].encode()
    blank_lines = count_lines(blank)
    text = stripped
    end = _first_record_end(text, delimiter)
    if end is None:
        if _open_quote(text, delimiter) is not None:
            raise InputError(path, open_quote_message(_open_quote(text, delimiter) + 1), line=blank_lines + 1)
        if len(text) > MAX_HEADER_CHARS:
            raise InputError(path, f"no header line end in the first {MAX_HEADER_CHARS:,} characters: is this CSV?",
                             line=blank_lines + 1)
        end = len(text)
    if "\ufffd" in text[:end]:
        raise InputError(path, f"the header is not valid {encoding}; pass encoding= with the file's encoding", line=blank_lines + 1)
    names = [name.strip() for name in next(csv.reader(io.StringIO(text[:end], newline=""), delimiter=delimiter))]
    for index, name in enumerate(names):
        if not name:
            raise InputError(path, f"header field {index + 1} is empty: every column needs a name", line=blank_lines + 1)
        if name in names[:index]:
            raise InputError(path, f"column {name!r} appears twice in the header", line=blank_lines + 1, column=name)
    return names, blank_lines, mixed


def _fields(text: str, delimiter: str):
    """Walk a record as csv does: yields (field start, quote closes at or -1) per field, and stops
    at the record's line end (its offset is the last item's start when the field is None)."""
    position, length = 0, len(text)
    while True:
        start = position
        if position < length and text[position] == '"':
            position += 1
            while True:
                position = text.find('"', position)
                if position < 0:
                    yield start, -1
                    return
                if text.startswith('""', position):
                    position += 2
                    continue
                break
            closed = position
            position += 1
        else:
            closed = None
        while position < length and text[position] not in (delimiter, "\r", "\n"):
            position += 1
        yield start, closed
        if position >= length or text[position] != delimiter:
            yield position, None  # the record's end
            return
        position += 1


def _first_record_end(text: str, delimiter: str) -> int | None:
    """Offset just past the first record's line end, None if it is not in ``text`` yet."""
    *_, (end, closed) = _fields(text, delimiter)
    if closed == -1 or end >= len(text) or (text[end] == "\r" and end + 1 == len(text)):
        return None
    return end + (2 if text.startswith("\r\n", end) else 1)


def _open_quote(text: str, delimiter: str) -> int | None:
    for start, closed in _fields(text, delimiter):
        if closed == -1:
            return start
    return None


_COUNT = re.compile(r"Found: (\d+)")


_RAGGED = ("MISSING COLUMNS", "TOO MANY COLUMNS")


def _csv_unreadable(connection, path, location: str, names: list[str], delimiter: str, rejects: list[tuple],
                    table: str | None = None) -> str:
    """The unreadable records as a temporary table (line, reason); raises for the problems that
    make the file as a whole unreadable."""
    table = table or _unique("unreadable")
    connection.execute(f"CREATE TEMP TABLE {table} (line BIGINT, reason VARCHAR)")
    if not rejects:
        return table
    opener = _opener(path, location)
    starts, texts = _record_starts(opener, rejects)
    with opener() as stream:
        lines = [count + 1 for count in lines_before(stream, starts)]
    rows, ragged = [], set()
    for reject, text, line in zip(rejects, texts, lines):
        start, kind = reject[0], reject[3]
        if kind in _RAGGED and start in ragged:
            continue  # DuckDB rejects a short record once per missing column: the first says its count
        if kind in _RAGGED:
            ragged.add(start)
        rows.append((line, _unreadable_reason(path, reject, text, line, names, delimiter)))
    _insert(connection, table, rows)
    return table


def _unreadable_reason(path, reject: tuple, text: str, line: int, names: list[str], delimiter: str) -> str:
    """Why DuckDB's reject is unreadable, in the reader's words; an InputError for a problem that
    makes the file as a whole unreadable (a quote, the encoding)."""
    _, column_index, column, kind, _, message = reject
    column = names[column_index - 1] if column_index and column_index <= len(names) else column
    if kind == "UNQUOTED VALUE":
        raise _quote_error(path, text, column_index, line, column, message, delimiter)
    if kind == "INVALID ENCODING":
        raise InputError(path, "not valid UTF-8; pass encoding='latin-1' (or the file's encoding) if the file "
                         "is not UTF-8", line=line, column=column)
    if kind in _RAGGED:
        return f"ragged row: expected {len(names)} fields, found {_fields_found(text, message, delimiter)}"
    return f"{message} (column {column!r})" if column else message


def _quote_error(path, text: str, column_index: int | None, line: int, column: str | None, message: str,
                 delimiter: str) -> InputError:
    """Always an error, never a reject: after such a quote DuckDB's recovery is not to be trusted
    (2.0.1 drops the next record when it ends the file: 1,"a"b,c then 2,x,y reads no row at all)."""
    fields = list(_fields(text, delimiter))
    quote, closed = fields[min(column_index - 1 if column_index else 0, len(fields) - 1)]
    if closed is None:  # not where csv sees a quoted value: DuckDB's word for it
        return InputError(path, f"{message} Check the quotes of this record", line=line, column=column)
    if closed == -1 or len(text) >= REJECT_TEXT_CHARS or "\n" in text[quote:closed] or "\r" in text[quote:closed]:
        # a quote left open: csv would make the rest of the file (or a long stretch of lines) one
        # value, so the file cannot be read as its author meant
        before = text[:quote]
        line_start = max(before.rfind("\n"), before.rfind("\r")) + 1
        return InputError(path, open_quote_message(quote - line_start + 1), line=line + count_lines(before), column=column)
    return InputError(path, "text after the closing quote of this value: quote the whole value, and write a "
                      'quote inside it as ""', line=line, column=column)


def _fields_found(text: str, message: str, delimiter: str) -> str:
    """How many fields a ragged record has: counted in its text when DuckDB gave it whole."""
    fields = list(_fields(text, delimiter)) if text and len(text) < REJECT_TEXT_CHARS else []
    if fields and fields[-1][1] != -1:  # the whole record: its fields, and its end
        return str(len(fields) - 1)  # (DuckDB says 'Found: n + 1' for any longer record)
    found = _COUNT.search(message)
    return found.group(1) if found else "a different number of"


def _insert(connection, table: str, rows: list[tuple[int, str]]) -> None:
    """(line, reason) rows into ``table``, as two lists in one statement (executemany runs one
    statement per row: minutes for 100,000 rejects)."""
    if rows:
        lines, reasons = zip(*rows)
        connection.execute(f"INSERT INTO {table} SELECT unnest($1::BIGINT[]), unnest($2::VARCHAR[])",
                           [list(lines), list(reasons)])


def _opener(path, location: str):
    """Opens the bytes DuckDB read: the input, or its transcoded copy (a local file)."""
    return (lambda: open(location, "rb")) if os.path.isabs(location) and os.path.exists(location) else (lambda: open_binary(path))


def _record_starts(opener, rejects: list[tuple]) -> tuple[list[int], list[str]]:
    """Where each rejected record starts, and its text. DuckDB's ``line_byte_position`` may point
    a byte off (after a record's first character in an LF file), and its text of the record may be
    empty: the record is looked up in the file around that position."""
    starts, texts = [], []
    with opener() as stream:
        for position, *_, text, _ in rejects:
            position = position or 0
            low = max(0, position - 4)
            stream.seek(low)
            text = text.lstrip("\r\n")
            probe = text[:64].encode("utf-8", errors="replace")
            window = stream.read(position - low + (len(probe) + 8 if probe else REJECT_TEXT_CHARS))
            found, at = [], window.find(probe) if probe else -1
            while at >= 0:
                found.append(at)
                at = window.find(probe, at + 1)
            if found:
                start = low + min(found, key=lambda at: abs(low + at - position))
            else:  # a record starts after a line end: step back to it
                start = position
                while start > low and start > position - 2 and window[start - low - 1 : start - low] not in (b"\n", b"\r"):
                    start -= 1
                text = text or window[start - low :].decode("utf-8", errors="replace")
            starts.append(start)
            texts.append(text)
    return starts, texts


def _quoted_values(delimiter: str, text: bool) -> re.Pattern:
    """A value quoted at the start of a field, closed or open to the end: as a split group."""
    pattern = r'((?:(?<=[' + re.escape(delimiter) + r'\r\n])|\A)"(?:[^"]|"")*+(?:"|\Z))'
    return re.compile(pattern if text else pattern.encode())


def _one_line_end(buffer, quoted: re.Pattern, final: bool):
    """(``buffer`` up to its last record end with every line end outside quoted values made LF,
    the rest). A CR ending the buffer may be half a CRLF, and a quoted value may go on in the
    next chunk: both stay in the rest unless ``final``."""
    cr, lf = ("\r", "\n") if isinstance(buffer, str) else (b"\r", b"\n")
    parts = quoted.split(buffer)  # unquoted text at even places, quoted values at odd ones
    rest = buffer[:0]
    if not final:
        offset = len(buffer)
        for index in range(len(parts) - 1, -1, -1):
            offset -= len(parts[index])
            segment = parts[index]
            if index % 2:
                continue
            if index == len(parts) - 1 and segment.endswith(cr):
                segment = segment[:-1]
            at = max(segment.rfind(lf), segment.rfind(cr)) + 1
            if at:
                rest = buffer[offset + at:]
                parts = parts[:index] + [segment[:at]]
                break
        else:
            return buffer[:0], buffer
    return buffer[:0].join(part if index % 2 else part.replace(cr + lf, lf).replace(cr, lf)
                           for index, part in enumerate(parts)), rest


def _transcoded(connection, path, encoding: str, delimiter: str, line_ends: bool = False) -> str:
    """A UTF-8 copy of the file in a temporary file removed with the connection, streamed chunk by
    chunk; with ``line_ends``, every line end outside quoted values made LF (values keep theirs)."""
    decode = not _utf8(encoding)
    decoder = codecs.getincrementaldecoder(encoding)() if decode else None
    quoted = _quoted_values(delimiter, decode)
    handle, name = tempfile.mkstemp(prefix="profiles-source-", suffix=".csv")
    weakref.finalize(connection, _remove, name)
    carry, lines, first = ("" if decode else b""), 0, True
    with os.fdopen(handle, "wb") as output, open_binary(path) as stream:
        while True:
            data = stream.read(CHUNK_BYTES)
            if decode:
                try:
                    data = decoder.decode(data, final=not data)
                except UnicodeDecodeError as error:
                    at = lines + count_lines(error.object, 0, error.start) + 1
                    raise InputError(path, f"not valid {encoding} ({error.reason}); pass encoding= with the "
                                     "file's encoding", line=at) from None
                data = data.lstrip("\ufeff") if first else data
            elif first and data.startswith(codecs.BOM_UTF8):
                data = data[3:]
            first = False
            part = data
            if line_ends:
                # a record longer than 64 MB (a quote left open) is written as it is: DuckDB then says so
                part, carry = _one_line_end(carry + data, quoted, final=not data or len(carry) > (64 << 20))
            if decode:
                lines += count_lines(part)
                part = part.encode("utf-8")
            output.write(part)
            if not data:
                break
    return name


def _remove(name: str) -> None:
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass


# --- NDJSON -------------------------------------------------------------------------------------


# A line holding one JSON object: valid JSON that starts with "{" needs no second parse for its type.
_OBJECT = ("(CASE WHEN starts_with(line, '{') THEN json_valid(line) "
           "ELSE json_valid(line) AND json_type(line) = 'OBJECT' END)")


def _open_ndjson(connection, path, encoding: str) -> Source:
    location = _location(connection, path)
    if not _utf8(encoding):
        location = _transcoded_lines(connection, path, encoding)
    # each line one VARCHAR (no delimiter or quote can split it); blank lines stay as NULL rows, so
    # the row number is the line number
    lines = (f"(SELECT line, row_number() OVER () AS line_number FROM read_csv({sql.literal(location)}, "
             "columns={'line': 'VARCHAR'}, header=false, auto_detect=false, delim='\\0', quote='', escape='', "
             "strict_mode=false, encoding='utf-8'))")
    try:
        table, structure = _ndjson_shapes(connection, lines)
        every_line_an_object = not connection.execute(f"SELECT count(*) FROM {table}").fetchall()[0][0]
    except duckdb.Error as error:
        raise _ndjson_error(path, error) from None
    fields = json.loads(structure)[0] if structure and structure.startswith("[{") else {}
    names = list(fields)
    description = f"ndjson||{codecs.lookup(encoding).name}|{json.dumps(names)}"
    if not names:
        return Source("(SELECT NULL::BIGINT AS __record WHERE false)", [], {}, table, description)
    shape = json.dumps(_no_null_types(fields))
    columns = ", ".join(f"value.{sql.ident(name)} AS {sql.ident(name)}" for name in names)
    relation = (f"(SELECT {columns}, row_number() OVER () AS __record FROM "
                f"(SELECT json_transform(line, {sql.literal(shape)}) AS value FROM {lines} "
                f"WHERE trim(line) <> ''{'' if every_line_an_object else ' AND ' + _OBJECT}))")
    try:
        types = _types(connection, relation)
    except duckdb.Error as error:
        raise _ndjson_error(path, error) from None
    return Source(relation, names, types, table, description)


def _ndjson_shapes(connection, lines: str) -> tuple[str, str | None]:
    """One pass over the lines: the unreadable ones as a temporary table (line, reason), and the
    JSON structure of all the objects. json_group_structure would keep every line in memory: one
    line per distinct structure does (their merge is the merge of all), in the order first seen;
    a line that is not an object is a group of its own."""
    shapes = _unique("shapes")
    connection.execute(
        f"CREATE TEMP TABLE {shapes} AS SELECT bool_and(object) AS object, arg_min(line, line_number) AS example, "
        f"min(line_number) AS first FROM (SELECT line, line_number, {_OBJECT} AS object FROM {lines} WHERE trim(line) <> '') "
        "GROUP BY CASE WHEN object THEN CAST(json_structure(line) AS VARCHAR) ELSE 'line ' || line_number END")
    bad = connection.execute(f"SELECT first, example FROM {shapes} WHERE NOT object ORDER BY first").fetchall()
    table = _unique("unreadable")
    connection.execute(f"CREATE TEMP TABLE {table} (line BIGINT, reason VARCHAR)")
    _insert(connection, table, [(line, _json_problem(text)) for line, text in bad])
    structure = connection.execute(f"SELECT json_structure(to_json(list(example::JSON ORDER BY first))) FROM {shapes} "
                                   "WHERE object").fetchall()[0][0]
    connection.execute(f"DROP TABLE {shapes}")
    return table, structure


def _ndjson_error(path, error: Exception) -> InputError:
    if "Duplicate keys" in str(error):  # DuckDB's names ignore letter case
        return InputError(path, 'two keys differ only in letter case (as in "Email" and "email"): they would be '
                          "one column; rename one")
    return InputError(path, f"not readable as NDJSON: {_first_line(error)}")


def _no_null_types(shape):
    """A key only ever null has no type: JSON keeps it."""
    if isinstance(shape, dict):
        return {key: _no_null_types(value) for key, value in shape.items()} or "JSON"
    if isinstance(shape, list):
        return [_no_null_types(shape[0])] if shape else ["JSON"]
    return "JSON" if shape == "NULL" else shape


def _json_problem(text: str) -> str:
    try:
        value = json.loads(text)
    except ValueError as error:
        return f"not valid JSON: {error.msg} at character {error.pos + 1}"
    kind = {list: "array", str: "string", bool: "boolean", type(None): "null"}.get(type(value), "number")
    return f"expected a JSON object, found {kind}"


def _transcoded_lines(connection, path, encoding: str) -> str:
    handle, name = tempfile.mkstemp(prefix="profiles-source-", suffix=".ndjson")
    weakref.finalize(connection, _remove, name)
    with os.fdopen(handle, "wb") as output, open_binary(path) as stream:
        reader = codecs.getreader(encoding)(stream)
        for line in iter(lambda: reader.readline(keepends=True), ""):
            output.write(line.encode("utf-8"))
    return name


# --- Parquet ------------------------------------------------------------------------------------


def _open_parquet(connection, path) -> Source:
    location = _location(connection, path)
    relation = (f"(SELECT * EXCLUDE (file_row_number), file_row_number + 1 AS __record "
                f"FROM read_parquet({sql.literal(location)}, file_row_number=true))")
    try:
        types = _types(connection, relation)
    except duckdb.Error as error:
        raise InputError(path, f"not a readable Parquet file: {_first_line(error)}") from None
    return Source(relation, list(types), types, None, f"parquet|||{json.dumps(list(types))}")


# --- SQL cursor ---------------------------------------------------------------------------------


def open_cursor(connection, cursor, batch_rows: int = 50_000, name: str = "the SQL query") -> Source:
    """An executed DB-API cursor, fetched ``batch_rows`` at a time as DuckDB scans the relation
    (once: the rows are not kept). DuckDB pulls from its own thread: open sqlite3 connections
    with ``check_same_thread=False``. ``name`` names the query in errors.

    Column types come from the first batch: a column with one Python type there keeps it (int,
    float, str, bytes, dates...); a column with several, or only NULLs, is read as text (str of
    each value), so no value is coerced into a type it does not have. Two kinds are read otherwise,
    as their values vary row by row where a fixed Arrow type would not: JSON documents (dicts and
    lists, as drivers give json/jsonb and arrays; their keys differ by row) become a JSON column,
    and decimals (a ``numeric`` keeps each value's own scale) their exact text. A later value that
    does not fit its column's type stops the scan with an InputError naming column and record; a
    database error while fetching (a value it cannot compute, a lost connection) stops it with a
    ``QueryFailed`` naming the query and the rows read before it.
    """
    rows = _CursorRows(cursor, batch_rows, view=_unique("cursor"), name=name)
    connection.register(rows.view, pa.RecordBatchReader.from_batches(rows.schema, rows.batches()))
    relation = rows.view
    if rows.as_json:
        documents = ", ".join(f"CAST({sql.ident(rows.names[index])} AS JSON) AS {sql.ident(rows.names[index])}"
                              for index in sorted(rows.as_json))
        relation = f"(SELECT * REPLACE ({documents}) FROM {rows.view})"
    return Source(relation, rows.names, _types(connection, relation), None, f"sql|||{json.dumps(rows.names)}")


class QueryFailed(RuntimeError):
    """The database stopped a query while its rows were being fetched."""


class _CursorRows:
    """A cursor's rows as Arrow batches with ``__record``, typed by the first batch (``open_cursor``)."""

    def __init__(self, cursor, batch_rows: int, view: str, name: str = "the SQL query"):
        self.cursor, self.batch_rows, self.view, self.name = cursor, batch_rows, view, name
        self.first = self._fetch(read=0)
        self.names = [column[0] for column in cursor.description or ()]
        self.as_text, self.as_json, types = set(), set(), []
        for index in range(len(self.names)):
            values = [row[index] for row in self.first]
            kind = _column_type([value for value in values if value is not None])
            if kind == "json":
                self.as_json.add(index)
            elif kind is None:
                self.as_text.add(index)
            types.append(kind if isinstance(kind, pa.DataType) else pa.string())
        self.schema = pa.schema([*map(pa.field, self.names, types), pa.field("__record", pa.int64())])

    def _fetch(self, read: int) -> list:
        try:
            return self.cursor.fetchmany(self.batch_rows)
        except Exception as error:  # the driver's: a value the database cannot compute, a lost connection
            raise QueryFailed(f"{self.name}: the database stopped the query after {read} rows were read: "
                              f"{type(error).__name__}: {str(error).strip()}") from error

    def batches(self):
        rows, start = self.first, 1
        while rows:
            try:
                yield self._batch(rows, start)
                start += len(rows)
                rows = self._fetch(read=start - 1)
            except Exception as error:  # a bad value, or the database's own error
                _stream_errors[self.view] = error  # DuckDB hands it on wrapped: see ``cursor_error``
                raise

    def _batch(self, rows, start: int) -> pa.RecordBatch:
        columns = [self._column(index, [row[index] for row in rows], start) for index in range(len(self.names))]
        columns.append(pa.array(range(start, start + len(rows)), pa.int64()))
        return pa.RecordBatch.from_arrays(columns, schema=self.schema)

    def _column(self, index: int, values: list, start: int) -> pa.Array:
        if index in self.as_json:
            return pa.array([None if value is None else _json(value) for value in values], pa.string())
        if index in self.as_text:
            return pa.array([_text(value) for value in values], pa.string())
        kind = self.schema.field(index).type
        try:
            return pa.array(values, kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as error:
            bad = next((i for i, value in enumerate(values) if not _fits(value, kind)), 0)
            raise InputError(self.name, f"a value of type {type(values[bad]).__name__} after values of type "
                             f"{kind}: cast the column in the query ({error})",
                             line=start + bad, column=self.names[index]) from None


def _column_type(values: list) -> pa.DataType | str | None:
    """A column's type from its first batch's values (NULLs left out): "json" for JSON documents,
    None for text, else the Arrow type they share."""
    kinds = {type(value) for value in values}
    if any(issubclass(kind, (dict, list)) for kind in kinds):
        return "json"
    if len(kinds) != 1 or issubclass(next(iter(kinds)), decimal.Decimal):
        return None
    try:
        return pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, OverflowError):
        return None  # a type Arrow does not know (a driver's own): its text


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)


_stream_errors: dict[str, Exception] = {}


def cursor_error(error: BaseException) -> Exception | None:
    """The error a cursor's stream raised (an InputError, or the database driver's), from the
    DuckDB error that carries it (DuckDB reports ``reading the stream registered as '<view>'
    failed``), or None."""
    for view in re.findall(r"stream registered as '([^']+)'", str(error)):
        if view in _stream_errors:
            return _stream_errors.pop(view)
    return None


def _text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (dict, list)):  # a JSON document where the first batch had none: its JSON text
        return _json(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    return str(value)


def _fits(value, arrow_type) -> bool:
    try:
        pa.array([value], arrow_type)
        return True
    except Exception:
        return False
