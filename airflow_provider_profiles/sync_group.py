"""A sync declared once: source, destination, mapping and mode in, an Airflow task group out.

    from airflow_provider_profiles.sync_group import Destination, ProfilesSync, SqlSource

    ProfilesSync(
        group_id="crm_to_localytics",
        source=SqlSource("warehouse", "SELECT id, plan, city FROM users"),
        destination=Destination("localytics", customer_id="id", org_id="60"),
        mapping={"id": "id", "plan": "plan", "city": "city"},
        mode="upsert", only_changed=True,
        work_folder="s3://bucket/profiles",
        max_invalid_ratio=0.05, max_row_count_change=0.5,
    )

expands into ``prepare -> split -> upload (mapped, deferrable) -> commit -> report`` (Gainsight PX:
``prepare -> load -> commit -> report``, its pooled loader takes records, not files), and with
``preview=True`` into ``preview_state -> prepare -> preview``: what a run would send, nothing sent
and no sync state committed. Everything is checked when the DAG is parsed: a wrong vendor, option,
format, mapping or mode is a ``ValueError`` naming the field. ``partitions=N`` runs N such pipelines
side by side, each with its own sync state (see ``ProfilesSync``).

``mapping`` is ``{destination field: input column or spec}`` (see ``prepare.mapping``); what a
vendor does with it and with its ``Destination`` options is its adapter's business (its ``VendorSpec.sync_adapter``).
Every option of the individual operators stays reachable through ``prepare_options``,
``split_options``, ``upload_options``, ``commit_options`` and ``report_options``.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from airflow.providers.common.compat.sdk import AirflowException, AirflowFailException, BaseOperator

from airflow_provider_profiles.operators.result import results_of, total
from airflow_provider_profiles.operators.sync_adapter import REQUIRED, SyncAdapter, SyncPlan
from airflow_provider_profiles.prepare.mapping import FieldMapping
from airflow_provider_profiles.vendors import load, vendor as vendor_spec
from airflow_provider_profiles.writers import writer_class

MODES = ("upsert", "update", "mirror")
RUN_FOLDER = "{{ run_id | replace(':', '_') | replace('+', '_') }}"  # defined for every run, manual ones too
SAMPLE = 5
STAGES = ("extract", "prepare", "split", "upload", "vendor wait", "commit")


class SyncDeclarationError(ValueError):
    """A declaration that cannot run; the message names the field."""

    def __init__(self, group_id: str, field_name: str, problem: str):
        self.field = field_name
        super().__init__(f"ProfilesSync {group_id!r}: {field_name}: {problem}")


# --- the declaration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SqlSource:
    """Rows from a query on any common-sql connection."""

    conn_id: str
    sql: str
    parameters: Any = None


@dataclass(frozen=True)
class FileSource:
    """CSV, NDJSON or Parquet, local or in object storage (``format`` None: by the suffix).

    ``path`` is one file, or a list of files and glob patterns (``s3://bucket/users/*.csv``) read as
    one input: the same columns in each, a pattern's matches in name order, each reject named by its
    file and its record number there. With ``ProfilesSync(partitions=N)`` the files are the
    partitions: file i (in that order) goes to partition i mod N."""

    path: str | Sequence[str]
    format: str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"

    @property
    def paths(self) -> list[str]:
        return [self.path] if isinstance(self.path, str) else list(self.path)


INPUT_FORMATS = (None, "csv", "ndjson", "parquet")


@dataclass(frozen=True)
class Destination:
    """A vendor, its connection and its options (each vendor's are listed in its adapter)."""

    vendor: str
    conn_id: str | None = None
    options: dict[str, Any] = field(default_factory=dict)

    def __init__(self, vendor: str, conn_id: str | None = None, **options: Any):
        object.__setattr__(self, "vendor", vendor)
        object.__setattr__(self, "conn_id", conn_id)
        object.__setattr__(self, "options", options)


# --- stage clocks: each task of the group notes when it ran, for the report --------------------------


def _clock_start(context: Any) -> None:
    """Before execute (and again when a deferred task resumes): first start, then resumes."""
    ti = context["ti"]
    # a deferred task resuming runs with the method to resume in (the task runner's context)
    resumed = getattr(getattr(ti, "_ti_context_from_server", None), "next_method", None)
    ti.xcom_push(key="sync_resumed" if resumed else "sync_started", value=time.time())


def _clock_end(context: Any, result: Any = None) -> None:
    context["ti"].xcom_push(key="sync_ended", value=time.time())


# --- preview ------------------------------------------------------------------------------------------


class SyncStateCopyOperator(BaseOperator):
    """Copies the committed sync state (CURRENT and the files it names) for a preview to use, so a
    preview compares with the real state and leaves it untouched."""

    template_fields: Sequence[str] = ("sync_state_path", "copy_path")

    def __init__(self, *, sync_state_path: str, copy_path: str, storage_conn_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.sync_state_path, self.copy_path, self.storage_conn_id = sync_state_path, copy_path, storage_conn_id

    def execute(self, context: Any) -> str | None:
        from airflow_provider_profiles.prepare.sync import CURRENT, SENT_SUFFIX, SyncState
        from airflow_provider_profiles.storage import as_storage_path, open_binary, write_whole

        source = as_storage_path(self.sync_state_path, self.storage_conn_id)
        target = as_storage_path(self.copy_path, self.storage_conn_id)
        current = SyncState(source).current()
        if current is None:
            self.log.info("no committed sync in %s: the preview sends every row", source)
            return None
        names = [current["snapshot"], *(f"snapshots/{attempt}{SENT_SUFFIX}" for attempt in current.get("resend", [])
                                        if attempt != "*")]
        for name in names:
            if (source / name).exists():
                with (source / name).open("rb") as data, open_binary(target / name, "wb") as copy:
                    shutil.copyfileobj(data, copy)
        write_whole(target / CURRENT, json.dumps(current))
        return str(target)


class SyncPreviewOperator(BaseOperator):
    """What the sync would do: new, changed, unchanged, deleted and invalid rows, with a sample of each.

    Reads what the prepare task wrote against a copy of the sync state; sends nothing, commits nothing.
    """

    template_fields: Sequence[str] = ("state_copy_path", "sync_state_path")

    def __init__(self, *, prepare_task_id: str, state_copy_path: str, sync_state_path: str | None,
                 sample: int = SAMPLE, storage_conn_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.prepare_task_id, self.state_copy_path, self.sync_state_path = prepare_task_id, state_copy_path, sync_state_path
        self.sample, self.storage_conn_id = sample, storage_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        prepared = context["ti"].xcom_pull(task_ids=self.prepare_task_id)
        keys = _key_breakdown(self.state_copy_path, prepared, self.sample, self.storage_conn_id) \
            if self.sync_state_path else None
        lines = _first_lines(prepared["output"], self.sample, self.storage_conn_id)
        invalid = _rejects_rows(prepared.get("rejects"), self.storage_conn_id)
        written = prepared["written"]
        preview = {
            "read": prepared["read"],
            "new": keys["new"] if keys else written,
            "changed": keys["changed"] if keys else 0,
            "unchanged": prepared["unchanged"],
            "deleted": prepared["deleted"],
            "invalid": prepared["rejected"],
            "to_send": written + prepared["deleted"],
            "samples": {
                **({name: keys["samples"][name] for name in keys["samples"]} if keys else {}),
                "lines": lines,
                "invalid": [{"line": row["line"], "id": row["identifier"], "reason": row["reason"]}
                            for row in invalid[: self.sample]],
            },
            "output": prepared["output"],
        }
        table = [(name, preview[name]) for name in ("read", "new", "changed", "unchanged", "deleted", "invalid", "to_send")]
        self.log.info("preview (nothing sent, nothing committed):\n%s\nsamples: %s", _table(table),
                      json.dumps(preview["samples"], indent=1, default=str))
        return preview


def _key_breakdown(state_path: str, prepared: Mapping[str, Any], sample: int, conn_id: str | None) -> dict[str, Any]:
    """New / changed / unchanged / deleted keys: this attempt's snapshot and sent keys against CURRENT's."""
    from airflow_provider_profiles.prepare.engine import connected
    from airflow_provider_profiles.prepare.sql import literal
    from airflow_provider_profiles.prepare.sync import SENT_SUFFIX, SNAPSHOT_SUFFIX, SyncState, readable, run_key_of
    from airflow_provider_profiles.storage import as_storage_path

    state = as_storage_path(state_path, conn_id)
    current = SyncState(state).current()
    key = run_key_of(prepared["sync_run_key"])
    attempts = [path for path in sorted(((state / "snapshots").iterdir() if (state / "snapshots").exists() else []),
                                        key=lambda path: path.stat().st_mtime)
                if path.name.startswith(f"{key}.") and path.name.endswith(SENT_SUFFIX)]
    with connected(prepared["output"]) as connection:
        def table(name: str, path: Any) -> None:
            if path is None:
                connection.execute(f"CREATE TEMP TABLE {name} (key VARCHAR)")
            else:
                connection.execute(f"CREATE TEMP TABLE {name} AS SELECT key FROM read_parquet({literal(readable(connection, path))})")

        snapshots = sorted((path for path in (state / "snapshots").iterdir() if path.name.startswith(f"{key}.")
                            and path.name.endswith(SNAPSHOT_SUFFIX) and not path.name.endswith(SENT_SUFFIX)),
                           key=lambda path: path.stat().st_mtime) if (state / "snapshots").exists() else []
        table("old", state / current["snapshot"] if current else None)
        table("now", snapshots[-1] if snapshots else None)
        if attempts:
            table("sent", attempts[-1])
        else:  # nothing to compare with: every row of the snapshot is sent
            connection.execute("CREATE TEMP TABLE sent AS SELECT key FROM now")

        def keys(query: str) -> tuple[int, list[str]]:
            count = connection.execute(f"SELECT count(*) FROM ({query})").fetchone()[0]
            found = [row[0] for row in connection.execute(f"SELECT key FROM ({query}) ORDER BY key LIMIT {int(sample)}").fetchall()]
            return count, found

        breakdown = {
            "new": keys("SELECT key FROM sent WHERE key IN (SELECT key FROM now) AND key NOT IN (SELECT key FROM old)"),
            "changed": keys("SELECT key FROM sent WHERE key IN (SELECT key FROM now) AND key IN (SELECT key FROM old)"),
            "unchanged": keys("SELECT key FROM now WHERE key NOT IN (SELECT key FROM sent)"),
            "deleted": keys("SELECT key FROM sent WHERE key NOT IN (SELECT key FROM now)"),
        }
    return {"new": breakdown["new"][0], "changed": breakdown["changed"][0],
            "samples": {name: found for name, (_, found) in breakdown.items()}}


def _first_lines(path: str, count: int, conn_id: str | None) -> list[str]:
    from airflow_provider_profiles.storage import as_storage_path

    lines = []
    with as_storage_path(path, conn_id).open("r", encoding="utf-8") as handle:
        for line in handle:
            lines.append(line.rstrip("\n"))
            if len(lines) > count:
                break
    return lines


def _rejects_rows(path: str | None, conn_id: str | None) -> list[dict[str, str]]:
    from airflow_provider_profiles.storage import as_storage_path

    if not path:
        return []
    target = as_storage_path(path, conn_id)
    if not target.exists():
        return []
    with target.open("r", encoding="utf-8", newline="") as handle:
        # the prepare engine numbers input records ("record", and "file" when it read several); the
        # loaders' rejects say "line"
        return [{**row, "line": row.get("line") or (f"{row['file']}:{row.get('record')}" if row.get("file")
                                                    else row.get("record"))} for row in csv.DictReader(handle)]


# --- the report -----------------------------------------------------------------------------------


class SyncThresholdExceeded(AirflowException):
    """A sync's counts crossed a threshold the declaration set."""


class SyncReportOperator(BaseOperator):
    """One report per run: counts from every stage, reconciled; seconds per stage and the bottleneck;
    one CSV of every record that did not make it; the thresholds checked.

    Runs whatever happened upstream (``all_done``), so a failed upload is reported too, and then
    fails the report. The counts must reconcile: ``read = invalid + unchanged + written`` at prepare,
    the uploads read what prepare wrote (deletion lines included), ``read = rejected + skipped + sent``
    and ``sent = vendor_succeeded + vendor_failed`` at the vendor; otherwise the report fails naming
    the stage that lost rows.
    """

    template_fields: Sequence[str] = ("not_sent_path", "last_run_path")

    def __init__(
        self,
        *,
        stages: Mapping[str, Sequence[str]],
        prepare_task_id: str | Sequence[str],
        upload_task_id: str | Sequence[str],
        commit_task_id: str | Sequence[str] | None,
        not_sent_path: str,
        last_run_path: str,
        max_invalid_ratio: float | None = None,
        max_vendor_failed_ratio: float | None = None,
        max_row_count_change: float | None = None,
        on_threshold: str = "fail",
        storage_conn_id: str | None = None,
        check_task_ids: Sequence[str] | None = None,
        **kwargs: Any,
    ):
        kwargs.setdefault("trigger_rule", "all_done")
        super().__init__(**kwargs)
        if on_threshold not in ("fail", "warn"):
            raise ValueError(f"on_threshold must be 'fail' or 'warn', got {on_threshold!r}")
        for name, value in (("max_invalid_ratio", max_invalid_ratio), ("max_vendor_failed_ratio", max_vendor_failed_ratio),
                            ("max_row_count_change", max_row_count_change)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
                raise ValueError(f"{name} must be a ratio >= 0 (0.05 for 5%), got {value!r}")
        self.stages = {name: list(ids) for name, ids in stages.items()}
        self.prepare_task_id, self.upload_task_id, self.commit_task_id = prepare_task_id, upload_task_id, commit_task_id
        self.not_sent_path, self.last_run_path = not_sent_path, last_run_path
        self.max_invalid_ratio, self.max_vendor_failed_ratio = max_invalid_ratio, max_vendor_failed_ratio
        self.max_row_count_change, self.on_threshold = max_row_count_change, on_threshold
        self.storage_conn_id = storage_conn_id
        # a partitioned sync: a list of task ids per stage (one per partition), and the partitions' checks
        self.check_task_ids = list(check_task_ids or [])

    def _pull(self, ti: Any, task_id: str, key: str = "return_value") -> list[Any]:
        value = ti.xcom_pull(task_ids=task_id, key=key)
        if value is None:
            return []
        if isinstance(value, (Mapping, str, int, float)):
            return [value]
        return [item for item in value if item is not None]

    def execute(self, context: Any) -> dict[str, Any]:
        ti = self._ti = context["ti"]
        if not isinstance(self.prepare_task_id, str):
            return self._partitioned(ti)
        prepared = (self._pull(ti, self.prepare_task_id) or [None])[0]
        uploads = results_of(self._pull(ti, self.upload_task_id), "upload results")
        committed = (self._pull(ti, self.commit_task_id) or [None])[0] if self.commit_task_id else None
        if prepared is None:
            raise AirflowFailException(f"prepare ({self.prepare_task_id}) returned nothing: it failed, so nothing was sent")
        return self._report(ti, prepared, uploads, committed is not None)

    def _partitioned(self, ti: Any) -> dict[str, Any]:
        """A partitioned sync: the partitions' counts summed (each partition's too, under
        ``partitions``), committed when every partition committed."""
        overlap = None
        for task_id in self.check_task_ids:
            for found in self._pull(ti, task_id, "partition_overlap"):
                overlap = overlap or {"count": 0, "ids": {}}
                overlap["count"] = max(overlap["count"], found["count"])  # (the ids of the partition that found most)
                for key, parts in found["ids"].items():
                    overlap["ids"][key] = sorted({*overlap["ids"].get(key, []), *parts})
        if overlap:
            ti.xcom_push(key="sync_report", value={"overlap": overlap, "committed": False})
            ids = "; ".join(f"{key} in partitions {', '.join(map(str, parts))}" for key, parts in overlap["ids"].items())
            raise AirflowFailException(f"id(s) in more than one partition: {ids} (a partition that found one sent "
                                       "nothing; see the part_<i>.check tasks)")
        commits = list(self.commit_task_id or [None] * len(self.prepare_task_id))
        found, missing = [], []
        for index, (prepare_id, upload_id, commit_id) in enumerate(zip(self.prepare_task_id, self.upload_task_id, commits)):
            prepared = (self._pull(ti, prepare_id) or [None])[0]
            if prepared is None:
                missing.append(prepare_id)
                continue
            uploads = results_of(self._pull(ti, upload_id), "upload results")
            committed = bool(self._pull(ti, commit_id)) if commit_id else False
            found.append((index, prepared, uploads, committed))
        if missing:
            raise AirflowFailException(f"prepare ({', '.join(missing)}) returned nothing: it failed, so no partition sent anything")
        prepared = {name: sum(result[name] for _, result, _, _ in found)
                    for name in ("read", "written", "rejected", "unchanged", "deleted")}
        prepared["rejects"] = [result["rejects"] for _, result, _, _ in found if result.get("rejects")]
        uploads = [upload for _, _, partition_uploads, _ in found for upload in partition_uploads]
        partitions = []
        for index, result, partition_uploads, committed in found:
            counts = self._counts(result, partition_uploads)
            partitions.append({"partition": index, **{name: counts[name] for name in ("read", "invalid", "unchanged",
                               "deleted", "written", "sent", "vendor_succeeded", "vendor_failed")}, "committed": committed})
        return self._report(ti, prepared, uploads, all(part["committed"] for part in partitions), partitions)

    def _report(self, ti: Any, prepared: Mapping[str, Any], uploads: list[Mapping[str, Any]], committed: bool,
                partitions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        report = self._counts(prepared, uploads)
        report["committed"] = committed
        if partitions is not None:
            report["partitions"] = partitions
            report["not_committed"] = [part["partition"] for part in partitions if not part["committed"]]
        report["seconds"] = self._seconds(ti)
        timed = {stage: seconds for stage, seconds in report["seconds"].items() if seconds is not None}
        report["bottleneck"] = max(timed, key=timed.get) if timed else None
        not_sent = self._not_sent(prepared, uploads)
        report["invalid_reasons"] = [row["reason"] for row in not_sent if row["stage"] != "vendor"][:SAMPLE]
        report["vendor_failed_reasons"] = self._vendor_reasons(uploads, not_sent)
        report["not_sent_file"] = self._write_not_sent(not_sent)
        problems = report["reconcile_problems"] = self._reconcile(prepared, uploads, report)
        self.log.info("sync report:\n%s", _report_table(report))
        ti.xcom_push(key="sync_report", value=report)  # readable by callbacks and notifiers when this task fails
        if partitions is not None and report["not_committed"]:
            why = self._unfinished_stage() or "; ".join(problems) or "see their commit tasks"
            raise AirflowFailException(f"partition(s) {', '.join(map(str, report['not_committed']))} not committed "
                                       f"({why}); the others are. Clear the failed partition's tasks to retry it alone")
        if problems:
            raise AirflowFailException("counts do not reconcile: " + "; ".join(problems))
        unfinished = self._unfinished_stage()
        if unfinished:
            raise AirflowFailException(unfinished)
        self._check_thresholds(report)
        return report

    # counts
    def _counts(self, prepared: Mapping[str, Any], uploads: list[Mapping[str, Any]]) -> dict[str, Any]:
        upload = {name: total(uploads, name) if uploads else None
                  for name in ("read", "rejected", "skipped", "sent", "vendor_succeeded", "vendor_failed")}
        return {
            "read": prepared["read"],
            "invalid": prepared["rejected"] + (upload["rejected"] or 0),
            "unchanged": prepared["unchanged"],
            "deleted": prepared.get("deleted", 0),
            "written": prepared["written"],
            "skipped": upload["skipped"],
            "sent": upload["sent"],
            "vendor_succeeded": upload["vendor_succeeded"],
            "vendor_failed": upload["vendor_failed"],
            "uploads": len(uploads),
        }

    def _reconcile(self, prepared: Mapping[str, Any], uploads: list[Mapping[str, Any]], report: dict[str, Any]) -> list[str]:
        problems = []
        if prepared["read"] != prepared["written"] + prepared["rejected"] + prepared["unchanged"]:
            problems.append(f"prepare lost {prepared['read'] - prepared['written'] - prepared['rejected'] - prepared['unchanged']} "
                            f"row(s): read {prepared['read']} != written + rejected + unchanged")
        lines = prepared["written"] + prepared.get("deleted", 0)
        handed_on = total(uploads, "read") if uploads else 0
        if handed_on is not None and handed_on != lines:
            problems.append(f"split/upload: prepare wrote {lines} line(s), the uploads read {handed_on}")
        for name in ("rejected", "skipped", "sent"):
            if uploads and total(uploads, name) is None:
                return problems  # a vendor count nobody reported: nothing more to reconcile
        if uploads and handed_on is not None and handed_on != total(uploads, "rejected") + total(uploads, "skipped") + total(uploads, "sent"):
            problems.append(f"upload: read {handed_on} != rejected + skipped + sent")
        sent, succeeded, failed = report["sent"], report["vendor_succeeded"], report["vendor_failed"]
        if None not in (sent, succeeded, failed) and sent != succeeded + failed:
            problems.append(f"vendor: sent {sent} != succeeded {succeeded} + failed {failed}")
        return problems

    def _unfinished_stage(self) -> str | None:
        """A task that started and did not finish (it failed) left no result: say so rather than
        report a partial run green."""
        for stage in ("upload", "commit"):
            for task_id in self.stages.get(stage, []):
                ended = self._pull(self._ti, task_id, "sync_ended")
                started = self._pull(self._ti, task_id, "sync_started")
                if len(started) > len(ended):
                    return f"{stage} ({task_id}): {len(started) - len(ended)} task(s) did not finish; see their logs"
        return None

    # stage seconds
    def _seconds(self, ti: Any) -> dict[str, float | None]:
        seconds: dict[str, float | None] = {}
        for stage in STAGES:
            if stage in ("extract", "vendor wait"):
                continue
            starts = [value for task_id in self.stages.get(stage, []) for value in self._pull(ti, task_id, "sync_started")]
            ends = [value for task_id in self.stages.get(stage, []) for value in self._pull(ti, task_id, "sync_ended")]
            seconds[stage] = round(max(ends) - min(starts), 3) if starts and ends else None
        seconds["extract"] = _longest(self._extracts(ti))
        if seconds.get("prepare") is not None and seconds["extract"] is not None:
            seconds["prepare"] = round(max(seconds["prepare"] - seconds["extract"], 0.0), 3)
        seconds["vendor wait"] = _longest(self._vendor_waits(ti))
        if seconds.get("upload") is not None and seconds["vendor wait"] is not None:
            seconds["upload"] = round(max(seconds["upload"] - seconds["vendor wait"], 0.0), 3)
        return {stage: seconds.get(stage) for stage in STAGES}

    def _extracts(self, ti: Any) -> list[float]:
        """Seconds each prepare task spent reading its source (its result's ``extract_seconds``)."""
        return [result["extract_seconds"] for task_id in self.stages.get("prepare", [])
                for result in self._pull(ti, task_id)
                if isinstance(result, Mapping) and isinstance(result.get("extract_seconds"), (int, float))]

    def _vendor_waits(self, ti: Any) -> list[float]:
        """Seconds each upload waited for the vendor's job: a deferred one from its start to its resume,
        one that waited in the worker as it measured (``VENDOR_WAIT_KEY``)."""
        from airflow_provider_profiles.operators.base import VENDOR_WAIT_KEY

        waits = []
        for task_id in self.stages.get("upload", []):
            resumed = self._pull(ti, task_id, "sync_resumed")
            started = self._pull(ti, task_id, "sync_started")
            if resumed and started:
                waits.append(max(resumed) - min(started))
            waits += [value for value in self._pull(ti, task_id, VENDOR_WAIT_KEY) if isinstance(value, (int, float))]
        return waits

    # what did not make it
    def _not_sent(self, prepared: Mapping[str, Any], uploads: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
        rejects = prepared.get("rejects")
        rows = [{"line": row["line"], "id": row["identifier"], "stage": "prepare", "reason": row["reason"]}
                for path in (rejects if isinstance(rejects, list) else [rejects])
                for row in _rejects_rows(path, self.storage_conn_id)]
        for result in uploads:
            path = result["details"].get("rejects_path")
            for row in _rejects_rows(path, self.storage_conn_id):
                stage = "vendor" if row.get("http_status") else "upload"
                rows.append({"line": row["line"], "id": row["identifier"], "stage": stage, "reason": row["reason"]})
        return rows

    def _vendor_reasons(self, uploads: list[Mapping[str, Any]], not_sent: list[dict[str, Any]]) -> list[str]:
        """The first reasons the vendor gave for records it failed. Adds to ``not_sent`` every failed record
        an upload listed (its ``vendor_failures_file``); where it could not list them, its note says why."""
        reasons = [row["reason"] for row in not_sent if row["stage"] == "vendor"]
        listed = [row for result in uploads for row in _vendor_failure_rows(result, self.storage_conn_id)]
        not_sent.extend(listed)
        reasons += [f"{row['id']}: {row['reason']}" if row["id"] else row["reason"] for row in listed[:SAMPLE]]
        for result in uploads:
            details = result["details"]
            if not result["vendor_failed"]:
                continue
            if details.get("vendor_failures_note"):
                reasons.append(f"vendor failures not listed: {details['vendor_failures_note']}")
            if details.get("vendor_failures_file"):
                continue  # listed above, record by record
            for name in ("first_errors", "error_log", "error_file_uri"):
                value = details.get(name)
                if value:
                    reasons.append(f"{name}: {value}" if not isinstance(value, list) else f"{name}: {value[:SAMPLE]}")
        return reasons[:SAMPLE]

    def _write_not_sent(self, rows: list[dict[str, Any]]) -> str:
        from airflow_provider_profiles.storage import as_storage_path, write_whole

        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=("line", "id", "stage", "reason"), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        target = as_storage_path(self.not_sent_path, self.storage_conn_id)
        write_whole(target, buffer.getvalue())
        return str(target)

    # alerts
    def _check_thresholds(self, report: dict[str, Any]) -> None:
        from airflow_provider_profiles.storage import as_storage_path, write_whole

        crossed = []
        read = report["read"]
        if self.max_invalid_ratio is not None and read and report["invalid"] / read > self.max_invalid_ratio:
            crossed.append(f"invalid ratio {report['invalid'] / read:.2%} > max_invalid_ratio {self.max_invalid_ratio:.2%}")
        sent = report["sent"]
        if self.max_vendor_failed_ratio is not None and sent and (report["vendor_failed"] or 0) / sent > self.max_vendor_failed_ratio:
            crossed.append(f"vendor failed ratio {report['vendor_failed'] / sent:.2%} > "
                           f"max_vendor_failed_ratio {self.max_vendor_failed_ratio:.2%}")
        last_run = as_storage_path(self.last_run_path, self.storage_conn_id)
        last = json.loads(last_run.read_text()) if last_run.exists() else None
        report["last_read"] = last["read"] if last else None
        if self.max_row_count_change is not None and last and last.get("read"):
            change = abs(read - last["read"]) / last["read"]
            if change > self.max_row_count_change:
                crossed.append(f"read {read} rows, {change:.0%} away from the last successful run's {last['read']} "
                               f"(max_row_count_change {self.max_row_count_change:.0%})")
        report["thresholds_crossed"] = crossed
        if crossed and self.on_threshold == "fail":
            raise SyncThresholdExceeded("; ".join(crossed))
        for message in crossed:
            self.log.warning("threshold crossed: %s", message)
        write_whole(last_run, json.dumps({"read": read, "at": dt.datetime.now(dt.timezone.utc).isoformat()}))


def _longest(values: list[float]) -> float | None:
    """A stage's seconds from its tasks' (they run side by side): the longest, None when none was timed."""
    return round(max(values), 3) if values else None


def _vendor_failure_rows(result: Mapping[str, Any], conn_id: str | None) -> list[dict[str, Any]]:
    """The records an upload lists as failed by the vendor (``details.vendor_failures_file``: line,
    identifier, reason; the line is the uploaded file's), as rows of the not-sent CSV."""
    path = result["details"].get("vendor_failures_file")
    if not path:
        return []
    from airflow_provider_profiles.storage import as_storage_path

    target = as_storage_path(path, conn_id)
    name = target.name.removesuffix(".vendor_failures.csv")
    try:
        with target.open("r", encoding="utf-8", newline="") as handle:
            return [{"line": f"{name}:{row['line']}" if row.get("line") else "", "id": row.get("identifier") or "",
                     "stage": "vendor", "reason": row.get("reason") or ""} for row in csv.DictReader(handle)]
    except OSError as error:  # e.g. a local file on another worker: say so rather than fail the report
        return [{"line": "", "id": "", "stage": "vendor",
                 "reason": f"(the failed records listed in {path} could not be read: {type(error).__name__})"}]


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {'-' if value is None else value}" for name, value in rows)


def _report_table(report: Mapping[str, Any]) -> str:
    counts = [(name, report[name]) for name in ("read", "invalid", "unchanged", "deleted", "sent", "vendor_succeeded",
                                                "vendor_failed", "skipped")]
    seconds = [(f"{stage} (s)", report["seconds"][stage]) for stage in STAGES]
    return _table([*counts, *seconds, ("bottleneck", report["bottleneck"]),
                   ("not sent (CSV)", report["not_sent_file"])])


# --- the declaration, checked and expanded ----------------------------------------------------------


def _validate(group_id: str, source: Any, destination: Any, mapping: Any, mode: str, only_changed: bool,
              work_folder: Any) -> tuple[SyncAdapter, dict[str, Any], SyncPlan]:
    def refuse(field_name: str, problem: str) -> SyncDeclarationError:
        return SyncDeclarationError(group_id, field_name, problem)

    if not isinstance(source, (SqlSource, FileSource)):
        raise refuse("source", f"expected SqlSource(conn_id, sql) or FileSource(path), got {source!r}")
    if isinstance(source, FileSource):
        paths = source.path if isinstance(source.path, (str, list, tuple)) else None
        if not paths or any(not isinstance(path, str) or not path for path in source.paths):
            raise refuse("source.path", "expected a file's path or URL, or a non-empty list of them (glob patterns "
                         f"allowed), got {source.path!r}")
        if source.format not in INPUT_FORMATS:
            raise refuse("source.format", f"unknown format {source.format!r}; choose from csv, ndjson, parquet")
        if source.format is None:
            from airflow_provider_profiles.prepare.errors import guess_format

            formats = {path: guess_format(path) for path in source.paths}
            if len(set(formats.values())) > 1:
                raise refuse("source.format", f"the files are read as one input, of one format: {formats}; "
                             "give files of one format (or set format)")
    elif not source.conn_id or not source.sql:
        raise refuse("source", "SqlSource needs a conn_id and a sql query")
    if not isinstance(destination, Destination):
        raise refuse("destination", f"expected Destination(vendor, conn_id, **options), got {destination!r}")
    try:
        vendor_spec(destination.vendor)
    except ValueError as error:
        raise refuse("destination.vendor", str(error)) from None
    adapter = load(vendor_spec(destination.vendor).sync_adapter)()
    unknown = sorted(set(destination.options) - set(adapter.options))
    if unknown:
        raise refuse(f"destination.{unknown[0]}", f"not an option of {destination.vendor}; "
                     f"it takes {', '.join(adapter.options)}")
    options = {name: destination.options.get(name, default) for name, default in adapter.options.items()}
    missing = [name for name, value in options.items() if value is REQUIRED]
    if missing:
        raise refuse(f"destination.{missing[0]}", f"{destination.vendor} needs it")
    if mode not in MODES:
        raise refuse("mode", f"unknown mode {mode!r}; choose from {', '.join(MODES)}")
    if adapter.modes.get(mode):
        raise refuse("mode", f"{destination.vendor} cannot {mode}: {adapter.modes[mode]}")
    if not isinstance(mapping, Mapping) or not mapping:
        raise refuse("mapping", "map at least the identifier: {destination field: input column or spec}")
    if not isinstance(work_folder, str) or not work_folder:
        raise refuse("work_folder", "give a folder (a path, file:///... or s3://...) for files and sync state")
    if mode == "mirror" and not only_changed:
        raise refuse("only_changed", "mirror deletes the ids gone since the last sync: it needs only_changed=True")
    try:
        plan = adapter.plan(options, dict(mapping), mode)
    except ValueError as error:
        name = str(error).split(":", 1)[0]
        raise refuse("mapping" if name.startswith("mapping") else f"destination.{name}", str(error)) from None
    try:
        writer_cls = writer_class(destination.vendor, plan.writer_format)
    except ValueError as error:
        raise refuse(adapter.format_option, str(error)) from None
    try:
        writer = writer_cls(**plan.writer_options)
    except (TypeError, ValueError) as error:
        raise refuse("destination.writer_options", f"{writer_cls.__name__}: {error}") from None
    if mode == "mirror" and not writer.deletion_columns:
        raise refuse("mode", f"{destination.vendor} {plan.writer_format} has no deletion line: it cannot mirror")
    if only_changed and (refusal := writer.sync_refusal()):
        raise refuse("only_changed", refusal)
    if plan.mapping is not None:
        try:
            FieldMapping(plan.mapping, representation=writer.representation)
        except (TypeError, ValueError) as error:
            message = str(error)
            raise refuse("mapping", message) from None
    return adapter, options, plan


PARTITION_PARAMETERS = ("partition", "partitions")


def _uses_parameter(sql: str, name: str) -> bool:
    """True where the SQL's Jinja names ``params.<name>`` (or ``params['<name>']``)."""
    return re.search(rf"params\s*(\.\s*{name}\b|\[\s*['\"]{name}['\"]\s*\])", sql) is not None


def _check_partitions(group_id: str, partitions: Any, source: Any, mode: str, only_changed: bool, preview: bool) -> int:
    """The number of partitions (1: not partitioned), or ``SyncDeclarationError``."""
    def refuse(field_name: str, problem: str) -> SyncDeclarationError:
        return SyncDeclarationError(group_id, field_name, problem)

    if partitions is None:
        return 1
    if isinstance(partitions, bool) or not isinstance(partitions, int) or partitions < 1:
        raise refuse("partitions", f"a whole number >= 1 (a fixed number: the tasks are made when the DAG is parsed), "
                     f"not {partitions!r}")
    if partitions == 1:
        return 1
    if preview:
        raise refuse("preview", "a preview of a partitioned sync is not supported (it would have to read every "
                     "partition's sync state); declare it without preview=True")
    if not only_changed:
        raise refuse("only_changed", "each partition keeps its own sync state, which is what lets a failed partition "
                     "be retried alone without resending the others: partitions need only_changed=True")
    if isinstance(source, SqlSource):
        missing = [name for name in PARTITION_PARAMETERS if not _uses_parameter(source.sql, name)]
        if missing and not source.sql.strip().endswith(".sql"):
            raise refuse("source.sql", "a partitioned query must keep only its partition's rows, by the identifier, "
                         "with {{ params.partition }} (0 to partitions-1) and {{ params.partitions }}; e.g. "
                         "WHERE (hashtext(id::text) & 2147483647) % {{ params.partitions }} = {{ params.partition }} (PostgreSQL) or "
                         f"WHERE id % {{{{ params.partitions }}}} = {{{{ params.partition }}}}; it does not use "
                         f"{', '.join('params.' + name for name in missing)}")
    else:
        from airflow_provider_profiles.operators.prepare import is_glob

        if mode == "mirror":
            raise refuse("mode", "a file-partitioned sync cannot mirror: an id that moves to a file of another "
                         "partition would be deleted by one partition and sent by the other")
        plain = [path for path in source.paths if not is_glob(path)]
        if len(plain) == len(source.paths) and len(plain) < partitions:
            raise refuse("partitions", f"the files are the partitions: {len(plain)} file(s) cannot make {partitions}")
    return partitions


class PartitionsDisjointOperator(BaseOperator):
    """A partition's check before it uploads: none of its ids is in another partition of this run (a
    partition filter that overlaps would send it twice). Compares the keys its prepare read with
    those of every other partition whose prepare finished in this run (pending or committed).

    No partition waits for another: the later of two overlapping partitions to check sees the
    other's keys (a prepare writes them before its own check runs), so an id is sent by one of them
    at most. On an overlap it pushes ``partition_overlap`` (count, ids with their partitions) and
    fails: this partition sends nothing."""

    template_fields: Sequence[str] = ("sync_state_paths", "sync_run_key")
    SAMPLE_IDS = 20

    def __init__(self, *, partition: int, sync_state_paths: Sequence[str], sync_run_key: str = "{{ run_id }}",
                 storage_conn_id: str | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.partition, self.sync_state_paths = partition, list(sync_state_paths)
        self.sync_run_key, self.storage_conn_id = sync_run_key, storage_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow_provider_profiles.prepare.engine import connected
        from airflow_provider_profiles.prepare.sql import literal
        from airflow_provider_profiles.prepare.sync import SyncState, SyncStateError, readable
        from airflow_provider_profiles.storage import as_storage_path

        snapshots = {index: SyncState(as_storage_path(path, self.storage_conn_id)).run_snapshot(self.sync_run_key)
                     for index, path in enumerate(self.sync_state_paths)}
        mine = snapshots.pop(self.partition)
        if mine is None:
            raise SyncStateError(f"partition {self.partition}: no prepared snapshot for this run in "
                                 f"{self.sync_state_paths[self.partition]}: run its prepare again")
        others = {index: path for index, path in snapshots.items() if path is not None}
        if not others:
            self.log.info("partition %d: no other partition prepared yet in this run", self.partition)
            return {"partition": self.partition, "compared_with": [], "overlap": 0}
        with connected(mine, threads=1) as connection:
            theirs = " UNION ALL ".join(f"SELECT key, {index} AS part FROM read_parquet({literal(readable(connection, path))})"
                                        for index, path in others.items())
            connection.execute(f"""CREATE TABLE overlap AS SELECT mine.key, list(DISTINCT theirs.part ORDER BY theirs.part) AS parts
                                   FROM read_parquet({literal(readable(connection, mine))}) AS mine
                                   JOIN ({theirs}) AS theirs ON theirs.key = mine.key GROUP BY mine.key""")
            count = connection.execute("SELECT count(*) FROM overlap").fetchone()[0]
            found = connection.execute(f"SELECT key, parts FROM overlap ORDER BY key LIMIT {self.SAMPLE_IDS}").fetchall()
        if count:
            ids = {key: sorted({self.partition, *parts}) for key, parts in found}
            context["ti"].xcom_push(key="partition_overlap", value={"count": count, "ids": ids})
            named = ", ".join(f"{key} (partitions {', '.join(map(str, parts))})" for key, parts in ids.items())
            raise AirflowFailException(
                f"partition {self.partition}: {count} of its id(s) are in another partition too: {named}"
                f"{' ...' if count > len(found) else ''}. This partition sent nothing: fix the partition filter so "
                "that each id is in exactly one partition.")
        self.log.info("partition %d: no id in partitions %s", self.partition, sorted(others))
        return {"partition": self.partition, "compared_with": sorted(others), "overlap": 0}


def ProfilesSync(  # noqa: N802 (a task group, named like a class as TaskGroup is)
    *,
    group_id: str,
    source: SqlSource | FileSource,
    destination: Destination,
    mapping: Mapping[str, Any],
    mode: str = "upsert",
    only_changed: bool = True,
    work_folder: str,
    preview: bool = False,
    partitions: int | None = None,
    storage_conn_id: str | None = None,
    max_invalid_ratio: float | None = None,
    max_vendor_failed_ratio: float | None = None,
    max_row_count_change: float | None = None,
    on_threshold: str = "fail",
    prepare_options: Mapping[str, Any] | None = None,
    split_options: Mapping[str, Any] | None = None,
    upload_options: Mapping[str, Any] | None = None,
    commit_options: Mapping[str, Any] | None = None,
    report_options: Mapping[str, Any] | None = None,
    **group_kwargs: Any,
):
    """The task group of one declared sync (see the module docstring). Returns the ``TaskGroup``;
    its last task is ``<group_id>.report`` (``<group_id>.preview`` with ``preview=True``), whose
    return value is the run's report.

    ``partitions=N`` (N > 1) splits the source into N partitions, each with tasks of its own
    (``<group_id>.part_<i>.prepare``, ``.split``, ``.upload``, ``.commit``) and its own sync state
    (``<work_folder>/<group_id>/state/part-<i>``): a SqlSource's query keeps its partition's rows with
    ``{{ params.partition }}`` and ``{{ params.partitions }}``; a FileSource's files are dealt out
    (file i to partition i mod N). ``<group_id>.part_<i>.check`` runs between a partition's prepare
    and its uploads: an id that another partition of the run read too fails it (of two overlapping
    partitions, the later to check fails), so no id is sent twice. Each partition commits its own
    state once all its uploads succeeded; the report (run whatever happened) sums the partitions and
    fails unless every partition committed. No task of a partition depends on another partition's,
    so a failed partition is retried alone (Airflow's retries, or clearing its tasks): the others'
    committed states are not touched, nothing they sent is sent again, and the next run sends what a
    partition did not commit."""
    from airflow.sdk import TaskGroup

    from airflow_provider_profiles.operators.prepare import (
        CommitSyncStateOperator,
        ProfilesFileTransformOperator,
        SplitFileOperator,
        SqlToProfilesFileOperator,
    )

    adapter, options, plan = _validate(group_id, source, destination, mapping, mode, only_changed, work_folder)
    parts = _check_partitions(group_id, partitions, source, mode, only_changed, preview)
    if on_threshold not in ("fail", "warn"):
        raise SyncDeclarationError(group_id, "on_threshold", f"'fail' or 'warn', not {on_threshold!r}")
    for name, value in (("max_invalid_ratio", max_invalid_ratio), ("max_vendor_failed_ratio", max_vendor_failed_ratio),
                        ("max_row_count_change", max_row_count_change)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0):
            raise SyncDeclarationError(group_id, name, f"a ratio >= 0 (0.05 for 5%), not {value!r}")
    base = f"{work_folder.rstrip('/')}/{group_id}"
    run_folder = f"{base}/{'preview-' if preview else ''}{RUN_FOLDER}"
    state_path = f"{base}/state"
    writer = writer_class(destination.vendor, plan.writer_format)
    clocked = {"pre_execute": _clock_start, "post_execute": _clock_end}
    storage = {"storage_conn_id": storage_conn_id} if storage_conn_id else {}

    def build(options_field: str, make: Any, defaults: dict[str, Any], options: Mapping[str, Any] | None) -> Any:
        """An operator from the group's defaults and the declaration's passthrough options (which win);
        what it refuses is named by the declaration's field."""
        try:
            return make(**{**defaults, **(options or {})})
        except (TypeError, ValueError) as error:
            raise SyncDeclarationError(group_id, options_field, str(error)) from None

    def prepare_task(folder: str, state: str, partition: int | None) -> Any:
        prepare_defaults: dict[str, Any] = dict(
            task_id="prepare", vendor=destination.vendor, writer_format=plan.writer_format,
            writer_options=plan.writer_options, mapping=plan.mapping,
            output_path=f"{folder}/prepared.{writer.extension}", only_changed=only_changed,
            sync_state_path=(f"{run_folder}/state" if preview else state) if only_changed else None,
            include_deletions=plan.deletions, **storage, **clocked,
        )
        if isinstance(source, SqlSource):
            given = dict(prepare_options or {})
            if partition is not None:  # the partition's values join any params the declaration passes
                given["params"] = {**(given.get("params") or {}), "partition": partition, "partitions": parts}
            return build("prepare_options", SqlToProfilesFileOperator, {
                **prepare_defaults, "conn_id": source.conn_id, "sql": source.sql, "parameters": source.parameters,
            }, given)
        partitioned = {} if partition is None else {"partition": partition, "partitions": parts}
        return build("prepare_options", ProfilesFileTransformOperator, {
            **prepare_defaults, "source_path": source.path if isinstance(source.path, str) else list(source.path),
            "input_format": source.format, "delimiter": source.delimiter, "encoding": source.encoding, **partitioned,
        }, prepare_options)

    def send(prepared: Any, folder: str, state: str) -> dict[str, Any]:
        """split -> upload -> commit after ``prepared``; returns the tasks by stage."""
        tasks: dict[str, Any] = {}
        if plan.files:
            chunks = tasks["split"] = build("split_options", SplitFileOperator, {
                "task_id": "split", "source_path": prepared.output, "vendor": destination.vendor,
                "output_dir": f"{folder}/chunks", **storage, **clocked}, split_options)
            files = chunks.output
        else:
            # the loader takes a path today, not the prepare result: the path by template, the dependency stated
            files = f"{{{{ ti.xcom_pull(task_ids='{prepared.task_id}')['output'] }}}}"
        try:
            uploaded = adapter.upload(group_id, options, destination.conn_id, plan, mode, files,
                                      {**clocked, **storage, **(upload_options or {})})
        except (TypeError, ValueError) as error:
            raise SyncDeclarationError(group_id, "upload_options", str(error)) from None
        upload_task = tasks["upload"] = getattr(uploaded, "operator", uploaded)
        if not plan.files:
            prepared >> upload_task
        if only_changed:
            tasks["commit"] = build("commit_options", CommitSyncStateOperator, {
                "task_id": "commit", "sync_state_path": state, "upload_results": uploaded.output,
                **storage, **clocked}, commit_options)
            upload_task >> tasks["commit"]
        return tasks

    def report_task(prepares: list[Any], sent: list[dict[str, Any]], checks: list[Any] | None) -> Any:
        stages: dict[str, list[str]] = {"prepare": [task.task_id for task in prepares]}
        for stage in ("split", "upload", "commit"):
            if sent[0].get(stage) is not None:
                stages[stage] = [tasks[stage].task_id for tasks in sent]
        ids = {stage: names if parts > 1 else names[0] for stage, names in stages.items()}
        report = build("report_options", SyncReportOperator, dict(
            task_id="report", stages=stages, prepare_task_id=ids["prepare"], upload_task_id=ids["upload"],
            commit_task_id=ids.get("commit"), not_sent_path=f"{run_folder}/not_sent.csv",
            last_run_path=f"{base}/last_run.json", max_invalid_ratio=max_invalid_ratio,
            max_vendor_failed_ratio=max_vendor_failed_ratio, max_row_count_change=max_row_count_change,
            on_threshold=on_threshold, **({"check_task_ids": [check.task_id for check in checks]} if checks else {}),
            **storage), report_options)
        for prepared, tasks in zip(prepares, sent):
            [prepared, tasks["upload"], tasks.get("commit") or tasks["upload"]] >> report
            if "split" in tasks:
                tasks["split"] >> report
        for check in checks or []:
            check >> report
        return report

    with TaskGroup(group_id=group_id, **group_kwargs) as group:
        if parts > 1:
            # no task of one partition depends on another partition's: each is retried (cleared) alone
            prepares, sent, checks = [], [], []
            states = [f"{state_path}/part-{index}" for index in range(parts)]
            for index in range(parts):
                with TaskGroup(group_id=f"part_{index}"):
                    prepares.append(prepare_task(f"{run_folder}/part-{index}", states[index], index))
                    checks.append(PartitionsDisjointOperator(task_id="check", partition=index, sync_state_paths=states,
                                                             **storage))
                    sent.append(send(prepares[-1], f"{run_folder}/part-{index}", states[index]))
                    prepares[-1] >> checks[-1] >> sent[-1].get("split", sent[-1]["upload"])
            report_task(prepares, sent, checks)
            return group

        prepared = prepare_task(run_folder, state_path, None)
        if preview:
            copied = SyncStateCopyOperator(task_id="preview_state", sync_state_path=state_path,
                                           copy_path=f"{run_folder}/state", **storage)
            shown = SyncPreviewOperator(task_id="preview", prepare_task_id=prepared.task_id,
                                        state_copy_path=f"{run_folder}/state",
                                        sync_state_path=state_path if only_changed else None, **storage)
            copied >> prepared >> shown
            return group
        report_task([prepared], [send(prepared, run_folder, state_path)], None)
    return group


__all__ = ["Destination", "FileSource", "ProfilesSync", "SqlSource", "SyncDeclarationError", "SyncPreviewOperator",
           "SyncReportOperator", "SyncStateCopyOperator", "SyncThresholdExceeded"]
