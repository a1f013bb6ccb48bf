"""split_file: never cuts a record, repeats the header, deterministic names, both limits."""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_profiles.prepare.records import first_record_end, last_record_end, record_ends
from airflow_provider_profiles.prepare.split import RecordTooLarge, split_file
from airflow_provider_profiles.prepare.errors import InputError
from tests.unit.prepare.csv_corpus import csv_files, expected_records

# A bare CR is a record separator to CSV readers (and Python's writer leaves it unquoted), so
# carriage returns only appear as CRLF inside quoted values.
_cell = st.text(alphabet=st.sampled_from(list('ab,"\n\r ') + ["é", "日", "𝄞"]), max_size=12).map(
    lambda text: text.replace("\r", "\r\n")
)


def csv_bytes(header, rows, line_terminator):
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator=line_terminator, quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode("utf-8")


def parse(data: bytes):
    return list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.lists(_cell, min_size=3, max_size=3), min_size=1, max_size=40),
    line_terminator=st.sampled_from(["\n", "\r\n"]),
    max_bytes=st.integers(min_value=120, max_value=600),
    max_rows=st.one_of(st.none(), st.integers(min_value=1, max_value=7)),
    block=st.integers(min_value=16, max_value=256),
)
def test_csv_split_never_cuts_a_record(tmp_path_factory, rows, line_terminator, max_bytes, max_rows, block):
    folder = tmp_path_factory.mktemp("split")
    header = ["id", "note", "city"]
    data = csv_bytes(header, rows, line_terminator)
    source = folder / "in.csv"
    source.write_bytes(data)
    try:
        chunks = split_file(str(source), str(folder / "out"), max_bytes=max_bytes, max_rows=max_rows, block_bytes=block)
    except RecordTooLarge:
        longest = max(len(csv_bytes([], [row], line_terminator)) for row in rows)
        assert longest > max_bytes - len(csv_bytes(header, [], line_terminator))
        return
    recovered = []
    for chunk in chunks:
        content = open(chunk, "rb").read()
        assert len(content) <= max_bytes
        content.decode("utf-8")  # never cut inside a character
        parsed = parse(content)
        assert parsed[0] == header
        assert len(parsed) > 1
        if max_rows:
            assert len(parsed) - 1 <= max_rows
        recovered += parsed[1:]
    assert recovered == [[str(cell) for cell in row] for row in parse(data)[1:]]


def test_ndjson_split_has_no_header_and_is_byte_exact(tmp_path):
    lines = [json.dumps({"customer_id": str(i), "v": "x" * (i % 7)}) + "\n" for i in range(100)]
    source = tmp_path / "out.ndjson"
    source.write_text("".join(lines))
    chunks = split_file(str(source), max_bytes=500)
    assert [os.path.basename(c) for c in chunks[:2]] == ["out.part-00000.ndjson", "out.part-00001.ndjson"]
    joined = b"".join(open(c, "rb").read() for c in chunks)
    assert joined == source.read_bytes()
    assert all(os.path.getsize(c) <= 500 for c in chunks)


def test_retry_overwrites_and_removes_leftover_chunks(tmp_path):
    source = tmp_path / "data.csv"
    source.write_text("id\n" + "".join(f"{i}\n" for i in range(50)))
    first = split_file(str(source), str(tmp_path / "chunks"), max_rows=10)
    assert len(first) == 5
    again = split_file(str(source), str(tmp_path / "chunks"), max_rows=10)
    assert again == first
    fewer = split_file(str(source), str(tmp_path / "chunks"), max_rows=25)
    assert fewer == first[:2]
    assert sorted(os.listdir(tmp_path / "chunks")) == ["data.part-00000.csv", "data.part-00001.csv"]


def test_rows_limit_counts_records_not_lines(tmp_path):
    source = tmp_path / "q.csv"
    source.write_text('id,note\n1,"a\nb\nc"\n2,x\n3,"d\ne"\n')
    chunks = split_file(str(source), max_rows=2)
    assert [parse(open(c, "rb").read()) for c in chunks] == [
        [["id", "note"], ["1", "a\nb\nc"], ["2", "x"]],
        [["id", "note"], ["3", "d\ne"]],
    ]


def test_file_without_final_newline(tmp_path):
    source = tmp_path / "t.csv"
    source.write_text("id\n1\n2\n3")
    chunks = split_file(str(source), max_rows=2)
    assert [open(c).read() for c in chunks] == ["id\n1\n2\n", "id\n3"]


def test_record_larger_than_the_limit_is_an_error(tmp_path):
    source = tmp_path / "big.csv"
    source.write_text("id,v\n1,short\n2," + "x" * 200 + "\n")
    with pytest.raises(RecordTooLarge, match="line 3"):
        split_file(str(source), max_bytes=100)


def test_no_limit_returns_the_file(tmp_path):
    source = tmp_path / "a.ndjson"
    source.write_text("{}\n")
    assert split_file(str(source)) == [str(source)]


@pytest.mark.parametrize("limits", [{"max_bytes": 2_000}, {"max_rows": 10}], ids=["bytes", "rows"])
def test_an_unclosed_quote_is_an_error_at_its_line(tmp_path, monkeypatch, limits):
    """A quote never closed makes the rest of the file one record: the split says so at that
    record's line as soon as the record outgrows a chunk (or, with a row limit only, the split's
    MAX_RECORD_BYTES), without reading the rest into memory first."""
    from airflow_provider_profiles.prepare import split

    monkeypatch.setattr(split, "MAX_RECORD_BYTES", 20_000)
    source = tmp_path / "open.csv"
    source.write_text("id,v\n" + "".join(f"{i},ok\n" for i in range(1, 20)) + '20,"never closed\n' + "21,x\n" * 50_000)
    expected = "the record at line 21 " + ("is larger than max_bytes" if "max_bytes" in limits else "runs over 0.0 MB: is a quote left open")
    with pytest.raises(RecordTooLarge, match=expected):
        split_file(str(source), **limits, block_bytes=4_096)


# --- CSV records as Python's csv module reads them (the generated files in csv_corpus.py):
# quotes left open, CR / LF / CRLF line ends, quotes inside unquoted values ----------------------

HEADER = b"id,name,city\n"
BODY = b"".join(b"%d,n%d,c%d\n" % (i, i, i) for i in range(1, 2000))


def test_split_stops_at_a_quote_open_in_the_header(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b'id,"name,city\n1,a,b\n')
    with pytest.raises(InputError, match="in.csv, line 1: the quote at character 4 .* never closed"):
        split_file(str(source), str(tmp_path / "chunks"), max_rows=1)


@pytest.mark.parametrize("limits", [{"max_bytes": 200_000}, {"max_rows": 500}], ids=["bytes", "rows"])
def test_split_stops_at_a_quote_open_at_the_end(tmp_path, limits):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + BODY + b'2000,"Zoe,Oslo\n' + BODY)
    with pytest.raises(InputError) as caught:
        split_file(str(source), str(tmp_path / "chunks"), **limits, block_bytes=4096)
    assert (caught.value.line, caught.value.column) == (2001, "name") and "in.csv" in str(caught.value)
    assert not (tmp_path / "chunks").exists() or not list((tmp_path / "chunks").iterdir())


def test_split_cuts_a_cr_only_file(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,v\r" + b"".join(b'%d,"x\ry"\r' % i for i in range(100)))
    chunks = split_file(str(source), str(tmp_path / "chunks"), max_rows=30, block_bytes=64)
    assert len(chunks) == 4
    rows = []
    for chunk in chunks:
        parsed = parse(open(chunk, "rb").read())
        assert parsed[0] == ["id", "v"] and len(parsed) - 1 <= 30
        rows += parsed[1:]
    assert rows == [[str(i), "x\ry"] for i in range(100)]




@settings(max_examples=100, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=csv_files(), max_rows=st.integers(1, 4), max_bytes=st.one_of(st.none(), st.integers(60, 200)),
       block_bytes=st.sampled_from([8, 64, 1 << 20]))
def test_split_agrees_with_the_csv_module(tmp_path_factory, file, max_rows, max_bytes, block_bytes):
    columns, text, open_line = file
    folder = tmp_path_factory.mktemp("s")
    source = folder / "in.csv"
    source.write_bytes(text.encode("utf-8"))
    records = expected_records(text)
    limits = {"max_rows": max_rows, "max_bytes": max_bytes, "block_bytes": block_bytes}
    if open_line is not None:
        with pytest.raises((InputError, RecordTooLarge)) as caught:
            split_file(str(source), str(folder / "chunks"), **limits)
        if caught.type is InputError:
            assert caught.value.line == open_line and "never closed" in str(caught.value)
        return
    try:
        chunks = split_file(str(source), str(folder / "chunks"), **limits)
    except RecordTooLarge:
        assert max_bytes is not None
        return
    recovered = []
    for chunk in chunks:
        parsed = [values for values in csv.reader(io.StringIO(open(chunk, "rb").read().decode(), newline="")) if values]
        assert parsed[0] == records[0][1]
        recovered += parsed[1:]
    assert recovered == [values for _, values in records[1:]]


# --- record ends (prepare/records.py) against a walk through csv's states --------------------------


def csv_record_ends(block: bytes, start: int, end: int, complete: bool) -> list[int]:
    """Record ends in block[start:end] by a walk through the states of Python's csv reader: a
    quote opens a value only at the start of a field; a line ends at LF, CR or CRLF (a CR at
    ``end`` only if ``complete``: else an LF may follow)."""
    expected, state, position = [], "start", start
    while position < end:
        char = block[position]
        if state == "quoted":
            state = "quote" if char == ord('"') else "quoted"
        elif char in (10, 13):
            if char == 13 and position + 1 == end and not complete:
                break
            if char == 13 and position + 1 < end and block[position + 1] == 10:
                position += 1
            expected.append(position + 1)
            state = "start"
        elif char == ord(","):
            state = "start"
        elif char == ord('"') and state in ("start", "quote"):
            state = "quoted"  # opens a value, or (after a closing quote) is a quote in it
        else:
            state = "field"
        position += 1
    return expected


def test_record_ends_agree_with_a_character_walk():
    """Every record end, the first and the last, in any slice of a block that starts at a record start
    (prepare/records.py, what split cuts at)."""
    rng = np.random.default_rng(17)
    for _ in range(600):
        prefix = [b"", b"s\n", b'p,"q\nr"\n', b"t\r"][int(rng.integers(0, 4))]  # whole records before start
        block = prefix + bytes(rng.choice(list(b'ab,"\n\r'), size=int(rng.integers(0, 40))).astype(np.uint8))
        start = len(prefix)
        end = int(rng.integers(start, len(block) + 1))
        expected = csv_record_ends(block, start, end, complete=True)
        assert record_ends(block, start, end).tolist() == expected, (block, end)
        expected = csv_record_ends(block, start, end, complete=False)
        assert last_record_end(block, start, end) == (expected[-1] if expected else start), (block, end)
        assert first_record_end(block[start:end]) == (expected[0] - start if expected else None), (block, end)


@pytest.mark.parametrize("name,text", [("empty.ndjson", ""), ("header.csv", "id,name\n")])
@pytest.mark.parametrize("limits", [{}, {"max_bytes": 100}, {"max_rows": 1}], ids=["whole", "bytes", "rows"])
def test_a_file_without_records_gives_one_chunk_without_records(tmp_path, name, text, limits):
    """Never []: a task mapped over an empty list is skipped, and with it the commit and report after it."""
    source = tmp_path / name
    source.write_text(text)
    (chunk,) = split_file(source, tmp_path / "chunks" if limits else None, **limits)
    assert open(chunk).read() == text
