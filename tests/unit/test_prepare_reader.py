"""Streamed readers: line numbers, malformed input named by file/line/column, formats."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from airflow_provider_profiles.formats.reader import (
    InputError,
    read_input,
    record_blocks,
)


def rows_and_lines(path, **options):
    names, batches = read_input(path, **options)
    rows, lines, rejected = [], [], []
    for batch in batches:
        rows += batch.rows()
        lines += [int(line) for line in batch.lines]
        rejected += batch.rejected
    return names, rows, lines, rejected


def write(tmp_path, name, data: bytes):
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def test_line_numbers_count_newlines_inside_quotes(tmp_path):
    path = write(tmp_path, "in.csv", b'id,note\n1,"two\nlines"\n2,x\n3,"a\r\nb\nc"\n4,y\n')
    names, rows, lines, rejected = rows_and_lines(path)
    assert names == ["id", "note"]
    assert [r["id"] for r in rows] == ["1", "2", "3", "4"]
    assert lines == [2, 4, 5, 8]
    assert rows[0]["note"] == "two\nlines"
    assert rejected == []


def test_line_numbers_hold_across_small_blocks(tmp_path):
    body = "".join(f'{i},"v\n{i}"\n' for i in range(200))
    path = write(tmp_path, "in.csv", ("id,v\n" + body).encode())
    _, rows, lines, _ = rows_and_lines(path, block_bytes=64)
    assert len(rows) == 200
    assert lines == [2 + 2 * i for i in range(200)]
    assert rows[150] == {"id": "150", "v": "v\n150"}


def test_ragged_rows_are_rejected_with_their_line(tmp_path):
    path = write(tmp_path, "in.csv", b'id,a,b\n1,x,y\n2,"q\nq"\n3,x,y,z\n4,x,y\n')
    _, rows, lines, rejected = rows_and_lines(path)
    assert [r["id"] for r in rows] == ["1", "4"]
    assert lines == [2, 6]
    assert rejected == [
        (3, "2", "ragged row: expected 3 fields, found 2"),
        (5, "3", "ragged row: expected 3 fields, found 4"),
    ]


def test_invalid_utf8_names_file_line_and_column(tmp_path):
    path = write(tmp_path, "latin.csv", "id,name\n1,ok\n2,Andr\xe9\n".encode("latin-1"))
    with pytest.raises(InputError) as caught:
        rows_and_lines(path)
    error = caught.value
    assert (error.line, error.column) == (3, "name")
    assert "latin.csv, line 3, column 'name'" in str(error)
    assert "encoding=" in str(error)


def test_declared_encoding_is_transcoded(tmp_path):
    path = write(tmp_path, "latin.csv", "id,name\n1,Andr\xe9\n".encode("latin-1"))
    _, rows, _, _ = rows_and_lines(path, encoding="latin-1")
    assert rows == [{"id": "1", "name": "André"}]


def test_bom_is_dropped_and_crlf_handled(tmp_path):
    path = write(tmp_path, "in.csv", b"\xef\xbb\xbfid,name\r\n1,a\r\n2,b\r\n")
    names, rows, lines, _ = rows_and_lines(path)
    assert names == ["id", "name"]
    assert rows == [{"id": "1", "name": "a"}, {"id": "2", "name": "b"}]
    assert lines == [2, 3]


def test_empty_file_is_an_error(tmp_path):
    path = write(tmp_path, "empty.csv", b"")
    with pytest.raises(InputError, match="empty.csv, line 1: the file is empty"):
        read_input(path)


@pytest.mark.parametrize("header", [b"id,,x\n", b"id,name,id\n"])
def test_bad_header_is_an_error(tmp_path, header):
    path = write(tmp_path, "in.csv", header + b"1,2,3\n")
    with pytest.raises(InputError, match="line 1"):
        read_input(path)


def test_header_only_yields_no_rows(tmp_path):
    path = write(tmp_path, "in.csv", b"id,name\n")
    names, rows, _, rejected = rows_and_lines(path)
    assert names == ["id", "name"] and rows == [] and rejected == []


def test_ndjson_lines_and_bad_json(tmp_path):
    lines = [json.dumps({"id": "1", "profile": {"city": "Oslo"}}), "{not json", "", "[1,2]", json.dumps({"id": 2})]
    path = write(tmp_path, "in.ndjson", ("\n".join(lines) + "\n").encode())
    _, rows, numbers, rejected = rows_and_lines(path)
    assert rows == [{"id": "1", "profile": {"city": "Oslo"}}, {"id": 2}]
    assert numbers == [1, 5]
    assert [(line, reason.split(":")[0]) for line, _, reason in rejected] == [(2, "not valid JSON"), (4, "expected a JSON object, found list")]


def test_parquet_rows_are_numbered(tmp_path):
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "n": [1, 2, 3]}), path)
    names, rows, lines, _ = rows_and_lines(str(path), batch_rows=2)
    assert names == ["id", "n"]
    assert rows == [{"id": "a", "n": 1}, {"id": "b", "n": 2}, {"id": "c", "n": 3}]
    assert lines == [1, 2, 3]


def test_record_blocks_never_end_inside_quotes():
    data = b'a,"x\ny"\n' * 50
    blocks = list(record_blocks(io.BytesIO(data), 7))
    assert b"".join(blocks) == data
    assert all(block.count(b'"') % 2 == 0 and block.endswith(b"\n") for block in blocks)


def test_other_delimiters(tmp_path):
    path = write(tmp_path, "in.csv", b'id;name\n1;"a;b"\n2;c\n')
    names, rows, _, _ = rows_and_lines(path, delimiter=";")
    assert names == ["id", "name"]
    assert rows == [{"id": "1", "name": "a;b"}, {"id": "2", "name": "c"}]


@pytest.mark.parametrize("block_bytes", [8, 64, 1 << 20])
def test_raw_records_hash_each_record_and_skip_the_known_ones(tmp_path, block_bytes):
    text = b'id,name\r\n1,a\r\n\r\n2,"b\r\nc"\r\n3,"say ""hi"""\r\n\n4,d'
    path = write(tmp_path, "in.csv", text)

    def read(known=None):
        from airflow_provider_profiles.formats.reader import RecordHashes

        names, batches = read_input(path, block_bytes=block_bytes, records=RecordHashes(defer=known is not None))
        rows, skipped = {}, {}
        for batch in (batch.unparsed.parse(known(batch.unparsed.hashes)) if batch.unparsed else batch for batch in batches):
            rows.update(zip(batch.lines.tolist(), zip(batch.rows(), batch.row_hashes.tolist())))
            if batch.skipped:
                skipped.update(zip(batch.skipped.lines.tolist(), batch.skipped.places.tolist()))
        return rows, skipped

    rows, skipped = read()
    assert {line: row for line, (row, _) in rows.items()} == {
        2: {"id": "1", "name": "a"}, 4: {"id": "2", "name": "b\r\nc"}, 6: {"id": "3", "name": 'say "hi"'}, 8: {"id": "4", "name": "d"}
    }
    hashes = {line: hashed for line, (_, hashed) in rows.items()}
    assert len(set(hashes.values())) == 4 and not skipped
    places = {hashes[2]: 0, hashes[6]: 1}  # records 1 and 3 are known
    rows, skipped = read(lambda found: np.array([places.get(int(h), -1) for h in found], dtype=np.int64))
    assert sorted(rows) == [4, 8] and skipped == {2: 0, 6: 1}
    assert {line: hashed for line, (_, hashed) in rows.items()} == {4: hashes[4], 8: hashes[8]}


def test_lines_count_blank_lines_and_newlines_in_quotes(tmp_path):
    path = write(tmp_path, "in.csv", b'id,name\n1,a\n\n2,b\n3,"x\ny"\n\n4,d')
    names, rows, lines, _ = rows_and_lines(path)
    assert lines == [2, 4, 5, 8]
    assert [row["id"] for row in rows] == ["1", "2", "3", "4"]


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
    """Every record end, the first and the last, in any slice of a block that starts at a record start."""
    from airflow_provider_profiles.formats.reader import first_record_end, last_record_end, record_ends

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


def test_an_unclosed_quote_is_an_error_at_its_line_not_a_hang(tmp_path, monkeypatch):
    """A quote never closed would make the rest of the file one record: past MAX_RECORD_BYTES the
    read stops with the line of that quote (walking back line by line to find a record
    end took minutes on such blocks)."""
    from airflow_provider_profiles.formats import reader

    monkeypatch.setattr(reader, "MAX_RECORD_BYTES", 50_000)
    body = b"".join(b"%d,name %d\n" % (i, i) for i in range(2, 40))
    path = write(tmp_path, "open.csv", b"id,name\n" + body + b'40,"never closed\n' + b"41,x\n" * 100_000)
    with pytest.raises(InputError, match=r"open.csv, line 40, column 'name': the quote at character 4 of this line opens a "
                                         r"value longer than 0.0 MB: is it left open\?"):
        rows_and_lines(path, block_bytes=4096)
    # no quote open, but no line end either
    path = write(tmp_path, "long.csv", b"id,name\n1,x\n2," + b"y" * 100_000)
    with pytest.raises(InputError, match=r"long.csv, line 3: from this line on, no record ends within"):
        rows_and_lines(path, block_bytes=4096)


def test_an_ndjson_line_that_never_ends_is_an_error_at_its_line(tmp_path, monkeypatch):
    """Past MAX_RECORD_BYTES without a newline (a JSON array on one line, say), the read stops
    with the line where it starts, instead of reading the rest of the file into one line."""
    from airflow_provider_profiles.formats import reader

    monkeypatch.setattr(reader, "MAX_RECORD_BYTES", 50_000)
    head = "".join(json.dumps({"id": i}) + "\n" for i in range(3))
    path = write(tmp_path, "in.ndjson", (head + json.dumps([{"id": i} for i in range(20_000)])).encode())
    with pytest.raises(InputError, match=r"in.ndjson, line 4: no line ends within 0.[01] MB from here: is this NDJSON"):
        rows_and_lines(path, block_bytes=4096)
