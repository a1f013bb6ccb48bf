"""Prepare a vendor file with DuckDB in process: read -> map -> check -> encode -> write.

One connection per prepare, under a memory limit (what does not fit spills to a temporary
directory beside the output's). The input is mapped into one table (``mapped``), which then gets
the duplicate check as an update of its reject reason; its rows are streamed out in input order,
each either a line of the output or a row of the rejects file. Writers that give their line as SQL
(``FormatWriter.line_sql``) never leave DuckDB until the lines are bytes; the others encode in
Python, batch by batch. ``read == written + rejected (+ unchanged in a sync)`` is checked before
returning.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_profiles.prepare.writer import FORMULA_STARTS, FormatWriter, RowRejected
from airflow_provider_profiles.prepare.mapping import FieldMapping
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.values import EpochMillis, set_path
from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.prepare.source import Source, cursor_error, file_record, open_cursor, open_source, open_sources
from airflow_provider_profiles.prepare.sql_mapping import compile_mapping
from airflow_provider_profiles.progress import Progress
from airflow_provider_profiles.storage import as_storage_path, is_local, local_path, open_binary, path_text

log = logging.getLogger(__name__)

DUPLICATE = "duplicate identifier: an earlier row has the same id"
REJECTS_HEADER = ("record", "identifier", "reason")
# DuckDB's buffers (what does not fit spills to disk); its process peak is about 250 MB above this
MEMORY_LIMIT = "128MB"
# rows per batch streamed out: larger batches cost memory (DuckDB builds them ahead), not time
BATCH_ROWS = 8_192
THREADS = 2


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
    notes: list[str] = field(default_factory=list)
    # seconds spent reading the source into the engine (see ``prepare``); the rest of the run prepares
    extract_seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_counts(self) -> None:
        """Every row read is written, rejected or (in a sync) unchanged: else the run fails."""
        if self.read != self.written + self.rejected + self.unchanged:
            raise RuntimeError(
                f"counts do not reconcile: read {self.read} != written {self.written} + rejected "
                f"{self.rejected} + unchanged {self.unchanged}"
            )


@contextlib.contextmanager
def connected(near: Any, memory_limit: str = MEMORY_LIMIT, threads: int = THREADS) -> Iterator[Any]:
    """A DuckDB connection that spills to a temporary directory (beside ``near`` when it is local)."""
    import duckdb

    parent = os.path.dirname(os.path.abspath(local_path(near))) if is_local(as_storage_path(near)) else None
    if parent:
        os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".prepare-", dir=parent) as spill:
        connection = duckdb.connect(config={
            "memory_limit": memory_limit, "threads": threads, "temp_directory": spill,
            "preserve_insertion_order": True,
        })
        try:
            connection.execute("SET TimeZone = 'UTC'; SET enable_progress_bar = false")
            sql.register_functions(connection)
            yield connection
        finally:
            connection.close()


def prepare(
    source: Any, writer: FormatWriter, output: Any, *,
    mapping: FieldMapping | None = None, rejects: Any = None, duplicates: str | None = None,
    input_format: str | None = None, delimiter: str = ",", encoding: str = "utf-8",
    cursor: Any = None, batch_rows: int = 50_000,
    allow_empty: bool = False, progress_interval: float | None = 15.0, memory_limit: str = MEMORY_LIMIT,
    sync: Any = None, sync_run_key: str | None = None, deletions: bool = False, delete_columns: list[str] | None = None,
) -> PrepareResult:
    """Read ``source`` (a file, local or in object storage) and write ``output``.

    With a DB-API ``cursor`` (executed), its rows are read instead, ``batch_rows`` at a time, and
    ``source`` only names them in messages. ``source`` may be a list of files of one layout, read as
    one input (their records numbered within each file: the rejects file says the file). With ``sync`` (a ``prepare.sync.SyncState``) and
    ``sync_run_key``, an incremental sync: only rows new or changed since the committed snapshot
    are written (see ``sync.SyncStep``); with ``deletions``, ids gone since then become the writer's
    deletion lines.
    """
    duplicates = duplicates or writer.default_duplicates(syncing=sync is not None)
    if duplicates not in ("reject", "keep"):
        raise ValueError("duplicates must be 'reject' or 'keep'")
    step = _sync_step(sync, sync_run_key, writer, mapping, duplicates, deletions, delete_columns)
    with connected(output, memory_limit) as connection:
        extract = _Extract()
        if cursor is not None:
            opened = open_cursor(connection, cursor, batch_rows, name=str(source))
        elif isinstance(source, (list, tuple)):
            opened = open_sources(connection, source, input_format, delimiter=delimiter, encoding=encoding)
            source = ", ".join(opened.files)
        else:
            opened = open_source(connection, source, input_format, delimiter=delimiter, encoding=encoding, read_once=True)
        check_columns(source, opened.names, writer, mapping)
        table = _mapped(connection, opened, writer, mapping, step, from_cursor=cursor is not None,
                        progress_interval=progress_interval, extract=extract)
        result = PrepareResult(output=path_text(output), read=_rows_read(table, step, source, cursor, allow_empty),
                               extract_seconds=extract.seconds)
        if duplicates == "reject":
            table.reject_repeats()
        if step is not None:
            step.settle(table, result)
        rejected_records = _write(table, output, rejects, step, result, progress_interval)
        if step is not None:
            step.write_snapshot(table, rejected_records, result)
    result.check_counts()
    if step is not None:
        step.record_pending(result)
    return result


def _sync_step(sync: Any, run_key: str | None, writer: FormatWriter, mapping: FieldMapping | None, duplicates: str,
               deletions: bool, delete_columns: list[str] | None) -> Any:
    """The incremental sync's part of the prepare (``prepare.sync.SyncStep``), or None without one."""
    if sync is None:
        if deletions:
            raise ValueError("deletions of vanished ids need only_changed=True (an incremental sync)")
        return None
    from airflow_provider_profiles.prepare.sync import SyncStep  # (sync builds on this module)

    return SyncStep(sync, run_key, writer, mapping, duplicates, deletions, delete_columns)


class _Extract:
    """The extract's clock: from opening the source until its rows are in the engine. A cursor's rows are
    copied into a table first, so its extract ends there; a file is read in the one pass that maps it
    (a copy first would cost more than the mapping), so its extract is that pass."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: float | None = None

    def done(self) -> None:
        if self.seconds is None:
            self.seconds = round(time.perf_counter() - self.started, 3)


def _mapped(connection: Any, opened: Source, writer: FormatWriter, mapping: FieldMapping | None, step: Any, *,
            from_cursor: bool, progress_interval: float | None, extract: _Extract | None = None) -> MappedTable:
    """Reads and maps the input into the ``mapped`` table (in a sync, only the rows not unchanged)."""
    settle = opened.settle
    extract = extract or _Extract()
    try:
        if from_cursor:
            opened = _materialised(connection, opened)
            extract.done()
        with Progress.of_statements(connection, "reading and mapping", progress_interval, log=log):
            if step is not None:
                opened = step.compare(connection, opened)
            table = MappedTable(connection, opened, writer, mapping)
            extract.done()
            return table
    except Exception as error:
        # the error the cursor raised (bad rows, a lost connection), wrapped by DuckDB; or the
        # file's, as a whole
        raised = cursor_error(error) or (settle.failure(error) if settle is not None else None)
        if raised is None:
            raise
        raise raised from raised.__cause__  # (a QueryFailed keeps the driver's error as its cause)


def _rows_read(table: MappedTable, step: Any, source: Any, cursor: Any, allow_empty: bool) -> int:
    """Input records read (unchanged and unreadable ones included); InputError for no rows at all,
    unless ``allow_empty``."""
    rows = table.rows + (step.unchanged_rows if step else 0)
    if rows == 0 and not allow_empty and table.unreadable == 0:
        empty = "the query returned no rows" if cursor is not None else "no data rows (a header only, or an empty file)"
        raise InputError(source, f"{empty}; pass allow_empty=True if that is expected")
    return rows + table.unreadable


def _write(table: MappedTable, output: Any, rejects: Any, step: Any, result: PrepareResult,
           progress_interval: float | None) -> pa.Array | None:
    """Writes the output and the rejects file, counting both into ``result``; returns the input
    records rejected (in a sync: they stay out of its snapshot)."""
    with Progress(table.rows, progress_interval, label="prepare progress", log=log) as progress, \
            (step.rejects_writer(rejects) if step else RejectsWriter(rejects)) as rejected:
        rejected.files = table.files
        rejected.add_unreadable(table)
        after = None
        if step is not None:
            step.add_rejects(rejected)
            after = step.deletion_writer(table, result)
        result.written, result.bytes_written = table.write(output, rejected, progress, after=after)
    result.rejected = rejected.count
    result.rejects = path_text(rejects) if rejects is not None and rejected.count else None
    return rejected.records if step is not None else None


def _materialised(connection: Any, opened: Source) -> Source:
    """A cursor's rows in a table: its stream can be read once only, and by this thread only
    (DB-API connections such as sqlite3's refuse other threads), so with one DuckDB thread."""
    connection.execute("SET threads = 1")
    try:
        connection.execute(f"CREATE TABLE cursor_rows AS SELECT * FROM {opened.relation}")
    finally:
        connection.execute(f"SET threads = {THREADS}")
    return dataclasses.replace(opened, relation="cursor_rows")


def check_columns(source: Any, names: list[str], writer: FormatWriter, mapping: FieldMapping | None) -> None:
    """Fail before anything is written when the input lacks a column the mapping or writer needs.

    With a mapping, the writer's columns must be among the mapping's targets (a writer column
    nobody maps would be empty on every row); without one, among the input's columns.
    """
    if not names:  # an empty file: no header to check against
        raise InputError(source, "the input is empty: no header and no rows", line=1)
    checker = getattr(writer, "check_columns", None)
    if mapping is not None:
        missing = mapping.missing_columns(names)
        if missing:
            raise InputError(source, f"no column(s) {', '.join(map(repr, missing))} in the header; it has {names}", line=1)
        if checker is not None:
            targets = list(dict.fromkeys(field.path[0] for field in mapping.fields))
            try:
                checker(targets + (list(names) if mapping.keep_unmapped else []))
            except ValueError as error:
                raise InputError(source, f"the mapping gives the writer no column for it: {error}") from None
    elif checker is not None:
        try:
            checker(names)
        except ValueError as error:
            raise InputError(source, str(error), line=1) from None


class MappedTable:
    """The input, mapped, in one DuckDB table: the targets, ``__record``, ``__key``, ``__reason``."""

    def __init__(self, connection: Any, opened: Source, writer: FormatWriter, mapping: FieldMapping | None):
        self.connection, self.writer = connection, writer
        self.files = opened.files  # several files read as one: records say their file
        if mapping is None:
            select = sql.passthrough_select(opened)
        else:
            unmapped = {name: sql.missing_as_null(name, opened.types[name]) for name in opened.names} if mapping.keep_unmapped else {}
            select = compile_mapping(mapping, opened.types, connection).select_sql(opened.relation, unmapped, opened.carried)
        self.columns = {name: kind for name, kind, *_ in connection.execute(f"DESCRIBE {select}").fetchall()}
        self.targets = [name for name in self.columns if not name.startswith("__")]
        self.column = sql.Columns({name: self.columns[name] for name in self.targets})
        self.dates = {f.target for f in mapping.fields if f.representation == "epoch_ms"} if mapping else set()
        key = writer.key_sql(self.column)
        connection.execute(f"CREATE TABLE mapped AS SELECT *, {key or 'NULL::VARCHAR'} AS __key FROM ({select})")
        self._in_input_order()
        if key is None:
            self._python_keys()
        self.rows = connection.execute("SELECT count(*) FROM mapped").fetchall()[0][0]
        if opened.settle is not None:  # the read found its unreadable records: now they are known
            opened.settle.after_read()
        self.unreadable_sql = opened.unreadable
        self.unreadable = connection.execute(f"SELECT count(*) FROM {opened.unreadable}").fetchall()[0][0] if opened.unreadable else 0

    def _in_input_order(self) -> None:
        """The rows are streamed out as stored, which must be input order: a parallel read (Parquet
        row groups) with part of the mapping in Python may store them otherwise; then they are sorted."""
        out_of_order = self.connection.execute(
            "SELECT count(*) FROM (SELECT __record, lag(__record) OVER () AS previous FROM mapped) WHERE __record <= previous"
        ).fetchall()[0][0]
        if out_of_order:
            self.connection.execute("CREATE TABLE sorted AS SELECT * FROM mapped ORDER BY __record; DROP TABLE mapped; "
                                    "ALTER TABLE sorted RENAME TO mapped")

    def _python_keys(self) -> None:
        """Keys the writer computes in Python (``identifier``): one pass, stored back into the table."""
        reading = self.connection.cursor()  # the stream below is pulled by a query of this connection

        def keys() -> Iterator[pa.RecordBatch]:
            for batch in self.batches(f"SELECT __record, {self._target_list()} FROM mapped", reading):
                records = batch.column(0)
                found = [self.writer.identifier(row) for row in self.rows_of(batch, skip=1)]
                yield pa.RecordBatch.from_arrays([records, pa.array(found, pa.string())], ["record", "key"])
        schema = pa.schema([("record", pa.int64()), ("key", pa.string())])
        self.connection.register("python_keys", pa.RecordBatchReader.from_batches(schema, keys()))
        self.connection.execute("CREATE TABLE keys AS SELECT * FROM python_keys")
        self.connection.unregister("python_keys")
        reading.close()
        self.connection.execute("UPDATE mapped SET __key = keys.key FROM keys WHERE keys.record = mapped.__record")
        self.connection.execute("DROP TABLE keys")

    def reject_repeats(self) -> None:
        """Rows whose key an earlier accepted row has: rejected, the first row of each key kept."""
        self.connection.execute(f"""
            UPDATE mapped SET __reason = '{DUPLICATE}'
            FROM (SELECT __key, min(__record) AS first FROM mapped
                  WHERE __reason IS NULL AND __key IS NOT NULL GROUP BY __key HAVING count(*) > 1) AS repeats
            WHERE mapped.__key = repeats.__key AND mapped.__record <> repeats.first AND mapped.__reason IS NULL
        """)

    def _target_list(self) -> str:
        return ", ".join(sql.ident(n) for n in self.targets) or "NULL AS __nothing"

    def batches(self, query: str, connection: Any = None) -> Iterator[pa.RecordBatch]:
        reader = (connection or self.connection).sql(query).to_arrow_reader(BATCH_ROWS)
        last = 0
        for batch in reader:
            if batch.num_rows:
                records = batch.column(0).to_numpy()
                if records[0] <= last or (len(records) > 1 and np.any(np.diff(records) <= 0)):
                    raise RuntimeError("DuckDB returned rows out of input order")  # never expected
                last = records[-1]
                yield batch

    def rows_of(self, batch: pa.RecordBatch, skip: int) -> list[dict[str, Any]]:
        """The batch's mapped rows as the writers take them: nested by dotted target, JSON parsed."""
        names = batch.schema.names[skip:]
        columns = [batch.column(i).to_pylist() for i in range(skip, batch.num_columns)]
        json_columns = {i for i, name in enumerate(names) if self.columns.get(name) == "JSON"}
        rows = []
        for values in zip(*columns):
            row: dict[str, Any] = {}
            for i, (name, value) in enumerate(zip(names, values)):
                if value is not None:
                    if i in json_columns:
                        value = json.loads(value)
                    elif name in self.dates:
                        value = EpochMillis(value)
                if "." in name:
                    set_path(row, tuple(name.split(".")), value)
                else:
                    row[name] = value
            rows.append(row)
        return rows

    def write(self, output: Any, rejected: RejectsWriter, progress: Progress, after: Any = None) -> tuple[int, int]:
        """Streams the table out in input order: lines to ``output``, the rest to ``rejected``;
        then ``after(stream)`` adds its lines, if given (a sync's deletions).

        A writer's SQL gives the line and reason of the rows it is exact for; the other rows (all
        of them for a writer without SQL) are encoded here in Python.
        """
        query = self._write_query()
        written = 0
        with open_binary(output, "wb") as stream:
            header = self.writer.header()
            if header:
                stream.write(header.encode("utf-8"))
            for batch in self.batches(query):
                lines, reasons = self._encoded(batch)
                failed = pc.is_valid(reasons)
                if pc.any(failed).as_py():
                    rejected.add(*(column.filter(failed) for column in (batch.column(0), batch.column(1), reasons)))
                    lines = lines.filter(pc.invert(failed))
                written += write_lines(stream, lines)
                progress.advance(batch.num_rows)
            if after is not None:
                after(stream)
            size = stream.tell() if hasattr(stream, "tell") else None
        return written, size or 0

    def _write_query(self) -> str:
        """Each row's record, key, reason and line (and its targets, where the line is left to
        ``encode``). The condition under which the SQL is exact is computed once per row, in a
        subquery: it is used three times. (A writer's reason SQL with a condition is then computed
        for every row: it must be safe on the rows it is not exact for.)"""
        line, reason, exact = self._line_sql()
        if exact not in ("true", "false"):
            # the reason beside its condition, in one projection: what they share is computed once
            rows = f"(SELECT *, {exact} AS __exact, {reason} AS __why FROM mapped)"
            exact, reason, lined = "__exact", "__why", "__exact AND __why IS NULL"
        else:
            rows, lined = "mapped", exact
        targets = ", ".join(f"CASE WHEN NOT {exact} THEN {sql.ident(n)} END AS {sql.ident(n)}" for n in self.targets)
        return f"""SELECT __record, __key,
                          CASE WHEN __reason IS NOT NULL THEN __reason WHEN {exact} THEN {reason} END AS reason,
                          CASE WHEN __reason IS NULL AND {lined} THEN {line} END AS line
                          {', ' + targets if exact != 'true' and targets else ''}
                   FROM {rows}"""

    def _line_sql(self) -> tuple[str, str, str]:
        given = self.writer.line_sql(self.column)
        if given is None:
            return "NULL::VARCHAR", "NULL::VARCHAR", "false"
        return given if len(given) == 3 else (*given, "true")

    def _encoded(self, batch: pa.RecordBatch) -> tuple[pa.Array, pa.Array]:
        """The batch's lines and reject reasons, with the rows SQL left open encoded in Python."""
        reasons, lines = batch.column(2), batch.column(3)
        open_rows = pc.and_(pc.is_null(reasons), pc.is_null(lines))
        if not pc.any(open_rows).as_py():
            return lines, reasons
        places = np.flatnonzero(open_rows.to_numpy(zero_copy_only=False))
        python_lines: list[str | None] = [None] * batch.num_rows
        python_reasons: list[str | None] = [None] * batch.num_rows
        for place, row in zip(places.tolist(), self.rows_of(batch.take(places), skip=4)):
            try:
                python_lines[place] = self.writer.encode(row)
            except RowRejected as error:
                python_reasons[place] = error.reason
        return (pc.if_else(open_rows, pa.array(python_lines, lines.type), lines),
                pc.if_else(open_rows, pa.array(python_reasons, reasons.type), reasons))


def write_lines(stream, lines: pa.Array | pa.ChunkedArray) -> int:
    """Writes string lines that each end with a newline: the array's data buffer is those bytes."""
    if isinstance(lines, pa.ChunkedArray):
        return sum(write_lines(stream, chunk) for chunk in lines.chunks)
    if not len(lines):
        return 0
    if lines.type not in (pa.string(), pa.large_string()):
        lines = lines.cast(pa.large_string())
    width = np.int32 if lines.type == pa.string() else np.int64
    offsets = np.frombuffer(lines.buffers()[1], dtype=width, count=len(lines) + 1, offset=lines.offset * np.dtype(width).itemsize)
    stream.write(memoryview(lines.buffers()[2])[int(offsets[0]):int(offsets[-1])])
    return len(lines)


class RejectsWriter:
    """The rejects file (record, identifier, reason), opened on the first reject; or only a count.
    Several files read as one (``files``): (record within its file, identifier, reason, file)."""

    def __init__(self, path: Any):
        self.path = path
        self.count = 0
        self.files: list[str] | None = None
        self._stream = self._text = self._csv = None

    def add(self, records: pa.Array, identifiers: pa.Array, reasons: pa.Array) -> None:
        self.count += len(reasons)
        if self.path is None or not len(reasons):
            return
        if self._csv is None:
            import csv
            import io

            self._stream = open_binary(self.path, "wb")
            self._text = io.TextIOWrapper(self._stream, encoding="utf-8", newline="")
            self._csv = csv.writer(self._text)
            self._csv.writerow(REJECTS_HEADER + (("file",) if self.files else ()))
        columns = (records.cast(pa.int64()), _spreadsheet_safe(identifiers.cast(pa.string())),
                   _spreadsheet_safe(reasons.cast(pa.string())))
        rows = zip(*(column.to_pylist() for column in columns))
        if self.files:
            rows = (self._in_its_file(*row) for row in rows)
        self._csv.writerows(rows)

    def _in_its_file(self, record: int | None, identifier: str | None, reason: str) -> tuple:
        file, number = file_record(record, self.files) if record is not None else (None, None)
        return number, identifier, reason, file

    def add_unreadable(self, table: MappedTable) -> None:
        if table.unreadable:
            rows = table.connection.execute(f"SELECT line, reason FROM {table.unreadable_sql}").fetchall()
            reasons = [f"line {line}: {reason}" if line is not None else reason for line, reason in rows]
            self.add(pa.nulls(len(rows), pa.int64()), pa.nulls(len(rows), pa.string()), pa.array(reasons, pa.string()))

    def __enter__(self) -> RejectsWriter:
        return self

    def __exit__(self, *exc) -> None:
        if self._text is not None:
            self._text.close()


def _spreadsheet_safe(cells: pa.Array) -> pa.Array:
    """``base.spreadsheet_safe`` on a column: a cell a spreadsheet would run as a formula gets a quote."""
    formula = pc.match_substring_regex(cells, "^[" + re.escape("".join(FORMULA_STARTS)) + "]")
    return pc.if_else(formula, pc.binary_join_element_wise("'", cells, ""), cells)


