"""Arrow arrays as numpy, and 64-bit hashes of strings and rows, the same in every process.

The hashes identify keys in the duplicate check and keys and rows in sync snapshots, which are
kept between runs: changing them would make the next sync resend every row once.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def to_numpy(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Booleans and integers from their Arrow buffers (``to_numpy`` imports pandas: a second)."""
    if isinstance(values, pa.ChunkedArray):
        parts = [to_numpy(chunk) for chunk in values.chunks]
        if len(parts) == 1:
            return parts[0]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=bool if pa.types.is_boolean(values.type) else np.int64)
    if values.null_count:
        values = pc.coalesce(values, pa.scalar(False if pa.types.is_boolean(values.type) else 0, values.type))
    buffer = values.buffers()[1]
    if pa.types.is_boolean(values.type):
        if buffer is None:
            return np.zeros(len(values), dtype=bool)
        bits = np.unpackbits(np.frombuffer(buffer, dtype=np.uint8), bitorder="little")
        return bits[values.offset : values.offset + len(values)].astype(bool)
    dtype = np.dtype(values.type.to_pandas_dtype())
    return np.frombuffer(buffer, dtype=dtype, count=len(values), offset=values.offset * dtype.itemsize)


def byte_lengths(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return to_numpy(pc.binary_length(column)).astype(np.int64)


_WORD_KEYS = np.random.default_rng(20_261_122).integers(1, 2**63, size=64, dtype=np.uint64) | np.uint64(1)
_LENGTH_KEY = np.uint64(0x632BE59BD9B4E019)
_NULL_HASH = np.uint64(0x9E3779B97F4A7C15)
_FIXED_WIDTHS = tuple(range(8, 264, 8))  # values up to 256 bytes go through the matrix


def _mix(values: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the whole 64-bit result."""
    with np.errstate(over="ignore"):
        values = values ^ (values >> np.uint64(30))
        values = values * np.uint64(0xBF58476D1CE4E5B9)
        values = values ^ (values >> np.uint64(27))
        values = values * np.uint64(0x94D049BB133111EB)
        return values ^ (values >> np.uint64(31))


def hash_strings(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit hash per string, the same in every process (the keys are seeded).

    The UTF-8 bytes, zero-padded to whole 64-bit words, are summed with a key per word position
    (multilinear hashing), the byte length is added, and the sum is mixed. Values of up to 32
    bytes (identifiers, most attributes) are hashed together as a fixed-width matrix built by
    Arrow kernels; longer ones one by one, with the same result.
    """
    if isinstance(array, pa.ChunkedArray):
        parts = [hash_strings(chunk) for chunk in array.chunks]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    if not pa.types.is_binary(array.type):
        if not pa.types.is_string(array.type):
            array = array.cast(pa.string())
        array = array.view(pa.binary())  # same buffers: no copy, no UTF-8 check
    count = len(array)
    if count == 0:
        return np.zeros(0, dtype=np.uint64)
    nulls = to_numpy(array.is_null()) if array.null_count else None
    if nulls is not None:
        array = pc.coalesce(array, pa.scalar(b"", pa.binary()))
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int32, count=count + 1, offset=array.offset * 4)
    lengths = np.diff(offsets).astype(np.int64)
    width = next((w for w in _FIXED_WIDTHS if w >= int(lengths.max())), _FIXED_WIDTHS[-1])
    if int(lengths.max()) <= width:
        # value + as many zeros as make ``width`` bytes: one kernel, rows back to back
        padded = pc.binary_join_element_wise(array, _zero_pads(width - lengths), b"")
    else:  # some values are longer than the matrix: cut every row at ``width`` bytes
        padded = pc.binary_slice(pc.binary_join_element_wise(array, b"\x00" * width, b""), 0, width)
    with np.errstate(over="ignore"):
        sums = _matrix_sums(padded, count, width)
        long_rows = np.flatnonzero(lengths > width)
        if len(long_rows):
            values = array.take(pa.array(long_rows)).to_pylist()
            sums[long_rows] = np.fromiter((_word_sum(value) for value in values), np.uint64, len(long_rows))
        hashes = _mix(sums + lengths.astype(np.uint64) * _LENGTH_KEY)
    if nulls is not None:
        hashes[nulls] = _NULL_HASH
    return hashes


def _matrix_sums(padded: pa.Array, count: int, width: int) -> np.ndarray:
    """Word sums of ``count`` values of exactly ``width`` bytes each, stored back to back."""
    start = int(np.frombuffer(padded.buffers()[1], dtype=np.int32, count=1, offset=padded.offset * 4)[0])
    words = np.frombuffer(padded.buffers()[2], dtype="<u8", count=count * width // 8, offset=start)
    # integer matmul wraps modulo 2**64 like the sum, and is several times faster than * then sum
    return words.reshape(count, width // 8) @ _WORD_KEYS[: width // 8]


_zero_buffer = pa.py_buffer(b"")
_BINARY = pa.binary()


def _zero_pads(sizes: np.ndarray, value_type: pa.DataType = _BINARY) -> pa.Array:
    """An array of ``sizes[i]`` zero bytes each (valid UTF-8 too), views of one shared zero buffer."""
    global _zero_buffer
    offsets = np.zeros(len(sizes) + 1, dtype=np.int32)
    np.cumsum(sizes, out=offsets[1:])
    total = int(offsets[-1])
    if _zero_buffer.size < total:
        _zero_buffer = pa.py_buffer(np.zeros(max(total, 2 * _zero_buffer.size), dtype=np.uint8))
    return pa.Array.from_buffers(value_type, len(sizes), [None, pa.py_buffer(offsets), _zero_buffer])


def _word_sum(value: bytes | None) -> int:
    """The per-value sum of ``hash_strings``, for values the matrix path does not take."""
    if value is None:
        return 0
    value += b"\x00" * (-len(value) % 8)
    total = 0
    for index in range(len(value) // 8):
        total += int.from_bytes(value[8 * index : 8 * index + 8], "little") * int(_WORD_KEYS[index % 64])
    return total & 0xFFFFFFFFFFFFFFFF


def hash_columns(columns: Iterable[pa.Array | pa.ChunkedArray]) -> np.ndarray:
    """One hash per row over several columns (a unit separator keeps the fields apart).

    Equal to ``hash_strings`` of the joined row. The usual case builds the padded matrix with
    one kernel: the row, a separator, then zeros up to the width; the separator byte's share
    of the sum is then taken out again, which leaves the sum of the row padded with zeros.
    """
    columns = [column if pa.types.is_string(column.type) else column.cast(pa.string()) for column in columns]
    arrays = [_single_array(column) for column in columns]
    if arrays and all(array is not None for array in arrays) and len(arrays[0]):
        lengths = np.full(len(arrays[0]), len(arrays) - 1, dtype=np.int64)
        for array in arrays:
            lengths += byte_lengths(array)
            if array.null_count:  # a null becomes the one-byte replacement
                lengths += to_numpy(array.is_null())
        width = next((w for w in _FIXED_WIDTHS if w > int(lengths.max())), None)
        if width is not None:
            padded = pc.binary_join_element_wise(
                *arrays,
                _zero_pads(width - 1 - lengths, pa.string()),
                "\x1f",
                null_handling="replace",
                null_replacement="\x00",
            ).view(pa.binary())
            with np.errstate(over="ignore"):
                sums = _matrix_sums(padded, len(lengths), width)
                unsigned = lengths.astype(np.uint64)
                shift = np.uint64(8) * (unsigned % np.uint64(8))
                separator_share = (np.uint64(0x1F) << shift) * _WORD_KEYS[lengths // 8]
                return _mix(sums - separator_share + unsigned * _LENGTH_KEY)
    joined = pc.binary_join_element_wise(*columns, "\x1f", null_handling="replace", null_replacement="\x00")
    return hash_strings(joined)


def _single_array(column: pa.Array | pa.ChunkedArray) -> pa.Array | None:
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else None
    return column
