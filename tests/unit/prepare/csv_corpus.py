"""Generated CSV files and what Python's csv module makes of them: the corpus that the CSV
reader (prepare/source.py) and split_file are both held to."""

from __future__ import annotations

import csv
import io

from hypothesis import strategies as st

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
