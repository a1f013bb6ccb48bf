"""What the input readers and the splitter share: the error that stops a run on bad input (and
the words for its commonest cause), and the input format guessed from a file name."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Bad input that stops the run: says which file, line and column, and what to do."""

    def __init__(self, file: Any, message: str, line: int | None = None, column: str | None = None):
        self.file, self.line, self.column, self.message = str(file), line, column, message
        where = self.file
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column!r}"
        super().__init__(f"{where}: {message}")


def open_quote_message(character: int) -> str:
    return (f"the quote at character {character} of this line is never closed: the rest of the file "
            'would be one value. Close it, or write a quote inside a quoted value as ""')


def guess_format(path: Any) -> str:
    """csv, ndjson or parquet, from the name (a compression suffix aside); csv when unsure."""
    name = str(path).lower()
    for suffix in (".gz", ".bz2", ".zst"):
        name = name.removesuffix(suffix)
    if name.endswith((".ndjson", ".jsonl", ".json")):
        return "ndjson"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    return "csv"
