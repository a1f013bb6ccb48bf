"""Inputs opened as DuckDB relations (prepare/source.py): the hostile corpus of the trust issue.

Each docstring says what DuckDB 2.0.1 makes of the input on its own (``read_csv(path)`` with its
sniffer, or the strict options without this module's handling), which these tests guard against.
"""

from __future__ import annotations

import sqlite3
import uuid

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_profiles.prepare.errors import InputError
from airflow_provider_profiles.prepare.source import cursor_error, open_cursor, open_source


@pytest.fixture
def connection():
    connection = duckdb.connect()
    connection.execute("SET threads = 2")
    yield connection
    connection.close()


def read(connection, tmp_path, data: bytes, name: str = "in.csv", **options):
    """(source, rows as dicts with __record, unreadable as (line, reason))."""
    path = tmp_path / name
    path.write_bytes(data)
    source = open_read(connection, path, **options)
    cursor = connection.execute(f"SELECT * FROM {source.relation}")
    columns = [column[0] for column in cursor.description]
    rows = [dict(zip(columns, row)) for row in cursor.fetchall()]
    unreadable = connection.execute(f"SELECT line, reason FROM {source.unreadable}").fetchall() if source.unreadable else None
    return source, rows, unreadable


def open_read(connection, path, read_once: bool = True, **options):
    """``open_source`` as the engine opens a file: with ``read_once``, a CSV's unreadable records
    are found by reading the relation (then an InputError for the file as a whole comes here)."""
    source = open_source(connection, str(path), read_once=read_once, **options)
    if source.settle is not None:
        try:
            connection.execute(f"SELECT count(*) FROM {source.relation}").fetchall()
        except duckdb.Error as error:
            raise source.settle.failure(error) or error
        source.settle.after_read()
    return source


def values(rows, *names):
    return [tuple(row[name] for name in names) for row in rows]


# --- a quote left open ---------------------------------------------------------------------------


def test_a_quote_open_at_the_end_is_an_error_at_its_line(connection, tmp_path):
    """Naive: read_csv gives city '"Rome' (sniffer) or silently 'Rome' (strict_mode=false)."""
    with pytest.raises(InputError) as caught:
        read(connection, tmp_path, b'id,name,city\n1,Ann,Paris\n2,Bob,"Rome\n')
    assert (caught.value.line, caught.value.column) == (3, "city")
    assert "in.csv, line 3, column 'city': the quote at character 7 of this line is never closed" in str(caught.value)


def test_a_quote_open_in_a_middle_line_is_an_error_at_its_line(connection, tmp_path):
    """Naive: the sniffer reads '"Carl' as a value and goes on; strict mode makes the rest of the
    file one rejected record."""
    body = b"".join(b"%d,n%d,c%d\n" % (i, i, i) for i in range(1, 2000))
    with pytest.raises(InputError) as caught:
        read(connection, tmp_path, b'id,name,city\n1,Ann,Paris\n2,Bob,Rome\n3,"Carl,Oslo\n' + body)
    assert (caught.value.line, caught.value.column) == (4, "name") and "never closed" in str(caught.value)


def test_a_quote_open_before_other_quotes_is_an_error_too(connection, tmp_path):
    """Naive (strict): DuckDB rejects one record and reads on from the next quote it sees, so a
    line of real data disappears inside that reject."""
    body = b"".join(b'%d,name %d,"c, %d"\n' % (i, i, i) for i in range(1, 500))
    with pytest.raises(InputError) as caught:
        read(connection, tmp_path, b"id,name,city\n1,a,b\n" + b'2,"open,x\n' + body)
    assert (caught.value.line, caught.value.column) == (3, "name")


@pytest.mark.parametrize("rest", [b"1,a,b\n", b"1,a,b\n" * 400_000], ids=["short", "2 MB"])
def test_a_quote_open_in_the_header_is_an_error(connection, tmp_path, rest):
    """Naive: the sniffer takes the header for data and reads ('1', 'a', 'b'). The header is read
    up to 1 MB, not to the end of the file."""
    with pytest.raises(InputError, match="in.csv, line 1: the quote at character 4 of this line is never closed"):
        read(connection, tmp_path, b'id,"name,city\n' + rest)


# --- line ends -----------------------------------------------------------------------------------


def test_cr_only_line_ends_read_as_lines(connection, tmp_path):
    source, rows, unreadable = read(connection, tmp_path, b'id,name,city\r1,Ann,Paris\r2,Bob,"c\rx"\r')
    assert values(rows, "id", "city", "__record") == [("1", "Paris", 1), ("2", "c\rx", 2)] and unreadable == []


def test_mixed_line_ends_read_as_lines_with_csv_line_numbers(connection, tmp_path):
    """Naive: 'Error when sniffing file'; strict_mode=true: 'state machine reached an invalid state'."""
    data = b'id,v\r1,a\r\n2,"b\rc"\n\r3,x,extra\r\n4,"d\r\ne"\r5,f'
    _, rows, unreadable = read(connection, tmp_path, data)
    assert values(rows, "id", "v", "__record") == [("1", "a", 1), ("2", "b\rc", 2), ("4", "d\r\ne", 3), ("5", "f", 4)]
    assert unreadable == [(6, "ragged row: expected 2 fields, found 3")]  # where csv.reader's line_num puts it


def test_a_crlf_file_with_lf_lines_appended(connection, tmp_path):
    _, rows, _ = read(connection, tmp_path, b"id,v\r\n1,a\r\n2,b\n3,c\r\n")
    assert values(rows, "id", "v") == [("1", "a"), ("2", "b"), ("3", "c")]


# --- quotes in values ----------------------------------------------------------------------------


def test_a_stray_quote_in_an_unquoted_value_is_text(connection, tmp_path):
    _, rows, unreadable = read(connection, tmp_path, b'id,name,city\n1,Ann,Paris\n3,5" screen,Oslo\n5,Eve,x"y"\n')
    assert values(rows, "name", "city") == [("Ann", "Paris"), ('5" screen', "Oslo"), ("Eve", 'x"y"')]
    assert unreadable == []


def test_quoted_newlines_delimiters_and_quotes(connection, tmp_path):
    _, rows, _ = read(connection, tmp_path, b'id,name,city\n1,"a,b","x\ny"\n2,"say ""hi""",z\n3,"",\n')
    assert values(rows, "name", "city", "__record") == [("a,b", "x\ny", 1), ('say "hi"', "z", 2), ("", "", 3)]


def test_text_after_a_closing_quote_stops_at_its_line_and_column(connection, tmp_path):
    """Naive: strict_mode=false silently drops the 'b' of "a"b; strict mode rejects the record and
    also loses the next one when it is the last (no row at all here). csv would glue it ('ab')."""
    with pytest.raises(InputError) as caught:
        read(connection, tmp_path, b'id,name,city\n1,"a"b,Paris\n2,x,y\n')
    assert (caught.value.line, caught.value.column) == (2, "name")
    assert "text after the closing quote" in str(caught.value)


# --- ragged rows, blank lines ----------------------------------------------------------------------


def test_ragged_rows_are_unreadable_with_their_physical_line(connection, tmp_path):
    """Naive: the sniffer reads the file as one column; DuckDB's own reject 'line' says 4 for the
    record on line 5 (it counts a quoted newline's two lines as one)."""
    _, rows, unreadable = read(connection, tmp_path, b'id,a,b\n1,x,y\n2,"q\nq"\n3,x,y,z\n\n\n4,x\n5,x,y\n')
    assert values(rows, "id", "__record") == [("1", 1), ("5", 2)]
    assert unreadable == [(3, "ragged row: expected 3 fields, found 2"), (5, "ragged row: expected 3 fields, found 4"),
                          (8, "ragged row: expected 3 fields, found 2")]



def test_a_record_short_of_several_fields_is_one_unreadable_record(connection, tmp_path):
    """DuckDB rejects such a record once per missing column ('Found: 1', 'Found: 2', ...): it is
    still one record, counted once, with the fields it has."""
    _, rows, unreadable = read(connection, tmp_path, b"id,a,b,c\n1,x,y,z\nragged\n2,x\n3,x,y,z\n")
    assert values(rows, "id", "__record") == [("1", 1), ("3", 2)]
    assert unreadable == [(3, "ragged row: expected 4 fields, found 1"), (4, "ragged row: expected 4 fields, found 2")]


def test_a_record_with_fields_too_many_says_how_many_it_has(connection, tmp_path):
    """DuckDB's message says 'Found: 4' for any record longer than 3 fields: the count is csv's."""
    _, _, unreadable = read(connection, tmp_path, b'id,a,b\n1,x,y\nr,1,"2,3",4,5,6\n2,x,y\n')
    assert unreadable == [(3, "ragged row: expected 3 fields, found 6")]

def test_ragged_rows_in_a_crlf_file(connection, tmp_path):
    _, _, unreadable = read(connection, tmp_path, b'id,a,b\r\n1,x,y\r\n2,"q\r\nq"\r\n3,x,y,z\r\n\r\n\r\n4,x\r\n')
    assert [line for line, _ in unreadable] == [3, 5, 8]


def test_blank_lines_are_skipped_and_a_space_is_a_value(connection, tmp_path):
    _, rows, unreadable = read(connection, tmp_path, b"id,v\n\n1,a\n\n \n2,b\n\n")
    assert values(rows, "id", "__record") == [("1", 1), ("2", 2)]
    assert unreadable == [(5, "ragged row: expected 2 fields, found 1")]



def test_a_line_of_two_quotes_is_a_value_not_a_blank_line(connection, tmp_path):
    """csv reads ``""`` as one empty field: a ragged record, not a blank line to skip."""
    _, rows, unreadable = read(connection, tmp_path, b'id,v\n1,a\n""\n2,b\n')
    assert values(rows, "id", "__record") == [("1", 1), ("2", 2)]
    assert unreadable == [(3, "ragged row: expected 2 fields, found 1")]


def test_a_stray_quote_keeps_the_lines_of_the_records_after_it(connection, tmp_path):
    """A value ending in a quote (``a"``) is text: the blank lines and the ragged record after it
    keep their lines as csv counts them."""
    _, rows, unreadable = read(connection, tmp_path, b'c0,c1\nx,\n\nx,\n\na",\n\nx\n\nx,\n\nx,\n')
    assert values(rows, "c0", "__record") == [("x", 1), ("x", 2), ('a"', 3), ("x", 4), ("x", 5)]
    assert unreadable == [(8, "ragged row: expected 2 fields, found 1")]

# --- encodings and bytes ---------------------------------------------------------------------------


def test_invalid_utf8_names_line_and_column(connection, tmp_path):
    """Naive: 'CSV Error on Line: 3' (the sniffer), or a rejected row (store_rejects)."""
    with pytest.raises(InputError) as caught:
        read(connection, tmp_path, "id,name\n1,ok\n2,Andr\xe9\n".encode("latin-1"), name="latin.csv")
    assert (caught.value.line, caught.value.column) == (3, "name")
    assert "latin.csv, line 3, column 'name'" in str(caught.value) and "encoding=" in str(caught.value)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252", "utf-16"])
def test_a_declared_encoding_is_read(connection, tmp_path, encoding):
    data = "id,name\r\n1,Andr\xe9\r\n2,\"x\ny\"\n".encode(encoding)
    source, rows, _ = read(connection, tmp_path, data, encoding=encoding)
    assert values(rows, "id", "name") == [("1", "Andr\xe9"), ("2", "x\ny")]
    assert source.description.startswith("csv|,|")


def test_a_byte_order_mark_is_dropped(connection, tmp_path):
    source, rows, _ = read(connection, tmp_path, b"\xef\xbb\xbfid,name\r\n1,a\r\n2,\r\n")
    assert source.names == ["id", "name"] and values(rows, "id", "name") == [("1", "a"), ("2", "")]


def test_nul_bytes_stay_in_their_value(connection, tmp_path):
    _, rows, _ = read(connection, tmp_path, b"id,name\n1,a\x00b\n2,c\n")
    assert values(rows, "name") == [("a\x00b",), ("c",)]


# --- header -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("header, message", [(b"id,,x\n", "header field 2 is empty"), (b"id,name,id\n", "'id' appears twice")])
def test_a_bad_header_is_an_error_on_line_1(connection, tmp_path, header, message):
    """Naive: the sniffer renames the columns (column1, id_1) and reads on."""
    with pytest.raises(InputError, match=f"in.csv, line 1.*{message}"):
        read(connection, tmp_path, header + b"1,2,3\n")


def test_header_names_are_trimmed(connection, tmp_path):
    source, rows, _ = read(connection, tmp_path, b' id ,the name \n1,a\n')
    assert source.names == ["id", "the name"] and values(rows, "the name") == [("a",)]


@pytest.mark.parametrize("data, names", [(b"id,name\n", ["id", "name"]), (b"", []), (b"\n\n", [])])
def test_a_header_only_or_empty_file_has_no_rows(connection, tmp_path, data, names):
    source, rows, unreadable = read(connection, tmp_path, data)
    assert (source.names, rows) == (names, []) and unreadable in ([], None)


@pytest.mark.parametrize("data", [b"\n\r\nid,name\n1,a\n2,b\n", b"\r\n\rid,name\r1,a\r2,b\r", b"id,name\r\n1,a\r2,b\r"])
def test_blank_lines_before_the_header_and_a_header_with_other_line_ends(connection, tmp_path, data):
    """Naive (strict options): the first blank line is taken for the header and 'id,name' is a
    row; a CRLF header over CR-only rows makes the whole file the header: no rows, no error."""
    source, rows, unreadable = read(connection, tmp_path, data)
    assert source.names == ["id", "name"] and values(rows, "id", "name", "__record") == [("1", "a", 1), ("2", "b", 2)]
    assert unreadable == []


def test_a_bad_header_after_blank_lines_names_its_line(connection, tmp_path):
    with pytest.raises(InputError, match="in.csv, line 3: header field 2 is empty"):
        read(connection, tmp_path, b"\n\nid,,x\n1,2,3\n")


def test_a_header_alone_without_line_end(connection, tmp_path):
    source, rows, _ = read(connection, tmp_path, b"id,name")
    assert (source.names, rows) == (["id", "name"], [])


def test_other_delimiters(connection, tmp_path):
    source, rows, _ = read(connection, tmp_path, b'id;name\n1;"a;b"\n2;c\n', delimiter=";")
    assert source.names == ["id", "name"] and values(rows, "name") == [("a;b",), ("c",)]
    assert source.description == 'csv|;|utf-8|["id", "name"]'


# --- order ----------------------------------------------------------------------------------------


def big_input(kind: str) -> tuple[str, bytes]:
    """About 6 MB, 200,000 records, every 7th with a quoted newline (CSV)."""
    if kind == "ndjson":
        return "big.ndjson", b"".join(b'{"id": %d, "name": "name %d", "note": "a\\nb"}\n' % (i, i) for i in range(1, 200_001))
    lines = [b"id,name,note\n"]
    for i in range(1, 200_001):
        end = b"\r\n" if kind == "mixed line ends" and i % 3 == 0 else b"\n"
        lines.append(b'%d,name %d,"multi\nline, %d"' % (i, i, i) + end if i % 7 == 0 else b"%d,name %d,plain %d" % (i, i, i) + end)
    return "big.csv", b"".join(lines)


@pytest.mark.parametrize("kind", ["csv", "mixed line ends", "ndjson"])
def test_records_come_in_input_order_across_blocks(connection, tmp_path, kind):
    """A file of several MB (DuckDB reads it in several buffers, on 2 threads): __record is the
    position, and the relation's rows come in that order, every time."""
    name, data = big_input(kind)
    path = tmp_path / name
    path.write_bytes(data)
    assert path.stat().st_size > 5 << 20
    source = open_source(connection, str(path))
    for _ in range(2):
        ids = connection.execute(f"SELECT id::BIGINT, __record FROM {source.relation}").fetchall()
        assert ids == [(i, i) for i in range(1, 200_001)]
    wrong = connection.execute(f"SELECT count(*) FROM {source.relation} WHERE id::BIGINT <> __record").fetchone()[0]
    assert wrong == 0 and connection.execute(f"SELECT count(*) FROM {source.unreadable}").fetchone()[0] == 0


def test_unreadable_lines_are_csv_lines_across_blocks(connection, tmp_path):
    """Ragged rows spread over a 6 MB file with quoted newlines, read on 2 threads: each one's line
    is where csv.reader puts it."""
    import csv
    import io

    lines = [b"id,name,note\n"]
    for i in range(1, 200_001):
        if i % 1000 == 0:
            lines.append(b"%d,ragged\n" % i)
        else:
            lines.append(b'%d,name %d,"multi\nline, %d"\n' % (i, i, i) if i % 7 == 0 else b"%d,name %d,plain %d\n" % (i, i, i))
    data = b"".join(lines)
    reader = csv.reader(io.StringIO(data.decode(), newline=""))
    expected, line = [], 1
    for record in reader:
        if len(record) != 3:
            expected.append((line, "ragged row: expected 3 fields, found 2"))
        line = reader.line_num + 1
    _, rows, unreadable = read(connection, tmp_path, data)
    assert len(expected) == 200 and unreadable == expected and len(rows) == 199_800


# --- NDJSON ---------------------------------------------------------------------------------------


def test_ndjson_bad_and_non_object_lines_are_unreadable(connection, tmp_path):
    """Naive: read_json stops at 'Malformed JSON ... in line 3'."""
    data = b'{"id":"1","profile":{"city":"Oslo"}}\n{not json\n\n[1,2]\n{"id":"2","n":1.5,"tags":["a"]}\n7\n'
    source, rows, unreadable = read(connection, tmp_path, data, name="in.ndjson")
    assert source.names == ["id", "profile", "n", "tags"]
    assert source.types == {"id": "VARCHAR", "profile": "STRUCT(city VARCHAR)", "n": "DOUBLE", "tags": "VARCHAR[]"}
    assert values(rows, "id", "profile", "n", "tags", "__record") == [
        ("1", {"city": "Oslo"}, None, None, 1), ("2", None, 1.5, ["a"], 2)]
    assert unreadable == [(2, "not valid JSON: Expecting property name enclosed in double quotes at character 2"),
                          (4, "expected a JSON object, found array"), (6, "expected a JSON object, found number")]


def test_ndjson_keys_are_the_union_in_first_seen_order_and_numbers_stay_numbers(connection, tmp_path):
    data = b'{"b":1,"a":{"x":1}}\r\n{"c":"s","a":{"y":2.5},"b":-2}\r\n{"d":null}\r\n'
    source, rows, _ = read(connection, tmp_path, data, name="in.jsonl")
    assert source.names == ["b", "a", "c", "d"]
    assert source.types["b"] in ("BIGINT", "HUGEINT") and source.types["a"] == "STRUCT(x UBIGINT, y DOUBLE)"
    assert values(rows, "b", "__record") == [(1, 1), (-2, 2), (None, 3)]


def test_ndjson_keys_that_differ_only_in_case_are_an_input_error(connection, tmp_path):
    """Naive: 'Duplicate keys in object in JSON structure' from DuckDB, whose names ignore case."""
    with pytest.raises(InputError, match="in.ndjson: two keys differ only in letter case"):
        read(connection, tmp_path, b'{"Email": "a@b.c"}\n{"email": "d@e.f"}\n', name="in.ndjson")


def test_ndjson_in_a_declared_encoding(connection, tmp_path):
    _, rows, _ = read(connection, tmp_path, '{"n": "Andr\xe9"}\n'.encode("latin-1"), name="in.ndjson", encoding="latin-1")
    assert values(rows, "n") == [("Andr\xe9",)]


def test_an_empty_ndjson_file(connection, tmp_path):
    source, rows, unreadable = read(connection, tmp_path, b"\n", name="in.ndjson")
    assert (source.names, rows, unreadable) == ([], [], [])


# --- Parquet --------------------------------------------------------------------------------------


def test_parquet_keeps_its_types_and_binary_stays_blob(connection, tmp_path):
    path = tmp_path / "in.parquet"
    table = pa.table({"id": ["a", "b", "c"], "n": [1, 2, 3], "raw": pa.array([b"Ann", b"\xff", None], pa.binary())})
    pq.write_table(table, path, row_group_size=2)
    source = open_source(connection, str(path))
    assert source.names == ["id", "n", "raw"] and source.types == {"id": "VARCHAR", "n": "BIGINT", "raw": "BLOB"}
    assert source.unreadable is None
    rows = connection.execute(f"SELECT * FROM {source.relation}").fetchall()
    assert rows == [("a", 1, b"Ann", 1), ("b", 2, b"\xff", 2), ("c", 3, None, 3)]


def test_a_broken_parquet_file_is_an_input_error(connection, tmp_path):
    path = tmp_path / "in.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(InputError, match="in.parquet: not a readable Parquet file"):
        open_source(connection, str(path))


# --- SQL cursor -----------------------------------------------------------------------------------


def sqlite_cursor(tmp_path, rows):
    database = sqlite3.connect(tmp_path / "db.sqlite", check_same_thread=False)  # DuckDB fetches from its thread
    database.execute("CREATE TABLE people (id INTEGER, name TEXT, score, photo BLOB)")
    database.executemany("INSERT INTO people VALUES (?, ?, ?, ?)", rows)
    return database.execute("SELECT id, name, score, photo FROM people ORDER BY rowid")


def test_a_sqlite_cursor_is_streamed_in_batches(connection, tmp_path):
    rows = [(i, f"n{i}", [1, "x", 2.5][i % 3], b"\x00\x01" if i == 2 else None) for i in range(1, 11)]
    cursor = sqlite_cursor(tmp_path, rows)
    source = open_cursor(connection, cursor, batch_rows=3)
    # score mixes int, str and float in the first batch: read as text, never coerced to a number
    assert source.names == ["id", "name", "score", "photo"]
    assert source.types == {"id": "BIGINT", "name": "VARCHAR", "score": "VARCHAR", "photo": "BLOB"}
    read_rows = connection.execute(f"SELECT * FROM {source.relation}").fetchall()
    assert [row[-1] for row in read_rows] == list(range(1, 11))
    assert read_rows[0][:3] == (1, "n1", "x") and read_rows[1][2:4] == ("2.5", b"\x00\x01")


def test_a_cursor_value_that_does_not_fit_its_column_stops_with_its_record(connection, tmp_path):
    rows = [(1, "a", 10, None), (2, "b", 20, None), (3, "c", "thirty", None)]
    source = open_cursor(connection, sqlite_cursor(tmp_path, rows), batch_rows=2)
    assert source.types["score"] == "BIGINT"
    with pytest.raises(duckdb.Error) as caught:
        connection.execute(f"SELECT * FROM {source.relation}").fetchall()
    error = cursor_error(caught.value)  # what DuckDB wraps, for the engine to raise
    assert isinstance(error, InputError) and (error.line, error.column) == (3, "score")
    assert "a value of type str after values of type int64: cast the column in the query" in str(error)


# --- object storage -------------------------------------------------------------------------------


def test_an_object_storage_path(connection):
    from airflow.sdk import ObjectStoragePath
    from airflow.sdk.io.store import attach
    from fsspec.implementations.memory import MemoryFileSystem

    attach("memory", fs=MemoryFileSystem())
    root = f"memory://bucket-{uuid.uuid4().hex[:8]}"
    path = ObjectStoragePath(f"{root}/in/users.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b'id,name\r\n1,"Ann\nX"\r\n2,Bo,extra\r\n3,Cy\n')  # mixed line ends: rewritten on the way
    try:
        source = open_source(connection, path)
        rows = connection.execute(f"SELECT * FROM {source.relation}").fetchall()
        assert rows == [("1", "Ann\nX", 1), ("3", "Cy", 2)]
        assert connection.execute(f"SELECT * FROM {source.unreadable}").fetchall() == [
            (4, "ragged row: expected 2 fields, found 3")]
        ndjson = ObjectStoragePath(f"{root}/in/users.ndjson")
        ndjson.write_bytes(b'{"id": 1}\n{"id": 2}\n')
        source = open_source(connection, str(ndjson))
        assert connection.execute(f"SELECT * FROM {source.relation}").fetchall() == [(1, 1), (2, 2)]
    finally:
        MemoryFileSystem().rm(root.removeprefix("memory://"), recursive=True)


# --- against Python's csv module -----------------------------------------------------------------

from hypothesis import HealthCheck, assume, event, given, settings  # noqa: E402

from tests.unit.prepare.csv_corpus import csv_files, expected_records  # noqa: E402


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.filter_too_much])
@given(file=csv_files())
def test_csv_agrees_with_the_csv_module(tmp_path_factory, file):
    """Rows, their order and the unreadable records' lines and field counts as csv has them, on
    generated files with every line end (mixed too), quotes in unquoted values, ragged and blank
    lines; a quote left open, or text after a closing quote (which csv glues on), stops with an
    InputError instead. A line ending with an extra delimiter is read without its empty last
    value (DuckDB's rule). Not compared: spaces beside a quote (`` "a" ``, which DuckDB reads as a
    quoted value without the spaces, where csv keeps the quotes as text); ``5" screen`` has its
    own test above."""
    import csv
    import io
    columns, text, open_line = file
    assume(' "' not in text and '" ' not in text)
    path = tmp_path_factory.mktemp("p") / "in.csv"
    path.write_bytes(text.encode("utf-8"))
    strict_error = None
    try:
        list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except csv.Error as error:
        strict_error = error
    for read_once in (False, True):  # read ahead for the unreadable records, or found by the read
        connection = duckdb.connect()
        try:
            _agrees_with_csv(connection, path, text, columns, open_line, strict_error, read_once)
        finally:
            connection.close()


def _agrees_with_csv(connection, path, text, columns, open_line, strict_error, read_once):
    if open_line is not None or strict_error is not None:
        event("stopped with an InputError")
        with pytest.raises(InputError, match="never closed|text after the closing quote|not readable as CSV") as caught:
            open_read(connection, path, read_once)
        if strict_error is None:
            assert caught.value.line == open_line and "never closed" in str(caught.value)
        return
    records = expected_records(text)
    event("rows compared" + (" (with unreadable records)" if any(len(v) != columns for _, v in records[1:]) else ""))
    source = open_read(connection, path, read_once)
    assert source.names == [name.strip() for name in records[0][1]]
    rows = connection.execute(f"SELECT * FROM {source.relation}").fetchall()
    # DuckDB reads a record with one field too many when that field is empty (a delimiter
    # ending the line): only an empty value is dropped
    records = [(line, values[:columns] if len(values) == columns + 1 and values[-1] == "" else values)
               for line, values in records]
    good = [values for _, values in records[1:] if len(values) == columns]
    ragged = [(line, f"ragged row: expected {columns} fields, found {len(values)}")
              for line, values in records[1:] if len(values) != columns]
    assert [list(row[:-1]) for row in rows] == good
    assert [row[-1] for row in rows] == list(range(1, len(good) + 1))
    assert connection.execute(f"SELECT line, reason FROM {source.unreadable}").fetchall() == ragged
