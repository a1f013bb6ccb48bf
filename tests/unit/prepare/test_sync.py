"""Incremental sync on the DuckDB engine: ``prepare.engine.prepare`` with a ``prepare.sync.SyncState``.

Only new and changed rows are written, the state is committed after success only, and re-runs,
concurrent runs, backfills, damaged files and deletions behave (real files, real prepares).
"""

from __future__ import annotations

import csv
import io

import datetime as dt
import json
import os

import pytest

from airflow_provider_profiles.writers import get_writer
from airflow_provider_profiles.prepare.mapping import FieldMapping
from airflow_provider_profiles.prepare import sync as sync_module
from airflow_provider_profiles.prepare.engine import prepare
from airflow_provider_profiles.prepare.sync import SyncConflict, SyncState, SyncStateError, run_key_of
from airflow_provider_profiles.prepare.source import QueryFailed

BASE = [(i, f"n{i}", f"c{i}") for i in range(1, 11)]
DAY = dt.timedelta(days=1)
MONDAY = dt.datetime(2026, 11, 23, tzinfo=dt.timezone.utc)


def writer():
    return get_writer("localytics", "changes", attributes={"name": "name", "city": "city"}, customer_id="id")


def write_csv(path, rows, header="id,name,city"):
    path.write_text(header + "\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows))
    return str(path)


def sent(path):
    with open(path) as handle:
        return {json.loads(line)["customer_id"]: json.loads(line)["changes"] for line in handle}


def run(tmp_path, rows, run_key, state, **options):
    """One prepare of ``rows`` (a CSV file) for ``run_key``; returns its result and what it sent."""
    source = write_csv(tmp_path / f"{run_key}.csv", rows)
    output = tmp_path / f"{run_key}.ndjson"
    result = prepare(source, options.pop("writer", None) or writer(), str(output), sync=state, sync_run_key=run_key,
                     **options)
    assert result.read == result.written + result.rejected + result.unchanged
    return result, sent(output)


def changed(rows, *ids):
    return [(i, n + "!" if i in ids else n, c) for i, n, c in rows]


def attempt_files(state_dir):
    """The snapshot files, the token taken out: ``run.suffix``."""
    return sorted(name.split(".", 2)[0] + "." + name.split(".", 2)[2] for name in os.listdir(state_dir / "snapshots"))


# --- what a sync sends -----------------------------------------------------------------------------


def test_three_runs_with_a_failed_one_lose_nothing(tmp_path):
    state = SyncState(tmp_path / "state")
    result, first = run(tmp_path, BASE, "run-1", state)
    assert (result.written, result.unchanged) == (10, 0)
    assert "every row is sent" in result.notes[0]
    state.commit("run-1")

    # run 2 changes rows 2 and 3 and adds 11, but its uploads fail: no commit
    second_rows = changed(BASE, 2, 3) + [(11, "n11", "c11")]
    result, second = run(tmp_path, second_rows, "run-2", state)
    assert set(second) == {"2", "3", "11"} and (result.written, result.unchanged) == (3, 8)

    # run 3 changes row 5 too; compared with run 1 (the last commit), run 2's changes are resent
    third_rows = [(i, n, "moved" if i == 5 else c) for i, n, c in second_rows]
    result, third = run(tmp_path, third_rows, "run-3", state)
    assert set(third) == {"2", "3", "5", "11"}
    assert third["2"][0] == {"op": "assign", "attr": "name", "value": "n2!"}
    state.commit("run-3")

    result, fourth = run(tmp_path, third_rows, "run-4", state)
    assert (result.written, result.unchanged, fourth) == (0, 11, {})
    state.commit("run-4")
    assert state.current()["run_key"] == "run-4"
    assert attempt_files(tmp_path / "state") == ["run-3.json", "run-3.parquet", "run-3.sent.parquet",
                                                 "run-4.json", "run-4.parquet", "run-4.sent.parquet"]


def test_the_snapshot_is_parquet_with_a_key_and_a_stable_row_hash(tmp_path):
    import pyarrow.parquet as pq

    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE[:2], "a", state)
    snapshot = pq.read_table(tmp_path / "state" / state.commit("a")["snapshot"])
    assert snapshot.schema.field("key").type == "string" and snapshot.schema.field("row_hash").type == "uint64"
    assert sorted(snapshot.column("key").to_pylist()) == ["1", "2"]
    # 64 bits of the MD5 of the input row as JSON: the same on every DuckDB version
    import hashlib

    expected = int.from_bytes(hashlib.md5(b'["1","n1","c1"]').digest()[8:], "little")  # md5_number is the digest, little-endian
    assert dict(zip(snapshot.column("key").to_pylist(), snapshot.column("row_hash").to_pylist()))["1"] == expected


def test_a_changed_mapping_resends_everything(tmp_path):
    state = SyncState(tmp_path / "state")
    mapping = FieldMapping({"id": "id", "name": "name", "city": "city"})
    run(tmp_path, BASE, "a", state, mapping=mapping)
    state.commit("a")
    result, again = run(tmp_path, BASE, "b", state, mapping=mapping)
    assert result.written == 0
    other = FieldMapping({"id": "id", "name": "city", "city": "name"})
    result, again = run(tmp_path, BASE, "c", state, mapping=other)
    assert result.written == 10 and len(again) == 10 and "another mapping" in result.notes[0]


def test_a_changed_header_resends_everything(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "a", state)
    state.commit("a")
    source = write_csv(tmp_path / "b.csv", [(i, c, n) for i, n, c in BASE], header="id,city,name")  # same values
    result = prepare(source, writer(), str(tmp_path / "b.ndjson"), sync=state, sync_run_key="b")
    assert result.written == 10 and "every row is sent" in result.notes[0]


def test_rejected_rows_are_not_remembered(tmp_path):
    state = SyncState(tmp_path / "state")
    result, _ = run(tmp_path, BASE[:3] + [(4, "", "")], "a", state)
    assert (result.written, result.rejected) == (3, 1)
    state.commit("a")
    result, again = run(tmp_path, BASE[:3] + [(4, "now", "set")], "b", state)
    assert set(again) == {"4"}


def test_a_row_rejected_now_keeps_what_the_vendor_holds(tmp_path):
    """Row 2 was sent; now its name is too long (rejected). The vendor still has the row sent: when
    it comes back unchanged, nothing is sent; when it comes back changed, it is."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE[:3], "a", state)
    state.commit("a")
    result, _ = run(tmp_path, [(1, "n1", "c1"), (2, "x" * 300, "c2"), (3, "n3", "c3")], "b", state)
    assert (result.written, result.rejected, result.unchanged) == (0, 1, 2)
    state.commit("b")
    result, again = run(tmp_path, BASE[:3], "c", state)
    assert (result.written, again) == (0, {})
    state.commit("c")
    result, again = run(tmp_path, changed(BASE[:3], 2), "d", state)
    assert set(again) == {"2"}


def test_repeated_ids_are_rejected_whether_the_snapshot_knows_them_or_not(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, [(1, "a", "x"), (2, "b", "x")], "run-1", state)
    state.commit("run-1")
    rows = [(1, "a2", "x"), (2, "b", "x"), (1, "a3", "x"), (3, "c", "x"), (3, "c2", "x"), (2, "b9", "x")]
    result, second = run(tmp_path, rows, "run-2", state, rejects=str(tmp_path / "rejects.csv"))
    assert (result.written, result.unchanged, result.rejected) == (2, 1, 3)
    assert second["1"][0]["value"] == "a2" and second["3"][0]["value"] == "c"  # the first row of each id wins
    rejected = list(csv.reader(io.StringIO((tmp_path / "rejects.csv").read_text())))[1:]
    assert [row[:2] for row in rejected] == [["3", "1"], ["5", "3"], ["6", "2"]]


def test_repeats_of_unchanged_rows_are_rejected_and_the_first_row_of_a_key_wins(tmp_path):
    """Unchanged rows are found before mapping; the duplicate check still sees them in input
    order: a byte-for-byte repeat of an unchanged row, and an unchanged row after a changed row
    of its key, are rejected."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, [(1, "a", "x"), (2, "b", "x"), (3, "c", "x")], "run-1", state)
    state.commit("run-1")
    rows = [(1, "a", "x"), (1, "a", "x"), (2, "b2", "x"), (2, "b", "x"), (3, "c", "x")]
    result, second = run(tmp_path, rows, "run-2", state, rejects=str(tmp_path / "rejects.csv"))
    assert (result.written, result.unchanged, result.rejected) == (1, 2, 2)
    assert second == {"2": [{"op": "assign", "attr": "name", "value": "b2"}, {"op": "assign", "attr": "city", "value": "x"}]}
    rejected = list(csv.reader(io.StringIO((tmp_path / "rejects.csv").read_text())))[1:]
    assert sorted(row[:2] for row in rejected) == [["2", "1"], ["4", "2"]]
    state.commit("run-2")
    result, third = run(tmp_path, [(1, "a", "x"), (2, "b2", "x"), (3, "c", "x")], "run-3", state)
    assert (result.written, result.unchanged, third) == (0, 3, {})


def test_an_input_in_another_order_sends_only_what_changed(tmp_path):
    import random

    rows = [(i, f"n{i}", f"c{i}") for i in range(1, 3_001)]
    state = SyncState(tmp_path / "state")
    run(tmp_path, rows, "run-1", state)
    state.commit("run-1")
    shuffled = random.Random(3).sample(rows, len(rows))
    shuffled[10] = (shuffled[10][0], "renamed", shuffled[10][2])
    result, second = run(tmp_path, shuffled + [(5_000, "new", "x")], "run-2", state)
    assert (result.written, result.unchanged) == (2, 2_999) and set(second) == {str(shuffled[10][0]), "5000"}
    state.commit("run-2")
    result, third = run(tmp_path, rows + [(5_000, "new", "x")], "run-3", state)  # the row changes back
    assert (result.written, result.unchanged) == (1, 3_000) and set(third) == {str(shuffled[10][0])}


def test_changed_rows_of_a_large_input_come_out_in_input_order(tmp_path):
    """Unchanged rows are found with a join, which does not keep the input's order: the rows left
    to map are put back in it (100,000 rows, one in seven changed: several threads' worth)."""
    count = 100_000
    state = SyncState(tmp_path / "state")
    run(tmp_path, [(i, f"n{i}", f"c{i}") for i in range(count)], "a", state)
    state.commit("a")
    rows = [(i, f"n{i}!" if i % 7 == 0 else f"n{i}", f"c{i}") for i in range(count)]
    result, second = run(tmp_path, rows, "b", state)
    assert list(second) == [str(i) for i in range(0, count, 7)]
    assert (result.written, result.unchanged) == (len(range(0, count, 7)), count - len(range(0, count, 7)))


def test_a_stray_quote_in_a_csv_field_syncs_like_any_value(tmp_path):
    """``5" screen`` in an unquoted field is valid CSV: sent once, then unchanged, then changed."""
    state = SyncState(tmp_path / "state")
    rows = [(1, '5" screen', "x")] + BASE[1:3]
    result, first = run(tmp_path, rows, "a", state)
    assert first["1"][0]["value"] == '5" screen' and result.written == 3
    state.commit("a")
    result, again = run(tmp_path, rows, "b", state)
    assert (result.written, result.unchanged) == (0, 3)
    state.commit("b")
    result, again = run(tmp_path, [(1, '6" screen', "x")] + BASE[1:3], "c", state)
    assert set(again) == {"1"} and again["1"][0]["value"] == '6" screen'



def test_an_unreadable_record_among_unchanged_ones_is_rejected_with_its_line(tmp_path):
    """A ragged line in a synced CSV: rejected with its line (no record number: it was never read
    as a row), and the rows around it are compared as usual."""
    state = SyncState(tmp_path / "state")
    rows = [(i, f"n{i}", f"c{i}") for i in range(1, 301)]
    run(tmp_path, rows, "a", state)
    state.commit("a")
    source = tmp_path / "b.csv"
    source.write_text("id,name,city\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows[:99])
                      + "100,changed,c100\n" + "ragged\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows[100:]))
    result = prepare(str(source), writer(), str(tmp_path / "b.ndjson"), sync=state, sync_run_key="b",
                     rejects=str(tmp_path / "rejects.csv"))
    assert (result.read, result.written, result.unchanged, result.rejected) == (301, 1, 299, 1)
    rejected = list(csv.reader(io.StringIO((tmp_path / "rejects.csv").read_text())))[1:]
    assert rejected == [["", "", "line 102: ragged row: expected 3 fields, found 1"]]
    assert set(sent(tmp_path / "b.ndjson")) == {"100"}


def test_a_rerun_whose_query_dies_part_way_leaves_the_committed_snapshot_alone(tmp_path):
    """The re-run of r1 reads its rows from a database cursor that fails after a few batches (a
    lost connection): r1's committed snapshot is intact, and r2 sends only what changed since."""
    import sqlite3

    database = tmp_path / "crm.db"
    with sqlite3.connect(database) as db:
        db.execute("CREATE TABLE users (id TEXT, name TEXT, city TEXT)")
        db.executemany("INSERT INTO users VALUES (?, ?, ?)", [(str(i), n, c) for i, n, c in BASE])

    class Dying:
        """A cursor whose connection is lost at its ``fail_after``-th fetch."""

        def __init__(self, cursor, fail_after):
            self.cursor, self.fail_after, self.fetches = cursor, fail_after, 0
            self.description = cursor.description

        def fetchmany(self, size):
            self.fetches += 1
            if self.fetches == self.fail_after:
                raise ConnectionError("server closed the connection")
            return self.cursor.fetchmany(size)

    def prepare_from_query(run_key, fail_after=None):
        db = sqlite3.connect(database, check_same_thread=False)
        try:
            cursor = Dying(db.execute("SELECT id, name, city FROM users ORDER BY rowid"), fail_after)
            output = tmp_path / f"{run_key}.ndjson"
            result = prepare(f"query for {run_key}", writer(), str(output), cursor=cursor, batch_rows=2,
                             sync=state, sync_run_key=run_key)
        finally:
            db.close()
        return result, sent(output)

    state = SyncState(tmp_path / "state")
    prepare_from_query("r1")
    state.commit("r1")
    with sqlite3.connect(database) as db:
        db.execute("UPDATE users SET city = 'moved' WHERE id = '9'")
    with pytest.raises(QueryFailed, match="query for r1: .* after 4 rows .*server closed the connection") as failed:
        prepare_from_query("r1", fail_after=3)
    assert isinstance(failed.value.__cause__, ConnectionError)  # the driver's error, not DuckDB's
    result, later = prepare_from_query("r2")
    assert set(later) == {"9"} and result.unchanged == 9
    state.commit("r2")
    assert state.current()["run_key"] == "r2"

def test_a_sync_needs_the_duplicate_check_and_a_run_key(tmp_path):
    source = write_csv(tmp_path / "in.csv", BASE)
    state = SyncState(tmp_path / "state")
    with pytest.raises(ValueError, match="duplicates='reject'"):
        prepare(source, writer(), str(tmp_path / "o.ndjson"), sync=state, sync_run_key="a", duplicates="keep")
    with pytest.raises(ValueError, match="needs a run key"):
        prepare(source, writer(), str(tmp_path / "o.ndjson"), sync=state)
    assert not (tmp_path / "state").exists()


def test_accumulating_changes_are_refused_in_a_sync(tmp_path):
    """An increment of 1 on two days is two visits; a sync would see the second row as unchanged."""
    counting = get_writer("localytics", "changes", customer_id="id",
                          attributes={"name": "name", "city": {"attr": "visits", "op": "increment"}})
    source = write_csv(tmp_path / "in.csv", [(1, "a", "1")])
    with pytest.raises(ValueError, match=r"only_changed=True cannot send column\(s\) \['city'\]"):
        prepare(source, counting, str(tmp_path / "o.ndjson"), sync=SyncState(tmp_path / "s"), sync_run_key="a")
    assert counting.sync_refusal() and writer().sync_refusal() is None


def test_a_snapshot_of_the_old_engine_means_every_row_is_sent_once(tmp_path):
    """CURRENT names an Arrow snapshot of the numpy engine (format snapshot-2): no crash, every row
    is sent with a note, and the commit replaces it (its files pruned)."""
    state_dir = tmp_path / "state"
    (state_dir / "snapshots").mkdir(parents=True)
    (state_dir / "snapshots" / "old.tok.arrow").write_bytes(b"ARROW1 not read")
    (state_dir / "snapshots" / "old.tok.order.arrow").write_bytes(b"ARROW1 not read")
    (state_dir / "CURRENT.json").write_text(json.dumps({
        "snapshot": "snapshots/old.tok.arrow", "attempt": "old.tok", "run_key": "old", "fingerprint": "0123456789abcdef",
        "rows": 10, "as_of": None, "resend": [], "history": []}))
    state = SyncState(state_dir)
    result, first = run(tmp_path, BASE, "new", state)
    assert len(first) == 10 and "every row is sent once" in result.notes[0]
    assert state.commit("new", keep=1)["run_key"] == "new"
    assert attempt_files(state_dir) == ["new.json", "new.parquet"]
    result, again = run(tmp_path, BASE, "next", state)
    assert (result.written, result.unchanged) == (0, 10)


def test_a_new_snapshot_format_means_every_row_is_sent_once(tmp_path, monkeypatch):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "a", state)
    state.commit("a")
    monkeypatch.setattr(sync_module, "SNAPSHOT_FORMAT", "snapshot-99")
    result, again = run(tmp_path, BASE, "b", state)
    assert len(again) == 10 and "snapshot format" in result.notes[0]


# --- deletions -------------------------------------------------------------------------------------


PROFILE_MAPPING = {"user_account_id": "id", "compartment_id": {"const": "9"}, "name": "name"}


def profiles(tmp_path, rows, run_key, state, **options):
    source = write_csv(tmp_path / f"{run_key}.csv", rows)
    output = tmp_path / f"{run_key}.ndjson"
    result = prepare(source, get_writer("mediarithmics", "USER_PROFILE"), str(output), sync=state, sync_run_key=run_key,
                     mapping=FieldMapping(PROFILE_MAPPING), deletions=True, **options)
    assert result.read == result.written + result.rejected + result.unchanged
    return result, [json.loads(line) for line in output.read_text().splitlines()]


def test_vanished_ids_become_deletions_where_the_vendor_has_them(tmp_path):
    state = SyncState(tmp_path / "state")
    profiles(tmp_path, BASE[:3], "a", state)
    state.commit("a")
    result, lines = profiles(tmp_path, BASE[:2], "b", state)
    assert (result.written, result.unchanged, result.deleted) == (0, 2, 1)
    assert lines == [{"compartment_id": "9", "user_account_id": "3", "operation": "DELETE"}]
    state.commit("b")
    # ids 1 and 2 went into b's snapshot unchanged, with their delete columns
    result, lines = profiles(tmp_path, BASE[:1], "c", state)
    assert (result.written, result.unchanged, result.deleted) == (0, 1, 1)
    assert lines == [{"compartment_id": "9", "user_account_id": "2", "operation": "DELETE"}]


def test_input_columns_named_as_the_delete_columns_sync_twice(tmp_path):
    """The input may name its columns as the writer's delete columns (user_account_id, compartment_id):
    the snapshot reads the mapped ones, not an ambiguous name from the join with the input."""
    state = SyncState(tmp_path / "state")
    mapping = FieldMapping({"user_account_id": "user_account_id",
                            "compartment_id": {"source": "compartment_id", "type": "int"}, "plan": "plan"})
    source = tmp_path / "users.csv"
    source.write_text("user_account_id,compartment_id,plan\nu1,1600,free\nu2,1600,pro\n")
    for run_key, written in (("a", 2), ("b", 0)):
        result = prepare(str(source), get_writer("mediarithmics", "USER_PROFILE"), str(tmp_path / f"{run_key}.ndjson"),
                         sync=state, sync_run_key=run_key, mapping=mapping, deletions=True)
        assert (result.written, result.unchanged) == (written, 2 - written)
        state.commit(run_key)


def test_deletion_lines_come_after_the_rows_and_a_rejected_row_is_not_deleted(tmp_path):
    state = SyncState(tmp_path / "state")
    profiles(tmp_path, BASE[:4], "a", state)
    state.commit("a")
    # 1 changed, 2 gone, 3 now has no profile value (rejected: still at the vendor), 4 unchanged
    result, lines = profiles(tmp_path, [(1, "n1!", "c1"), (3, "", "c3"), (4, "n4", "c4")], "b", state)
    assert (result.written, result.rejected, result.unchanged, result.deleted) == (1, 1, 1, 1)
    assert [(line["user_account_id"], line["operation"]) for line in lines] == [("1", "UPSERT"), ("2", "DELETE")]
    state.commit("b")
    result, lines = profiles(tmp_path, [(1, "n1!", "c1"), (4, "n4", "c4")], "c", state)
    assert [(line["user_account_id"], line["operation"]) for line in lines] == [("3", "DELETE")]


def test_no_deletions_while_part_of_the_input_cannot_be_read(tmp_path, monkeypatch):
    """A record the reader could not read might hold an id that is not gone at all: with one, no
    deletion is sent, and the ids stay in the snapshot to be deleted once the input is clean."""
    import dataclasses

    from airflow_provider_profiles.prepare import engine

    state = SyncState(tmp_path / "state")
    profiles(tmp_path, BASE[:4], "a", state)
    state.commit("a")
    real_open = engine.open_source

    def with_an_unreadable_record(connection, *args, **kwargs):
        opened = real_open(connection, *args, **kwargs)
        connection.execute("CREATE TABLE unreadable_lines AS SELECT 4 AS line, 'a quote opened here is never closed' AS reason")
        return dataclasses.replace(opened, unreadable="unreadable_lines")

    monkeypatch.setattr(engine, "open_source", with_an_unreadable_record)
    result, lines = profiles(tmp_path, BASE[:2], "b", state)
    assert (result.deleted, lines) == (0, []) and "deletions skipped" in " ".join(result.notes)
    assert (result.read, result.unchanged, result.rejected) == (3, 2, 1)
    state.commit("b")
    monkeypatch.undo()
    result, lines = profiles(tmp_path, BASE[:2], "c", state)
    assert sorted(line["user_account_id"] for line in lines) == ["3", "4"] and result.deleted == 2


def test_deletions_need_a_vendor_that_can_delete(tmp_path):
    with pytest.raises(ValueError, match="cannot express a deletion"):
        run(tmp_path, BASE, "a", SyncState(tmp_path / "s"), deletions=True)
    with pytest.raises(ValueError, match="need only_changed=True"):
        prepare(write_csv(tmp_path / "x.csv", BASE), get_writer("mediarithmics", "USER_PROFILE"), str(tmp_path / "x.ndjson"),
                mapping=FieldMapping(PROFILE_MAPPING), deletions=True)


def test_deletions_of_a_refused_run_are_undone_next_time(tmp_path):
    """b deleted id 3 at the vendor (it vanished from b's input), but a committed first and still
    has id 3: the next run sends id 3 again."""
    state = SyncState(tmp_path / "state")
    profiles(tmp_path, BASE[:4], "r1", state)
    state.commit("r1")
    profiles(tmp_path, BASE[:4], "a", state)
    _, lines = profiles(tmp_path, [row for row in BASE[:4] if row[0] != 3], "b", state)
    assert lines == [{"compartment_id": "9", "user_account_id": "3", "operation": "DELETE"}]
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")
    _, lines = profiles(tmp_path, BASE[:4], "c", state)
    assert [line["user_account_id"] for line in lines] == ["3"]


# --- the state's files: re-runs, concurrent runs, backfills, damage -------------------------------


def test_a_rerun_of_a_committed_run_leaves_its_snapshot_alone(tmp_path):
    """Run r1 committed; r1 re-run (cleared) with row 2 changed, and its upload fails: the next run
    still compares with what r1 committed, so row 2 goes out."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    _, rerun = run(tmp_path, changed(BASE, 2), "r1", state)
    assert set(rerun) == {"2"}  # no commit: its upload failed
    result, later = run(tmp_path, changed(BASE, 2), "r2", state)
    assert set(later) == {"2"} and result.unchanged == 9


def test_a_rerun_that_dies_writing_its_snapshot_leaves_the_committed_one_readable(tmp_path, monkeypatch):
    """The re-run's prepare dies half-way through writing its snapshot (a lost connection): the
    snapshot r1 committed is intact, and the next run sends only what changed since r1."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")

    def dying(connection, query, path):
        with open(f"{path}", "wb") as half:
            half.write(b"PAR1 half")
        raise ConnectionError("server closed the connection")

    monkeypatch.setattr(sync_module, "write_parquet", dying)
    with pytest.raises(ConnectionError):
        run(tmp_path, changed(BASE, 9), "r1", state)
    monkeypatch.undo()
    with pytest.raises(SyncStateError, match="did not finish"):
        state.commit("r1")  # refused: not the committed snapshot replaced by half a file
    result, later = run(tmp_path, changed(BASE, 9), "r2", state)
    assert set(later) == {"9"} and result.unchanged == 9
    state.commit("r2")
    assert state.current()["run_key"] == "r2"


def test_concurrent_runs_the_second_commit_is_refused_and_its_rows_resent(tmp_path):
    """a and b both start from r1. a commits first; b's commit is refused with a clear message, and
    what b sent that a's snapshot does not say is sent again next time."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, changed(BASE, 2), "a", state)
    _, b_sent = run(tmp_path, changed(BASE, 3), "b", state)
    assert set(b_sent) == {"3"}
    state.commit("a")
    with pytest.raises(SyncConflict, match="'b'.*no longer current.*sent again"):
        state.commit("b")
    assert state.current()["run_key"] == "a" and len(state.current()["resend"]) == 1
    # the vendor holds b's row 3 now; the data goes back to r1's: row 3 must go out again
    _, after = run(tmp_path, changed(BASE, 2), "c", state)
    assert set(after) == {"3"}
    state.commit("c")
    assert state.current()["resend"] == []
    result, quiet = run(tmp_path, changed(BASE, 2), "d", state)
    assert quiet == {} and result.unchanged == 10


def test_a_commit_during_another_runs_prepare_refuses_that_run(tmp_path):
    """b reads CURRENT (r1), then a commits while b is still preparing: b's base is no longer
    current, so its commit is refused (compare-and-swap), and what it sent goes out again."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, changed(BASE, 2), "a", state)

    class CommitsMeanwhile(SyncState):
        def writer(self, *args, **kwargs):
            SyncState(tmp_path / "state").commit("a")  # between b's compare and its snapshot
            return super().writer(*args, **kwargs)

    _, b_sent = run(tmp_path, changed(BASE, 3), "b", CommitsMeanwhile(tmp_path / "state"))
    assert set(b_sent) == {"3"} and state.current()["run_key"] == "a"
    with pytest.raises(SyncConflict, match=r"run 'b' compared its rows with snapshot r1\.\w+, which is no longer current"):
        state.commit("b")
    _, after = run(tmp_path, changed(BASE, 2), "c", state)
    assert set(after) == {"3"}


def test_a_refused_commit_has_the_runs_rows_sent_again(tmp_path):
    """The commit step refuses (the vendor reported failures): what the run sent goes out again."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, changed(BASE, 4, 5), "r2", state)
    state.refuse("r2", "the uploads report 1 record the vendor did not take")
    with pytest.raises(SyncConflict, match="did not take"):
        state.commit("r2")
    # the data is back to r1's, which CURRENT holds; the vendor may hold r2's rows 4 and 5
    _, again = run(tmp_path, BASE, "r3", state)
    assert set(again) == {"4", "5"}


def test_a_commit_keeps_the_pending_snapshots_of_other_runs(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, BASE, "a", state)
    run(tmp_path, BASE, "b", state)
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")  # refused, not FileNotFoundError: b's files were still there
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
    # a prepare that knows its data is older is refused before it writes anything
    with pytest.raises(SyncConflict, match="older.*allow_older"):
        run(tmp_path, changed(BASE, 4), "monday-2", SyncState(tmp_path / "state", as_of=MONDAY))
    assert not (tmp_path / "monday-2.ndjson").exists()
    run(tmp_path, changed(BASE, 4), "monday-again", SyncState(tmp_path / "state", as_of=MONDAY, allow_older=True))
    current = state.commit("monday-again", as_of=MONDAY, allow_older=True)  # asked for
    assert current["run_key"] == "monday-again"


def test_a_commit_run_twice_is_a_no_op(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    first = state.commit("r1")
    assert state.commit("r1")["snapshot"] == first["snapshot"]


def test_commit_without_a_prepared_snapshot_fails(tmp_path):
    with pytest.raises(SyncStateError, match="no pending sync snapshot for run 'nope'"):
        SyncState(tmp_path / "state").commit("nope")


def test_run_keys_are_file_safe():
    assert run_key_of("scheduled__2026-11-22T06:00:00+00:00") == "scheduled__2026-11-22T06_00_00_00_00"


def test_a_damaged_current_names_its_file_and_the_way_out(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    (tmp_path / "state" / "CURRENT.json").write_text('{"snapshot": "snaps')
    with pytest.raises(SyncStateError, match=r"(?i)CURRENT\.json.*delete it"):
        run(tmp_path, BASE, "r2", state)
    with pytest.raises(SyncStateError, match=r"CURRENT\.json"):
        state.commit("r2")


def test_a_missing_snapshot_names_its_file_and_the_way_out(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    current = state.commit("r1")
    (tmp_path / "state" / current["snapshot"]).unlink()
    with pytest.raises(SyncStateError, match=r"r1\.\w+\.parquet.*Delete .*CURRENT\.json"):
        run(tmp_path, BASE, "r2", state)


def test_a_damaged_snapshot_names_its_file_and_the_way_out(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    current = state.commit("r1")
    (tmp_path / "state" / current["snapshot"]).write_bytes(b"PAR1 not a parquet file")
    with pytest.raises(SyncStateError, match=r"r1\.\w+\.parquet.*cannot be read.*Delete .*CURRENT\.json"):
        run(tmp_path, BASE, "r2", state)


def test_a_damaged_sent_file_names_its_file(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    state.commit("r1")
    run(tmp_path, changed(BASE, 2), "a", state)
    run(tmp_path, changed(BASE, 3), "b", state)
    state.commit("a")
    with pytest.raises(SyncConflict):
        state.commit("b")
    (entry,) = state.current()["resend"]
    (tmp_path / "state" / "snapshots" / f"{entry}.sent.parquet").write_bytes(b"garbage")
    with pytest.raises(SyncStateError, match=rf"{entry}\.sent\.parquet.*sent again.*cannot be read"):
        run(tmp_path, BASE, "c", state)


def test_current_is_replaced_whole(tmp_path, monkeypatch):
    """A crash while CURRENT is written leaves the old one: it is written aside and renamed."""
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "r1", state)
    before = state.commit("r1")
    run(tmp_path, changed(BASE, 1), "r2", state)
    monkeypatch.setattr(os, "replace", lambda *args: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        state.commit("r2")
    assert state.current() == before


def test_in_object_storage_a_refused_run_is_sent_again(tmp_path):
    """The same flow through fsspec (memory://): Parquet read and written through open_binary."""
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
        result, after = run(tmp_path, changed(BASE, 5), "c", state)
        assert set(after) == {"6"} and result.unchanged == 9
        state.commit("c")
        assert state.current()["resend"] == []
        assert MemoryFileSystem().exists(root.removeprefix("memory://") + "/" + state.current()["snapshot"])
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
        (snapshots / f"{name}.tok.parquet").write_bytes(b"half written")
    (pending / "r2.first.json").write_text(json.dumps(
        {"run_key": "r2", "attempt": "r2.first", "base": None,
         "started_at": (dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)).isoformat()}))
    (snapshots / "r2.first.parquet").write_bytes(b"half written")
    run(tmp_path, changed(BASE, 1), "r2", state)
    state.commit("r2")
    assert (snapshots / "live.tok.parquet").exists() and (pending / "live.tok.json").exists()
    assert not (snapshots / "dead.tok.parquet").exists() and not (pending / "dead.tok.json").exists()
    assert not (snapshots / "r2.first.parquet").exists() and not (pending / "r2.first.json").exists()


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
    assert set(after) == {"4"}


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
    assert set(after) == {"1", "2"}


TRICKY = ['say "hi"', "back\\slash", "tab\there", "line\nbreak", "ünï €", '["a", "b"]', "", "{\"k\": null}", "null"]


def _lines(path):
    with open(path) as handle:
        return {json.loads(line)["customer_id"]: line for line in handle}


def test_changed_rows_of_text_are_mapped_from_exactly_the_values_read(tmp_path):
    """Rows left to map are read back from what their hash was made of: quotes, backslashes, line
    breaks, JSON-looking and empty text come out as a full prepare reads them."""
    first = [(str(i), f"n{i}", f"c{i}") for i in range(1, 10)]
    later = [(i, TRICKY[int(i) - 1], TRICKY[-int(i)]) for i, _, _ in first]

    def csv_file(name, rows):
        with open(tmp_path / name, "w", newline="") as handle:
            csv.writer(handle, lineterminator="\n").writerows([("id", "name", "city"), *rows])
        return str(tmp_path / name)

    state = SyncState(tmp_path / "state")
    prepare(csv_file("a.csv", first), writer(), str(tmp_path / "a.ndjson"), sync=state, sync_run_key="a")
    state.commit("a")
    source = csv_file("b.csv", later)
    result = prepare(source, writer(), str(tmp_path / "b.ndjson"), sync=state, sync_run_key="b")
    prepare(source, writer(), str(tmp_path / "full.ndjson"))
    assert result.written == 9 and _lines(tmp_path / "b.ndjson") == _lines(tmp_path / "full.ndjson")


def test_changed_rows_from_a_cursor_keep_their_nulls(tmp_path):
    """A NULL and an empty text are different values, in the hash and in what is mapped."""
    import sqlite3

    def rows_of(values):
        connection = sqlite3.connect(":memory:")
        connection.execute("CREATE TABLE t (id TEXT, name TEXT, city TEXT)")
        connection.executemany("INSERT INTO t VALUES (?, ?, ?)", values)
        return connection.execute("SELECT id, name, city FROM t ORDER BY id")

    first = [("1", "n1", "c1"), ("2", None, "c2"), ("3", "", "c3"), ("4", "n4", None)]
    later = [("1", None, "c1"), ("2", "", "c2"), ("3", None, "c3"), ("4", "n4", None)]
    state = SyncState(tmp_path / "state")
    prepare("q", writer(), str(tmp_path / "a.ndjson"), cursor=rows_of(first), sync=state, sync_run_key="a")
    state.commit("a")
    result = prepare("q", writer(), str(tmp_path / "b.ndjson"), cursor=rows_of(later), sync=state, sync_run_key="b")
    prepare("q", writer(), str(tmp_path / "full.ndjson"), cursor=rows_of(later))
    full = _lines(tmp_path / "full.ndjson")
    assert (result.written, result.unchanged) == (3, 1)
    assert _lines(tmp_path / "b.ndjson") == {key: full[key] for key in ("1", "2", "3")}
