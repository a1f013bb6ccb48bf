"""The sync state's files: what a prepare writes, what a commit changes, what survives re-runs,
concurrent runs, backfills and damaged files (real files, real prepares)."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3

import pytest

from airflow_provider_profiles.formats import get_writer
from airflow_provider_profiles.formats.pipeline import prepare_batches, prepare_file
from airflow_provider_profiles.formats.reader import read_cursor
from airflow_provider_profiles.formats.sync import SyncConflict, SyncState, SyncStateError

BASE = [(i, f"n{i}", f"c{i}") for i in range(1, 11)]
DAY = dt.timedelta(days=1)
MONDAY = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


def writer():
    return get_writer("localytics", "changes", attributes={"name": "name", "city": "city"}, customer_id="id")


def sent(path):
    with open(path) as handle:
        return {json.loads(line)["customer_id"] for line in handle}


def run(tmp_path, rows, run_key, state, **options):
    """One prepare of ``rows`` (a CSV file) for ``run_key``; returns its result and the ids it sent."""
    source = tmp_path / f"{run_key}.csv"
    source.write_text("id,name,city\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows))
    output = tmp_path / f"{run_key}.ndjson"
    result = prepare_file(str(source), writer(), str(output), sync=state, sync_run_key=run_key, **options)
    return result, sent(output)


def changed(rows, *ids):
    return [(i, n + "!" if i in ids else n, c) for i, n, c in rows]


def test_a_rerun_of_a_committed_run_leaves_its_snapshot_alone(tmp_path):
    """Run r1 committed; r1 re-run (cleared) with row 2 changed, and its upload fails: the next run
    still compares with what r1 committed, so row 2 goes out."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    result, rerun = run(tmp_path, changed(BASE, 2), "r1", state)
    assert rerun == {"2"}  # no commit: its upload failed
    result, later = run(tmp_path, changed(BASE, 2), "r2", state)
    assert later == {"2"} and result.unchanged == 9


def test_a_rerun_that_dies_part_way_leaves_the_committed_snapshot_readable(tmp_path):
    """The re-run's prepare stops after its first batches (a lost connection): the snapshot r1
    committed is intact, and the next run sends only what changed since r1."""
    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE users (id TEXT, name TEXT, city TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(str(i), n, c) for i, n, c in BASE])

    def prepare(run_key, fail_after=None):
        with sqlite3.connect(database) as db:
            names, batches = read_cursor(db.execute("SELECT id, name, city FROM users ORDER BY rowid"), 2)

            def dying():
                for number, batch in enumerate(batches):
                    if number == fail_after:
                        raise ConnectionError("server closed the connection")
                    yield batch

            output = tmp_path / f"{run_key}.ndjson"
            result = prepare_batches(dying(), writer(), str(output), sync=state, sync_run_key=run_key)
        return result, sent(output)

    state = SyncState(tmp_path / "state")
    prepare("r1")
    state.commit("r1")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE users SET city = 'moved' WHERE id = '9'")
    with pytest.raises(ConnectionError):
        prepare("r1", fail_after=3)
    result, later = prepare("r2")
    assert later == {"9"} and result.unchanged == 9
    state.commit("r2")
    assert state.current()["run_key"] == "r2"


def test_concurrent_runs_the_second_commit_is_refused_and_its_rows_resent(tmp_path):
    """a and b both start from r1. a commits first; b's commit is refused with a clear message (not
    a missing file), and what b sent that a's snapshot does not say is sent again next time."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, changed(BASE, 2), "a", state)
    _, b_sent = run(tmp_path, changed(BASE, 3), "b", state)
    assert b_sent == {"3"}
    state.commit("a")
    with pytest.raises(SyncConflict, match="'b'.*no longer current.*sent again"):
        state.commit("b")
    assert state.current()["run_key"] == "a"
    # the vendor holds b's row 3 now; the data goes back to r1's: row 3 must go out again
    result, after = run(tmp_path, changed(BASE, 2), "c", state)
    assert after == {"3"}
    state.commit("c")
    result, quiet = run(tmp_path, changed(BASE, 2), "d", state)
    assert quiet == set() and result.unchanged == 10


def test_a_commit_keeps_the_pending_snapshots_of_other_runs(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, BASE, "a", state)
    run(tmp_path, BASE, "b", state)
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")  # refused, not FileNotFoundError: b's files were still there
    # superseded and refused attempts are cleaned up by the next commit
    run(tmp_path, BASE, "c", state)
    run(tmp_path, BASE, "c", state)  # a retry of c's prepare: its first attempt is garbage
    state.commit("c")
    names = {path.name.split(".")[0] for path in (tmp_path / "state" / "snapshots").iterdir()}
    assert names == {"a", "c"}  # the current snapshot and the one kept before it


def test_older_data_does_not_replace_a_newer_current(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "tuesday", state)
    state.commit("tuesday", as_of=MONDAY + DAY)
    run(tmp_path, changed(BASE, 4), "monday", state)
    with pytest.raises(SyncConflict, match="older"):
        state.commit("monday", as_of=MONDAY)
    assert state.current()["run_key"] == "tuesday"
    run(tmp_path, changed(BASE, 4), "monday-again", state)
    current = state.commit("monday-again", as_of=MONDAY, allow_older=True)  # asked for
    assert current["run_key"] == "monday-again"


def test_a_commit_run_twice_is_a_no_op(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    first = state.commit("r1")
    assert state.commit("r1")["snapshot"] == first["snapshot"]


def test_a_damaged_current_names_its_file_and_the_way_out(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    pointer = tmp_path / "state" / "CURRENT.json"
    pointer.write_text('{"snapshot": "snaps')
    with pytest.raises(SyncStateError, match=r"(?i)CURRENT\.json.*delete it"):
        run(tmp_path, BASE, "r2", state)
    with pytest.raises(SyncStateError, match=r"CURRENT\.json"):
        state.commit("r2")


def test_a_missing_snapshot_names_its_file_and_the_way_out(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    current = state.commit("r1")
    (tmp_path / "state" / current["snapshot"]).unlink()
    with pytest.raises(SyncStateError, match=r"r1.*\.arrow.*CURRENT\.json"):
        run(tmp_path, BASE, "r2", state)


def test_current_is_replaced_whole(tmp_path, monkeypatch):
    """A crash while CURRENT is written leaves the old one: it is written aside and renamed."""
    import os

    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    before = state.commit("r1")
    run(tmp_path, changed(BASE, 1), "r2", state)
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        state.commit("r2")
    assert state.current() == before


def test_in_object_storage_a_refused_run_is_sent_again(tmp_path):
    """The same flow through fsspec (memory://): listing, replacing and deleting state files."""
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())
    root = f"memory://state-{tmp_path.name}"
    state = SyncState(root)
    try:
        run(tmp_path, BASE, "r1", state)
        state.commit("r1")
        run(tmp_path, changed(BASE, 5), "a", state)
        run(tmp_path, changed(BASE, 6), "b", state)
        state.commit("a")
        with pytest.raises(SyncConflict, match="no longer current"):
            state.commit("b")
        _, after = run(tmp_path, changed(BASE, 5), "c", state)
        assert after == {"6"}
        state.commit("c")
        assert state.current()["resend"] == []
    finally:
        MemoryFileSystem().rm(root.removeprefix("memory://"), recursive=True)


def test_cleanup_keeps_a_prepare_in_progress_and_drops_one_dead_for_a_week(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    pending = tmp_path / "state" / "pending"
    snapshots = tmp_path / "state" / "snapshots"
    for name, started in (("live", dt.datetime.now(dt.timezone.utc)), ("dead", MONDAY - 30 * DAY)):
        (pending / f"{name}.tok.json").write_text(json.dumps(
            {"run_key": name, "attempt": f"{name}.tok", "base": None, "started_at": started.isoformat()}))
        (snapshots / f"{name}.tok.arrow").write_bytes(b"half written")
    # a first try of r2's prepare that died part-way: gone once r2 commits
    (pending / "r2.first.json").write_text(json.dumps(
        {"run_key": "r2", "attempt": "r2.first", "base": None,
         "started_at": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()}))
    (snapshots / "r2.first.arrow").write_bytes(b"half written")
    run(tmp_path, changed(BASE, 1), "r2", state)
    state.commit("r2")
    assert (snapshots / "live.tok.arrow").exists() and (pending / "live.tok.json").exists()
    assert not (snapshots / "dead.tok.arrow").exists() and not (pending / "dead.tok.json").exists()
    assert not (snapshots / "r2.first.arrow").exists() and not (pending / "r2.first.json").exists()


def test_a_refused_first_sync_resends_only_rows_that_differ(tmp_path):
    """a and b are both first syncs (every row sent); a commits. b's rows that differ from a's are
    sent again; the others are where a left them."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "a", state)
    run(tmp_path, changed(BASE, 4), "b", state)
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")
    _, after = run(tmp_path, BASE, "c", state)
    assert after == {"4"}


def test_deletions_of_a_refused_run_are_undone_next_time(tmp_path):
    """b deleted id 3 at the vendor (it vanished from b's input), but a committed first and still
    has id 3: the next run sends id 3 again."""
    from airflow_provider_profiles.formats.mapping import FieldMapping

    mapping = FieldMapping({"user_account_id": "id", "compartment_id": {"const": "9"}, "name": "name"})
    profiles = get_writer("mediarithmics", "USER_PROFILE")

    def prepare(rows, run_key):
        source = tmp_path / f"{run_key}.csv"
        source.write_text("id,name,city\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows))
        output = tmp_path / f"{run_key}.ndjson"
        prepare_file(str(source), profiles, str(output), sync=state, sync_run_key=run_key,
                     mapping=mapping, deletions=True)
        return [json.loads(line) for line in output.read_text().splitlines()]

    state = SyncState(tmp_path / "state")
    prepare(BASE[:4], "r1")
    state.commit("r1")
    prepare(BASE[:4], "a")
    assert prepare([row for row in BASE[:4] if row[0] != 3], "b") == [
        {"compartment_id": "9", "user_account_id": "3", "operation": "DELETE"}]
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")
    assert [line["user_account_id"] for line in prepare(BASE[:4], "c")] == ["3"]


def test_a_refused_run_against_an_empty_snapshot(tmp_path):
    """Every row of r1 was rejected (an empty snapshot); a and b run, a commits: b is refused
    cleanly, and what b sent goes out again."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, [(i, "", "") for i in range(1, 4)], "r1", state)
    assert state.commit("r1")["rows"] == 0
    run(tmp_path, [(i, "", "") for i in range(1, 4)], "a", state)
    run(tmp_path, BASE[:2], "b", state)
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")
    _, after = run(tmp_path, BASE[:2], "c", state)
    assert after == {"1", "2"}
