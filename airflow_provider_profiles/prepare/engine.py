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
import datetime as dt
import hashlib
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
from airflow_provider_profiles.prepare.values import set_path
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.values import EpochMillis
from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.prepare import sync as sync_files
from airflow_provider_profiles.prepare.source import Source, cursor_error, open_cursor, open_source
from airflow_provider_profiles.prepare.sql_mapping import compile_mapping
from airflow_provider_profiles.prepare.sync import delete_column
from airflow_provider_profiles.storage import as_storage_path, is_local, local_path, open_binary

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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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
    source: Any,
    writer: FormatWriter,
    output: Any,
    *,
    mapping: FieldMapping | None = None,
    rejects: Any = None,
    duplicates: str | None = None,
    input_format: str | None = None,
    delimiter: str = ",",
    encoding: str = "utf-8",
    cursor: Any = None,
    batch_rows: int = 50_000,
    allow_empty: bool = False,
    progress_interval: float | None = 15.0,
    memory_limit: str = MEMORY_LIMIT,
    sync: Any = None,
    sync_run_key: str | None = None,
    deletions: bool = False,
    delete_columns: list[str] | None = None,
) -> PrepareResult:
    """Read ``source`` (a file, local or in object storage) and write ``output``.

    With a DB-API ``cursor`` (executed), its rows are read instead, ``batch_rows`` at a time, and
    ``source`` only names them in messages. With ``sync`` (a ``prepare.sync.SyncState``) and
    ``sync_run_key``, an incremental sync: only rows new or changed since the committed snapshot
    are written (see ``SyncStep``); with ``deletions``, ids gone since then become the writer's
    deletion lines.
    """
    duplicates = duplicates or writer.default_duplicates(syncing=sync is not None)
    if duplicates not in ("reject", "keep"):
        raise ValueError("duplicates must be 'reject' or 'keep'")
    step = SyncStep(sync, sync_run_key, writer, mapping, duplicates, deletions, delete_columns) if sync is not None else None
    if step is None and deletions:
        raise ValueError("deletions of vanished ids need only_changed=True (an incremental sync)")
    with connected(output, memory_limit) as connection:
        if cursor is not None:
            opened = open_cursor(connection, cursor, batch_rows)
        else:
            opened = open_source(connection, source, input_format, delimiter=delimiter, encoding=encoding)
        check_columns(source, opened.names, writer, mapping)
        try:
            if cursor is not None:
                opened = _materialised(connection, opened)
            with Progress.of_statements(connection, "reading and mapping", progress_interval):
                if step is not None:  # only the rows not unchanged since the last sync are mapped
                    opened = step.compare(connection, opened)
                table = MappedTable(connection, opened, writer, mapping)
        except Exception as error:
            raised = cursor_error(error)  # the error the cursor raised (bad rows, a lost connection), wrapped by DuckDB
            if raised is None:
                raise
            raise raised from None
        rows = table.rows + (step.unchanged_rows if step else 0)
        if rows == 0 and not allow_empty and table.unreadable == 0:
            empty = "the query returned no rows" if cursor is not None else "no data rows (a header only, or an empty file)"
            raise InputError(source, f"{empty}; pass allow_empty=True if that is expected")
        if duplicates == "reject":
            table.reject_repeats()
        result = PrepareResult(output=str(output), read=rows + table.unreadable)
        if step is not None:
            step.settle(table, result)
        with Progress(table.rows, progress_interval) as progress, \
                (step.rejects_writer(rejects) if step else RejectsWriter(rejects)) as rejected:
            rejected.add_unreadable(table)
            if step is not None:
                step.add_rejects(rejected)
            result.written, result.bytes_written = table.write(
                output, rejected, progress, after=step.deletion_writer(table, result) if step else None)
        result.rejected = rejected.count
        result.rejects = str(rejects) if rejects is not None and rejected.count else None
        if step is not None:
            step.write_snapshot(table, rejected.records, result)
    if result.read != result.written + result.rejected + result.unchanged:
        raise RuntimeError(
            f"counts do not reconcile: read {result.read} != written {result.written} + rejected "
            f"{result.rejected} + unchanged {result.unchanged}"
        )
    if step is not None:
        step.record_pending(result)
    return result


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
        if mapping is None:
            select = sql.passthrough_select(opened)
        else:
            unmapped = {name: sql.missing_as_null(name, opened.types[name]) for name in opened.names} if mapping.keep_unmapped else {}
            select = compile_mapping(mapping, opened.types, connection).select_sql(opened.relation, unmapped)
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
        line, reason, exact = self._line_sql()
        targets = ", ".join(f"CASE WHEN NOT ({exact}) THEN {sql.ident(n)} END AS {sql.ident(n)}" for n in self.targets)
        query = f"""SELECT __record, __key,
                           CASE WHEN __reason IS NOT NULL THEN __reason WHEN {exact} THEN {reason} END AS reason,
                           CASE WHEN __reason IS NULL AND {exact} THEN {line} END AS line
                           {', ' + targets if exact != 'true' and targets else ''}
                    FROM mapped"""
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
    """The rejects file (record, identifier, reason), opened on the first reject; or only a count."""

    def __init__(self, path: Any):
        self.path = path
        self.count = 0
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
            self._csv.writerow(REJECTS_HEADER)
        columns = (records.cast(pa.int64()), _spreadsheet_safe(identifiers.cast(pa.string())),
                   _spreadsheet_safe(reasons.cast(pa.string())))
        self._csv.writerows(zip(*(column.to_pylist() for column in columns)))

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


class Progress:
    """Progress lines in the task log every ``interval`` seconds (None: none): rows written, rate
    and ETA while writing; before that, DuckDB's own estimate of the statement running."""

    def __init__(self, total: int, interval: float | None):
        self.total, self.interval, self.done = total, interval, 0
        self.started = self.last = time.monotonic()

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if self.interval is None or now - self.last < self.interval:
            return
        self.last = now
        rate = self.done / max(now - self.started, 1e-9)
        eta = (self.total - self.done) / rate if rate else 0.0
        log.info("prepare progress: writing, %s of %s rows (%.0f%%), %s rows/s, ETA %s", f"{self.done:,}",
                 f"{self.total:,}", 100 * self.done / max(self.total, 1), f"{rate:,.0f}", _duration(eta))

    @staticmethod
    @contextlib.contextmanager
    def of_statements(connection: Any, what: str, interval: float | None) -> Iterator[None]:
        """Logs DuckDB's progress of the statements run meanwhile (``query_progress``) from a thread."""
        if interval is None:
            yield
            return
        import threading

        stop, started = threading.Event(), time.monotonic()

        def watch() -> None:
            while not stop.wait(max(interval, 0.5)):
                share = connection.query_progress()
                if share is None or share < 0:
                    continue
                elapsed = time.monotonic() - started
                eta = elapsed * (100 - share) / share if share > 0 else None
                log.info("prepare progress: %s, %.0f%% of the statement running, ETA %s", what, share,
                         _duration(eta) if eta is not None else "unknown")

        watcher = threading.Thread(target=watch, name="prepare-progress", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stop.set()
            watcher.join()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        if self.interval is not None and self.done:
            elapsed = max(time.monotonic() - self.started, 1e-9)
            log.info("prepare progress: wrote %s rows (100%%), %s rows/s", f"{self.done:,}", f"{self.done / elapsed:,.0f}")


def _duration(seconds: float) -> str:
    return str(dt.timedelta(seconds=round(seconds)))


# --- an incremental sync's part of a prepare ---------------------------------------------------------


def writer_fingerprint(writer: FormatWriter) -> str:
    """The writer's class and public settings: a sync whose writer changed sends every row again."""
    public = {k: v for k, v in vars(writer).items() if not k.startswith("_")}
    return f"{type(writer).__module__}.{type(writer).__qualname__}:" + json.dumps(public, sort_keys=True, default=_stable)


def _stable(value: Any) -> str:
    """A setting's text for the fingerprint: its own fingerprint where it has one (a ``FieldMapping``),
    as a default ``repr`` holds a memory address and would differ on every run."""
    fingerprint = getattr(value, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else repr(value)


class _RecordingRejects(RejectsWriter):
    """The rejects file, also noting the input record of each reject (a sync leaves those rows
    out of its snapshot: the vendor was not sent them)."""

    def __init__(self, path: Any):
        super().__init__(path)
        self._records: list[pa.Array] = []

    def add(self, records: pa.Array, identifiers: pa.Array, reasons: pa.Array) -> None:
        self._records.append(records.cast(pa.int64()).drop_null())
        super().add(records, identifiers, reasons)

    @property
    def records(self) -> pa.Array:
        return pa.concat_arrays(self._records) if self._records else pa.array([], pa.int64())


class SyncStep:
    """An incremental sync's part of a prepare, in the prepare's DuckDB connection.

    ``compare``: each input row gets the hash of its values as read (``sync_source``); a row
    whose hash the committed snapshot holds, under a key CURRENT does not list to be sent again,
    is unchanged: the same input row under the same fingerprint (mapping, writer, input layout)
    maps to the same line, so only the other rows are mapped. ``settle``: the
    duplicate check across both (the first row of a key wins, mapped or unchanged).
    ``deletion_writer``: keys of the snapshot that no row of the input has become the writer's
    deletion lines, after the rows. ``write_snapshot``: the attempt's snapshot is every row written
    or unchanged, and, for keys still in the input whose row is rejected now, the committed row
    (what the vendor still holds); its sent file the keys written or deleted.
    """

    def __init__(self, state: Any, run_key: str | None, writer: FormatWriter, mapping: FieldMapping | None,
                 duplicates: str, deletions: bool, delete_columns: list[str] | None):
        if duplicates != "reject":
            raise ValueError(
                "an incremental sync compares one row per identifier: it needs duplicates='reject' "
                f"(and a format with one line per identifier, not {type(writer).__name__})"
            )
        refusal = writer.sync_refusal()
        if refusal:
            raise ValueError(refusal)
        if not run_key:
            raise ValueError("an incremental sync needs a run key (e.g. the run_id)")
        if deletions and not writer.deletion_columns:
            raise ValueError(f"{type(writer).__name__} cannot express a deletion; deletions need a format "
                             "whose writer has deletion_columns and deletion_row")
        self.state, self.run_key, self.writer, self.deletions = state, run_key, writer, deletions
        # the columns the snapshot keeps for deletion lines (for every row: turning deletions on
        # later needs no full resend)
        self.delete_columns = list(delete_columns or writer.deletion_columns)
        self.described = f"{sync_format()}|" + (mapping.fingerprint() if mapping else "-") + "|" + writer_fingerprint(writer)
        self.previous = None
        self.notes: list[str] = []
        self.unchanged_rows = 0  # input rows found in the snapshot (repeats of one included)
        self.deleted_keys = False  # deletion lines written: their keys go to the sent file
        self.keep_vanished = False  # deletions skipped: the vanished rows stay in the snapshot
        self.fingerprint = ""
        self.rows = 0

    def compare(self, connection: Any, opened: Source) -> Source:
        """Finds the unchanged rows in one pass over the input (``sync_source``: each row's hash,
        and the committed key and delete columns where the snapshot holds that hash, or else the
        row's values); returns the source of the rows left to map."""
        self.connection = connection
        self.fingerprint = hashlib.sha256(f"{self.described}|{opened.description}".encode()).hexdigest()[:16]
        self.previous = self.state.previous(self.fingerprint)  # SyncConflict here for older data
        row_hash = stable_row_hash(opened.names, opened.types)
        kept = "".join(f", NULL::VARCHAR AS {delete_column(name)}" for name in self.delete_columns)
        if self.previous is None:
            self.notes.append(self.state.why_no_previous())
            connection.execute(f"CREATE TEMP TABLE previous AS SELECT NULL::VARCHAR AS key, NULL::UBIGINT AS row_hash{kept} LIMIT 0")
            connection.execute("CREATE TEMP TABLE resend_keys (key VARCHAR)")
            self.previous_columns = []
            connection.execute(f"""CREATE TEMP TABLE sync_source AS SELECT __record, {row_hash} AS __row_hash,
                                   NULL::VARCHAR AS __sync_key FROM {opened.relation}""")
            return opened  # every row is mapped
        self.previous_columns = self.previous.load(connection, "previous", "resend_keys")
        theirs = "".join(f", found.{delete_column(name)} AS {delete_column('__' + name)}" for name in self.previous_columns)
        values = "".join(f", CASE WHEN found.key IS NULL THEN rows.{sql.ident(name)} END AS {sql.ident(name)}"
                         for name in opened.names)
        connection.execute(f"""CREATE TEMP TABLE sync_source AS
                               SELECT rows.__record, rows.__row_hash, found.key AS __sync_key{theirs}{values}
                               FROM (SELECT *, {row_hash} AS __row_hash FROM {opened.relation}) AS rows
                               LEFT JOIN (SELECT * FROM previous WHERE key NOT IN (SELECT key FROM resend_keys)) AS found
                                 ON found.row_hash = rows.__row_hash""")
        self.unchanged_rows = connection.execute("SELECT count(__sync_key) FROM sync_source").fetchall()[0][0]
        # the rows left, in input order (a join does not keep it)
        names = ", ".join(sql.ident(name) for name in opened.names)
        connection.execute(f"""CREATE TEMP VIEW sync_changed_rows AS SELECT __record, {names} FROM sync_source
                               WHERE __sync_key IS NULL ORDER BY __record""")
        return dataclasses.replace(opened, relation="sync_changed_rows")

    def settle(self, table: MappedTable, result: PrepareResult) -> None:
        """The duplicate check between mapped rows and unchanged ones: the first row of a key wins
        (``table.reject_repeats`` ran among the mapped rows already; two unchanged rows of one key
        are one row twice, byte for byte)."""
        result.sync_run_key, result.sync_state = self.run_key, str(self.state.directory)
        result.notes.extend(self.notes)
        connection = table.connection
        # one unchanged row twice has its hash twice (grouped by the hash: an integer, cheaper)
        connection.execute("""CREATE TEMP TABLE unchanged_first AS SELECT __row_hash AS row_hash, min(__record) AS first
                              FROM sync_source WHERE __sync_key IS NOT NULL GROUP BY __row_hash HAVING count(*) > 1""")
        # a key has one accepted mapped row at most: its clash is with the key's first unchanged row
        connection.execute("""CREATE TEMP TABLE clashes AS
                              SELECT mapped.__record AS mapped_record, min(sync_source.__record) AS unchanged_record
                              FROM mapped JOIN sync_source ON sync_source.__sync_key = mapped.__key
                              WHERE mapped.__reason IS NULL GROUP BY mapped.__record""")
        connection.execute(f"""UPDATE mapped SET __reason = {sql.literal(DUPLICATE)} WHERE __record IN
                               (SELECT mapped_record FROM clashes WHERE mapped_record > unchanged_record)""")
        connection.execute("""CREATE TEMP TABLE unchanged_repeats AS
                              SELECT sync_source.__record, sync_source.__sync_key AS key FROM sync_source JOIN unchanged_first
                                ON unchanged_first.row_hash = sync_source.__row_hash AND sync_source.__record > unchanged_first.first
                              WHERE sync_source.__sync_key IS NOT NULL
                              UNION ALL
                              SELECT __record, __sync_key FROM sync_source WHERE __record IN
                                (SELECT unchanged_record FROM clashes WHERE unchanged_record > mapped_record)""")
        repeats = connection.execute("SELECT count(*) FROM unchanged_repeats").fetchall()[0][0]
        result.unchanged = self.unchanged_rows - repeats

    def rejects_writer(self, path: Any) -> _RecordingRejects:
        return _RecordingRejects(path)

    def add_rejects(self, rejected: RejectsWriter) -> None:
        """Unchanged rows that repeat an earlier row's key (rare: they come before the others)."""
        repeats = self.connection.sql("SELECT __record, key FROM unchanged_repeats ORDER BY __record").to_arrow_table()
        if repeats.num_rows:
            rejected.add(repeats.column(0).combine_chunks(), repeats.column(1).combine_chunks(),
                         pa.array([DUPLICATE] * repeats.num_rows, pa.string()))

    def deletion_writer(self, table: MappedTable, result: PrepareResult) -> Any:
        """The writer of the deletion lines that ``MappedTable.write`` calls after the rows, or None."""
        if not self.deletions or self.previous is None:
            return None
        connection = table.connection
        # keys of the snapshot that no row of the input has (mapped, or found unchanged)
        connection.execute("""CREATE TEMP TABLE vanished AS SELECT * FROM previous
                              WHERE key NOT IN (SELECT __sync_key FROM sync_source WHERE __sync_key IS NOT NULL)
                                AND key NOT IN (SELECT __key FROM mapped WHERE __key IS NOT NULL)""")
        if table.unreadable:
            self.keep_vanished = True
            result.notes.append(f"deletions skipped: {table.unreadable} record(s) of the input could not be read, so "
                                "which ids are gone is not certain; they are kept for the next run")
            return None
        names = [name for name in self.delete_columns if name in self.previous_columns]

        def write(stream) -> None:
            columns = ", ".join(delete_column(name) for name in names) or "NULL"
            cursor = connection.execute(f"SELECT {columns} FROM vanished ORDER BY key")
            while rows := cursor.fetchmany(BATCH_ROWS):
                lines = []
                for row in rows:
                    values = {name: value for name, value in zip(names, row) if value not in (None, "")}
                    try:
                        lines.append(self.writer.encode(self.writer.deletion_row(values)))
                    except RowRejected as error:
                        result.notes.append(f"cannot delete {values}: {error.reason}")
                stream.write("".join(lines).encode("utf-8"))
                result.deleted += len(lines)
            self.deleted_keys = True

        return write

    def write_snapshot(self, table: MappedTable, rejected_records: pa.Array, result: PrepareResult) -> None:
        connection = table.connection
        connection.register("rejected_now", pa.table({"record": rejected_records}))
        mine = "".join(f", CAST({table.column(name)} AS VARCHAR)" for name in self.delete_columns)
        theirs = "".join(f", {delete_column(name) if name in self.previous_columns else 'NULL::VARCHAR'} AS {delete_column(name)}"
                         for name in self.delete_columns)
        names = "key, row_hash" + "".join(f", {delete_column(name)}" for name in self.delete_columns)
        found = "".join(f", {delete_column('__' + name) if name in self.previous_columns else 'NULL::VARCHAR'} "
                        f"AS {delete_column(name)}" for name in self.delete_columns)
        connection.execute(f"""CREATE TEMP TABLE sent_now AS
                               SELECT mapped.__key AS key, sync_source.__row_hash AS row_hash{mine}
                               FROM mapped JOIN sync_source ON sync_source.__record = mapped.__record
                               WHERE mapped.__reason IS NULL AND mapped.__key IS NOT NULL
                                 AND mapped.__record NOT IN (SELECT record FROM rejected_now)""")
        connection.execute(f"""CREATE TEMP TABLE next_snapshot AS
                               SELECT __sync_key AS key, __row_hash AS row_hash{found} FROM sync_source
                               WHERE __sync_key IS NOT NULL AND __record NOT IN (SELECT __record FROM unchanged_repeats)
                               UNION ALL SELECT * FROM sent_now""")
        # a key still in the input whose row is rejected now: the vendor keeps the committed row
        # (unless CURRENT says it may hold another one: then it is sent again when it is valid)
        # (the mapped keys are few: the snapshot's rows are only searched for those)
        connection.execute("""CREATE TEMP TABLE sync_rejected_keys AS SELECT DISTINCT __key AS key FROM mapped
                              WHERE __key IS NOT NULL AND __key NOT IN (SELECT key FROM sent_now)""")
        connection.execute(f"""INSERT INTO next_snapshot SELECT key, row_hash{theirs} FROM previous
                               WHERE key IN (SELECT key FROM sync_rejected_keys)
                                 AND key NOT IN (SELECT __sync_key FROM sync_source WHERE __sync_key IN (SELECT key FROM sync_rejected_keys)
                                                 AND __record NOT IN (SELECT __record FROM unchanged_repeats))
                                 AND key NOT IN (SELECT key FROM resend_keys)""")
        if self.keep_vanished:
            connection.execute(f"""INSERT INTO next_snapshot SELECT key, row_hash{theirs} FROM vanished
                                   WHERE key NOT IN (SELECT key FROM resend_keys)""")
        self.rows = connection.execute("SELECT count(*) FROM next_snapshot").fetchall()[0][0]
        files = self.state.writer(self.run_key, self.delete_columns, self.previous)
        sync_files.write_parquet(connection, f"SELECT {names} FROM next_snapshot", files.snapshot)
        if self.previous is not None:  # without one, every row was sent: the snapshot says which
            sent = "SELECT key FROM sent_now" + (" UNION ALL SELECT key FROM vanished" if self.deleted_keys else "")
            sync_files.write_parquet(connection, sent, files.sent)
        connection.unregister("rejected_now")

    def record_pending(self, result: PrepareResult) -> None:
        self.state.record_pending(self.run_key, self.fingerprint, self.rows, result.to_dict())


def stable_row_hash(names: list[str], types: dict[str, str]) -> str:
    """SQL for 64 bits of the MD5 of a row's values as JSON: stable across DuckDB versions (unlike
    ``hash()``). Text columns go in a JSON array (cheaper), other types in an object."""
    if not names:
        return "0::UBIGINT"
    if all(types.get(name) == "VARCHAR" for name in names):
        values = "[" + ", ".join(sql.ident(name) for name in names) + "]"
    else:
        values = "{" + ", ".join(f"{sql.literal(name)}: {sql.ident(name)}" for name in names) + "}"
    return f"CAST(md5_number(to_json({values})) >> 64 AS UBIGINT)"


def sync_format() -> str:
    return sync_files.SNAPSHOT_FORMAT
