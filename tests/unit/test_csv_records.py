"""CSV record boundaries as Python's csv module sees them: quotes left open at the end of the
input, CR / LF / CRLF line ends, quotes inside unquoted values; plain prepare, sync and split."""

from __future__ import annotations

import csv
import io
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from airflow_provider_profiles.formats import get_writer
from airflow_provider_profiles.formats.pipeline import prepare_file
from airflow_provider_profiles.formats.reader import InputError, RecordHashes, read_input
from airflow_provider_profiles.formats.split import split_file
from airflow_provider_profiles.formats.sync import SyncState


def writer():
    return get_writer("localytics", "changes", attributes={"name": "name", "city": "city"}, customer_id="id")


def sent(path):
    """customer id -> {attribute: value} of each change line written."""
    with open(path, encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    return {line["customer_id"]: {change["attr"]: change["value"] for change in line["changes"]} for line in lines}


def read_rows(path, **options):
    names, batches = read_input(str(path), **options)
    rows, lines, rejected = [], [], []
    for batch in batches:
        rows += batch.rows()
        lines += [int(line) for line in batch.lines]
        rejected += batch.rejected
    return names, rows, lines, rejected


def prepare(tmp_path, source, mode, base=b"id,name,city\n1,Ann,Paris\n", **options):
    """prepare_file in one of three ways: plain, a first sync (no snapshot yet: the reader parses
    every record), or a second sync after one of ``base`` (records come unparsed, and those the
    snapshot knows byte for byte stay so)."""
    output = tmp_path / f"{mode}.ndjson"
    if mode == "plain":
        return prepare_file(str(source), writer(), str(output), **options)
    state = SyncState(tmp_path / f"state-{mode}")
    if mode == "second-sync":
        (tmp_path / "base.csv").write_bytes(base)
        prepare_file(str(tmp_path / "base.csv"), writer(), str(tmp_path / "base.ndjson"), sync=state, sync_run_key="base")
        state.commit("base")
    return prepare_file(str(source), writer(), str(output), sync=state, sync_run_key="run", **options)


MODES = ["plain", "first-sync", "second-sync"]
HEADER = b"id,name,city\n"
BODY = b"".join(b"%d,n%d,c%d\n" % (i, i, i) for i in range(1, 2000))


# --- 1. a quote still open at the end of the input ----------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_quote_open_on_the_last_line_stops_the_prepare_at_its_line(tmp_path, mode):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,\"Rome\n")
    with pytest.raises(InputError) as caught:
        prepare(tmp_path, source, mode)
    error = caught.value
    assert (error.line, error.column) == (3, "city")
    assert "in.csv, line 3, column 'city'" in str(error) and "never closed" in str(error)


@pytest.mark.parametrize("mode", MODES)
def test_a_quote_open_in_a_middle_line_stops_the_prepare_at_its_line(tmp_path, mode):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,Rome\n3,\"Carl,Oslo\n" + BODY)
    with pytest.raises(InputError) as caught:
        prepare(tmp_path, source, mode)
    assert (caught.value.line, caught.value.column) == (4, "name")


def test_a_quote_open_at_the_end_is_found_across_blocks(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + BODY + b'2000,"x ""quoted"" and never closed,c\n' + BODY)
    with pytest.raises(InputError) as caught:
        read_rows(source, block_bytes=256)
    assert (caught.value.line, caught.value.column) == (2001, "name")


def test_a_quote_open_in_the_header_is_an_error_too(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b'id,"name,city\n1,a,b\n')
    with pytest.raises(InputError, match="line 1.*never closed"):
        read_rows(source)


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
    assert caught.value.line == 2001 and "in.csv" in str(caught.value)
    assert not (tmp_path / "chunks").exists() or not list((tmp_path / "chunks").iterdir())


# --- 2. line ends: CR, LF, CRLF and mixed --------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("end", [b"\r", b"\r\n", b"mixed"])
def test_every_line_end_csv_knows_reads_every_row(tmp_path, mode, end):
    lines = [HEADER.rstrip(b"\n")] + [b"%d,n%d,\"c%d\rx\"" % (i, i, i) for i in range(1, 50)]
    ends = [b"\r", b"\n", b"\r\n"] if end == b"mixed" else [end]
    data = b"".join(line + ends[index % len(ends)] for index, line in enumerate(lines))
    base = b"".join(line + ends[index % len(ends)] for index, line in enumerate(lines[:3]))
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    result = prepare(tmp_path, source, mode, base=base)
    assert (result.read, result.written + result.unchanged) == (49, 49)
    if mode != "second-sync":
        assert sent(tmp_path / f"{mode}.ndjson")["7"] == {"name": "n7", "city": "c7\rx"}


@pytest.mark.parametrize("block_bytes", [7, 64, 1 << 20])
def test_line_numbers_count_every_line_end_as_csv_does(tmp_path, block_bytes):
    data = b'id,v\r1,a\r\n2,"b\rc"\n\r3,x,extra\r\n4,"d\r\ne"\r5,f'
    source = tmp_path / "in.csv"
    source.write_bytes(data)
    _, rows, lines, rejected = read_rows(source, block_bytes=block_bytes)
    assert [row["id"] for row in rows] == ["1", "2", "4", "5"]
    assert rows[1]["v"] == "b\rc" and rows[2]["v"] == "d\r\ne"
    assert lines == [2, 3, 7, 9]  # where csv.reader's line_num puts them
    assert rejected == [(6, "3", "ragged row: expected 2 fields, found 3")]


def test_split_cuts_a_cr_only_file(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,v\r" + b"".join(b'%d,"x\ry"\r' % i for i in range(100)))
    chunks = split_file(str(source), str(tmp_path / "chunks"), max_rows=30, block_bytes=64)
    assert len(chunks) == 4
    rows = []
    for chunk in chunks:
        parsed = list(csv.reader(io.StringIO(open(chunk, "rb").read().decode(), newline="")))
        assert parsed[0] == ["id", "v"] and len(parsed) - 1 <= 30
        rows += parsed[1:]
    assert rows == [[str(i), "x\ry"] for i in range(100)]


# --- 9. a quote inside an unquoted value is a character, in every path ---------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_quote_inside_an_unquoted_value_is_text(tmp_path, mode):
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,Rome\n3,5\" screen,Oslo\n4,Dan,Lyon\n5,Eve,x\"y\"\n")
    result = prepare(tmp_path, source, mode)
    assert (result.read, result.written + result.unchanged, result.rejected) == (5, 5, 0)
    if mode != "second-sync":
        changes = sent(tmp_path / f"{mode}.ndjson")
        assert changes["3"] == {"name": '5" screen', "city": "Oslo"} and changes["5"]["city"] == 'x"y"'


def test_stray_quotes_never_glue_lines_together(tmp_path):
    """After a stray quote the count of quotes is odd on every line: each line is still one
    record, and the blocks are still cut near their size (not held until the file ends)."""
    body = b'1,5" screen,Oslo\n' + b"".join(b'%d,"n%d","c%d"\n' % (i, i, i) for i in range(2, 3000))
    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + body)
    names, batches = read_input(str(source), block_bytes=4096)
    sizes = [len(batch) for batch in batches]
    assert sum(sizes) == 2999 and max(sizes) < 300


# --- P. the reader against Python's csv module ---------------------------------------------------


_value = st.lists(st.sampled_from(list('ab ,"\n\r;') + ["é", "\r\n"]), max_size=6).map("".join)
_stray = st.text(alphabet=st.sampled_from(list('ab "')), min_size=1, max_size=5).filter(lambda text: not text.startswith('"'))


def _quoted(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@st.composite
def csv_files(draw):
    """A CSV file as text: values quoted where they must be (and sometimes where they need not),
    unquoted values with quotes inside, text after a closing quote ("a"b, which csv appends),
    ragged and blank lines, every line end, and sometimes a last value whose quote is never
    closed (then also the line of that quote)."""
    columns = draw(st.integers(2, 4))
    header = [f"c{i}" for i in range(columns)]
    records = [",".join(header)]
    for _ in range(draw(st.integers(0, 12))):
        cells = []
        for _ in range(columns + draw(st.sampled_from([0] * 8 + [-1, 1]))):
            kind = draw(st.sampled_from(["plain", "quoted", "stray", "empty", "after"]))
            if kind == "plain":
                value = draw(_value)
                cells.append(_quoted(value) if set(value) & set(',"\r\n') else value)
            elif kind == "quoted":
                cells.append(_quoted(draw(_value)))
            elif kind == "stray":
                cells.append(draw(_stray))
            elif kind == "after":
                cells.append(_quoted(draw(_value)) + draw(_stray))
            else:
                cells.append("")
        if not any(cells):
            cells[0] = "x"
        records.append(",".join(cells))
        if draw(st.integers(0, 9)) == 0:
            records.append("")  # a blank line
    ends = draw(st.lists(st.sampled_from(["\n", "\r", "\r\n"]), min_size=1, max_size=3))
    text = "".join(record + ends[index % len(ends)] for index, record in enumerate(records))
    if draw(st.booleans()):
        text = text[: -len(ends[(len(records) - 1) % len(ends)])]  # no line end after the last record
    open_line = None
    if draw(st.integers(0, 3)) == 0:  # a quote opened and never closed (on a line of its own)
        text += ("" if text.endswith(("\n", "\r")) else "\n") + "9,"
        open_line = len(text.splitlines())
        text += '"' + draw(_value).replace('"', '""')
    return columns, text, open_line


def expected_records(text: str):
    """What csv makes of it: (first line, values) per non-blank record."""
    reader = csv.reader(io.StringIO(text, newline=""))
    records, line = [], 1
    for values in reader:
        if values:
            records.append((line, values))
        line = reader.line_num + 1
    return records


@settings(max_examples=300, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=csv_files(), block_bytes=st.sampled_from([5, 16, 64, 1 << 20]), hashed=st.booleans())
def test_the_reader_agrees_with_the_csv_module(tmp_path_factory, file, block_bytes, hashed):
    """Rows, their lines and the rejects' lines as csv has them; with ``hashed``, as a CSV sync
    reads them (records cut and hashed first, then parsed)."""
    columns, text, open_line = file
    options = {"block_bytes": block_bytes, "records": RecordHashes() if hashed else None}
    source = tmp_path_factory.mktemp("p") / "in.csv"
    source.write_bytes(text.encode("utf-8"))
    records = expected_records(text)
    if open_line is not None:
        with pytest.raises(InputError, match="never closed") as caught:
            read_rows(source, **options)
        assert (caught.value.line, caught.value.column) == (open_line, "c1")
        return
    names, rows, lines, rejected = read_rows(source, **options)
    assert names == records[0][1]
    good = [(line, values) for line, values in records[1:] if len(values) == columns]
    ragged = [(line, values) for line, values in records[1:] if len(values) != columns]
    assert [[row[name] for name in names] for row in rows] == [values for _, values in good]
    assert lines == [line for line, _ in good]
    assert [(line, identifier) for line, identifier, _ in rejected] == [(line, values[0]) for line, values in ragged]


@settings(max_examples=60, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(file=csv_files(), max_rows=st.integers(1, 4), block_bytes=st.sampled_from([8, 64, 1 << 20]))
def test_split_agrees_with_the_csv_module(tmp_path_factory, file, max_rows, block_bytes):
    columns, text, open_line = file
    folder = tmp_path_factory.mktemp("s")
    source = folder / "in.csv"
    source.write_bytes(text.encode("utf-8"))
    records = expected_records(text)
    if open_line is not None:
        with pytest.raises(InputError, match="never closed") as caught:
            split_file(str(source), str(folder / "chunks"), max_rows=max_rows, block_bytes=block_bytes)
        assert caught.value.line == open_line
        return
    chunks = split_file(str(source), str(folder / "chunks"), max_rows=max_rows, block_bytes=block_bytes)
    recovered = []
    for chunk in chunks:
        parsed = [values for values in csv.reader(io.StringIO(open(chunk, "rb").read().decode(), newline="")) if values]
        assert parsed[0] == records[0][1]
        recovered += parsed[1:]
    assert recovered == [values for _, values in records[1:]]


def test_a_line_of_two_quotes_is_a_value_not_a_blank_line(tmp_path):
    source = tmp_path / "in.csv"
    source.write_bytes(b'id,v\n1,a\n""\n2,b\n')
    _, rows, lines, rejected = read_rows(source)
    assert [row["id"] for row in rows] == ["1", "2"] and lines == [2, 4]
    assert rejected == [(3, "", "ragged row: expected 2 fields, found 1")]


@pytest.mark.parametrize("block_bytes", [3, 1 << 20])
def test_a_line_of_a_space_is_a_value_in_any_block(tmp_path, block_bytes):
    source = tmp_path / "in.csv"
    source.write_bytes(b"id,v\n \n\n1,a\n")
    _, rows, lines, rejected = read_rows(source, block_bytes=block_bytes)
    assert rows == [{"id": "1", "v": "a"}] and lines == [4]
    assert rejected == [(2, " ", "ragged row: expected 2 fields, found 1")]


@pytest.mark.parametrize("hashed", [False, True])
def test_a_stray_quote_keeps_the_lines_of_the_rows_after_it(tmp_path, hashed):
    """A block whose only quote is a character: its records are found by the careful walk (and
    the block is not taken for one whose quotes pair up)."""
    source = tmp_path / "in.csv"
    source.write_bytes(b'c0,c1\nx,\n\nx,\n\na",\n\nx,\n\nx,\n\nx,\n\nx,\n\nx,\n\n')
    _, rows, lines, _ = read_rows(source, block_bytes=16, records=RecordHashes() if hashed else None)
    assert lines == [2, 4, 6, 8, 10, 12, 14, 16] and rows[2] == {"c0": 'a"', "c1": ""}


def test_the_operators_stop_at_a_quote_left_open(tmp_path):
    """What a DAG runs: the prepare operator with only_changed=True, and SplitFileOperator."""
    from airflow_provider_profiles.operators.prepare import ProfilesFileTransformOperator, SplitFileOperator

    source = tmp_path / "in.csv"
    source.write_bytes(HEADER + b"1,Ann,Paris\n2,Bob,\"Rome\n")
    prepare_task = ProfilesFileTransformOperator(
        task_id="prepare", source_path=str(source), vendor="localytics", writer_format="changes",
        writer_options={"attributes": {"name": "name", "city": "city"}, "customer_id": "id"},
        output_path=str(tmp_path / "out.ndjson"), only_changed=True, sync_state_path=str(tmp_path / "state"),
        sync_run_key="run1",
    )
    with pytest.raises(InputError, match=r"in.csv, line 3, column 'city': .* never closed"):
        prepare_task.execute({})
    split_task = SplitFileOperator(task_id="split", source_path=str(source), output_dir=str(tmp_path / "chunks"), max_rows=1)
    with pytest.raises(InputError, match=r"in.csv, line 3, column 'city': .* never closed"):
        split_task.execute({})
