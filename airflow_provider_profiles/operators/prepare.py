"""Data preparation operators: extract (SQL or file) -> vendor file, split, commit sync state.

    prepared = ProfilesFileTransformOperator(
        task_id="prepare", source_path="s3://bucket/in/users.csv", vendor="localytics",
        writer_options={"attributes": {"plan": "plan"}, "customer_id": "id"},
        output_path="s3://bucket/out/{{ run_id }}/users.ndjson", only_changed=True,
        sync_state_path="s3://bucket/state/localytics-users",
    )
    chunks = SplitFileOperator(task_id="split", source_path=prepared.output, vendor="localytics")
    upload = LocalyticsProfileImportOperator.partial(task_id="upload").expand(file=chunks.output)
    commit = CommitSyncStateOperator(task_id="commit", sync_state_path="s3://bucket/state/localytics-users",
                                     upload_results=upload.output)

The prepare operators return the ``PrepareResult`` counts (read = written + rejected + unchanged)
with the output and rejects paths; the split operator returns the chunk paths for ``.expand()``.
Pass a task's output on as it is (``prepared.output``, ``chunks.output``): every operator that takes a
file accepts a path, a list of chunk paths or a prepare result, and the dependency follows the XComArg.
(``prepared.output["output"]`` would pull an XCom *key* "output", which does not exist.)

Nothing to send is a success: a file without a record still gives one chunk, and the uploads return
every count 0 without a request, so the commit and any report downstream run as on any other day.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import csv
import io
import time

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseHook, BaseOperator

from airflow_provider_profiles.lineage import Dataset, LineageMixin, file_dataset
from airflow_provider_profiles.operators.links import REJECTS_LINK, storage_url, store_links
from airflow_provider_profiles.vendors import vendor as vendor_spec
from airflow_provider_profiles.writers import get_writer, upload_limit
from airflow_provider_profiles.operators.inputs import input_path
from airflow_provider_profiles.operators.result import results_of
from airflow_provider_profiles.prepare.mapping import FieldMapping
from airflow_provider_profiles.prepare.engine import PrepareResult, prepare
from airflow_provider_profiles.prepare.split import split_file
from airflow_provider_profiles.prepare.source import QueryFailed
from airflow_provider_profiles.prepare.sync import SyncConflict, SyncState
from airflow_provider_profiles.storage import as_storage_path, open_binary

DEFAULT_MAX_REJECTED_RATIO = 0.1


def _storage_path(path: Any, conn_id: str | None):
    return None if path is None else as_storage_path(path, conn_id)


def _templated(value: Any) -> bool:
    """True where a value still holds a Jinja template (checked when the task runs instead)."""
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, dict):
        return any(_templated(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return any(_templated(item) for item in value)
    return not isinstance(value, (int, float, bool, type(None)))  # an XComArg, a ParamsDict...


def _data_as_of(context: Any):
    """The time a run's data stands for, to keep a sync from going back in time: the end of its
    data interval (a manual run's is the last interval before it, where a logical date would be
    the trigger time, later than the next scheduled run's), else its logical date; None for a run
    with neither (not compared)."""
    return context.get("data_interval_end") or context.get("logical_date")


class _PrepareOperator(LineageMixin, BaseOperator):
    """Shared by the prepare operators: writer, mapping, rejects, incremental sync, counts.

    ``only_changed=True`` writes only rows new or changed since the sync committed in
    ``sync_state_path`` (see ``CommitSyncStateOperator``). A run whose data is older than the
    committed sync's (by the end of its data interval: a backfill) fails before writing anything,
    unless ``sync_allow_older=True``.

    ``max_rejected_ratio`` (default 0.1; None: no ceiling): when more than this share of the rows read
    is rejected, the task fails with the count, the ratio and the first reasons, so nothing of a
    run whose data is mostly refused goes on to the vendor.
    """

    template_fields: Sequence[str] = (
        "output_path",
        "rejects_path",
        "writer_options",
        "mapping",
        "sync_state_path",
        "sync_run_key",
    )
    ui_color = "#e8f4ea"
    operator_extra_links = (REJECTS_LINK,)

    def __init__(
        self,
        *,
        vendor: str,
        output_path: str,
        writer_format: str | None = None,
        writer_options: dict[str, Any] | None = None,
        mapping: dict[str, Any] | None = None,
        keep_unmapped: bool = False,
        rejects_path: str | None = None,
        duplicates: str | None = None,
        max_rejected_ratio: float | None = DEFAULT_MAX_REJECTED_RATIO,
        only_changed: bool = False,
        sync_state_path: str | None = None,
        sync_run_key: str = "{{ run_id }}",
        include_deletions: bool = False,
        delete_columns: list[str] | None = None,
        sync_allow_older: bool = False,
        storage_conn_id: str | None = None,
        progress_interval: float | None = 15.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        vendor_spec(vendor).writer_path(writer_format)  # an unknown vendor or format fails the DAG's parse
        if only_changed and not sync_state_path:
            raise ValueError("only_changed=True needs sync_state_path (where the last sync's snapshot lives)")
        if only_changed and not _templated(writer_options):
            refusal = get_writer(vendor, writer_format, **(writer_options or {})).sync_refusal()
            if refusal:
                raise ValueError(refusal)
        if include_deletions and not only_changed:
            raise ValueError("include_deletions needs only_changed=True")
        self.vendor = vendor
        self.writer_format = writer_format
        self.writer_options = writer_options or {}
        self.mapping = mapping
        self.keep_unmapped = keep_unmapped
        self.output_path = output_path
        self.rejects_path = rejects_path
        self.duplicates = duplicates
        self.max_rejected_ratio = max_rejected_ratio
        self.only_changed = only_changed
        self.sync_state_path = sync_state_path
        self.sync_run_key = sync_run_key
        self.include_deletions = include_deletions
        self.delete_columns = delete_columns
        self.sync_allow_older = sync_allow_older
        self.storage_conn_id = storage_conn_id
        self.progress_interval = progress_interval  # seconds between progress lines; None: none

    def _options(self, context: Any) -> dict[str, Any]:
        writer = get_writer(self.vendor, self.writer_format, **self.writer_options)
        mapping = (
            FieldMapping(self.mapping, representation=writer.representation, keep_unmapped=self.keep_unmapped)
            if self.mapping else None
        )
        output = _storage_path(self.output_path, self.storage_conn_id)
        rejects = self.rejects_path or f"{self.output_path}.rejects.csv"
        options: dict[str, Any] = {
            "writer": writer,
            "output": output,
            "mapping": mapping,
            "rejects": _storage_path(rejects, self.storage_conn_id),
            "duplicates": self.duplicates,
            "progress_interval": self.progress_interval,
        }
        if self.only_changed:
            options.update(
                sync=SyncState(_storage_path(self.sync_state_path, self.storage_conn_id),
                               as_of=_data_as_of(context), allow_older=self.sync_allow_older),
                sync_run_key=self.sync_run_key,
                deletions=self.include_deletions,
                delete_columns=self.delete_columns,
            )
        return options

    def lineage_outputs(self) -> list[Dataset]:
        return [file_dataset(self.output_path)]

    def _report(self, result: PrepareResult, context: Any = None) -> dict[str, Any]:
        self.log.info(
            "read %d rows: %d written, %d rejected, %d unchanged since the last sync, %d deletions; output %s",
            result.read, result.written, result.rejected, result.unchanged, result.deleted, result.output,
        )
        if result.rejected:
            self.log.warning("%d rows rejected, with record number and reason, in %s", result.rejected, result.rejects)
            if context is not None:
                store_links(context, {REJECTS_LINK: storage_url(result.rejects)}, self.log)
        for note in result.notes:
            self.log.info("%s", note)
        if self.max_rejected_ratio is not None and result.read and result.rejected / result.read > self.max_rejected_ratio:
            raise AirflowFailException(
                f"{result.rejected} of {result.read} rows rejected ({result.rejected / result.read:.1%}, more than "
                f"max_rejected_ratio={self.max_rejected_ratio:g}); first reasons: {_first_rejects(result.rejects)}; "
                f"all of them in {result.rejects} (max_rejected_ratio=None lets such a run through)"
            )
        return result.to_dict()


def _first_rejects(rejects: Any, count: int = 5) -> str:
    """The first rows of a rejects file as ``record N (id): reason``, for an error message."""
    if not rejects:
        return "(no rejects file)"
    try:
        with open_binary(as_storage_path(rejects)) as handle:
            reader = csv.DictReader(io.TextIOWrapper(handle, encoding="utf-8", newline=""))
            found = [f"{row['file'] + ', ' if row.get('file') else ''}record {row.get('record')} ({row.get('identifier')}): "
                     f"{row.get('reason')}"
                     for row, _ in zip(reader, range(count))]
    except (OSError, ValueError, csv.Error) as error:
        return f"(rejects file not readable: {error})"
    return "; ".join(found) or "(none listed)"


GLOB_CHARACTERS = "*?["


def is_glob(path: str) -> bool:
    return any(character in str(path) for character in GLOB_CHARACTERS)


def source_files(paths: str | Sequence[str], conn_id: str | None = None) -> list[str]:
    """The files a source names: each entry a path or a glob pattern (``*``, ``?``, ``[...]``, ``**``),
    local or object storage; a pattern's matches sorted by name. A pattern that matches nothing
    is an error (a missing input is not an empty one)."""
    found: list[str] = []
    for entry in [paths] if isinstance(paths, str) else list(paths):
        entry = str(entry)
        if not is_glob(entry):
            found.append(entry)
            continue
        parts = entry.split("/")
        fixed = next(index for index, part in enumerate(parts) if is_glob(part))
        base, pattern = "/".join(parts[:fixed]) or ".", "/".join(parts[fixed:])
        matches = sorted(str(path) for path in as_storage_path(base, conn_id).glob(pattern) if path.is_file())
        if not matches:
            raise AirflowFailException(f"{entry}: no file matches this pattern")
        found.extend(matches)
    return found


def partition_files(files: list[str], partition: int, partitions: int) -> list[str]:
    """Partition ``partition`` of ``partitions``' files: the file at position i (in the order given,
    a pattern's matches sorted by name) goes to partition i mod ``partitions``."""
    return files[partition::partitions]


class ProfilesFileTransformOperator(_PrepareOperator):
    """Reads CSV, NDJSON or Parquet (local or object storage) and writes the vendor's format.

    ``source_path`` is one file, or a list of files and glob patterns read as one input (same
    columns in each; the rejects file says each reject's file and its record number there).
    ``partition``/``partitions``: only the files of that partition (``partition_files``).
    """

    template_fields: Sequence[str] = (*_PrepareOperator.template_fields, "source_path")

    def __init__(
        self,
        *,
        source_path: str | Sequence[str],
        input_format: str | None = None,
        delimiter: str = ",",
        encoding: str = "utf-8",
        allow_empty: bool = False,
        partition: int | None = None,
        partitions: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        if (partition is None) != (partitions is None) or (partitions is not None and not 0 <= partition < partitions):
            raise ValueError(f"partition must be in 0..partitions-1, with both given; got {partition}, {partitions}")
        self.source_path = source_path
        self.input_format = input_format
        self.delimiter = delimiter
        self.encoding = encoding
        self.allow_empty = allow_empty
        self.partition, self.partitions = partition, partitions

    def lineage_inputs(self) -> list[Dataset]:
        paths = [self.source_path] if isinstance(self.source_path, str) else list(self.source_path)
        return [file_dataset(path) for path in paths]

    def _source(self) -> Any:
        """One path (one file, as ever), or the list of files read as one."""
        if isinstance(self.source_path, str) and not is_glob(self.source_path) and self.partitions is None:
            return _storage_path(self.source_path, self.storage_conn_id)
        files = source_files(self.source_path, self.storage_conn_id)
        if self.partitions is not None:
            mine = partition_files(files, self.partition, self.partitions)
            if not mine:
                raise AirflowFailException(
                    f"partition {self.partition} of {self.partitions} has no file: the source names {len(files)} "
                    f"file(s) ({', '.join(files)}); declare at most {len(files)} partitions")
            self.log.info("partition %d of %d: %s", self.partition, self.partitions, ", ".join(mine))
            files = mine
        paths = [_storage_path(path, self.storage_conn_id) for path in files]
        return paths[0] if len(paths) == 1 else paths

    def execute(self, context) -> dict[str, Any]:
        options = self._options(context)
        writer, output = options.pop("writer"), options.pop("output")
        source = self._source()
        result = prepare(
            source, writer, output, input_format=self.input_format, delimiter=self.delimiter,
            encoding=self.encoding, allow_empty=self.allow_empty, **options,
        )
        return self._report(result, context)


class SqlToProfilesFileOperator(_PrepareOperator):
    """Runs a query on any Airflow SQL connection (its common-sql hook) and streams the rows out.

    Rows are fetched with ``fetchmany(batch_rows)``: the result set is never held whole.
    """

    template_fields: Sequence[str] = (*_PrepareOperator.template_fields, "sql", "parameters")
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}

    def __init__(
        self,
        *,
        sql: str,
        conn_id: str,
        parameters: dict | Sequence | None = None,
        batch_rows: int = 50_000,
        allow_empty: bool = False,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.sql = sql
        self.conn_id = conn_id
        self.parameters = parameters
        self.batch_rows = batch_rows
        self.allow_empty = allow_empty

    def lineage_inputs(self) -> list[Dataset]:
        """The tables the query reads, as the OpenLineage provider's SQL parser finds them: named by the
        hook's database info where it gives one (common-sql), else ``<conn type>://<host>``."""
        from airflow.providers.openlineage.sqlparser import SQLParser

        hook = self.get_db_hook()
        connection = hook.get_connection(self.conn_id)
        dialect = getattr(hook, "get_openlineage_database_dialect", lambda _conn: "generic")(connection)
        info = getattr(hook, "get_openlineage_database_info", lambda _conn: None)(connection)
        if info is not None:
            parser = SQLParser(dialect=dialect, default_schema=hook.get_openlineage_default_schema())
            found = parser.generate_openlineage_metadata_from_sql(sql=self.sql, hook=hook, database_info=info,
                                                                  use_connection=False)
            return [(dataset.namespace, dataset.name) for dataset in found.inputs]
        parsed = SQLParser(dialect=dialect).parse(self.sql)  # tables as the query names them
        namespace = f"{connection.conn_type}://{connection.host or ''}".rstrip("/")
        return [(namespace, table.qualified_name) for table in (parsed.in_tables if parsed else [])]

    def get_db_hook(self):
        hook = BaseHook.get_connection(self.conn_id).get_hook()
        if not hasattr(hook, "get_conn") or not hasattr(hook, "run"):
            raise AirflowException(f"connection {self.conn_id!r} has no SQL hook (got {type(hook).__name__})")
        return hook

    def execute(self, context) -> dict[str, Any]:
        options = self._options(context)
        writer, output = options.pop("writer"), options.pop("output")
        hook = self.get_db_hook()
        connection = hook.get_conn()
        name = _query_name(self.conn_id, self.sql)
        try:
            cursor = _streaming_cursor(hook, connection)
            try:
                querying = time.perf_counter()
                if self.parameters is None:
                    cursor.execute(self.sql)
                else:
                    cursor.execute(self.sql, self.parameters)
                queried = time.perf_counter() - querying
            except Exception as error:  # the driver's: a syntax error, a missing table, no permission
                raise QueryFailed(f"{name}: the database refused the query: {type(error).__name__}: "
                                  f"{str(error).strip()}") from error
            result = prepare(name, writer, output, cursor=cursor, batch_rows=self.batch_rows,
                             allow_empty=self.allow_empty, **options)
            if result.extract_seconds is not None:  # the query's own run is part of the extract
                result.extract_seconds = round(result.extract_seconds + queried, 3)
        finally:
            connection.close()
        return self._report(result, context)


def _query_name(conn_id: str, sql: str, width: int = 160) -> str:
    """The query as errors name it: its connection and the start of its text."""
    text = " ".join(str(sql).split())
    return f"query on {conn_id} ({text if len(text) <= width else text[:width] + '...'})"


def _streaming_cursor(hook, connection):
    """A cursor whose ``fetchmany`` streams from the server.

    psycopg2's default cursor downloads the whole result on ``execute``; a named (server-side)
    cursor does not. MySQL's default cursor buffers too; its ``SSCursor`` streams. Other drivers
    (sqlite3, Snowflake, ...) already stream with ``fetchmany``.
    """
    conn_type = getattr(hook, "conn_type", "") or ""
    if conn_type == "postgres":
        return connection.cursor(name="profiles_extract")
    if conn_type == "mysql":
        try:
            from MySQLdb.cursors import SSCursor

            return connection.cursor(SSCursor)
        except ImportError:
            pass
    return connection.cursor()


class SplitFileOperator(BaseOperator):
    """Cuts a prepared file into chunks at record boundaries; returns the chunk paths.

    ``max_bytes`` defaults to the vendor's upload limit (mediarithmics 100 MB, Apsis One 50 MB);
    Localytics files are split only on request, as each upload uses one of 10 an hour.
    ``source_path`` may also be the dict a prepare operator returned (``prepared.output``).

    A file without a record gives one chunk without a record, for every vendor, never ``[]``: the
    uploads mapped over it run once, send nothing and return 0 (a task mapped over an empty list
    would be skipped, and the commit and report after it with it).
    """

    template_fields: Sequence[str] = ("source_path", "output_dir", "max_bytes", "max_rows")

    def __init__(
        self,
        *,
        source_path: str | dict,
        output_dir: str | None = None,
        vendor: str | None = None,
        max_bytes: int | None = None,
        max_rows: int | None = None,
        file_format: str | None = None,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.source_path = source_path
        self.output_dir = output_dir
        self.vendor = vendor
        self.default_max_bytes = upload_limit(vendor)  # here, so an unknown vendor fails the DAG's parse
        self.max_bytes = max_bytes
        self.max_rows = max_rows
        self.file_format = file_format
        self.storage_conn_id = storage_conn_id

    def execute(self, context) -> list[str]:
        source = input_path(self.source_path, "source_path")
        max_bytes = self.max_bytes if self.max_bytes is not None else self.default_max_bytes
        chunks = split_file(
            _storage_path(source, self.storage_conn_id),
            _storage_path(self.output_dir, self.storage_conn_id),
            max_bytes=int(max_bytes) if max_bytes is not None else None,
            max_rows=int(self.max_rows) if self.max_rows is not None else None,
            file_format=self.file_format,
        )
        self.log.info("%s -> %d chunk(s)", source, len(chunks))
        return chunks


def vendor_failures(results: Any) -> tuple[int, int]:
    """(records not taken, results without the vendor's outcome) over the upload results: one result
    of ``operators.result`` or the results of several (mapped) upload tasks. Not taken: rejected
    before sending, or failed at the vendor."""
    found = results_of(results, "upload_results")
    not_taken = sum((result["rejected"] or 0) + (result["vendor_failed"] or 0) for result in found)
    return not_taken, sum(result["vendor_failed"] is None for result in found)


class CommitSyncStateOperator(BaseOperator):
    """Makes this run's sync snapshot current. Put it after every upload: it runs only when they
    all succeeded (``all_success``), so a failed run leaves the last good snapshot in place.

    The commit is refused (the task fails, and the rows this run sent are sent again by the next
    run) when another run committed since this run's prepare, or when this run's data interval ends
    before the committed one's (a backfill; unless ``allow_older=True``). Running it again after it
    succeeded changes nothing.

    :param upload_results: the upload tasks' results (e.g. ``upload.output``, mapped or not; the
        shared result of ``operators.result``). When they report records rejected before sending or
        failed at the vendor, the commit is refused: those rows would otherwise count as sent and
        not be sent again until they change. ``accept_vendor_failures=True`` commits anyway.
    """

    template_fields: Sequence[str] = ("sync_state_path", "sync_run_key", "upload_results")

    def __init__(
        self,
        *,
        sync_state_path: str,
        sync_run_key: str = "{{ run_id }}",
        keep: int = 2,
        upload_results: Any = None,
        accept_vendor_failures: bool = False,
        allow_older: bool = False,
        storage_conn_id: str | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("trigger_rule", "all_success")
        super().__init__(**kwargs)
        self.sync_state_path = sync_state_path
        self.sync_run_key = sync_run_key
        self.keep = keep
        self.upload_results = upload_results
        self.accept_vendor_failures = accept_vendor_failures
        self.allow_older = allow_older
        self.storage_conn_id = storage_conn_id

    def execute(self, context) -> dict[str, Any]:
        state = SyncState(_storage_path(self.sync_state_path, self.storage_conn_id))
        failures, unreported = vendor_failures(self.upload_results)
        if unreported:
            self.log.warning("%d upload result(s) carry no vendor outcome (not reported, or handed over without "
                             "waiting): their records count as taken", unreported)
        try:
            if failures and not self.accept_vendor_failures:
                reason = (
                    f"the uploads report {failures} record(s) the vendor did not take; committing would count them "
                    "as sent. Not committed: this run's rows will be sent again next time "
                    "(accept_vendor_failures=True commits anyway)."
                )
                state.refuse(self.sync_run_key, reason)
                raise AirflowFailException(f"sync state {self.sync_state_path}: {reason}")
            current = state.commit(self.sync_run_key, keep=self.keep, as_of=_data_as_of(context),
                                   allow_older=self.allow_older)
        except SyncConflict as refused:
            raise AirflowFailException(f"sync state {self.sync_state_path}: {refused}") from None
        if failures:
            self.log.warning("committed although the uploads report %d failed record(s) (accept_vendor_failures)", failures)
        self.log.info("sync state %s now at run %s (%d keys)", self.sync_state_path, current["run_key"], current["rows"])
        return current
