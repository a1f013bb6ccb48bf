"""Gainsight PX operators: the documented data loader (one request per record) and a filtered export.

Gainsight PX has no bulk-file API, so the loader's value is in throughput and error handling:
requests go out from a bounded thread pool over one pooled session under the client-side rate
limit, each row ends up updated, inserted, skipped, rejected or failed (the counts add up), and
the input is streamed so memory does not grow with its size.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from functools import cached_property
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, Variable

from airflow_provider_profiles.prepare.writer import RejectsFile, RowRejected, csv_line
from airflow_provider_profiles.prepare.values import to_text
from airflow_provider_profiles.writers.gainsight_px import (
    GainsightPXRecordFormat,
    flatten,
)
from airflow_provider_profiles.prepare.errors import InputError, guess_format
from airflow_provider_profiles.prepare.engine import connected
from airflow_provider_profiles.prepare.lines import LinesOutOfStep, RecordLines
from airflow_provider_profiles.prepare import sql
from airflow_provider_profiles.prepare.source import open_source
from airflow_provider_profiles.hooks.base import (
    CapacityWait,
    SharedPause,
    VendorAPIError,
    VendorAuthError,
)
from airflow_provider_profiles.hooks.gainsight_px import GainsightPXHook, Outcome, RequestBudgetExhausted
from airflow_provider_profiles.storage import (
    as_storage_path,
    is_local,
    local_path,
    open_binary,
    path_text,
)
from airflow_provider_profiles.operators.base import task_state
from airflow_provider_profiles.operators.erasure import EraseOneByOneOperator
from airflow_provider_profiles.operators.inputs import input_file, nothing_sent
from airflow_provider_profiles.operators.links import (
    REJECTS_LINK,
    StoredLink,
    console_or_api,
    storage_url,
    store_links,
)
from airflow_provider_profiles.writers import writer_class
from airflow_provider_profiles.operators.sync_adapter import SyncAdapter, SyncPlan, conn_kwargs, source_column
from airflow_provider_profiles.operators.result import records_result
from airflow_provider_profiles.lineage import ProfilesOutputMixin
from airflow_provider_profiles.progress import Progress

log = logging.getLogger(__name__)

# What became of each row read: written (updated, inserted), not there to update (missing: update only),
# only written to the dry-run file, left unsent at the request budget, rejected before sending, failed.
SUMMARY_KEYS = ("rows_read", "updated", "inserted", "missing", "dry_run", "over_budget", "rejected", "failed")
READ_BATCH_ROWS = 10_000  # small batches: the pool sends ~200 rows/s, there is no gain in reading ahead
DATAFRAME_BATCH_ROWS = 10_000
MAX_LOGGED_REJECTS = 100  # a bad file must not flood the task log; the rejects file has them all
# A row still rate-limited after the shared retry policy keeps trying for up to RATE_LIMITED_WAIT
# seconds from its first send. Between tries the whole pool pauses (0.5, 1, 2, 4... s at least), so a
# 429 storm makes the loader wait, not lose rows.
RATE_LIMITED_WAIT = 60.0
RATE_LIMITED_PAUSE = 0.5
# Sign-in address of the app: app.aptrinsic.com ("Sign in to your Gainsight PX account at app.aptrinsic.com
# (or your organization's PX URL)", docs.nexla.com/user-guides/connectors/gainsight_px_api/
# gainsight_px_api_auth). No address per data center or per record is public: every production data
# center links there; other hosts (an emulator) get no console link.
PX_APP = "https://app.aptrinsic.com/"
PX_LINK = StoredLink(name="Gainsight PX", key="gainsight_px_app")
CHECKPOINT_KEY = "load"  # the task state key of a load's checkpoint (a retry resumes from it)


@dataclass
class _Batch:
    """Rows of the input with the line each starts on, and the records of that stretch that could
    not be read: (line, identifier or None, reason)."""

    lines: list[int]
    rows: list[dict[str, Any]]
    rejected: list[tuple[int, str | None, str]] = field(default_factory=list)


class _DataFrameInput:
    """A pandas DataFrame: already parsed; its rows are numbered from 1."""

    def __init__(self, dataframe: Any):
        self.dataframe = dataframe
        self.label = "DataFrame"
        self.names = [str(column) for column in dataframe.columns]
        self.total = len(dataframe)

    def batches(self) -> Iterator[_Batch]:
        for start in range(0, len(self.dataframe), DATAFRAME_BATCH_ROWS):
            chunk = self.dataframe.iloc[start : start + DATAFRAME_BATCH_ROWS]
            rows = [dict(zip(self.names, values)) for values in chunk.itertuples(index=False, name=None)]
            yield _Batch(list(range(start + 1, start + 1 + len(rows))), rows)


class _FileInput:
    """A CSV, NDJSON or Parquet file read by DuckDB (``prepare.source``), checked whole on opening.

    Rows come in input order with the line each starts on (Parquet: its row number); NDJSON's
    nested objects stay nested: the mapping reads ``location.city`` from them. ``names`` lists the
    leaves by their dotted paths, so a mapped path the file lacks is found before anything is sent.
    """

    def __init__(self, connection: Any, source: Any, input_format: str | None, delimiter: str, encoding: str):
        self.connection, self.label = connection, str(source)
        self.path = as_storage_path(source)
        self.format = (input_format or guess_format(self.path)).lower()
        self.delimiter, self.encoding = delimiter, encoding
        self.source = open_source(connection, self.path, self.format, delimiter=delimiter, encoding=encoding)
        if self.format == "csv" and not self.source.names:
            raise InputError(self.label, "the file is empty: expected a header row", line=1)
        self.columns = ", ".join(sql.ident(name) for name in self.source.names)
        schema = connection.sql(f"SELECT {self.columns or 'NULL AS __nothing'} FROM {self.source.relation} LIMIT 0").arrow().schema
        self.names = [name for item in schema for name in _leaf_names(item)] if self.source.names else []
        self.json_columns = {name for name, kind in self.source.types.items() if kind == "JSON"}
        self.rows = connection.execute(f"SELECT count(*) FROM {self.source.relation}").fetchall()[0][0]
        self.unreadable = None
        if self.source.unreadable:
            # a table of its own (not TEMP): read by a second cursor while the rows stream
            self.unreadable = f"{self.source.unreadable}_rows"
            connection.execute(f"CREATE TABLE {self.unreadable} AS SELECT line, reason FROM {self.source.unreadable}")
        self.total = self.rows + (connection.execute(f"SELECT count(*) FROM {self.unreadable}").fetchall()[0][0]
                                  if self.unreadable else 0)
        self.lines_known = self._lines_in_step()

    def _record_lines(self) -> RecordLines | None:
        if self.format == "parquet":
            return None
        return RecordLines(self.path, self.format, self._unreadable_rows(), delimiter=self.delimiter, encoding=self.encoding)

    def _unreadable_rows(self) -> Iterator[tuple[int, str]]:
        if self.unreadable is None:
            return
        cursor = self.connection.cursor()
        try:
            cursor.execute(f"SELECT line, reason FROM {self.unreadable} ORDER BY line")
            while chunk := cursor.fetchmany(READ_BATCH_ROWS):
                yield from chunk
        finally:
            cursor.close()

    def _lines_in_step(self) -> bool:
        """Whether the lines found by walking the file agree with DuckDB's records (always expected)."""
        lines = self._record_lines()
        if lines is None:
            return True
        try:
            for start in range(0, self.rows, READ_BATCH_ROWS):
                lines.take(min(READ_BATCH_ROWS, self.rows - start))
            lines.rest()
        except LinesOutOfStep as error:
            log.warning("%s: rows are numbered by record, not by line (%s)", self.label, error)
            return False
        return True

    def batches(self) -> Iterator[_Batch]:
        lines = self._record_lines() if self.lines_known else None
        if lines is None and self.unreadable is not None:  # where they are, all at once
            yield _Batch([], [], [(line, None, reason) for line, reason in self._unreadable_rows()])
        if self.source.names:
            query = f"SELECT {self.columns}, __record FROM {self.source.relation}"
            for batch in self.connection.sql(query).to_arrow_reader(READ_BATCH_ROWS):
                if not batch.num_rows:
                    continue
                records = batch.column(batch.num_columns - 1).to_pylist()
                rows = batch.drop_columns(["__record"]).to_pylist()
                if self.json_columns:
                    for row in rows:
                        for name in self.json_columns:
                            if row[name] is not None:
                                row[name] = json.loads(row[name])
                if lines is None:
                    yield _Batch(records, rows)
                else:
                    found, rejected = lines.take(len(rows))
                    yield _Batch(found, rows, rejected)
        if lines is not None:
            rest = lines.rest()
            if rest:
                yield _Batch([], [], rest)


def _leaf_names(item: Any, prefix: str = "") -> list[str]:
    """Dotted names of a column's leaves (a STRUCT's fields, nested), as the mapping names them."""
    import pyarrow as pa

    if pa.types.is_struct(item.type) and item.type.num_fields:
        return [name for child in item.type for name in _leaf_names(child, f"{prefix}{item.name}.")]
    return [f"{prefix}{item.name}"]


def _sibling(source: Any, suffix: str) -> Any:
    """``users.csv`` -> ``users<suffix>`` in the same folder (local or object storage)."""
    name = source.name
    for ext in (".gz", ".bz2", ".zst", ".csv", ".ndjson", ".jsonl", ".json", ".parquet"):
        name = name.removesuffix(ext)
    return source.parent / f"{name}{suffix}"


def _prepare_output(path: Any) -> Any:
    path = as_storage_path(path)
    if is_local(path):  # object stores have no folders to create
        os.makedirs(os.path.dirname(os.path.abspath(local_path(path))), exist_ok=True)
    return path


class _Confirmed:
    """The input records answered so far (sent and answered, rejected, or failed at the vendor), as a
    checkpoint: every record before ``position`` (0-based, in input order) and those in ``ahead``,
    answered before a slower one; ``counts`` are theirs, ``rejects_rows`` their rows in the rejects file."""

    def __init__(self, saved: Mapping[str, Any] | None = None):
        saved = saved or {}
        self.position = int(saved.get("position", 0))
        self.ahead = {int(position): key for position, key in saved.get("ahead", {}).items()}
        self.counts = dict.fromkeys(SUMMARY_KEYS, 0) | dict(saved.get("counts", {}))
        self.rejects_rows = int(saved.get("rejects_rows", 0))

    def covers(self, position: int) -> bool:
        return position < self.position or position in self.ahead

    def answer(self, position: int, key: str, rejects_row: bool = False) -> None:
        self.counts["rows_read"] += 1
        self.counts[key] += 1
        self.rejects_rows += rejects_row
        self.ahead[position] = key
        while self.position in self.ahead:
            del self.ahead[self.position]
            self.position += 1

    def saved(self) -> dict[str, Any]:
        return {"position": self.position, "ahead": {str(position): key for position, key in self.ahead.items()},
                "counts": dict(self.counts), "rejects_rows": self.rejects_rows}


class _Checkpoints:
    """Where a load's checkpoint is kept between tries and runs (best effort: a failed write is logged).

    A retry finds it in the task instance's task state (Airflow's task state store, or a Variable on
    older Airflow). A run stopped by ``max_requests`` leaves it for the next run of the DAG in a
    Variable named after the DAG, task and map index (``profiles_load_next_<hash>``): the task state
    store is scoped to one DAG run. Either is used only for the same input, entity and mapping, and
    removed once the input is complete.
    """

    def __init__(self, operator: GainsightPXLoadOperator, context: Any, fingerprint: dict[str, Any],
                 across_runs: bool = True):
        self.log, self.fingerprint, self.across_runs = operator.log, fingerprint, across_runs
        self.state = task_state(context)
        ti = context["ti"]
        identity = json.dumps([ti.dag_id, ti.task_id, ti.map_index])
        self.next_run_variable = f"profiles_load_next_{hashlib.sha256(identity.encode()).hexdigest()[:32]}"
        self.description = (f"where the Gainsight PX load {ti.dag_id}.{ti.task_id}[{ti.map_index}] stopped at "
                            "max_requests; the next run resumes from it")

    def load(self) -> dict[str, Any] | None:
        """The checkpoint of an earlier try of this run, else of an earlier run stopped by the budget."""
        for where, read in (("an earlier try", self._read_task_state), ("an earlier run", self._read_next_run)):
            try:
                saved = read()
            except Exception as error:  # resuming is an optimisation: never the reason a load fails
                self.log.warning("could not read the load checkpoint of %s: %s", where, error)
                continue
            if not saved:
                continue
            if saved.get("fingerprint") == self.fingerprint:
                return saved
            self.log.warning("the checkpoint of %s is for another input or mapping (%s); this load starts from "
                             "the first record and drops it", where, saved.get("fingerprint"))
            self.clear()
            return None
        return None

    def _read_task_state(self) -> Any:
        return self.state.get(CHECKPOINT_KEY)

    def _read_next_run(self) -> Any:
        if not self.across_runs:
            return None
        value = Variable.get(self.next_run_variable, default=None)
        return json.loads(value) if value else None

    def save(self, confirmed: _Confirmed, rejects_path: Any, for_next_run: bool = False) -> None:
        value = {"fingerprint": self.fingerprint, "rejects_path": str(rejects_path), **confirmed.saved()}
        try:
            if for_next_run:
                Variable.set(self.next_run_variable, json.dumps(value), description=self.description)
                self.state.clear(CHECKPOINT_KEY)
            else:
                self.state.set(CHECKPOINT_KEY, value, description=self.description.replace(
                    "stopped at max_requests; the next run", "has confirmed so far; a retry"))
        except Exception as error:
            self.log.warning("could not save the load checkpoint (record %d): %s", confirmed.position, error)

    def clear(self) -> None:
        for remove in (lambda: self.state.clear(CHECKPOINT_KEY), lambda: Variable.delete(self.next_run_variable)):
            try:
                remove()
            except Exception as error:
                self.log.warning("could not remove a load checkpoint: %s", error)


def _carry_rejects(saved: Mapping[str, Any], rejects: RejectsFile, log: Any) -> None:
    """Copy the earlier tries' rejects rows (the first ``rejects_rows`` of their file) into this try's."""
    wanted = int(saved.get("rejects_rows", 0))
    if not wanted:
        return
    rows: list[list[str]] = []
    try:
        with open_binary(as_storage_path(saved["rejects_path"]), "rb") as raw, \
                io.TextIOWrapper(raw, encoding="utf-8", newline="") as handle:
            for row in itertools.islice(csv.reader(handle), 1, wanted + 1):
                rows.append(row)
    except FileNotFoundError:
        pass
    if len(rows) < wanted:
        log.warning("the earlier tries' rejects file %s has %d of its %d rows; the rest are lost",
                    saved["rejects_path"], len(rows), wanted)
    for line, identifier, reason, status in rows:
        rejects.add(line, identifier or None, reason, status or None)


class GainsightPXLoadOperator(ProfilesOutputMixin, BaseOperator):
    """Update (and optionally insert) Gainsight PX users or accounts, or add custom events, from a
    CSV/NDJSON file or a DataFrame.

    The Airflow form of the vendor's data loader (``gainsight-px-data-loader [--insertMissing] [--verbose]
    [--dryRun] config.json USER|ACCOUNT|CUSTOM_EVENT input.csv``). Every write carries the connection's
    product key, so a load needs the extra ``product_key``. Values are typed by the subscription's
    attribute model (read once per run): dates go as epoch milliseconds, custom attributes included,
    and a value that does not fit its attribute rejects the row before anything is sent.

    :param source: a local path or object-storage URI (CSV or NDJSON, see ``input_format``), the upstream
        task's output as is (a prepare task's result, ``prepared.output``, or a one-chunk list) or a
        pandas DataFrame. CSV values may be quoted to contain commas; dates are milliseconds since the
        epoch. An input without a record sends no request and returns every count 0.
    :param storage_conn_id: the object storage connection holding ``source`` (default: its URL's).
    :param entity: ``USER``, ``ACCOUNT`` or ``CUSTOM_EVENT`` (events are always inserted: map ``identifyId``
        and ``eventName``; ``date``, ``accountId``, ``attributes.<name>``... as the vendor's loader does).
    :param field_mapping: ``{px_field: input_column}``; dots nest fields (``location.city``,
        ``customAttributes.plan``). The identifier (``identifyId`` / ``id``) is required.
    :param field_types: types of fields the attribute model does not type (``{"attributes.size": "number"}``):
        string, integer, number, boolean or date. The model wins where it knows the attribute.
    :param insert_missing: create records that do not exist (PUT, then POST on 404; POST first, then PUT on a
        duplicate, while most recent records were new); default update only.
    :param dry_run: parse, map and validate every row and write what would be sent; no API writes.
    :param verbose: log every operation.
    :param rejects_path: CSV of rejected and failed rows (line, identifier, reason, http_status);
        default beside the source (``users.rejects.csv``), or a temp folder for a DataFrame.
    :param dry_run_path: NDJSON of the would-be requests; default beside the source (``users.dry_run.ndjson``).
    :param max_failed_ratio: fail the task at the end when the rows rejected for their data or failed at
        the vendor exceed this share of the rows read (the result goes to XCom ``summary`` first).
    :param max_concurrency: requests in flight at once (threads sharing one pooled session).
    :param requests_per_second: client-side rate limit (default ~195/s, under the vendor's ~200/s).
    :param progress_interval: seconds between progress lines in the log.
    :param max_requests: at most this many API requests in the run (retries and the model read included),
        to stay inside the vendor's daily quota (about 1M requests a day per subscription); rows left
        when it is reached are not sent: counted as rejected, listed in the rejects file with the reason.
        ``details["requests"]`` says how many were sent. The next run of the DAG resumes where this one
        stopped (same input, entity and mapping), its result covering the whole input.
    :param checkpoint_interval: seconds between checkpoints of the records answered so far (in the task
        state, see ``operators.base.task_state``): a retry resumes from the last one and sends no record
        the earlier tries had answered; its result covers the whole input, the earlier tries' rejects
        rows included.

    Returns the shared result (``operators.result``): rows updated or inserted are ``vendor_succeeded``,
    requests the vendor refused ``vendor_failed``, rows it does not have (update only) and dry-run rows
    ``skipped``; ``details`` has ``updated``, ``inserted``, ``missing``, ``over_budget``, ``requests``,
    ``rejects_path`` and ``dry_run_path``.
    """

    template_fields = ("source", "entity", "field_mapping", "field_types", "rejects_path", "dry_run_path")
    template_fields_renderers = {"field_mapping": "json", "field_types": "json"}
    ui_color = "#d9f2e6"
    operator_extra_links = (PX_LINK, REJECTS_LINK)
    vendor = "gainsight_px"

    def __init__(
        self,
        *,
        source: Any,
        field_mapping: Mapping[str, str],
        entity: str = "USER",
        field_types: Mapping[str, str] | None = None,
        conn_id: str | None = None,
        insert_missing: bool = False,
        dry_run: bool = False,
        verbose: bool = False,
        input_format: str | None = None,
        encoding: str = "utf-8",
        delimiter: str = ",",
        rejects_path: str | None = None,
        dry_run_path: str | None = None,
        max_failed_ratio: float | None = None,
        max_concurrency: int = 16,
        requests_per_second: float | None = None,
        progress_interval: float = 5.0,
        max_requests: int | None = None,
        storage_conn_id: str | None = None,
        checkpoint_interval: float = 30.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.storage_conn_id = storage_conn_id
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be at least 1, got {max_concurrency}")
        if max_requests is not None and max_requests < 1:
            raise ValueError(f"max_requests must be at least 1, got {max_requests}")
        if insert_missing and str(entity).upper() == "CUSTOM_EVENT":
            raise ValueError("insert_missing does not apply to CUSTOM_EVENT: events are always inserted")
        self.source = source
        self.entity = entity
        self.field_mapping = field_mapping
        self.field_types = field_types
        self.conn_id = conn_id or GainsightPXHook.default_conn_name
        self.insert_missing = insert_missing
        self.dry_run = dry_run
        self.verbose = verbose
        self.input_format = input_format
        self.encoding = encoding
        self.delimiter = delimiter
        self.rejects_path = rejects_path
        self.dry_run_path = dry_run_path
        self.max_failed_ratio = max_failed_ratio
        self.max_concurrency = max_concurrency
        self.requests_per_second = requests_per_second
        self.progress_interval = progress_interval
        self.max_requests = max_requests
        self.checkpoint_interval = checkpoint_interval

    # --- lineage and asset: the file in, the subscription's records of the entity out --------------
    def lineage_source(self) -> Any:
        return None if self._is_dataframe() else self.source

    def lineage_scope(self) -> dict[str, Any]:
        product = self.hook.product_key
        entity = {"entity": str(self.entity).lower()}
        return {"product": product, **entity} if product else entity

    @cached_property
    def hook(self) -> GainsightPXHook:
        """The connection's hook for lineage (the load itself uses one sized for its pool)."""
        return GainsightPXHook(self.conn_id)

    # --- input --------------------------------------------------------------------------------------
    def _is_dataframe(self) -> bool:
        return hasattr(self.source, "itertuples") and hasattr(self.source, "columns")

    @contextlib.contextmanager
    def _input(self) -> Iterator[_DataFrameInput | _FileInput]:
        """The input, opened and checked whole (a malformed file raises InputError, naming file and line)."""
        if self._is_dataframe():
            yield _DataFrameInput(self.source)
            return
        with connected(os.path.join(tempfile.gettempdir(), "gainsight_px")) as connection:
            yield _FileInput(connection, self.source, self.input_format, self.delimiter, self.encoding)

    def _check_input(self, record_format: GainsightPXRecordFormat, source: _DataFrameInput | _FileInput) -> int:
        """The mapped columns are in the input, before anything is sent; returns the row count."""
        missing = record_format.missing_columns(source.names)
        if source.names and missing:
            mapped = {column: field for field, column in record_format.field_mapping.items()}
            raise InputError(
                source.label,
                "field_mapping refers to column(s) not in the input: "
                + ", ".join(f"{column!r} (for {mapped[column]})" for column in missing)
                + f"; the input has {', '.join(map(repr, source.names))}",
                line=1,
                column=missing[0],
            )
        return source.total

    def _fingerprint(self, record_format: GainsightPXRecordFormat, source: Any) -> dict[str, Any]:
        """What a checkpoint is valid for: the same input (name and record count) loaded the same way."""
        how = json.dumps([record_format.entity, dict(self.field_mapping), dict(self.field_types or {}),
                          self.insert_missing], sort_keys=True, default=str)
        return {"source": source.label, "records": source.total,
                "load": hashlib.sha256(how.encode()).hexdigest()[:16]}

    def _default_output(self, context: Any, suffix: str) -> Any:
        if not self._is_dataframe():
            return _sibling(as_storage_path(self.source), suffix)
        ti = context["ti"]
        folder = os.path.join(tempfile.gettempdir(), "gainsight_px", ti.dag_id, ti.run_id.replace(":", "_"))
        return os.path.join(folder, f"{ti.task_id}{'' if ti.map_index < 0 else f'.{ti.map_index}'}{suffix}")

    # --- run --------------------------------------------------------------------------------------------
    def execute(self, context: Any) -> dict[str, Any]:
        record_format = GainsightPXRecordFormat(self.entity, self.field_mapping, self.field_types)
        given = self.source
        if self._is_dataframe():
            empty = len(self.source) == 0
        else:
            self.source = input_file(self.source, self.storage_conn_id, what="source", file_format=self.input_format)
            empty = self.source is None
        if empty:
            self.log.info("nothing to send in %s: no request sent to Gainsight PX", "a DataFrame" if
                          self._is_dataframe() else given)
            return nothing_sent("DataFrame" if self._is_dataframe() else given)
        hook = GainsightPXHook(self.conn_id, requests_per_second=self.requests_per_second,
                               pool_size=self.max_concurrency, max_requests=self.max_requests)
        if not self.dry_run and not hook.product_key:
            raise AirflowException(
                f"every Gainsight PX write carries the product key (propertyKeys): set the extra 'product_key' "
                f"(AP-XXXXXXXXXXXX-2) on connection {self.conn_id!r}"
            )
        hook.connection  # noqa: B018  (read now: its base URL decides the link)
        store_links(context, {PX_LINK: console_or_api(hook.base_url, GainsightPXHook, PX_APP, None)}, self.log)
        with self._input() as source:
            total = self._check_input(record_format, source)
            if record_format.entity != "CUSTOM_EVENT":  # events have no model
                try:
                    record_format.apply_model(hook.attribute_types(record_format.entity))
                except VendorAuthError as error:
                    hook.close()
                    raise AirflowException(f"Gainsight PX refused the API key ({error}); nothing was sent") from None
            rejects_path = _prepare_output(self.rejects_path or self._default_output(context, ".rejects.csv"))
            dry_run_path = None
            if self.dry_run:
                dry_run_path = _prepare_output(self.dry_run_path or self._default_output(context, ".dry_run.ndjson"))
            mode = "dry run" if self.dry_run else ("update or insert" if self.insert_missing else "update only")
            self.log.info("loading %d %s rows into Gainsight PX (%s, %d in flight at most)", total,
                          record_format.entity, mode, self.max_concurrency)
            checkpoints = saved = None
            if not self.dry_run:
                # a DataFrame has no name to tell one run's from the next: it resumes within a run only
                checkpoints = _Checkpoints(self, context, self._fingerprint(record_format, source),
                                           across_runs=not self._is_dataframe())
                saved = checkpoints.load()
            run = _LoadRun(self, hook, record_format, source, saved)
            with RejectsFile(rejects_path) as rejects:
                run.rejects = rejects
                try:
                    if self.dry_run:
                        with open_binary(dry_run_path, "wb") as raw, io.TextIOWrapper(raw, encoding="utf-8") as out:
                            run.dry_run(out)
                    else:
                        if saved:
                            _carry_rejects(saved, rejects, self.log)
                            self.log.info("resuming after record %d of %d: earlier tries answered %d rows (%s)",
                                          run.confirmed.position, total, run.confirmed.counts["rows_read"],
                                          saved["counts"])
                        run.checkpoint = lambda: checkpoints.save(run.confirmed, rejects_path)
                        try:
                            run.send()
                        except BaseException:
                            run.checkpoint()  # a retry resumes here
                            raise
                        if run.counts["over_budget"] and checkpoints.across_runs:
                            checkpoints.save(run.confirmed, rejects_path, for_next_run=True)
                        else:
                            checkpoints.clear()  # the input is complete
                finally:
                    hook.close()
        details: dict[str, Any] = {"entity": record_format.entity, "requests": hook.requests_sent}
        if rejects.count:
            details["rejects_path"] = str(rejects_path)
            store_links(context, {REJECTS_LINK: storage_url(rejects_path)}, self.log)
        if dry_run_path is not None:
            details["dry_run_path"] = str(dry_run_path)
        summary = run.summary(details)
        self.log.info("Gainsight PX %s load done in %.1fs: %s", record_format.entity, run.elapsed(), summary)
        failed = run.counts["rejected"] + run.counts["failed"]
        ratio = failed / summary["read"] if summary["read"] else 0.0
        if self.max_failed_ratio is not None and ratio > self.max_failed_ratio:
            context["ti"].xcom_push(key="summary", value=summary)
            raise AirflowException(
                f"{failed} of {summary['read']} rows were rejected or failed ({ratio:.2%}), more than "
                f"max_failed_ratio={self.max_failed_ratio:.2%}; see {details.get('rejects_path')}"
            )
        if not self.dry_run:  # a dry run lands nothing
            self.emit_assets(context, summary)
        return summary


class _LoadRun:
    """One execution of the loader: counts, the pool, the rejects file."""

    def __init__(self, operator: GainsightPXLoadOperator, hook: GainsightPXHook,
                 record_format: GainsightPXRecordFormat, source: _DataFrameInput | _FileInput,
                 saved: Mapping[str, Any] | None = None):
        self.operator, self.hook, self.format, self.source = operator, hook, record_format, source
        self.total = source.total
        self.log = operator.log
        # what earlier tries answered is counted once, from their checkpoint, and not sent again
        self.confirmed = _Confirmed(saved)
        self.counts = dict(self.confirmed.counts)
        self.checkpoint: Any = None  # saves self.confirmed (set when sending)
        self._last_checkpoint = time.monotonic()
        self._held_skips: list[tuple[int, str | None, str]] | None = None
        self.rejects: RejectsFile | None = None
        self.started = time.monotonic()
        self.progress = Progress(
            self.total, operator.progress_interval, label="Gainsight PX load progress", doing="loading",
            done_verb="loaded", log=operator.log, already=self.counts["rows_read"],  # resumed: this try's rate
            detail=lambda: ", ".join(f"{key} {self.counts[key]}" for key in SUMMARY_KEYS[1:]))
        self._pause = SharedPause()  # no thread sends before its end (after a 429 storm)
        self._auth_error = ""
        self._budget_reached = False

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def summary(self, details: dict[str, Any]) -> dict[str, Any]:
        """The shared result: rows left unsent at the request budget are rejected (listed in the rejects
        file with the reason), records the vendor does not have (update only) and dry-run rows skipped."""
        counts = dict(self.counts)
        outcomes = sum(counts[key] for key in SUMMARY_KEYS[1:])
        if outcomes != counts["rows_read"]:  # a bug, not a data problem: say so loudly
            raise AirflowException(f"counts do not reconcile: {counts}")
        return records_result(
            read=counts["rows_read"], rejected=counts["rejected"] + counts["over_budget"],
            skipped=counts["missing"] + counts["dry_run"], vendor_succeeded=counts["updated"] + counts["inserted"],
            vendor_failed=counts["failed"],
            details={key: counts[key] for key in ("updated", "inserted", "missing", "over_budget")} | details,
        )

    def _rows(self) -> Iterator[tuple[int, int, dict[str, Any]]]:
        """(position, line, record) of every valid row not answered by an earlier try; invalid ones go
        to the rejects file on the way."""
        position = -1
        for batch in self.source.batches():
            for line, identifier, reason in batch.rejected:
                position += 1
                if not self.confirmed.covers(position):
                    self.counts["rows_read"] += 1
                    self._reject(line, identifier, reason)
                    self.confirmed.answer(position, "rejected", rejects_row=True)
            for line, row in zip(batch.lines, batch.rows):
                position += 1
                if self.confirmed.covers(position):
                    continue
                self.counts["rows_read"] += 1
                try:
                    yield position, line, self.format.build(row)
                except RowRejected as rejected:
                    self._reject(line, self.format.record_id(row), rejected.reason)
                    self.confirmed.answer(position, "rejected", rejects_row=True)

    def _reject(self, line: int, identifier: str | None, reason: str, status: int | None = None,
                key: str = "rejected") -> None:
        self.counts[key] += 1
        self.rejects.add(line, identifier, reason, status)
        logged = self.counts["rejected"] + self.counts["failed"]
        if logged <= MAX_LOGGED_REJECTS or self.operator.verbose:
            self.log.warning("line %s (%s): %s %s", line, identifier or "no id", key, reason)
        elif logged == MAX_LOGGED_REJECTS + 1:
            self.log.warning("more rejected or failed rows: only counted from now on (verbose=True logs each); "
                             "every one is in %s", self.rejects.path)

    def _progress(self, force: bool = False) -> None:
        """Rows read so far, rate and ETA at the operator's interval; ``force``: the closing line."""
        self.progress.advance(self.counts["rows_read"] - self.progress.done)
        if force:
            self.progress.finish()

    def _skip(self, line: int, identifier: str | None, reason: str) -> None:
        """A row not sent for the request budget: listed in the rejects file, so it can be sent later.
        While requests are in flight these rows are held back, so that the rows of answered records
        come first in the file (the checkpoint counts those)."""
        self.counts["over_budget"] += 1
        if self._held_skips is not None:
            self._held_skips.append((line, identifier, reason))
        else:
            self.rejects.add(line, identifier, reason, None)

    def _maybe_checkpoint(self) -> None:
        now = time.monotonic()
        if self.checkpoint is None or now - self._last_checkpoint < self.operator.checkpoint_interval:
            return
        self._last_checkpoint = now
        handle = getattr(self.rejects, "_handle", None)
        if handle is not None:
            handle.flush()  # the rows the checkpoint counts are in the file before it says so
        self.checkpoint()

    # --- dry run ----------------------------------------------------------------------------------
    def dry_run(self, out: Any) -> None:
        action = "update_or_insert" if self.operator.insert_missing else "update"
        if self.format.entity == "CUSTOM_EVENT":
            action = "insert"
        for _, line, record in self._rows():
            out.write(json.dumps({"line": line, "action": action, "entity": self.format.entity,
                                  "id": record[self.format.id_field], "body": record}, ensure_ascii=False) + "\n")
            self.counts["dry_run"] += 1
            if self.operator.verbose:
                self.log.info("line %d: would %s %s %s", line, action, self.format.entity, record[self.format.id_field])
            self._progress()

    # --- sending ------------------------------------------------------------------------------------
    def _send_one(self, record: dict[str, Any]) -> Outcome:
        def send() -> Outcome:
            if self.format.entity == "CUSTOM_EVENT":
                self.hook.create_custom_event(record)
                return Outcome.INSERTED
            return self.hook.upsert(self.format.entity, record, self.operator.insert_missing)

        policy = self.hook.policy
        room = CapacityWait("room under the rate limit", policy.clock() + RATE_LIMITED_WAIT,
                            interval=RATE_LIMITED_PAUSE, backoff=2.0, pause=self._pause)
        return policy.wait_for_capacity(send, self.log, room)

    def send(self) -> None:
        self.hook.connection  # noqa: B018  (load and mask once, before the threads start)
        window = 2 * self.operator.max_concurrency  # enough queued to keep every thread busy, no more
        pending: dict[Future, tuple[int, int, str]] = {}
        in_flight: set[str] = set()
        abort = threading.Event()
        executor = ThreadPoolExecutor(max_workers=self.operator.max_concurrency, thread_name_prefix="gainsight_px")

        def collect() -> None:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in done:
                position, line, record_id = pending.pop(future)
                in_flight.discard(record_id)
                self._settle(future, position, line, record_id, abort)
            self._progress()
            self._maybe_checkpoint()

        rows = self._rows()
        self._held_skips = []
        try:
            for position, line, record in rows:
                record_id = str(record[self.format.id_field])
                # rows for the same id go in input order, one at a time: the last row wins, as in the file
                while pending and (len(pending) >= window or record_id in in_flight):
                    collect()
                if abort.is_set():
                    break
                if self._budget_reached:
                    self._skip(line, record_id, self._budget_reason())
                    break
                pending[executor.submit(self._send_one, record)] = (position, line, record_id)
                in_flight.add(record_id)
            while pending:
                collect()
        finally:
            executor.shutdown(wait=True, cancel_futures=True)
            held, self._held_skips = self._held_skips, None
            for line, record_id, reason in held:
                self.rejects.add(line, record_id, reason, None)
        if self._budget_reached:  # the rest of the input is read, checked and listed, not sent
            for _, line, record in rows:
                self._skip(line, str(record[self.format.id_field]), self._budget_reason())
            self.log.warning("max_requests=%d reached: %d rows were not sent; they are listed in %s",
                             self.operator.max_requests, self.counts["over_budget"], self.rejects.path)
        self._progress(force=True)
        if abort.is_set():
            raise AirflowException(f"Gainsight PX refused the API key ({self._auth_error}); stopped after "
                                   f"{self.counts['rows_read']} of {self.total} rows: {self.counts}")

    def _budget_reason(self) -> str:
        return f"not sent: max_requests={self.operator.max_requests} reached in this run"

    def _settle(self, future: Future, position: int, line: int, record_id: str, abort: threading.Event) -> None:
        error = future.exception()
        if error is None:
            outcome = future.result()
            key = {Outcome.UPDATED: "updated", Outcome.INSERTED: "inserted"}.get(outcome, "missing")
            self.counts[key] += 1
            self.confirmed.answer(position, key)
            if self.operator.verbose:
                self.log.info("line %d: %s %s %s", line, self.format.entity, record_id, outcome.value)
            return
        if isinstance(error, RequestBudgetExhausted):
            self._budget_reached = True
            self._skip(line, record_id, self._budget_reason())
            return
        if not isinstance(error, VendorAPIError):
            raise error
        if isinstance(error, VendorAuthError):
            # the key was refused, not the record: it stays unanswered, so a retry sends it
            self._auth_error = str(error)
            abort.set()
            return
        reason = f"{type(error).__name__}: {error.vendor_message}"
        if error.attempts > 1:
            reason += f" (after {error.attempts} attempts)"
        self._reject(line, record_id, reason, error.status, key="failed")
        self.confirmed.answer(position, "failed", rejects_row=True)


class GainsightPXExportOperator(BaseOperator):
    """Stream Gainsight PX users or accounts matching filters to an NDJSON or CSV file.

    For backfills, audits and reconciling what a load did. Returns ``{"path", "count"}``.

    :param output_path: local path or object-storage URI; ``.csv`` writes CSV, anything else NDJSON
        (or set ``output_format``).
    :param entity: ``USER`` or ``ACCOUNT``.
    :param filters: see ``hooks.gainsight_px.build_filters``: a dict of exact matches, a
        ``(field, operator, value)`` condition or a list of them (AND), or a list of such groups (OR).
    :param sort: field name(s) as the API takes them.
    :param fields: CSV columns as dotted paths (``location.city``); default: the fields of the first page.
        Nested values are flattened to dotted columns, so the file can be fed back to the loader.
    :param page_size: records per request (at most 1000).
    :param limit: stop after this many records.
    """

    template_fields = ("output_path", "entity", "filters", "sort", "fields")
    template_fields_renderers = {"filters": "json"}

    def __init__(
        self,
        *,
        output_path: str,
        entity: str = "USER",
        filters: Any = None,
        sort: str | list[str] | None = None,
        fields: list[str] | None = None,
        output_format: str | None = None,
        page_size: int = 1000,
        limit: int | None = None,
        conn_id: str | None = None,
        requests_per_second: float | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.output_path = output_path
        self.entity = entity
        self.filters = filters
        self.sort = sort
        self.fields = fields
        self.output_format = output_format
        self.page_size = page_size
        self.limit = limit
        self.conn_id = conn_id or GainsightPXHook.default_conn_name
        self.requests_per_second = requests_per_second

    def execute(self, context: Any) -> dict[str, Any]:
        output_format = (self.output_format or ("csv" if str(self.output_path).lower().endswith(".csv") else "ndjson"))
        if output_format not in ("csv", "ndjson"):
            raise ValueError(f"output_format must be csv or ndjson, not {output_format!r}")
        hook = GainsightPXHook(self.conn_id, requests_per_second=self.requests_per_second)
        records = hook.iter_records(self.entity, self.filters, sort=self.sort, page_size=self.page_size,
                                    limit=self.limit)
        path = _prepare_output(self.output_path)
        count = 0
        try:
            with open_binary(path, "wb") as raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as out:
                if output_format == "ndjson":
                    for record in records:
                        out.write(json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n")
                        count += 1
                else:
                    count = self._write_csv(out, records)
        finally:
            hook.close()
        self.log.info("exported %d Gainsight PX %s records to %s", count, str(self.entity).upper(), path)
        return {"path": path_text(path), "count": count}

    def _write_csv(self, out: Any, records: Iterator[dict]) -> int:
        first_page: list[dict] = []
        columns = list(self.fields or [])
        if not columns:  # the fields of the first page, in first-seen order; bounded by page_size
            for record in records:
                first_page.append(flatten(record))
                if len(first_page) >= self.page_size:
                    break
            columns = list(dict.fromkeys(key for record in first_page for key in record))
        out.write(csv_line(columns))
        count, dropped = 0, set()

        def cell(value: Any) -> str:
            return "" if value is None else to_text(value)

        for flat in itertools.chain(first_page, (flatten(record) for record in records)):
            dropped.update(flat.keys() - set(columns))
            out.write(csv_line([cell(flat.get(column)) for column in columns]))
            count += 1
        if dropped:
            self.log.warning("fields not in the CSV columns were left out: %s (pass fields= to choose)",
                             ", ".join(sorted(dropped)))
        return count


class GainsightPXEraseOperator(EraseOneByOneOperator):
    """Erase users (or accounts) from Gainsight PX by id, ``hardDelete`` by default (a soft delete
    keeps the data). See ``EraseOneByOneOperator`` for the id sources and the report.

    :param entity: ``user`` (ids are identifyIds) or ``account``.
    :param hard_delete: delete for good rather than mark as deleted.
    """

    hook_class = GainsightPXHook
    vendor = "gainsight_px"

    def __init__(self, *, entity: str = "user", hard_delete: bool = True, **kwargs: Any):
        super().__init__(**kwargs)
        if entity not in ("user", "account"):
            raise ValueError(f"entity must be 'user' or 'account', not {entity!r}")
        self.entity, self.hard_delete = entity, hard_delete

    def erase_one(self, hook: Any, identifier: str) -> bool:
        hard_delete = self.hard_delete
        if self.entity == "account":
            account_id = identifier
            return hook.delete_account(account_id, hard_delete=hard_delete)
        identify_id = identifier
        return hook.delete_user(identify_id, hard_delete=hard_delete)


# --- a declared sync's upload to this vendor (sync_group.ProfilesSync) ---------------------------------


class GainsightPXSyncAdapter(SyncAdapter):
    options = {"entity": "USER", "field_types": None}
    modes = {"upsert": "", "update": "",
             "mirror": "the loader writes records one request each and the writer has no deletion line"}
    _types = {"string": "string", "int": "integer", "number": "number", "bool": "boolean", "date": "date",
              "datetime": "date", "epoch_ms": "date"}

    def plan(self, options, mapping, mode):
        field_mapping, field_types = {}, dict(options["field_types"] or {})
        for target, spec in mapping.items():
            column = source_column(target, spec)
            if not column:
                raise ValueError(f"mapping[{target!r}]: Gainsight PX fields take an input column (or a dict with 'source')")
            field_mapping[target] = column
            if isinstance(spec, Mapping) and "type" in spec:
                if spec["type"] not in self._types:
                    raise ValueError(f"mapping[{target!r}]: type {spec['type']!r} is not one Gainsight PX takes; "
                                     f"use one of {', '.join(self._types)}")
                field_types[target] = self._types[spec["type"]]
        writer_options = {"entity": options["entity"], "field_mapping": field_mapping, "field_types": field_types or None}
        try:
            writer_class("gainsight_px", "records")(**writer_options)
        except ValueError as error:
            problem = str(error)
            raise ValueError(problem if problem.startswith("entity") else f"mapping: {problem}") from None
        return SyncPlan("records", writer_options, None, files=False)

    def upload(self, group_id, options, conn_id, plan, mode, files, extra):
        return GainsightPXLoadOperator(
            task_id="load", source=files, input_format="ndjson", entity=options["entity"],
            field_mapping={target: target for target in plan.writer_options["field_mapping"]},
            field_types=plan.writer_options["field_types"], insert_missing=mode == "upsert",
            **conn_kwargs(conn_id), **extra,
        )
