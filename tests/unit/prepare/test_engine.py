"""The DuckDB prepare engine: counts, order, duplicates, rejects, both encoding paths, spilling."""

from __future__ import annotations

import csv
import json
import logging

import pytest

from airflow_provider_profiles.writers import get_writer
from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.engine import DUPLICATE, prepare
from tests.unit.prepare.prepared import localytics, ndjson, rejects_of, representation_of


def python_only(writer):
    """The same writer without its SQL: the engine keys and encodes its rows in Python."""
    kind = type(writer)
    copy = type(f"PythonOnly{kind.__name__}", (kind,), {"line_sql": lambda self, c: None, "key_sql": lambda self, c: None})
    clone = object.__new__(copy)
    clone.__dict__.update(writer.__dict__)
    return clone


def write_csv(path, rows, header=("id", "name", "city")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return str(path)


def test_every_row_is_written_or_rejected_with_its_record_and_reason(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("1", "Ann", "Paris"), ("", "No", "Id"), ("2", "", ""), ("1", "Again", "x"),
                                             ("3", "x" * 300, "Oslo")])
    result = prepare(source, localytics(), tmp_path / "out.ndjson", rejects=tmp_path / "rejects.csv")
    assert (result.read, result.written, result.rejected) == (5, 1, 4)
    assert [line["customer_id"] for line in ndjson(tmp_path / "out.ndjson")] == ["1"]
    assert rejects_of(tmp_path / "rejects.csv") == [
        (2, "", "id: customer id is empty"),
        (3, "2", "no attribute to change: every mapped value is empty"),
        (4, "1", DUPLICATE),
        (5, "3", "name: string of 300 characters; Localytics accepts at most 255"),
    ]


def test_a_row_the_writer_rejects_still_takes_its_id(tmp_path):
    """The first row of an id wins even when the writer rejects it: a later row is not sent in its place."""
    source = write_csv(tmp_path / "in.csv", [("7", "", ""), ("7", "Ann", "Paris")])
    result = prepare(source, localytics(), tmp_path / "out.ndjson", rejects=tmp_path / "rejects.csv")
    assert (result.written, result.rejected) == (0, 2)
    assert [reason for *_, reason in rejects_of(tmp_path / "rejects.csv")] == [
        "no attribute to change: every mapped value is empty", DUPLICATE]


def test_ids_are_compared_trimmed(tmp_path):
    source = write_csv(tmp_path / "in.csv", [(" 7 ", "Ann", ""), ("7", "Bo", "")])
    result = prepare(source, localytics(), tmp_path / "out.ndjson")
    assert (result.written, result.rejected) == (1, 1)
    assert ndjson(tmp_path / "out.ndjson")[0]["customer_id"] == "7"


def test_keep_turns_the_duplicate_check_off(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("7", "Ann", ""), ("7", "Bo", "")])
    result = prepare(source, localytics(), tmp_path / "out.ndjson", duplicates="keep")
    assert result.written == 2


@pytest.mark.parametrize("vendor, options, header", [
    ("localytics", {"attributes": {"name": "name", "city": "city"}, "customer_id": "id"}, ("id", "name", "city")),
    ("mediarithmics", {}, ("user_account_id", "name", "city")),
    ("apsis_one", {"columns": ["email", "name", "city"], "keyspace_field": "email", "keyspace": "email"},
     ("email", "name", "city")),
])
def test_sql_and_python_encoding_write_the_same_files(tmp_path, vendor, options, header):
    fmt = {"localytics": "changes", "mediarithmics": "USER_PROFILE", "apsis_one": "csv"}[vendor]
    rows = [(f"u{i % 997}@x.io" if vendor == "apsis_one" else f" u{i % 997}", f'na"me, {i}' if i % 5 else "",
             "\n" if i % 7 == 0 else f"city {i}") for i in range(3000)]
    source = write_csv(tmp_path / "in.csv", rows, header)
    writer = get_writer(vendor, fmt, **options)
    fast = prepare(source, writer, tmp_path / "sql.out", rejects=tmp_path / "sql.rejects.csv")
    slow = prepare(source, python_only(writer), tmp_path / "py.out", rejects=tmp_path / "py.rejects.csv")
    assert (fast.written, fast.rejected) == (slow.written, slow.rejected)
    assert fast.rejected > 0 and fast.written > 0
    if vendor == "apsis_one":
        assert (tmp_path / "sql.out").read_bytes() == (tmp_path / "py.out").read_bytes()
    else:
        assert ndjson(tmp_path / "sql.out") == ndjson(tmp_path / "py.out")
    assert rejects_of(tmp_path / "sql.rejects.csv") == rejects_of(tmp_path / "py.rejects.csv")


def test_rows_keep_their_input_order_through_a_spilling_run(tmp_path):
    """Order and counts hold when the table is larger than the memory limit (DuckDB spills)."""
    count = 300_000
    rows = ((str(i), f"name {i} " + "x" * 40, f"city {i % 100}") for i in range(count))
    source = write_csv(tmp_path / "in.csv", rows)
    result = prepare(source, localytics(), tmp_path / "out.ndjson", memory_limit="48MB")
    assert (result.read, result.written) == (count, count)
    with open(tmp_path / "out.ndjson", encoding="utf-8") as handle:
        ids = [int(json.loads(line)["customer_id"]) for line in handle]
    assert ids == list(range(count))


def test_output_and_rejects_go_to_object_storage(tmp_path):
    from airflow.sdk.io.store import attach
    from airflow.sdk import ObjectStoragePath
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())
    source = write_csv(tmp_path / "in.csv", [("1", "Ann", ""), ("", "x", "")])
    output, rejects = ObjectStoragePath("memory://prep/out.ndjson"), ObjectStoragePath("memory://prep/rejects.csv")
    try:
        result = prepare(source, localytics(), output, rejects=rejects)
        assert (result.written, result.rejected) == (1, 1)
        assert json.loads(output.read_text())["customer_id"] == "1"
        assert "customer id is empty" in rejects.read_text()
    finally:
        MemoryFileSystem().rm("prep", recursive=True)


def test_no_rows_is_an_error_unless_allowed(tmp_path):
    source = write_csv(tmp_path / "in.csv", [])
    with pytest.raises(InputError, match="no data rows"):
        prepare(source, localytics(), tmp_path / "out.ndjson")
    assert prepare(source, localytics(), tmp_path / "out.ndjson", allow_empty=True).read == 0


def test_a_missing_column_stops_before_anything_is_written(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("1", "Ann")], header=("id", "name"))
    with pytest.raises(InputError, match="'city'"):
        prepare(source, localytics(), tmp_path / "out.ndjson")
    assert not (tmp_path / "out.ndjson").exists()


def test_progress_is_logged_with_rate_and_eta(tmp_path, caplog):
    source = write_csv(tmp_path / "in.csv", [(str(i), "Ann", "") for i in range(200_000)])
    with caplog.at_level(logging.INFO, logger="airflow_provider_profiles.prepare.engine"):
        prepare(source, localytics(), tmp_path / "out.ndjson", progress_interval=0)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("prepare progress")]
    writing = [line for line in lines if "writing" in line]
    assert writing and "of 200,000 rows" in writing[-1] and "rows/s" in writing[-1] and "ETA" in writing[-1]
    assert "wrote 200,000 rows (100%)" in lines[-1]


def test_rejects_cells_that_a_spreadsheet_would_run_are_quoted(tmp_path):
    source = write_csv(tmp_path / "in.csv", [("=HYPERLINK(1)", "", ""), ("-2", "", ""), ("@x", "", ""), ("ok", "", "")])
    prepare(source, localytics(), tmp_path / "out.ndjson", rejects=tmp_path / "rejects.csv", allow_empty=True)
    assert [identifier for _, identifier, _ in rejects_of(tmp_path / "rejects.csv")] == ["'=HYPERLINK(1)", "'-2", "'@x", "ok"]


def test_keep_unmapped_sends_the_other_columns_too(tmp_path):
    from airflow_provider_profiles.prepare.mapping import FieldMapping

    source = write_csv(tmp_path / "in.csv", [("1", "ann", " "), ("2", "bo", "Oslo")], header=("id", "name", "city"))
    mapping = FieldMapping({"user_account_id": {"source": "id", "required": True}, "name": {"source": "name", "max_length": 2}},
                           representation=representation_of("mediarithmics"), keep_unmapped=True)
    result = prepare(source, get_writer("mediarithmics", "USER_PROFILE"), tmp_path / "out.ndjson", mapping=mapping,
                     rejects=tmp_path / "rejects.csv")
    assert (result.written, result.rejected) == (1, 1)
    assert ndjson(tmp_path / "out.ndjson")[0]["user_profile"] == {"id": "2", "name": "bo", "city": "Oslo"}
    assert rejects_of(tmp_path / "rejects.csv")[0][2] == "name: 3 characters; at most 2 allowed"


def test_parquet_rows_come_out_in_file_order(tmp_path):
    """Row groups are read in parallel, with a boolean field whose odd words are checked in Python:
    the output still follows the file. (The 1M-row dirty Parquet of benchmarks/prepare.py came out
    of order before the write query sorted by record; this smaller file did not show it.)"""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from airflow_provider_profiles.prepare.mapping import FieldMapping

    count = 500_000
    table = pa.table({"id": [str(i) for i in range(count)], "name": [f"n{i}" for i in range(count)],
                      "city": [None if i % 3 else "Oslo" for i in range(count)],
                      "vip": ["yes" if i % 5 else "maybe" for i in range(count)]})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=250_000)
    mapping = FieldMapping({"id": "id", "name": "name", "city": "city", "vip": {"source": "vip", "type": "bool"}},
                           representation=representation_of("localytics"))
    writer = localytics(attributes={"name": "name", "city": "city", "vip": "vip"})
    result = prepare(str(tmp_path / "in.parquet"), writer, tmp_path / "out.ndjson", mapping=mapping)
    assert result.written == count - count // 5
    with open(tmp_path / "out.ndjson", encoding="utf-8") as handle:
        assert [int(json.loads(line)["customer_id"]) for line in handle] == [i for i in range(count) if i % 5]


def test_the_rejects_column_rule_is_the_cell_rule():
    """The rejects file's cells are made spreadsheet-safe a column at a time, by the same rule."""
    import pyarrow as pa

    from airflow_provider_profiles.prepare.writer import spreadsheet_safe
    from airflow_provider_profiles.prepare.engine import _spreadsheet_safe

    cells = ["=1", "+1", "-1", "@x", "\tx", "\rx", "ok", "a=b", "\\x", "[x", "", None]
    assert _spreadsheet_safe(pa.array(cells, pa.string())).to_pylist() == [spreadsheet_safe(c) for c in cells]


def test_the_extract_is_timed_for_a_file_and_for_a_cursor(tmp_path):
    import sqlite3

    source = write_csv(tmp_path / "in.csv", [("1", "Ann", "Paris"), ("2", "Bob", "Lyon")])
    result = prepare(source, localytics(), tmp_path / "out.ndjson")
    assert isinstance(result.extract_seconds, float) and result.extract_seconds >= 0
    assert result.to_dict()["extract_seconds"] == result.extract_seconds  # handed on with the counts
    database = sqlite3.connect(tmp_path / "db.sqlite", check_same_thread=False)
    database.execute("CREATE TABLE users (id TEXT, name TEXT, city TEXT)")
    database.executemany("INSERT INTO users VALUES (?, ?, ?)", [("1", "Ann", "Paris"), ("2", "Bob", "Lyon")])
    cursor = database.execute("SELECT id, name, city FROM users")
    result = prepare("the query", localytics(), tmp_path / "out2.ndjson", cursor=cursor)
    assert result.written == 2 and isinstance(result.extract_seconds, float) and result.extract_seconds >= 0
