"""Incremental sync: only new/changed rows, commit after success, a failed run loses nothing."""

from __future__ import annotations

import json
import os

import pytest

from airflow_provider_profiles.formats import get_writer
from airflow_provider_profiles.formats.mapping import FieldMapping
from airflow_provider_profiles.formats.pipeline import prepare_file
from airflow_provider_profiles.formats.sync import SyncState, SyncStateError, run_key_of


def write_csv(path, rows):
    path.write_text("id,name,city\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows))
    return str(path)


def writer():
    return get_writer("localytics", "changes", attributes={"name": "name", "city": "city"}, customer_id="id")


def sent(path):
    with open(path) as handle:
        return {json.loads(line)["customer_id"]: json.loads(line)["changes"] for line in handle}


def run(tmp_path, rows, run_key, state, **options):
    source = write_csv(tmp_path / f"{run_key}.csv", rows)
    output = tmp_path / f"{run_key}.ndjson"
    result = prepare_file(source, options.pop("writer", None) or writer(), str(output), sync=state, sync_run_key=run_key, **options)
    assert result.read == result.written + result.rejected + result.unchanged
    return result, sent(output)


BASE = [(i, f"n{i}", f"c{i}") for i in range(1, 11)]


def test_three_runs_with_a_failed_one_lose_nothing(tmp_path):
    state = SyncState(tmp_path / "state")

    result, first = run(tmp_path, BASE, "run-1", state)
    assert (result.written, result.unchanged) == (10, 0)
    assert "every row is sent" in result.notes[0]
    state.commit("run-1")

    # run 2 changes rows 2 and 3 and adds 11, but its uploads fail: no commit
    second_rows = [(i, n + "!" if i in (2, 3) else n, c) for i, n, c in BASE] + [(11, "n11", "c11")]
    result, second = run(tmp_path, second_rows, "run-2", state)
    assert set(second) == {"2", "3", "11"}
    assert (result.written, result.unchanged) == (3, 8)

    # run 3 changes row 5 too; compared with run 1 (the last commit), run 2's changes are resent
    third_rows = [(i, n, "moved" if i == 5 else c) for i, n, c in second_rows]
    result, third = run(tmp_path, third_rows, "run-3", state)
    assert set(third) == {"2", "3", "5", "11"}
    assert third["2"][0] == {"op": "assign", "attr": "name", "value": "n2!"}
    state.commit("run-3")

    # run 4 with the same data: nothing to send
    result, fourth = run(tmp_path, third_rows, "run-4", state)
    assert (result.written, result.unchanged, fourth) == (0, 11, {})
    state.commit("run-4")
    assert state.current()["run_key"] == "run-4"
    # each prepare writes files of its own (run key and a token); the last two commits are kept
    files = sorted(name.split(".", 2)[0] + "." + name.split(".", 2)[2] for name in os.listdir(tmp_path / "state" / "snapshots"))
    assert files == ["run-3.arrow", "run-3.json", "run-3.order.arrow", "run-3.sent.arrow",
                     "run-4.arrow", "run-4.json", "run-4.order.arrow", "run-4.sent.arrow"]


def test_a_changed_mapping_resends_everything(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "a", state)
    state.commit("a")
    mapping = FieldMapping({"id": "id", "name": "name", "city": {"source": "city", "max_length": 20}})
    result, again = run(tmp_path, BASE, "b", state, mapping=mapping)
    assert result.written == 10 and len(again) == 10


def test_rejected_rows_are_not_remembered(tmp_path):
    state = SyncState(tmp_path / "state")
    rows = BASE[:3] + [(4, "", "")]
    result, _ = run(tmp_path, rows, "a", state)
    assert (result.written, result.rejected) == (3, 1)
    state.commit("a")
    fixed = BASE[:3] + [(4, "now", "set")]
    result, again = run(tmp_path, fixed, "b", state)
    assert set(again) == {"4"}


def test_vanished_ids_become_deletions_where_the_vendor_has_them(tmp_path):
    state = SyncState(tmp_path / "state")
    mapping = FieldMapping({"user_account_id": "id", "compartment_id": {"const": "9"}, "name": "name"})
    profile = get_writer("mediarithmics", "USER_PROFILE")
    options = dict(mapping=mapping, deletions=True)  # the snapshot keeps mediarithmics' identifier columns
    source = write_csv(tmp_path / "a.csv", BASE[:3])
    prepare_file(source, profile, str(tmp_path / "a.ndjson"), sync=state, sync_run_key="a", **options)
    state.commit("a")
    source = write_csv(tmp_path / "b.csv", BASE[:2])
    result = prepare_file(source, profile, str(tmp_path / "b.ndjson"), sync=state, sync_run_key="b", **options)
    assert (result.written, result.unchanged, result.deleted) == (0, 2, 1)
    lines = [json.loads(line) for line in open(tmp_path / "b.ndjson")]
    assert lines == [{"compartment_id": "9", "user_account_id": "3", "operation": "DELETE"}]
    state.commit("b")
    # ids 1 and 2 went into b's snapshot unparsed, carried over from a's with their delete columns
    source = write_csv(tmp_path / "c.csv", BASE[:1])
    result = prepare_file(source, profile, str(tmp_path / "c.ndjson"), sync=state, sync_run_key="c", **options)
    assert (result.written, result.unchanged, result.deleted) == (0, 1, 1)
    assert [json.loads(line) for line in open(tmp_path / "c.ndjson")] == [
        {"compartment_id": "9", "user_account_id": "2", "operation": "DELETE"}
    ]


def test_deletions_need_a_vendor_that_can_delete(tmp_path):
    with pytest.raises(ValueError, match="cannot express a deletion"):
        run(tmp_path, BASE, "a", SyncState(tmp_path / "s"), deletions=True)


def test_commit_without_a_prepared_snapshot_fails(tmp_path):
    with pytest.raises(SyncStateError, match="no pending sync snapshot for run 'nope'"):
        SyncState(tmp_path / "state").commit("nope")


def test_run_keys_are_file_safe():
    assert run_key_of("scheduled__2026-11-22T06:00:00+00:00") == "scheduled__2026-11-22T06_00_00_00_00"


@pytest.mark.parametrize("size", [0, 1, 7, 300, 50_000])
def test_snapshot_lookup_agrees_with_a_binary_search(size):
    import numpy as np

    from airflow_provider_profiles.formats.sync import PreviousSnapshot

    rng = np.random.default_rng(size)
    keys = rng.integers(0, 2**64 - 1, size, dtype=np.uint64, endpoint=True)
    keys[: min(size, 3)] = np.array([0, 2**64 - 1, 2**63], dtype=np.uint64)[: min(size, 3)]
    rows = rng.integers(0, 2**64 - 1, size, dtype=np.uint64, endpoint=True)
    snapshot = PreviousSnapshot.of(keys, rows)
    probes = np.concatenate((rows[::2], rng.integers(0, 2**64 - 1, 100, dtype=np.uint64, endpoint=True)))
    places = snapshot.known_records(probes)
    known_rows = set(rows.tolist())
    assert [int(p) >= 0 for p in places] == [h in known_rows for h in probes.tolist()]
    assert all(snapshot.row_hashes[p] == h for p, h in zip(places, probes) if p >= 0)
    probes = np.concatenate((keys[: size // 2], rng.integers(0, 2**64 - 1, 2_000, dtype=np.uint64, endpoint=True)))
    probe_rows = np.concatenate((rows[: size // 2], rows[: size // 2][:0], np.zeros(2_000, np.uint64)))
    probe_rows[: size // 4] += np.uint64(1)  # a quarter of the known keys changed
    positions = snapshot.find(probes)
    unchanged = snapshot.unchanged(positions, probe_rows)
    known = dict(zip(keys.tolist(), rows.tolist()))
    expected = [known.get(key) == row for key, row in zip(probes.tolist(), probe_rows.tolist())]
    assert unchanged.tolist() == expected
    assert [int(p) >= 0 for p in positions] == [key in known for key in probes.tolist()]
    assert not snapshot.repeats(positions, np.ones(len(probes), dtype=bool)).any()
    assert int(snapshot.seen.sum()) == len(set(keys[: size // 2].tolist()))
    assert snapshot.repeats(positions, np.ones(len(probes), dtype=bool)).tolist() == [p >= 0 for p in positions]


def test_snapshot_flags_repeats_of_its_keys_in_row_order():
    import numpy as np

    from airflow_provider_profiles.formats.sync import PreviousSnapshot

    snapshot = PreviousSnapshot.of(np.array([10, 20, 30], np.uint64), np.array([1, 2, 3], np.uint64))
    probes = np.array([30, 10, 99, 30, 10, 20], np.uint64)
    positions = snapshot.find(probes)
    valid = np.array([True, True, True, True, True, False])
    assert snapshot.repeats(positions, valid).tolist() == [False, False, False, True, True, False]
    assert snapshot.repeats(snapshot.find(np.array([20, 10], np.uint64)), np.ones(2, bool)).tolist() == [False, True]


def test_repeated_ids_are_rejected_whether_the_snapshot_knows_them_or_not(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, [(1, "a", "x"), (2, "b", "x")], "run-1", state)
    state.commit("run-1")
    rows = [(1, "a2", "x"), (2, "b", "x"), (1, "a3", "x"), (3, "c", "x"), (3, "c2", "x"), (2, "b9", "x")]
    result, second = run(tmp_path, rows, "run-2", state, rejects=str(tmp_path / "rejects.csv"))
    assert (result.written, result.unchanged, result.rejected) == (2, 1, 3)
    assert second["1"][0]["value"] == "a2" and second["3"][0]["value"] == "c"  # the first row of each id wins
    rejected = (tmp_path / "rejects.csv").read_text().splitlines()[1:]
    assert [line.split(",")[:2] for line in rejected] == [["4", "1"], ["6", "3"], ["7", "2"]]


@pytest.mark.parametrize("chunk_rows", [511, 1 << 18])
def test_sort_order_is_an_argsort_even_where_top_bits_tie(monkeypatch, chunk_rows):
    import numpy as np

    from airflow_provider_profiles.formats import sync
    from airflow_provider_profiles.formats.sync import sort_order

    monkeypatch.setattr(sync, "CHUNK_ROWS", chunk_rows)  # ties found within a chunk and across two

    rng = np.random.default_rng(11)
    keys = rng.integers(0, 2**64 - 1, 5_000, dtype=np.uint64, endpoint=True)
    keys[:200] = (keys[:200] >> np.uint64(20) << np.uint64(20)) | rng.integers(0, 2**20, 200, dtype=np.uint64)
    keys[200:400] = keys[:200] ^ np.uint64(1)  # same top bits as another key, different low bits
    order = sort_order(keys)
    assert np.array_equal(keys[order], np.sort(keys))
    assert sorted(order.tolist()) == list(range(len(keys)))
    # every key with one that shares its top bits: pairs whose order the packing cannot tell
    paired = (np.repeat(keys[:2_000] >> np.uint64(12), 2) << np.uint64(12)) | rng.integers(0, 2**12, 4_000, dtype=np.uint64)
    assert np.array_equal(paired[sort_order(paired)], np.sort(paired))
    # one tie only, its two keys on either side of the first chunk's end (511 with chunks of 511)
    edge = np.arange(1_024, dtype=np.uint64) << np.uint64(40)
    edge[510], edge[511] = edge[510] + np.uint64(1), edge[510]  # the larger of the two first
    assert np.array_equal(edge[sort_order(edge)], np.sort(edge))
    assert sort_order(np.zeros(0, np.uint64)).tolist() == [] and sort_order(np.array([7], np.uint64)).tolist() == [0]


def test_unchanged_csv_records_are_not_parsed(tmp_path, monkeypatch):
    """A CSV sync compares each record's raw bytes first: only new and changed records are parsed,
    and a bad record among them is reported at its line in the file."""
    from airflow_provider_profiles.formats import reader

    state = SyncState(tmp_path / "state")
    rows = [(i, f"n{i}", f"c{i}") for i in range(1, 301)]
    run(tmp_path, rows, "a", state)
    state.commit("a")
    parsed = []
    original = reader._parse_csv_block
    monkeypatch.setattr(reader, "_parse_csv_block", lambda *a, **k: parsed.append(a[1].count(b"\n")) or original(*a, **k))
    source = tmp_path / "b.csv"
    source.write_text(
        "id,name,city\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows[:99])
        + "100,changed,c100\n" + "ragged\n" + "".join(f"{i},{n},{c}\n" for i, n, c in rows[100:])
    )
    result = prepare_file(str(source), writer(), str(tmp_path / "b.ndjson"), sync=state, sync_run_key="b",
                          rejects=str(tmp_path / "rejects.csv"))
    assert (result.read, result.written, result.unchanged, result.rejected) == (301, 1, 299, 1)
    assert sum(parsed) <= 3  # the changed record and the ragged one (and their block), not 301
    assert (tmp_path / "rejects.csv").read_text().splitlines()[1].startswith("102,")
    assert set(sent(tmp_path / "b.ndjson")) == {"100"}


def test_a_changed_header_resends_everything(tmp_path):
    state = SyncState(tmp_path / "state")
    run(tmp_path, BASE, "a", state)
    state.commit("a")
    source = tmp_path / "b.csv"
    source.write_text("id,city,name\n" + "".join(f"{i},{c},{n}\n" for i, n, c in BASE))  # same values
    result = prepare_file(str(source), writer(), str(tmp_path / "b.ndjson"), sync=state, sync_run_key="b")
    assert result.written == 10 and "every row is sent" in result.notes[0]


@pytest.mark.parametrize("kept, added", [(0.99, 50), (0.0, 3_000), (1.0, 0), (0.5, 1_000), (None, 2_000)])
def test_next_snapshot_merges_the_rows_sent_into_the_orders_of_the_rows_kept(tmp_path, monkeypatch, kept, added):
    """Rows written in input order, carried and added mixed in small batches: the snapshot read
    back holds them in that order, with orders that sort them by row hash and by key (what a sort
    of all of them gives), and is searchable both ways."""
    import numpy as np

    from airflow_provider_profiles.formats import sync
    from airflow_provider_profiles.formats.sync import PreviousSnapshot, SnapshotWriter

    monkeypatch.setattr(sync, "CHUNK_ROWS", 512)  # merges over many chunks
    rng = np.random.default_rng(added)
    def hashes(count):
        return rng.integers(0, 2**64 - 1, count, dtype=np.uint64, endpoint=True)

    previous = None
    carried_places = np.zeros(0, np.int64)
    if kept is not None:
        previous = PreviousSnapshot.of(hashes(4_000), hashes(4_000))
        carried_places = rng.permutation(np.flatnonzero(rng.random(4_000) < kept))  # in a new input order
        changed = np.setdiff1d(np.arange(4_000), carried_places)[: added // 2]
        added_keys = np.concatenate((previous.key_hashes[changed], hashes(added - len(changed))))  # sent again
    else:
        added_keys = hashes(added)
    added_rows = hashes(added)
    if kept and added:  # a row hash both carried and added (a collision): each still gets its own place
        added_rows[-1] = previous.row_hashes[carried_places[0]]
    if added > 2:  # rows and keys before and after every previous one
        added_rows[:2] = added_keys[:2] = [0, 2**64 - 1]
    # the input: carried and added rows interleaved
    places = np.concatenate((carried_places, np.full(added, -1)))[rng.permutation(len(carried_places) + added)]
    keys = np.empty(len(places), np.uint64)
    rows = np.empty(len(places), np.uint64)
    if previous is not None:
        keys[places >= 0], rows[places >= 0] = previous.key_hashes[places[places >= 0]], previous.row_hashes[places[places >= 0]]
    keys[places < 0], rows[places < 0] = added_keys, added_rows

    writer = SnapshotWriter(tmp_path / "s.arrow", tmp_path / "s.order.arrow", tmp_path / "s.ids.parquet", [], previous)
    for start in range(0, len(places), 700):
        writer.add(keys[start : start + 700], rows[start : start + 700], places[start : start + 700])
    assert writer.finish() == len(places)

    loaded = PreviousSnapshot.load(tmp_path / "s.arrow", tmp_path / "s.order.arrow")
    assert np.array_equal(loaded.key_hashes, keys) and np.array_equal(loaded.row_hashes, rows)
    assert np.array_equal(loaded.row_hashes[loaded.row_order], np.sort(rows))
    assert np.array_equal(loaded.key_hashes[loaded.key_order], np.sort(keys))
    assert sorted(loaded.key_order.tolist()) == list(range(len(keys)))
    assert (loaded.find(keys) == np.arange(len(keys))).all()
    assert (loaded.known_records(rows) >= 0).all()


def test_lookups_in_input_order_agree_with_searches_whatever_the_order():
    """Guessing each place from the last one found is a shortcut, never a different answer: the
    same input order, one with rows inserted and removed, and a shuffled one."""
    import numpy as np

    from airflow_provider_profiles.formats.sync import PreviousSnapshot

    rng = np.random.default_rng(5)
    keys = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True)
    rows = rng.integers(0, 2**64 - 1, 20_000, dtype=np.uint64, endpoint=True)
    edited = np.concatenate((rows[:5_000], rng.integers(0, 2**63, 300, dtype=np.uint64), rows[5_200:], rows[100:120]))
    for probes, most_searched in ((rows, 0), (edited, 3_000), (rng.permutation(rows), 20_000), (rows[::-1], 20_000)):
        snapshot = PreviousSnapshot.of(keys, rows)
        searched = []
        search = snapshot.records.find
        snapshot.records.find = lambda needles: searched.append(len(needles)) or search(needles)
        found = np.concatenate([snapshot.known_records(probes[start : start + 3_000]) for start in range(0, len(probes), 3_000)])
        assert sum(searched) <= most_searched  # the same order: no search at all
        assert np.array_equal(found, search(probes))
        key_probes = keys[np.maximum(found, 0)]
        found_keys = np.concatenate([snapshot.find(key_probes[start : start + 3_000], in_order=True)
                                     for start in range(0, len(probes), 3_000)])
        assert np.array_equal(found_keys, snapshot.find(key_probes))


def test_an_input_in_another_order_sends_only_what_changed(tmp_path):
    """The snapshot keeps the last input's order and looks there first: a shuffled input, and then
    the first order again, still send exactly the changed rows."""
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
    result, third = run(tmp_path, rows + [(5_000, "new", "x")], "run-3", state)  # row 10 changes back
    assert (result.written, result.unchanged) == (1, 3_000) and set(third) == {str(shuffled[10][0])}
