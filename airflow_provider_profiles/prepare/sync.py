"""Incremental sync state: what the last committed sync sent, kept next to the data as Parquet.

Layout under the state directory (any ``ObjectStoragePath``)::

    CURRENT.json                    {"snapshot": "snapshots/<attempt>.parquet", "fingerprint": ...,
                                     "as_of": ..., "resend": [<attempt>, ...], ...}
    pending/<attempt>.json          a prepare started (and the CURRENT it compares with)
    snapshots/<attempt>.parquet     key, row_hash (and delete.<column>) of every row sent or unchanged
    snapshots/<attempt>.sent.parquet  key of the rows it sent (and deleted)
    snapshots/<attempt>.json        what the prepare step recorded: the attempt finished

An attempt is one prepare: ``<run key>.<random token>``, so a re-run or a retry of a run never
writes a file CURRENT or another run uses. A prepare compares its rows with the snapshot CURRENT
names (a join in DuckDB) and writes only new and changed rows, and its attempt's snapshot. CURRENT
moves to it only when ``commit`` runs after every upload succeeded, and only if CURRENT is still
the snapshot the prepare compared with (see ``SyncState``), so a failed run changes nothing and
the next run resends what is still pending. CURRENT is always replaced whole, and every Parquet
file is written aside and then moved (or uploaded whole) into place.

``row_hash`` is 64 bits of the MD5 of the input row's values as JSON (``md5_number``): stable
across DuckDB versions, unlike ``hash()``, as MD5 and JSON text are (a test checks it against
Python's own MD5). The comparison is one pass: read, hash, and a join on the hash with the
committed rows; only the rows it does not find carry their values on (text rows as that JSON).
The snapshot format, the mapping, the writer and the input's layout make the fingerprint: under
one fingerprint the same input row always makes the same line, so rows found in the snapshot are
not even mapped; a snapshot made under another one is not compared with (every row is sent once,
with a note).

``SyncStep`` is a sync's part of a prepare, in the prepare's DuckDB connection; a commit's own
bookkeeping opens one the same way (``engine.connected``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from airflow_provider_profiles.prepare import engine
from airflow_provider_profiles.prepare.source import Source
from airflow_provider_profiles.prepare.mapping import FieldMapping
from airflow_provider_profiles.prepare.sql import ident, literal
from airflow_provider_profiles.prepare.writer import FormatWriter, RowRejected
from airflow_provider_profiles.storage import TEMPORARY_SUFFIX, as_storage_path, is_local, local_path, open_binary, write_whole

CURRENT = "CURRENT.json"
# Part of every snapshot's fingerprint: a snapshot of another layout (the Arrow files of
# "snapshot-2") is not read (its run resends every row once) instead of failing.
SNAPSHOT_FORMAT = "snapshot-3-parquet"
SNAPSHOT_SUFFIX = ".parquet"
SENT_SUFFIX = ".sent.parquet"  # the keys an attempt sent, kept while CURRENT lists it under "resend"
META_SUFFIX = ".json"
ATTEMPT_SUFFIXES = (SNAPSHOT_SUFFIX, SENT_SUFFIX, META_SUFFIX)
DELETE_PREFIX = "delete."  # snapshot columns that keep what a deletion line needs
RESEND_ALL = "*"
# An attempt that started this long ago and never finished its prepare is taken as dead, and a
# note that a run's attempt was refused is dropped.
STALE_AFTER = dt.timedelta(days=7)
MEMORY_LIMIT = "256MB"


def run_key_of(text: str) -> str:
    """A file-name-safe, deterministic key for a run (``run_id`` has ``:`` and ``+``)."""
    key = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    if not key:
        raise ValueError(f"cannot make a run key from {text!r}")
    return key


class SyncStateError(Exception):
    """A sync state that cannot be used as it is; the message names the file and what to do."""


class SyncConflict(SyncStateError):
    """A commit refused: another run committed since this run's prepare, or this run's data is
    older than the committed one's. What the run sent is marked to be sent again."""


# --- Parquet files through DuckDB, local or in object storage --------------------------------------


def _scratch(connection: Any) -> str:
    """A local directory for copies of remote files: the connection's spill directory."""
    directory = connection.execute("SELECT current_setting('temp_directory')").fetchall()[0][0] or tempfile.gettempdir()
    os.makedirs(directory, exist_ok=True)
    return directory


def readable(connection: Any, path: Any) -> str:
    """A local file name DuckDB can read for ``path``: itself, or a copy of a remote object (streamed
    through ``open_binary``, so any fsspec store works; the copy goes with the spill directory)."""
    path = as_storage_path(path)
    if is_local(path):
        name = local_path(path)
        if not os.path.exists(name):
            raise FileNotFoundError(name)
        return name
    copy = os.path.join(_scratch(connection), f"copy-{uuid.uuid4().hex[:12]}.parquet")
    with open_binary(path) as source, open(copy, "wb") as target:
        shutil.copyfileobj(source, target, 1 << 20)
    return copy


def write_parquet(connection: Any, query: str, path: Any) -> int:
    """Writes the query's rows to ``path`` as Parquet, whole or not at all: written aside locally,
    then renamed into place (local) or uploaded through ``open_binary`` (object storage). Returns
    how many rows it wrote."""
    path = as_storage_path(path)
    if is_local(path):
        name = local_path(path)
        os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
        aside = f"{name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    else:
        aside = os.path.join(_scratch(connection), f"upload-{uuid.uuid4().hex[:12]}.parquet")
    try:
        # snappy: the row hashes are random bits, which zstd only spends time on
        rows = connection.execute(f"COPY ({query}) TO {literal(aside)} (FORMAT parquet, COMPRESSION snappy)").fetchall()[0][0]
        if is_local(path):
            os.replace(aside, name)
        else:
            with open(aside, "rb") as source, open_binary(path, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
    finally:
        if os.path.exists(aside):
            os.unlink(aside)
    return rows


def _first_line(error: BaseException) -> str:
    """An error's first line (DuckDB's go on with the SQL statement, which says nothing more)."""
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _duckdb_errors() -> tuple[type[BaseException], ...]:
    import duckdb

    return (OSError, duckdb.Error)


# --- what a prepare compares with ----------------------------------------------------------------


@dataclass
class Previous:
    """The committed snapshot a prepare compares with, and the sent-key files of the attempts whose
    keys CURRENT lists to be sent again (those keys count as changed)."""

    snapshot: Any
    resend: list[Any] = field(default_factory=list)
    advice: str = ""

    def load(self, connection: Any, table: str = "previous", resend_table: str = "resend_keys") -> list[str]:
        """Creates ``table`` (key, row_hash, delete.*) and ``resend_table`` (key) in the connection;
        returns the snapshot's delete columns. ``SyncStateError`` naming the file it cannot read."""
        errors = _duckdb_errors()
        try:
            source = readable(connection, self.snapshot)
            connection.execute(f"CREATE TEMP TABLE {table} AS SELECT * FROM read_parquet({literal(source)})")
            names = [row[0] for row in connection.execute(f"DESCRIBE {table}").fetchall()]
            if "key" not in names or "row_hash" not in names:
                raise OSError(f"it has columns {names}, not key and row_hash")
        except errors as error:
            raise SyncStateError(f"{self.snapshot}, the snapshot {CURRENT} names, cannot be read: {_first_line(error)}. "
                                 f"{self.advice}") from None
        connection.execute(f"CREATE TEMP TABLE {resend_table} (key VARCHAR)")
        for path in self.resend:
            try:
                source = readable(connection, path)
                connection.execute(f"INSERT INTO {resend_table} SELECT key FROM read_parquet({literal(source)})")
            except errors as error:
                raise SyncStateError(f"{path}, keys {CURRENT} lists to be sent again, cannot be read: {_first_line(error)}. "
                                     f"{self.advice}") from None
        return [name[len(DELETE_PREFIX):] for name in names if name.startswith(DELETE_PREFIX)]


@dataclass
class AttemptFiles:
    """Where one attempt writes: its snapshot and (when it compared with one) its sent keys."""

    attempt: str
    snapshot: Any
    sent: Any


# --- the state directory --------------------------------------------------------------------------


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def _instant(value: Any) -> dt.datetime | None:
    if value in (None, ""):
        return None
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _text(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _attempt_of(pointer: dict[str, Any] | None) -> str | None:
    """The attempt a CURRENT names (states written before attempts existed name the run)."""
    return None if pointer is None else pointer.get("attempt") or pointer["run_key"]


class SyncState:
    """The sync state directory: read the committed snapshot, write a pending one, commit it.

    Every prepare is an attempt with files of its own, ``snapshots/<run key>.<token>.*``: a
    re-run or a retry never writes what CURRENT or another run uses. ``pending/<attempt>.json``
    says an attempt started (and which CURRENT it compares with, its base); its
    ``snapshots/<attempt>.json`` that it finished. CURRENT is only ever replaced whole.

    ``commit`` is a compare-and-swap on the base: a run whose base is no longer current (another
    run committed meanwhile), or whose data is older than the committed one's (``as_of``: for a
    DAG run, the end of its data interval), is refused with ``SyncConflict`` unless
    ``allow_older``. A commit also retires every other finished attempt, which can no longer be
    committed. A refused or retired attempt may have sent rows that CURRENT does not hold: its
    sent keys go to CURRENT's ``resend`` list, and the next prepare sends those keys again (its
    commit clears the entries it took into account).

    Commits of one state directory should not run at the very same moment: the compare and the
    swap are two steps (object stores have no portable conditional write).
    """

    def __init__(self, directory: Any, as_of: Any = None, allow_older: bool = False):
        self.directory = as_storage_path(directory)
        self.as_of = _instant(as_of)  # the time this run's data stands for (None: not compared)
        self.allow_older = allow_older
        self.attempt: str | None = None  # started by the last ``writer``
        self._base: dict[str, Any] | None = None  # the CURRENT ``previous`` read for the next writer
        self._base_read = False
        self._sent_all = True

    def _file(self, relative: str):
        return self.directory / relative

    def _path(self, attempt: str, suffix: str):
        return self._file(f"snapshots/{attempt}{suffix}")

    def _pointer_path(self, attempt: str):
        return self._file(f"pending/{attempt}.json")

    def _read_json(self, path: Any, what: str, advice: str, missing_ok: bool = False) -> dict[str, Any] | None:
        try:
            text = path.read_text()
        except FileNotFoundError:
            if missing_ok:
                return None
            raise SyncStateError(f"{path}: {what} is missing. {advice}") from None
        try:
            value = json.loads(text)
            if not isinstance(value, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            raise SyncStateError(f"{path}: {what} is damaged ({error}). {advice}") from None
        return value

    def _resend_everything(self) -> str:
        return f"Delete {self._file(CURRENT)} to send every row again on the next run."

    def current(self) -> dict[str, Any] | None:
        """CURRENT: the committed snapshot and what the sync knows of it, or None."""
        pointer = self._file(CURRENT)
        current = self._read_json(pointer, "the committed sync state", "Delete it to send every row again on the next run.",
                                  missing_ok=True)
        if current is not None and not isinstance(current.get("snapshot"), str):
            raise SyncStateError(f"{pointer}: the committed sync state names no snapshot. Delete it to send every row again on the next run.")
        return current

    # --- a prepare: read the committed snapshot, write the attempt's own ---------------------------

    def previous(self, fingerprint: str) -> Previous | None:
        """The committed snapshot to compare with, or None when there is none or it was made under
        another fingerprint (mapping, writer, input layout, snapshot format). Refuses
        (``SyncConflict``, before anything is sent) a run older than the committed one, unless
        ``allow_older``."""
        current = self._base = self.current()
        self._base_read = True
        if current is None:
            return None
        self._check_not_older(current, self.as_of, self.allow_older, "sending its rows")
        resend = current.get("resend", [])
        if current.get("fingerprint") != fingerprint or RESEND_ALL in resend:
            return None
        return Previous(self._file(current["snapshot"]), [self._path(attempt, SENT_SUFFIX) for attempt in resend],
                        self._resend_everything())

    def why_no_previous(self) -> str:
        """A note for a prepare that ``previous`` gave nothing to compare with."""
        current = self._base if self._base_read else self.current()
        if current is None:
            return "no committed sync snapshot: every row is sent"
        if RESEND_ALL in current.get("resend", []):
            return "the committed sync snapshot is to be sent again whole (a refused run's keys were unreadable): every row is sent"
        return ("the committed sync snapshot was made with another mapping, writer, input layout or snapshot format: "
                "every row is sent once")

    def _check_not_older(self, current: dict[str, Any], when: dt.datetime | None, allow_older: bool, doing: str) -> None:
        committed = _instant(current.get("as_of"))
        if when is None or committed is None or when >= committed or allow_older:
            return
        raise SyncConflict(
            f"this run's data is as of {when.isoformat()}, older than {committed.isoformat()}, that of run "
            f"{current.get('run_key')!r} whose sync state is committed in {self.directory}: {doing} would put "
            "older data over newer. Pass allow_older=True (sync_allow_older=True on a prepare operator) to do it anyway."
        )

    def writer(self, run_key: str, extra_columns: list[str] = (), previous: Previous | None = None) -> AttemptFiles:
        """Starts this run's attempt: files of its own, named by the run key and a fresh token.
        (``extra_columns`` is kept for the old signature: the snapshot query chooses its columns.)"""
        base = self._base if self._base_read else self.current()
        self._attempt_base, self._base_read = base, False
        self._sent_all = previous is None  # nothing to compare with: every row is sent
        key = run_key_of(run_key)
        self.attempt = f"{key}.{uuid.uuid4().hex[:12]}"
        pointer = {"run_key": key, "attempt": self.attempt, "base": _attempt_of(base), "started_at": _now().isoformat()}
        write_whole(self._pointer_path(self.attempt), json.dumps(pointer))
        return AttemptFiles(self.attempt, self._path(self.attempt, SNAPSHOT_SUFFIX), self._path(self.attempt, SENT_SUFFIX))

    def record_pending(self, run_key: str, fingerprint: str, rows: int, counts: dict[str, Any]) -> None:
        """Marks the attempt finished: it can be committed once what it wrote is uploaded."""
        base = self._attempt_base
        meta = {
            "run_key": run_key_of(run_key), "attempt": self.attempt, "fingerprint": fingerprint, "rows": rows,
            "counts": counts, "base": _attempt_of(base), "base_resend": (base or {}).get("resend", []),
            "sent_all": self._sent_all, "as_of": _text(self.as_of), "prepared_at": _now().isoformat(),
        }
        write_whole(self._path(self.attempt, META_SUFFIX), json.dumps(meta))

    # --- a commit ----------------------------------------------------------------------------------

    def commit(self, run_key: str, keep: int = 2, as_of: Any = None, allow_older: bool | None = None) -> dict[str, Any]:
        """Make the run's last finished attempt current; keep ``keep`` committed snapshots.

        Refused (``SyncConflict``) when CURRENT is no longer the one the attempt compared with, or
        is as of a later time (unless ``allow_older``). Committing the same attempt again
        returns CURRENT unchanged.
        """
        key = run_key_of(run_key)
        current = self.current()
        found = self._last_attempt(key)
        if found is None and current is not None and current.get("run_key") == key:
            return current  # committed already: the commit ran again
        attempt, meta = self._finished(key, found)
        if current is not None and _attempt_of(current) == attempt:  # stopped right after its swap
            self._unlink(self._pointer_path(attempt))
            return current
        when = _instant(as_of) or self.as_of or _instant(meta.get("as_of"))
        self._check_committable(key, attempt, meta, current, when, self.allow_older if allow_older is None else allow_older)
        write_whole(self._file(CURRENT), json.dumps(self._committed(key, attempt, meta, current, when, keep)))
        self._unlink(self._pointer_path(attempt))
        self._retire_others(key, found["started_at"])
        committed = self.current()
        self._prune(committed)
        return committed

    def _check_committable(self, key: str, attempt: str, meta: dict[str, Any], current: dict[str, Any] | None,
                           when: dt.datetime | None, allow_older: bool) -> None:
        """Refuses (and retires) an attempt whose base is no longer CURRENT or whose data is older
        than CURRENT's; ``SyncStateError`` when its snapshot is gone."""
        if meta.get("base") != _attempt_of(current):
            reason = (
                f"run {key!r} compared its rows with snapshot {meta.get('base') or '(none)'}, which is no longer "
                f"current: {CURRENT} in {self.directory} now names {_attempt_of(current) or 'none'} "
                "(another run committed meanwhile). Not committed; what this run sent will be sent again next time."
            )
            self._retire(attempt, meta, reason)
            raise SyncConflict(reason)
        if current is not None:
            try:
                self._check_not_older(current, when, allow_older, "committing its snapshot")
            except SyncConflict as refused:
                self._retire(attempt, meta, str(refused))
                raise
        if not self._path(attempt, SNAPSHOT_SUFFIX).exists():
            raise SyncStateError(f"{self._path(attempt, SNAPSHOT_SUFFIX)}, run {key!r}'s pending snapshot, is missing: "
                                 "run the prepare step again before committing.")

    @staticmethod
    def _committed(key: str, attempt: str, meta: dict[str, Any], current: dict[str, Any] | None,
                   when: dt.datetime | None, keep: int) -> dict[str, Any]:
        """The CURRENT that commits ``attempt``."""
        history = [_attempt_of(current), *current.get("history", [])] if current else []
        return {
            "snapshot": f"snapshots/{attempt}{SNAPSHOT_SUFFIX}",
            "attempt": attempt,
            "run_key": key,
            "fingerprint": meta["fingerprint"],
            "rows": meta["rows"],
            "as_of": _text(when),
            # keys to send again: those that this run's prepare did not send already
            "resend": [entry for entry in (current or {}).get("resend", []) if entry not in meta.get("base_resend", [])],
            "history": [name for name in history if name != attempt][: max(keep - 1, 0)],
            "committed_at": _now().isoformat(timespec="seconds"),
        }

    def _retire_others(self, key: str, started_at: str) -> None:
        """After run ``key``'s commit: finished attempts of other runs can no longer commit, and this
        run's earlier tries that died are forgotten."""
        for pointer in self._pointers():
            finished = self._path(pointer["attempt"], META_SUFFIX).exists()
            if pointer.get("retired"):
                continue
            if pointer["run_key"] == key and pointer["started_at"] < started_at and not finished:
                self._unlink(self._pointer_path(pointer["attempt"]))  # an earlier try of this run's prepare died
            elif finished:
                other = self._read_json(self._path(pointer["attempt"], META_SUFFIX), "a pending snapshot's record",
                                        "Delete it and the files named like it.")
                self._retire(pointer["attempt"], other, (
                    f"run {key!r} committed after run {pointer['run_key']!r}'s prepare, so the snapshot that run "
                    "compared with is no longer current. Not committed; what it sent will be sent again next time."))
                if pointer["run_key"] == key:  # an earlier attempt of this run: nothing to tell
                    self._unlink(self._pointer_path(pointer["attempt"]))

    def run_snapshot(self, run_key: str) -> Any:
        """The snapshot (the keys read: sent or unchanged) of the run's last finished prepare, still
        pending or committed since; None when the run has none here (yet)."""
        key = run_key_of(run_key)
        for pointer in reversed([pointer for pointer in self._pointers() if pointer["run_key"] == key]):
            if not pointer.get("retired") and self._path(pointer["attempt"], META_SUFFIX).exists():
                return self._path(pointer["attempt"], SNAPSHOT_SUFFIX)
        current = self.current()
        if current is not None and current.get("run_key") == key:
            return self._file(current["snapshot"])
        return None

    def refuse(self, run_key: str, reason: str) -> None:
        """Does not commit the run's last finished attempt, and has its sent keys sent again."""
        key = run_key_of(run_key)
        attempt, meta = self._finished(key, self._last_attempt(key))
        self._retire(attempt, meta, reason)

    def _pointers(self) -> list[dict[str, Any]]:
        folder = self._file("pending")
        if not folder.exists():
            return []
        pointers = []
        for entry in folder.iterdir():
            if entry.name.endswith(".json"):  # (one may go meanwhile: its run committed)
                pointers.append(self._read_json(entry, "a pending attempt's note", "Delete it.", missing_ok=True))
        return sorted(filter(None, pointers), key=lambda pointer: pointer["started_at"])

    def _last_attempt(self, key: str) -> dict[str, Any] | None:
        mine = [pointer for pointer in self._pointers() if pointer["run_key"] == key]
        return mine[-1] if mine else None

    def _finished(self, key: str, pointer: dict[str, Any] | None) -> tuple[str, dict[str, Any]]:
        if pointer is None:
            raise SyncStateError(
                f"no pending sync snapshot for run {key!r} in {self.directory}: did the prepare step run with "
                "only_changed=True and the same sync_run_key in this run?"
            )
        if pointer.get("retired"):
            raise SyncConflict(f"run {key!r} cannot be committed: {pointer['retired']}")
        attempt = pointer["attempt"]
        meta = self._read_json(self._path(attempt, META_SUFFIX), f"the record of run {key!r}'s last prepare ({attempt})",
                               "Its prepare did not finish: run the prepare step again before committing.")
        return attempt, meta

    def _retire(self, attempt: str, meta: dict[str, Any], reason: str) -> None:
        """Takes a finished attempt out of the running: the keys it sent with rows CURRENT does
        not hold go to CURRENT's resend list, its snapshot files go, and its note says why (for
        its commit to tell)."""
        current = self.current()
        counts = meta.get("counts") or {}
        if current is not None and (counts.get("written") or counts.get("deleted")):
            entry = self._resend_entry(attempt, meta, current)
            if entry is not None:
                write_whole(self._file(CURRENT), json.dumps({**current, "resend": [*current.get("resend", []), entry]}))
        for suffix in (SNAPSHOT_SUFFIX, META_SUFFIX):
            self._unlink(self._path(attempt, suffix))
        note = self._read_json(self._pointer_path(attempt), "a pending attempt's note", "Delete it.", missing_ok=True)
        note = note or {"run_key": meta.get("run_key"), "attempt": attempt, "started_at": _now().isoformat()}
        write_whole(self._pointer_path(attempt), json.dumps({**note, "retired": reason, "retired_at": _now().isoformat()}))

    def _resend_entry(self, attempt: str, meta: dict[str, Any], current: dict[str, Any]) -> str | None:
        """Writes (over its sent file) the keys the attempt sent whose row in CURRENT differs from
        the one it sent, or that it deleted; returns the resend entry (None: no such key, "*":
        every key)."""
        sent_path = self._path(attempt, SENT_SUFFIX)
        try:
            with engine.connected(self._file(CURRENT), MEMORY_LIMIT, threads=1) as connection:
                mine = readable(connection, self._path(attempt, SNAPSHOT_SUFFIX))
                connection.execute(f"CREATE TABLE mine AS SELECT key, row_hash FROM read_parquet({literal(mine)})")
                sent = "SELECT key FROM mine" if meta.get("sent_all") else \
                    f"SELECT key FROM read_parquet({literal(readable(connection, sent_path))})"
                connection.execute(f"CREATE TABLE sent AS {sent}")
                if meta.get("fingerprint") == current.get("fingerprint"):  # else the rows cannot be compared
                    theirs = readable(connection, self._file(current["snapshot"]))
                    connection.execute(f"""
                        CREATE TABLE again AS SELECT sent.key FROM sent
                        JOIN read_parquet({literal(theirs)}) AS theirs ON theirs.key = sent.key
                        LEFT JOIN mine ON mine.key = sent.key
                        WHERE mine.row_hash IS DISTINCT FROM theirs.row_hash""")
                else:
                    connection.execute("CREATE TABLE again AS SELECT key FROM sent")
                if connection.execute("SELECT count(*) FROM again").fetchall()[0][0] == 0:
                    return None
                write_parquet(connection, "SELECT key FROM again", sent_path)
        except _duckdb_errors():
            return RESEND_ALL
        return attempt

    @staticmethod
    def _unlink(path: Any) -> None:
        try:
            path.unlink()
        except FileNotFoundError:
            pass

    def _prune(self, current: dict[str, Any]) -> None:
        """Deletes the files that neither CURRENT (its snapshot, the ones it keeps, its resend
        list) nor a pending attempt refers to; and notes of attempts dead or retired long ago.

        The files are listed before the notes: an attempt writes its note before its first file,
        so every file listed belongs to a note listed after it.
        """
        folder = self._file("snapshots")
        entries = list(folder.iterdir()) if folder.exists() else []
        keep = {_attempt_of(current), *current.get("history", [])}
        stale = (_now() - STALE_AFTER).isoformat()
        for pointer in self._pointers():
            attempt = pointer["attempt"]
            if pointer.get("retired"):
                if pointer["retired_at"] < stale:
                    self._unlink(self._pointer_path(attempt))
            elif self._path(attempt, META_SUFFIX).exists() or pointer["started_at"] >= stale:
                keep.add(attempt)
            else:  # never finished, for a week: its prepare died
                self._unlink(self._pointer_path(attempt))
        names = {f"{attempt}{suffix}" for attempt in keep for suffix in ATTEMPT_SUFFIXES}
        names |= {f"{attempt}{SENT_SUFFIX}" for attempt in current.get("resend", [])}
        names.add(current["snapshot"].rsplit("/", 1)[-1])
        for entry in entries:
            if entry.name not in names and not entry.name.endswith(TEMPORARY_SUFFIX):
                self._unlink(entry)


def delete_column(name: str) -> str:
    """The snapshot column that keeps a delete column's value."""
    return ident(DELETE_PREFIX + name)


# --- an incremental sync's part of a prepare, in the prepare's connection ---------------------------


def writer_fingerprint(writer: FormatWriter) -> str:
    """The writer's class and public settings: a sync whose writer changed sends every row again."""
    public = {k: v for k, v in vars(writer).items() if not k.startswith("_")}
    return f"{type(writer).__module__}.{type(writer).__qualname__}:" + json.dumps(public, sort_keys=True, default=_stable)


def _stable(value: Any) -> str:
    """A setting's text for the fingerprint: its own fingerprint where it has one (a ``FieldMapping``),
    as a default ``repr`` holds a memory address and would differ on every run."""
    fingerprint = getattr(value, "fingerprint", None)
    return fingerprint() if callable(fingerprint) else repr(value)


class _RecordingRejects(engine.RejectsWriter):
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
    maps to the same line, so only the other rows are mapped. An unchanged row keeps only the
    position (rowid) of its committed row in ``previous``: its key and delete columns are read
    from there when needed. ``settle``: the duplicate check across both (the first row of a key
    wins, mapped or unchanged).
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
        self.described = f"{SNAPSHOT_FORMAT}|" + (mapping.fingerprint() if mapping else "-") + "|" + writer_fingerprint(writer)
        self.previous = None
        self.notes: list[str] = []
        self.unchanged_rows = 0  # input rows found in the snapshot (repeats of one included)
        self.deleted_keys = False  # deletion lines written: their keys go to the sent file
        self.keep_vanished = False  # deletions skipped: the vanished rows stay in the snapshot
        self.fingerprint = ""
        self.rows = 0

    def compare(self, connection: Any, opened: Source) -> Source:
        """Finds the unchanged rows in one pass over the input (``sync_source``: each row's record,
        the position in ``previous`` of the committed row with its hash, and, for the other rows,
        their hash and values); returns the source of the rows left to map, their hash carried
        through the mapping as ``__row_hash``. A first sync maps every row: its hashes are computed
        in the read that maps them."""
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
            connection.execute("CREATE TEMP TABLE sync_source (__record BIGINT, __row_hash UBIGINT, __found BIGINT)")
            self._count_found()
            # every row is mapped, its hash computed in the same read
            return dataclasses.replace(opened, relation=f"(SELECT *, {row_hash} AS __row_hash FROM {opened.relation})",
                                       carried=("__row_hash",))
        self.previous_columns = self.previous.load(connection, "previous", "resend_keys")
        usable = "previous" + (" WHERE key NOT IN (SELECT key FROM resend_keys)" if self.previous.resend else "")
        # only the rows left to map keep their values (and hash): the others are the committed row
        # at ``__found`` (a rowid of ``previous``, which is never changed). Text columns travel
        # through the join as the one JSON array their hash is made of (nine columns carried cost
        # more than the join itself), and are read back from it for the few rows left.
        text = row_json(opened.names, opened.types)
        if text is not None:
            rows = (f"(SELECT __record, __row_json, {hash_of('__row_json')} AS __row_hash "
                    f"FROM (SELECT __record, {text} AS __row_json FROM {opened.relation}))")
            carried = ", CASE WHEN found.position IS NULL THEN rows.__row_json END AS __row_json"
        else:
            rows = f"(SELECT *, {row_hash} AS __row_hash FROM {opened.relation})"
            carried = "".join(f", CASE WHEN found.position IS NULL THEN rows.{ident(name)} END AS {ident(name)}"
                              for name in opened.names)
        connection.execute(f"""CREATE TEMP TABLE sync_source AS
                               SELECT rows.__record, CASE WHEN found.position IS NULL THEN rows.__row_hash END AS __row_hash,
                                      found.position AS __found{carried}
                               FROM {rows} AS rows
                               LEFT JOIN (SELECT rowid AS position, row_hash FROM {usable}) AS found
                                 ON found.row_hash = rows.__row_hash""")
        self._count_found()
        # the rows left, in input order (a join does not keep it)
        left = "(SELECT * FROM sync_source WHERE __found IS NULL)"
        if text is not None:
            left = f"(SELECT __record, __row_hash, from_json(__row_json, '[\"VARCHAR\"]') AS __values FROM {left})"
            names = ", ".join(f"__values[{index}] AS {ident(name)}" for index, name in enumerate(opened.names, 1))
        else:
            names = ", ".join(ident(name) for name in opened.names)
        connection.execute(f"CREATE TEMP VIEW sync_changed_rows AS SELECT __record, __row_hash, {names} "
                           f"FROM {left} ORDER BY __record")
        return dataclasses.replace(opened, relation="sync_changed_rows", carried=("__row_hash",))

    def _count_found(self) -> None:
        """How many input rows found each committed row: counted here (a few milliseconds) rather
        than grouped in SQL. Committed rows found by none are changed, vanished or to be sent
        again (``sync_unfound``); found by more than one, an input row repeated."""
        size = self.connection.execute("SELECT count(*) FROM previous").fetchall()[0][0]
        counts = np.zeros(size, np.int64)
        reader = self.connection.sql("SELECT __found FROM sync_source WHERE __found IS NOT NULL").to_arrow_reader(1 << 20)
        for batch in reader:
            counts += np.bincount(batch.column(0).to_numpy(), minlength=size)
        self.unchanged_rows = int(counts.sum())
        self._positions("sync_unfound", np.flatnonzero(counts == 0))
        self._positions("sync_found_again", np.flatnonzero(counts > 1))

    def _positions(self, table: str, positions: np.ndarray) -> None:
        """A temporary table of rowids of ``previous`` (a table: the joins see its size)."""
        self.connection.register(f"{table}_arrow", pa.table({"position": pa.array(positions, pa.int64())}))
        self.connection.execute(f"CREATE TEMP TABLE {table} AS SELECT position FROM {table}_arrow")
        self.connection.unregister(f"{table}_arrow")

    def settle(self, table: engine.MappedTable, result: engine.PrepareResult) -> None:
        """The duplicate check between mapped rows and unchanged ones: the first row of a key wins
        (``table.reject_repeats`` ran among the mapped rows already; two unchanged rows of one key
        are one row twice, byte for byte: they found the same committed row)."""
        result.sync_run_key, result.sync_state = self.run_key, str(self.state.directory)
        result.notes.extend(self.notes)
        connection = table.connection
        # a key has one accepted mapped row at most: its clash is with the key's first unchanged row
        connection.execute("""CREATE TEMP TABLE clashes AS
                              SELECT mapped.__record AS mapped_record, min(sync_source.__record) AS unchanged_record,
                                     any_value(sync_source.__found) AS position
                              FROM mapped JOIN previous ON previous.key = mapped.__key
                                JOIN sync_source ON sync_source.__found = previous.rowid
                              WHERE mapped.__reason IS NULL GROUP BY mapped.__record""")
        connection.execute(f"""UPDATE mapped SET __reason = {literal(engine.DUPLICATE)} WHERE __record IN
                               (SELECT mapped_record FROM clashes WHERE mapped_record > unchanged_record)""")
        # unchanged rows after the first that found their committed row, and those of a key whose
        # mapped row came first (then the committed row is not kept: the mapped one is)
        connection.execute("""CREATE TEMP TABLE unchanged_repeats AS
                              WITH again AS (SELECT sync_source.__record, sync_source.__found FROM sync_source
                                             WHERE __found IN (SELECT position FROM sync_found_again)),
                                   firsts AS (SELECT __found, min(__record) AS first FROM again GROUP BY __found)
                              SELECT again.__record, again.__found FROM again JOIN firsts USING (__found)
                              WHERE again.__record > firsts.first
                              UNION ALL
                              SELECT __record, __found FROM sync_source WHERE __record IN
                                (SELECT unchanged_record FROM clashes WHERE unchanged_record > mapped_record)""")
        repeats = connection.execute("SELECT count(*) FROM unchanged_repeats").fetchall()[0][0]
        result.unchanged = self.unchanged_rows - repeats

    def rejects_writer(self, path: Any) -> _RecordingRejects:
        return _RecordingRejects(path)

    def add_rejects(self, rejected: engine.RejectsWriter) -> None:
        """Unchanged rows that repeat an earlier row's key (rare: they come before the others)."""
        repeats = self.connection.sql("""SELECT __record, previous.key FROM unchanged_repeats
                                         JOIN previous ON previous.rowid = unchanged_repeats.__found
                                         ORDER BY __record""").to_arrow_table()
        if repeats.num_rows:
            rejected.add(repeats.column(0).combine_chunks(), repeats.column(1).combine_chunks(),
                         pa.array([engine.DUPLICATE] * repeats.num_rows, pa.string()))

    def deletion_writer(self, table: engine.MappedTable, result: engine.PrepareResult) -> Any:
        """The writer of the deletion lines that ``engine.MappedTable.write`` calls after the rows, or None."""
        if not self.deletions or self.previous is None:
            return None
        connection = table.connection
        # keys of the snapshot that no row of the input has (mapped, or found unchanged)
        connection.execute("""CREATE TEMP TABLE vanished AS SELECT * FROM previous
                              WHERE rowid IN (SELECT position FROM sync_unfound)
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
            while rows := cursor.fetchmany(engine.BATCH_ROWS):
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

    def write_snapshot(self, table: engine.MappedTable, rejected_records: pa.Array, result: engine.PrepareResult) -> None:
        """Writes the attempt's snapshot in one pass: the committed rows the input still has
        unchanged, the rows sent, and the committed rows kept for keys rejected now (and for
        vanished keys whose deletion was skipped)."""
        connection = table.connection
        connection.register("rejected_now", pa.table({"record": rejected_records}))
        # qualified: the input joined below may have a column of the same name
        mine = "".join(f", CAST({'mapped.' + table.column(name) if name in table.column else 'NULL'} AS VARCHAR)"
                       for name in self.delete_columns)
        theirs = "".join(f", {delete_column(name) if name in self.previous_columns else 'NULL::VARCHAR'} AS {delete_column(name)}"
                         for name in self.delete_columns)
        names = "key, row_hash" + "".join(f", {delete_column(name)}" for name in self.delete_columns)
        connection.execute(f"""CREATE TEMP TABLE sent_now AS
                               SELECT mapped.__key AS key, mapped.__row_hash AS row_hash{mine}
                               FROM mapped
                               WHERE mapped.__reason IS NULL AND mapped.__key IS NOT NULL
                                 AND mapped.__record NOT IN (SELECT record FROM rejected_now)""")
        # committed rows no kept unchanged row found: unfound ones, and those whose key a mapped
        # row that came first took
        connection.execute("""CREATE TEMP TABLE sync_dropped AS SELECT position FROM sync_unfound
                              UNION ALL SELECT position FROM clashes WHERE unchanged_record > mapped_record""")
        # a key still in the input whose row is rejected now: the vendor keeps the committed row
        # (unless CURRENT says it may hold another one: then it is sent again when it is valid)
        # (the first part names the columns)
        parts = [f"SELECT key, row_hash{theirs} FROM previous WHERE rowid NOT IN (SELECT position FROM sync_dropped)",
                 "SELECT * FROM sent_now"]
        if self.previous is not None:  # (without one, nothing is committed to keep)
            connection.execute("""CREATE TEMP TABLE sync_rejected_keys AS SELECT DISTINCT __key AS key FROM mapped
                                  WHERE __key IS NOT NULL AND __key NOT IN (SELECT key FROM sent_now)""")
            parts.append(f"""SELECT key, row_hash{theirs} FROM previous WHERE key IN (SELECT key FROM sync_rejected_keys)
                               AND rowid IN (SELECT position FROM sync_dropped) AND key NOT IN (SELECT key FROM resend_keys)""")
        if self.keep_vanished:
            parts.append(f"SELECT key, row_hash{theirs} FROM vanished WHERE key NOT IN (SELECT key FROM resend_keys)")
        files = self.state.writer(self.run_key, self.delete_columns, self.previous)
        self.rows = write_parquet(connection, f"SELECT {names} FROM ({' UNION ALL '.join(parts)})", files.snapshot)
        if self.previous is not None:  # without one, every row was sent: the snapshot says which
            sent = "SELECT key FROM sent_now" + (" UNION ALL SELECT key FROM vanished" if self.deleted_keys else "")
            write_parquet(connection, sent, files.sent)
        connection.unregister("rejected_now")

    def record_pending(self, result: engine.PrepareResult) -> None:
        self.state.record_pending(self.run_key, self.fingerprint, self.rows, result.to_dict())


def row_json(names: list[str], types: dict[str, str]) -> str | None:
    """SQL for a row of text columns as a JSON array (what its hash is made of), or None when a
    column is of another type."""
    if not names or not all(types.get(name) == "VARCHAR" for name in names):
        return None
    return "to_json([" + ", ".join(ident(name) for name in names) + "])"


def hash_of(text: str) -> str:
    """SQL for 64 bits of the MD5 of a text (the upper half of ``md5_number``)."""
    return f"CAST(md5_number({text}) >> 64 AS UBIGINT)"


def stable_row_hash(names: list[str], types: dict[str, str]) -> str:
    """SQL for 64 bits of the MD5 of a row's values as JSON: stable across DuckDB versions (unlike
    ``hash()``), as MD5 and JSON are. Text columns go in a JSON array (cheaper), other types in an
    object."""
    if not names:
        return "0::UBIGINT"
    text = row_json(names, types)
    if text is None:
        text = "to_json({" + ", ".join(f"{literal(name)}: {ident(name)}" for name in names) + "})"
    return hash_of(text)
