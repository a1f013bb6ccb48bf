"""Prepare pipeline: formats round-trip, bad-input corpus, reconciliation, columnar == writer."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_profiles.formats import get_writer
from airflow_provider_profiles.formats.hashing import hash_columns, hash_strings
from airflow_provider_profiles.formats.keys import SeenKeys
from airflow_provider_profiles.formats.mapping import FieldMapping
from airflow_provider_profiles.formats.pipeline import Preparer, prepare_file
from airflow_provider_profiles.formats.reader import InputBatch, InputError


def localytics(**options):
    options.setdefault("attributes", {"name": "name", "city": "city"})
    options.setdefault("customer_id", "id")
    return get_writer("localytics", "changes", **options)


def rejects_of(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return [(int(r["line"]), r["identifier"], r["reason"]) for r in csv.DictReader(handle)]


def ndjson(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def assert_reconciles(result):
    assert result.read == result.written + result.rejected + result.unchanged


# --- round trips through every vendor writer ------------------------------------------------------


def test_localytics_change_lines_round_trip(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text('id,name,city\n1,Ann,Paris\n2,"Bo ""the"" B",\n3,Zoë,Kraków\n', encoding="utf-8")
    result = prepare_file(str(source), localytics(), str(tmp_path / "out.ndjson"))
    assert (result.read, result.written, result.rejected) == (3, 3, 0)
    records = ndjson(tmp_path / "out.ndjson")
    assert records[1] == {"customer_id": "2", "changes": [{"op": "assign", "attr": "name", "value": 'Bo "the" B'}]}
    assert {c["attr"]: c["value"] for c in records[2]["changes"]} == {"name": "Zoë", "city": "Kraków"}


def test_apsis_csv_round_trip_with_mapping(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("mail,first,joined,vip\na@x.io,Ann,2024-03-01T10:00:00,yes\nb@x.io,\"B, b\",,no\n")
    writer = get_writer("apsis_one", columns=["email", "first_name", "joined", "vip"], keyspace_field="email")
    mapping = FieldMapping(
        {"email": "mail", "first_name": "first", "joined": {"source": "joined", "type": "datetime"},
         "vip": {"source": "vip", "type": "bool"}},
        vendor="apsis_one",
    )
    result = prepare_file(str(source), writer, str(tmp_path / "out.csv"), mapping=mapping)
    assert result.written == 2
    rows = list(csv.DictReader(io.StringIO((tmp_path / "out.csv").read_text())))
    assert rows == [
        {"email": "a@x.io", "first_name": "Ann", "joined": "2024-03-01T10:00:00Z", "vip": "true"},
        {"email": "b@x.io", "first_name": "B, b", "joined": "", "vip": "false"},
    ]


def test_gainsight_records_nested_and_epoch_ms(tmp_path):
    source = tmp_path / "in.ndjson"
    source.write_text(json.dumps({"uid": "u1", "geo": {"city": "Oslo"}, "signup": "2024-01-02"}) + "\n")
    writer = get_writer(
        "gainsight_px", entity="USER",
        field_mapping={"identifyId": "id", "location.city": "city", "signUpDate": "signup"},
    )
    mapping = FieldMapping(
        {"id": "uid", "city": "geo.city", "signup": {"source": "signup", "type": "date"}}, vendor="gainsight_px"
    )
    prepare_file(str(source), writer, str(tmp_path / "out.ndjson"), mapping=mapping)
    assert ndjson(tmp_path / "out.ndjson") == [
        {"identifyId": "u1", "location": {"city": "Oslo"}, "signUpDate": 1704153600000}
    ]


def test_mediarithmics_profile_commands_from_parquet(tmp_path):
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"uid": ["a", "b"], "plan": ["pro", None], "n": [3, 4]}), source)
    writer = get_writer("mediarithmics", "USER_PROFILE")
    mapping = FieldMapping(
        {"user_account_id": "uid", "compartment_id": {"const": "7"}, "plan": "plan", "logins": {"source": "n", "type": "int"}},
        vendor="mediarithmics",
    )
    result = prepare_file(str(source), writer, str(tmp_path / "out.ndjson"), mapping=mapping)
    assert_reconciles(result)
    lines = ndjson(tmp_path / "out.ndjson")
    assert lines[0] == {
        "compartment_id": "7", "user_account_id": "a", "operation": "UPSERT",
        "update_strategy": "PARTIAL_UPDATE", "user_profile": {"plan": "pro", "logins": 3},
    }
    assert lines[1]["user_profile"] == {"logins": 4}


# --- bad inputs: each a clear error or a rejects entry, never a silent drop ------------------------

CORPUS = (
    "id,name,city\n"
    "1,Ann,Paris\n"          # 2 ok
    "2,Bob\n"                 # 3 ragged (too few)
    "3,Cy,Rome,extra\n"       # 4 ragged (too many)
    ",Dee,Oslo\n"             # 5 missing identifier
    "1,Ann again,Lyon\n"      # 6 duplicate identifier
    "6,,\n"                   # 7 nothing to change
    f"7,{'x' * 300},Nice\n"   # 8 value too long for Localytics
    '8,"multi\nline",Bern\n'  # 9-10 ok (quoted newline)
)


@pytest.mark.parametrize("fast", [True, False])
def test_bad_input_corpus_goes_to_rejects_with_lines(tmp_path, fast):
    source = tmp_path / "bad.csv"
    source.write_text(CORPUS)
    result = prepare_file(str(source), localytics(), str(tmp_path / "out.ndjson"), rejects=str(tmp_path / "rej.csv"), fast=fast)
    assert_reconciles(result)
    assert (result.read, result.written, result.rejected) == (8, 2, 6)
    rejects = sorted(rejects_of(tmp_path / "rej.csv"))
    assert [(line, identifier) for line, identifier, _ in rejects] == [
        (3, "2"), (4, "3"), (5, ""), (6, "1"), (7, "6"), (8, "7")
    ]
    reasons = [reason for _, _, reason in rejects]
    assert reasons[0] == "ragged row: expected 3 fields, found 2"
    assert "customer id is empty" in reasons[2]
    assert "duplicate identifier" in reasons[3]
    assert "no attribute to change" in reasons[4]
    assert "name: string of 300 characters" in reasons[5]
    assert [r["customer_id"] for r in ndjson(tmp_path / "out.ndjson")] == ["1", "8"]


def test_bad_dates_are_rejected_by_the_mapping(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,name,born\n1,a,2024-02-30\n2,b,2024-02-28\n3,c,yesterday\n")
    mapping = FieldMapping({"id": "id", "name": "name", "born": {"source": "born", "type": "date"}}, vendor="localytics")
    writer = localytics(attributes={"name": "name", "born": "born"})
    result = prepare_file(str(source), writer, str(tmp_path / "out.ndjson"), mapping=mapping, rejects=str(tmp_path / "r.csv"))
    assert (result.written, result.rejected) == (1, 2)
    rejects = rejects_of(tmp_path / "r.csv")
    assert [(line, ident) for line, ident, _ in rejects] == [(2, "1"), (4, "3")]
    assert all(reason.startswith("born: ") and "column 'born'" in reason for _, _, reason in rejects)
    assert ndjson(tmp_path / "out.ndjson")[0]["changes"][1] == {"op": "assign", "attr": "born", "value": "2024-02-28"}


def test_wrong_encoding_stops_with_file_line_and_column(tmp_path):
    source = tmp_path / "latin.csv"
    source.write_bytes("id,name,city\n1,Ann,Paris\n2,Jos\xe9,Lyon\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin.csv, line 3, column 'name': not valid UTF-8"):
        prepare_file(str(source), localytics(), str(tmp_path / "out.ndjson"))


def test_empty_and_header_only_files_are_clear_errors(tmp_path):
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "header.csv").write_text("id,name,city\n")
    with pytest.raises(InputError, match="the file is empty"):
        prepare_file(str(tmp_path / "empty.csv"), localytics(), str(tmp_path / "o1.ndjson"))
    with pytest.raises(InputError, match="no data rows"):
        prepare_file(str(tmp_path / "header.csv"), localytics(), str(tmp_path / "o2.ndjson"))
    result = prepare_file(str(tmp_path / "header.csv"), localytics(), str(tmp_path / "o3.ndjson"), allow_empty=True)
    assert (result.read, result.written) == (0, 0)


def test_missing_mapped_column_fails_before_writing(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,name\n1,a\n")
    with pytest.raises(InputError, match=r"in.csv, line 1: .*'city'"):
        prepare_file(str(source), localytics(), str(tmp_path / "out.ndjson"))
    assert not (tmp_path / "out.ndjson").exists()


def test_duplicates_can_be_kept(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,name,city\n1,a,b\n1,c,d\n")
    result = prepare_file(str(source), localytics(), str(tmp_path / "out.ndjson"), duplicates="keep")
    assert result.written == 2


# --- the columnar encoder must write exactly what the writer writes ------------------------------

_awkward = st.text(
    alphabet=st.sampled_from(list('ab Zé"\\\n\t\x01,') + ["\u00a0", "\u2003", "\u3000", "𝄞", "\u0085", "\u2028"]),
    max_size=6,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.tuples(_awkward, _awkward, st.one_of(_awkward, st.just("y" * 256))), min_size=1, max_size=25),
       empty=st.sampled_from(["skip", "delete"]))
def test_columnar_encoder_matches_the_writer(tmp_path_factory, rows, empty):
    folder = tmp_path_factory.mktemp("columnar")
    table = pa.table({"id": [r[0] for r in rows], "name": [r[1] for r in rows], "city": [r[2] for r in rows]})
    outputs = []
    for fast in (True, False):
        preparer = Preparer(localytics(empty=empty), str(folder / f"{fast}.ndjson"), rejects=str(folder / f"{fast}.csv"),
                            duplicates="keep", fast=fast)
        preparer.add(InputBatch(lines=np.arange(2, 2 + len(rows)), table=table))
        result = preparer.finish()
        assert_reconciles(result)
        outputs.append(((folder / f"{fast}.ndjson").read_text(), result.rejected))
    assert outputs[0] == outputs[1]


def test_columnar_path_is_used_for_plain_rows(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,name,city\n" + "".join(f"{i},n{i},c{i}\n" for i in range(1000)))
    result = prepare_file(str(source), localytics(), str(tmp_path / "out.ndjson"))
    assert result.fast_rows == 1000
    assert ndjson(tmp_path / "out.ndjson")[999]["changes"][1]["value"] == "c999"


def test_hash_is_stable_and_separates_values():
    values = pa.array(["", "a", "ab", "ba", None, "é" * 300, "a"])
    hashes = hash_strings(values)
    assert hashes[1] == hashes[6]
    assert len(set(hashes[:6].tolist())) == 6
    assert hash_strings(pa.array(["ab"]))[0] == hashes[2]  # independent of position in the array


def test_hash_paths_agree():
    """Short ASCII values go through a fixed-width matrix, others one by one: same hashes."""
    values = ["a", "cust-1", "x" * 32, "", "é", "é" * 30, "z" * 600, None]
    together = hash_strings(pa.array(values))
    alone = [hash_strings(pa.array([value]))[0] for value in values]
    assert together.tolist() == [int(h) for h in alone]
    assert len(set(together.tolist())) == len(values)


def test_typed_parquet_with_nested_columns_and_sync(tmp_path):
    from airflow_provider_profiles.formats.sync import SyncState

    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [1, 2], "plan": ["a", "b"], "meta": [{"k": 1}, {"k": 2}]}), source)
    writer = localytics(attributes={"plan": "plan"})
    result = prepare_file(str(source), writer, str(tmp_path / "out.ndjson"), sync=SyncState(tmp_path / "s"), sync_run_key="r")
    assert (result.written, result.fast_rows) == (2, 0)  # ints and structs go through the writer
    assert [r["customer_id"] for r in ndjson(tmp_path / "out.ndjson")] == ["1", "2"]


@pytest.mark.parametrize(
    "memory_keys, filter_bits",
    [(1_000_000, 28), (700, 12)],  # all in memory; spilled to many runs behind a saturated filter
    ids=["in_memory", "spilled"],
)
def test_seen_keys_flags_every_repeat_after_the_first(memory_keys, filter_bits, tmp_path):
    rng = np.random.default_rng(3)
    seen, reference = SeenKeys(memory_keys, filter_bits, directory=str(tmp_path)), set()
    for _ in range(40):
        hashes = rng.integers(0, 3_000, size=500).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        valid = rng.random(500) < 0.9
        flagged = seen.add_new(hashes, valid)
        expected = []
        for value, ok in zip(hashes.tolist(), valid):
            expected.append(bool(ok) and value in reference)
            if ok:
                reference.add(value)
        assert flagged.tolist() == expected
    if memory_keys == 700:
        assert len(seen.runs) >= 3 and seen.held < 700  # the keys really went to disk
    seen.close()
    assert list(tmp_path.iterdir()) == []  # the spill file is gone


def test_seen_keys_finds_the_edges_of_spilled_blocks(tmp_path):
    """Keys at the first and last place of each sparse-index block, and just beside them."""
    from airflow_provider_profiles.formats.keys import BLOCK

    count = 3 * BLOCK - 7  # the run's last block is padded
    seen = SeenKeys(memory_keys=count, filter_bits=7, directory=str(tmp_path))
    keys = np.sort(np.random.default_rng(5).choice(2**62, size=count, replace=False).astype(np.uint64) * np.uint64(2))
    assert not seen.add_new(keys, np.ones(len(keys), dtype=bool)).any()
    assert len(seen.runs) == 1 and not seen.levels
    edges = np.unique(np.concatenate([keys[i : i + 2] for i in range(0, len(keys), BLOCK)] + [keys[BLOCK - 1 :: BLOCK], keys[-1:]]))
    assert seen.add_new(edges, np.ones(len(edges), dtype=bool)).all()
    for key in edges:  # alone, each search reads the single block that can hold the key
        assert seen.add_new(np.array([key]), np.ones(1, dtype=bool)).all()
    absent = np.concatenate((edges + np.uint64(1), [np.uint64(0)]))  # odd numbers: never added
    assert not seen.add_new(absent, np.ones(len(absent), dtype=bool)).any()
    seen.close()


def test_writer_registry():
    from airflow_provider_profiles.formats import (
        DEFAULT_MAX_BYTES,
        WRITERS,
        writer_class,
    )

    assert writer_class("localytics").__name__ == "ProfileChangesWriter"
    assert writer_class("localytics", "audience").__name__ == "AudienceLinesWriter"
    assert writer_class("mediarithmics", "USER_SEGMENT").document_type == "USER_SEGMENT"
    assert all(writer_class(vendor, name) for vendor, formats in WRITERS.items() for name in formats)
    assert DEFAULT_MAX_BYTES["mediarithmics"] == 100_000_000 and DEFAULT_MAX_BYTES["localytics"] is None
    with pytest.raises(ValueError, match="unknown vendor 'braze'"):
        writer_class("braze")
    with pytest.raises(ValueError, match="localytics has no format 'events'; choose from changes, audience"):
        writer_class("localytics", "events")


def test_duplicate_check_default_follows_the_format(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("user_account_id,compartment_id,segment_id\nu1,7,s1\nu1,7,s2\n")
    segments = get_writer("mediarithmics", "USER_SEGMENT", expiration_duration=0)
    result = prepare_file(str(source), segments, str(tmp_path / "out.ndjson"))
    assert (result.written, result.rejected) == (2, 0)  # one user in two segments is not a duplicate
    profiles = get_writer("mediarithmics", "USER_PROFILE")
    result = prepare_file(str(source), profiles, str(tmp_path / "p.ndjson"))
    assert (result.written, result.rejected) == (1, 1)
    from airflow_provider_profiles.formats.sync import SyncState

    with pytest.raises(ValueError, match="needs duplicates='reject'"):
        prepare_file(str(source), segments, str(tmp_path / "s.ndjson"), sync=SyncState(tmp_path / "st"), sync_run_key="r")


def test_localytics_repeats_are_kept_only_where_changes_add_up(tmp_path):
    source = tmp_path / "in.csv"
    source.write_text("id,logins,plan\nu1,1,pro\nu1,2,pro\n")
    increments = localytics(attributes={"logins": {"attr": "logins", "op": "increment"}})
    result = prepare_file(str(source), increments, str(tmp_path / "inc.ndjson"))
    assert (result.written, result.rejected) == (2, 0)  # two increments for one customer add up
    assert [line["changes"][0]["value"] for line in ndjson(tmp_path / "inc.ndjson")] == [1, 2]
    assigns = localytics(attributes={"plan": "plan"})
    result = prepare_file(str(source), assigns, str(tmp_path / "set.ndjson"))
    assert (result.written, result.rejected) == (1, 1)  # two states of one profile conflict
    from airflow_provider_profiles.formats.sync import SyncState

    # a sync skips a row sent before: the same increment on two days would be lost
    with pytest.raises(ValueError, match=r"only_changed=True cannot send column\(s\) \['logins'\]"):
        prepare_file(str(source), increments, str(tmp_path / "sync.ndjson"), sync=SyncState(tmp_path / "s"), sync_run_key="r")


def test_hashes_are_stable_across_versions():
    """Committed sync snapshots hold these hashes: a change would resend every row once."""
    import pyarrow.compute as pc

    assert int(hash_strings(pa.array(["cust-1"]))[0]) == 8426368309570442762
    rows = [pa.array(["a", None, "é" * 40]), pa.array(["b", "c", "x" * 300])]
    joined = pc.binary_join_element_wise(*rows, "\x1f", null_handling="replace", null_replacement="\x00")
    assert hash_columns(rows).tolist() == hash_strings(joined).tolist()
