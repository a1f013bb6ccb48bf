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
across DuckDB versions, unlike ``hash()``. The snapshot format, the mapping, the writer and the
input's layout make the fingerprint: under one fingerprint the same input row always makes the
same line, so rows found in the snapshot are not even mapped; a snapshot made under another one
is not compared with (every row is sent once, with a note).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_profiles.prepare.sql import ident, literal
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


def write_parquet(connection: Any, query: str, path: Any) -> None:
    """Writes the query's rows to ``path`` as Parquet, whole or not at all: written aside locally,
    then renamed into place (local) or uploaded through ``open_binary`` (object storage)."""
    path = as_storage_path(path)
    if is_local(path):
        name = local_path(path)
        os.makedirs(os.path.dirname(os.path.abspath(name)), exist_ok=True)
        aside = f"{name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}"
    else:
        aside = os.path.join(_scratch(connection), f"upload-{uuid.uuid4().hex[:12]}.parquet")
    try:
        # snappy: the row hashes are random bits, which zstd only spends time on
        connection.execute(f"COPY ({query}) TO {literal(aside)} (FORMAT parquet, COMPRESSION snappy)")
        if is_local(path):
            os.replace(aside, name)
        else:
            with open(aside, "rb") as source, open_binary(path, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
    finally:
        if os.path.exists(aside):
            os.unlink(aside)


@contextlib.contextmanager
def _connection() -> Iterator[Any]:
    """A small DuckDB connection for the state's own work (a commit's bookkeeping)."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix=".sync-") as spill:
        connection = duckdb.connect(config={"memory_limit": MEMORY_LIMIT, "threads": 1, "temp_directory": spill})
        try:
            yield connection
        finally:
            connection.close()


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
        allow_older = self.allow_older if allow_older is None else allow_older
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
        history = [_attempt_of(current), *current.get("history", [])] if current else []
        committed = {
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
        write_whole(self._file(CURRENT), json.dumps(committed))
        self._unlink(self._pointer_path(attempt))
        for pointer in self._pointers():  # finished attempts of other runs can no longer commit
            if not pointer.get("retired") and pointer["run_key"] == key and pointer["started_at"] < found["started_at"] \
                    and not self._path(pointer["attempt"], META_SUFFIX).exists():
                self._unlink(self._pointer_path(pointer["attempt"]))  # an earlier try of this run's prepare died
            elif not pointer.get("retired") and self._path(pointer["attempt"], META_SUFFIX).exists():
                other = self._read_json(self._path(pointer["attempt"], META_SUFFIX), "a pending snapshot's record",
                                        "Delete it and the files named like it.")
                self._retire(pointer["attempt"], other, (
                    f"run {key!r} committed after run {pointer['run_key']!r}'s prepare, so the snapshot that run "
                    "compared with is no longer current. Not committed; what it sent will be sent again next time."))
                if pointer["run_key"] == key:  # an earlier attempt of this run: nothing to tell
                    self._unlink(self._pointer_path(pointer["attempt"]))
        committed = self.current()
        self._prune(committed)
        return committed

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
            with _connection() as connection:
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
